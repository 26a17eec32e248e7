//! A server that answers with arbitrary bytes: the handshake state machine, fed through the
//! parser, must end in Done or an error, never a panic. Header parsers get the same bytes.
#![no_main]

use gstrtspannounce::fuzzing::{
    parse_challenges, strongest, Authenticator, ControlStyle, Credentials, Handshake, Incoming,
    Lower, Parser, RequestContext, RtspUrl, Session, Step, Transport,
};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let text = String::from_utf8_lossy(data);
    let _ = Transport::parse(&text);
    let _ = Session::parse(&text);
    let _ = RtspUrl::parse(&text);
    let ch = parse_challenges([text.as_ref()]);
    if let Some(c) = strongest(&ch) {
        let mut a = Authenticator::new(
            c.clone(),
            Credentials {
                user: "u".into(),
                password: "p".into(),
            },
        );
        let _ = a.authorization("ANNOUNCE", "rtsp://h/x");
    }

    let url = RtspUrl::parse("rtsp://127.0.0.1:8554/live/x?q=1").unwrap();
    let mut hs = Handshake::new(
        url,
        ControlStyle::Ffmpeg,
        "v=0\r\n".into(),
        vec!["streamid=0".into(), "streamid=1".into()],
        RequestContext::new("fuzz"),
    )
    .with_transports(&[Lower::Tcp, Lower::Udp])
    .with_credentials(Some(Credentials {
        user: "u".into(),
        password: "p".into(),
    }));
    let _first = hs.start();
    let mut p = Parser::default();
    p.feed(data);
    let mut steps = 0;
    while let Ok(Some(m)) = p.next_message() {
        if let Incoming::Response(r) = m {
            steps += 1;
            let mut step = hs.handle_response(&r);
            if let Ok(Step::BindUdp(i)) = step {
                step = Ok(hs.udp_ports_bound(i, 5000, 5001));
            }
            match step {
                Ok(Step::Send(_)) => {}
                Ok(Step::BindUdp(_)) | Ok(Step::Done(_)) | Err(_) => break,
            }
        }
        assert!(steps < 10_000);
    }
});
