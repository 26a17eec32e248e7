use super::machine::MAX_STALE_RENEWALS;
use super::*;
use crate::rtsp::auth::Credentials;
use crate::rtsp::message::{Request, Response};
use crate::rtsp::url::{ControlStyle, RtspUrl};

fn ok(cseq: u32, extra: &[(&str, &str)]) -> Response {
    let mut r = Response::new(200, "OK");
    r.headers.push("CSeq", cseq.to_string());
    for (n, v) in extra {
        r.headers.push(*n, *v);
    }
    r
}

fn hs(url: &str, n: usize) -> Handshake {
    Handshake::new(
        RtspUrl::parse(url).unwrap(),
        ControlStyle::Ffmpeg,
        "v=0\r\n".into(),
        (0..n).map(|i| format!("streamid={i}")).collect(),
        RequestContext::new("rtspannounce/0.1"),
    )
}

fn send(step: Step) -> Request {
    match step {
        Step::Send(r) => r,
        Step::BindUdp(i) => panic!("asked to bind UDP ports for track {i}"),
        Step::Done(_) => panic!("done too early"),
    }
}

fn refused(cseq: u32, status: u16, reason: &str) -> Response {
    let mut r = Response::new(status, reason);
    r.headers.push("CSeq", cseq.to_string());
    r
}

fn udp_hs(url: &str, n: usize, transports: &[Lower]) -> Handshake {
    hs(url, n).with_transports(transports)
}

#[test]
fn transports_from_scheme_and_protocols() {
    use Lower::*;
    assert_eq!(
        transports_for(Scheme::Rtsp, true, true).unwrap(),
        [Tcp, Udp]
    );
    assert_eq!(transports_for(Scheme::Rtsp, false, true).unwrap(), [Udp]);
    assert_eq!(transports_for(Scheme::Rtsp, true, false).unwrap(), [Tcp]);
    assert_eq!(transports_for(Scheme::RtspT, true, true).unwrap(), [Tcp]);
    assert_eq!(transports_for(Scheme::RtspU, true, true).unwrap(), [Udp]);
    assert_eq!(transports_for(Scheme::Rtsps, true, true).unwrap(), [Tcp]);
    let e = transports_for(Scheme::RtspT, false, true).unwrap_err();
    assert!(e.contains("rtspt:// means TCP only"), "{e}");
    let e = transports_for(Scheme::RtspU, true, false).unwrap_err();
    assert!(e.contains("rtspu:// means UDP only"), "{e}");
    let e = transports_for(Scheme::Rtsp, false, false).unwrap_err();
    assert!(e.contains("udp-mcast"), "{e}");
}

#[test]
fn udp_setup_binds_then_asks_client_ports() {
    let mut h = udp_hs("rtsp://h/live", 2, &[Lower::Udp]);
    h.start();
    assert!(matches!(
        h.handle_response(&ok(1, &[])).unwrap(),
        Step::BindUdp(0)
    ));
    let s0 = send(h.udp_ports_bound(0, 5000, 5001));
    assert_eq!(
        s0.headers.get("Transport"),
        Some("RTP/AVP;unicast;client_port=5000-5001;mode=record")
    );
    assert_eq!(s0.headers.get("CSeq"), Some("2"));
    let step = h
        .handle_response(&ok(
            2,
            &[
                ("Session", "S"),
                (
                    "Transport",
                    "RTP/AVP;unicast;client_port=5000-5001;server_port=7000-7001;source=10.1.2.3",
                ),
            ],
        ))
        .unwrap();
    assert!(matches!(step, Step::BindUdp(1)));
    let s1 = send(h.udp_ports_bound(1, 5002, 5003));
    assert_eq!(
        s1.headers.get("Transport"),
        Some("RTP/AVP;unicast;client_port=5002-5003;mode=record")
    );
    // A single server port: RTCP is the next one.
    send(
        h.handle_response(&ok(3, &[("Transport", "RTP/AVP;unicast;server_port=7002")]))
            .unwrap(),
    );
    let Step::Done(n) = h.handle_response(&ok(4, &[])).unwrap() else {
        panic!()
    };
    assert_eq!(n.lower, Lower::Udp);
    let u0 = n.tracks[0].udp.clone().unwrap();
    assert_eq!(u0.client, (5000, 5001));
    assert_eq!(u0.server, (7000, 7001));
    assert_eq!(u0.source.as_deref(), Some("10.1.2.3"));
    let u1 = n.tracks[1].udp.clone().unwrap();
    assert_eq!(u1.server, (7002, 7003));
    assert_eq!(u1.source, None);
    // Channels still tell the tracks apart inside the element.
    assert_eq!((n.tracks[1].rtp_channel, n.tracks[1].rtcp_channel), (2, 3));
}

#[test]
fn udp_answer_needs_server_port_and_udp() {
    for answer in [
        None,
        Some("RTP/AVP;unicast;client_port=5000-5001"),
        Some("RTP/AVP/TCP;unicast;interleaved=0-1"),
    ] {
        let mut h = udp_hs("rtsp://h/live", 1, &[Lower::Udp]);
        h.start();
        h.handle_response(&ok(1, &[])).unwrap();
        send(h.udp_ports_bound(0, 5000, 5001));
        let extra: Vec<(&str, &str)> = answer.iter().map(|a| ("Transport", *a)).collect();
        let e = h.handle_response(&ok(2, &extra)).unwrap_err();
        assert!(matches!(e, HandshakeError::Transport(_)), "{answer:?}: {e}");
    }
}

#[test]
fn tcp_refused_with_461_falls_back_to_udp() {
    let mut h = udp_hs("rtsp://h/live", 2, &[Lower::Tcp, Lower::Udp]);
    h.start();
    let s0 = send(h.handle_response(&ok(1, &[])).unwrap());
    assert!(s0.headers.get("Transport").unwrap().contains("/TCP"));
    let step = h
        .handle_response(&refused(2, 461, "Unsupported Transport"))
        .unwrap();
    assert!(matches!(step, Step::BindUdp(0)));
    let s0 = send(h.udp_ports_bound(0, 5000, 5001));
    assert_eq!(s0.method, "SETUP");
    assert_eq!(s0.uri, "rtsp://h:554/live/streamid=0");
    assert_eq!(s0.headers.get("CSeq"), Some("3"));
    assert!(s0
        .headers
        .get("Transport")
        .unwrap()
        .starts_with("RTP/AVP;unicast;client_port=5000-5001"));
    // The second track goes straight to UDP.
    let step = h
        .handle_response(&ok(3, &[("Transport", "RTP/AVP;server_port=7000-7001")]))
        .unwrap();
    assert!(matches!(step, Step::BindUdp(1)));
    send(h.udp_ports_bound(1, 5002, 5003));
    send(
        h.handle_response(&ok(4, &[("Transport", "RTP/AVP;server_port=7002-7003")]))
            .unwrap(),
    );
    let Step::Done(n) = h.handle_response(&ok(5, &[])).unwrap() else {
        panic!()
    };
    assert_eq!(n.lower, Lower::Udp);
}

#[test]
fn udp_first_then_tcp_when_preferred_so() {
    let mut h = udp_hs("rtsp://h/live", 1, &[Lower::Udp, Lower::Tcp]);
    h.start();
    h.handle_response(&ok(1, &[])).unwrap();
    send(h.udp_ports_bound(0, 5000, 5001));
    let s = send(
        h.handle_response(&refused(2, 461, "Unsupported Transport"))
            .unwrap(),
    );
    assert_eq!(
        s.headers.get("Transport"),
        Some("RTP/AVP/TCP;unicast;interleaved=0-1;mode=record")
    );
}

#[test]
fn refused_transports_are_named() {
    // TCP only: the error says what was tried and what `protocols` did not allow.
    let mut h = udp_hs("rtsp://h/live", 1, &[Lower::Tcp]);
    h.start();
    h.handle_response(&ok(1, &[])).unwrap();
    let e = h
        .handle_response(&refused(2, 461, "Unsupported Transport"))
        .unwrap_err();
    assert_eq!(
        e.to_string(),
        "server refused SETUP rtsp://h:554/live/streamid=0: 461 Unsupported Transport (transports tried: TCP interleaved; not allowed by `protocols` or the URL scheme: udp)"
    );
    // Both tried.
    let mut h = udp_hs("rtsp://h/live", 1, &[Lower::Tcp, Lower::Udp]);
    h.start();
    h.handle_response(&ok(1, &[])).unwrap();
    h.handle_response(&refused(2, 461, "Unsupported Transport"))
        .unwrap();
    send(h.udp_ports_bound(0, 5000, 5001));
    let e = h
        .handle_response(&refused(3, 461, "Unsupported Transport"))
        .unwrap_err();
    assert!(
        matches!(&e, HandshakeError::NoTransport { tried, .. } if tried == &[Lower::Tcp, Lower::Udp]),
        "{e:?}"
    );
    assert!(
        e.to_string().contains(
            "transports tried: TCP interleaved, then UDP unicast; no other transport to try"
        ),
        "{e}"
    );
    // A later track refused: no switching mid-session.
    let mut h = udp_hs("rtsp://h/live", 2, &[Lower::Tcp, Lower::Udp]);
    h.start();
    h.handle_response(&ok(1, &[])).unwrap();
    h.handle_response(&ok(2, &[])).unwrap();
    let e = h
        .handle_response(&refused(3, 461, "Unsupported Transport"))
        .unwrap_err();
    assert!(matches!(e, HandshakeError::NoTransport { track: 1, .. }));
    assert!(e.to_string().contains("one transport"), "{e}");
    // Other SETUP refusals are not transport refusals.
    let mut h = udp_hs("rtsp://h/live", 1, &[Lower::Tcp, Lower::Udp]);
    h.start();
    h.handle_response(&ok(1, &[])).unwrap();
    assert!(matches!(
        h.handle_response(&refused(2, 454, "Session Not Found")),
        Err(HandshakeError::Status { status: 454, .. })
    ));
}

#[test]
fn two_track_sequence_session_from_setup() {
    let mut h = hs("rtsp://127.0.0.1:8554/live/cam1", 2);
    let a = h.start();
    assert_eq!(a.method, "ANNOUNCE");
    assert_eq!(a.uri, "rtsp://127.0.0.1:8554/live/cam1");
    assert_eq!(a.headers.get("CSeq"), Some("1"));
    assert_eq!(a.headers.get("Content-Type"), Some("application/sdp"));
    assert_eq!(a.headers.get("User-Agent"), Some("rtspannounce/0.1"));
    assert_eq!(a.headers.get("Session"), None);

    let s0 = send(h.handle_response(&ok(1, &[])).unwrap());
    assert_eq!(s0.method, "SETUP");
    assert_eq!(s0.uri, "rtsp://127.0.0.1:8554/live/cam1/streamid=0");
    assert_eq!(
        s0.headers.get("Transport"),
        Some("RTP/AVP/TCP;unicast;interleaved=0-1;mode=record")
    );
    assert_eq!(s0.headers.get("CSeq"), Some("2"));
    assert_eq!(s0.headers.get("Session"), None);

    let s1 = send(
        h.handle_response(&ok(
            2,
            &[
                ("Session", "ABC;timeout=30"),
                ("Transport", "RTP/AVP/TCP;unicast;interleaved=0-1"),
            ],
        ))
        .unwrap(),
    );
    assert_eq!(s1.uri, "rtsp://127.0.0.1:8554/live/cam1/streamid=1");
    assert_eq!(s1.headers.get("Session"), Some("ABC"));
    assert_eq!(
        s1.headers.get("Transport"),
        Some("RTP/AVP/TCP;unicast;interleaved=2-3;mode=record")
    );

    // The server picks other channels: those are the ones used.
    let rec = send(
        h.handle_response(&ok(
            3,
            &[
                ("Session", "ABC;timeout=30"),
                ("Transport", "RTP/AVP/TCP;unicast;interleaved=6-7"),
            ],
        ))
        .unwrap(),
    );
    assert_eq!(rec.method, "RECORD");
    assert_eq!(rec.uri, "rtsp://127.0.0.1:8554/live/cam1");
    assert_eq!(rec.headers.get("Range"), Some("npt=0.000-"));
    assert_eq!(rec.headers.get("Session"), Some("ABC"));
    assert_eq!(rec.headers.get("CSeq"), Some("4"));

    let Step::Done(n) = h.handle_response(&ok(4, &[("Session", "ABC")])).unwrap() else {
        panic!()
    };
    assert_eq!(n.session_id.as_deref(), Some("ABC"));
    assert_eq!(n.session_timeout, 30);
    assert_eq!((n.tracks[0].rtp_channel, n.tracks[0].rtcp_channel), (0, 1));
    assert_eq!((n.tracks[1].rtp_channel, n.tracks[1].rtcp_channel), (6, 7));
}

#[test]
fn a_content_base_that_cannot_be_in_a_request_line_is_not_used() {
    // Found by the server_requests fuzz target: "Content-Base: \0\0" made the SETUP line
    // "SETUP \0\0/streamid=0 RTSP/1.0".
    for base in [
        "\0\0",
        "rtsp://h/a b/",
        "rtsp://h/x\r/",
        "rtsp://h/\u{85}x/",
    ] {
        let mut h = hs("rtsp://h/live", 1);
        h.start();
        let s0 = send(
            h.handle_response(&ok(1, &[("Content-Base", base)]))
                .unwrap(),
        );
        assert_eq!(s0.uri, "rtsp://h:554/live/streamid=0", "{base:?}");
    }
    let mut h = hs("rtsp://h/live", 1);
    h.start();
    let s0 = send(
        h.handle_response(&ok(1, &[("Content-Base", " rtsp://h/base/ ")]))
            .unwrap(),
    );
    assert_eq!(s0.uri, "rtsp://h/base/streamid=0");
}

#[test]
fn session_from_announce_and_content_base() {
    let mut h = hs("rtsp://h/live/x?secret=1", 1);
    h.start();
    let s0 = send(
        h.handle_response(&ok(
            1,
            &[
                ("Session", "Z1"),
                ("Content-Base", "rtsp://h/live/x?secret=1/"),
            ],
        ))
        .unwrap(),
    );
    assert_eq!(s0.headers.get("Session"), Some("Z1"));
    assert_eq!(s0.uri, "rtsp://h/live/x?secret=1/streamid=0");
    let rec = send(h.handle_response(&ok(2, &[])).unwrap());
    assert_eq!(rec.uri, "rtsp://h:554/live/x?secret=1");
    let Step::Done(n) = h.handle_response(&ok(3, &[])).unwrap() else {
        panic!()
    };
    assert_eq!(n.session_timeout, 60);
}

#[test]
fn query_style_without_content_base() {
    let mut h = hs("rtsp://h/live/x?secret=1", 1);
    h.start();
    let s0 = send(h.handle_response(&ok(1, &[])).unwrap());
    assert_eq!(s0.uri, "rtsp://h:554/live/x?secret=1/streamid=0");
}

#[test]
fn refusals_name_method_and_status() {
    let mut h = hs("rtsp://h/live", 1);
    h.start();
    let mut r = Response::new(404, "Not Found");
    r.headers.push("CSeq", "1");
    let e = h.handle_response(&r).unwrap_err();
    assert_eq!(
        e.to_string(),
        "server refused ANNOUNCE rtsp://h:554/live: 404 Not Found"
    );
}

#[test]
fn wrong_cseq_and_udp_transport_rejected() {
    let mut h = hs("rtsp://h/live", 1);
    h.start();
    assert!(matches!(
        h.handle_response(&ok(9, &[])),
        Err(HandshakeError::BadResponse(_))
    ));
    let mut h = hs("rtsp://h/live", 1);
    h.start();
    h.handle_response(&ok(1, &[])).unwrap();
    let e = h
        .handle_response(&ok(
            2,
            &[("Transport", "RTP/AVP;unicast;client_port=5000-5001")],
        ))
        .unwrap_err();
    assert!(matches!(e, HandshakeError::Transport(_)), "{e}");
}

#[test]
fn duplicate_channels_rejected() {
    let mut h = hs("rtsp://h/live", 2);
    h.start();
    h.handle_response(&ok(1, &[])).unwrap();
    h.handle_response(&ok(2, &[("Transport", "RTP/AVP/TCP;interleaved=0-1")]))
        .unwrap();
    let e = h
        .handle_response(&ok(3, &[("Transport", "RTP/AVP/TCP;interleaved=0-1")]))
        .unwrap_err();
    assert!(matches!(e, HandshakeError::Transport(_)));
}

/// Answers ANNOUNCE and the SETUPs of `transports.len()` tracks with these Transport values;
/// the result of the last SETUP.
fn setup_answers(transports: &[&str]) -> Result<Step, HandshakeError> {
    let mut h = hs("rtsp://h/live", transports.len());
    h.start();
    h.handle_response(&ok(1, &[])).unwrap();
    let (last, first) = transports.split_last().unwrap();
    for (i, t) in first.iter().enumerate() {
        h.handle_response(&ok(2 + i as u32, &[("Transport", t)]))
            .unwrap_or_else(|e| panic!("track {i} {t:?}: {e}"));
    }
    h.handle_response(&ok(1 + transports.len() as u32, &[("Transport", last)]))
}

#[test]
fn every_interleaved_channel_is_one_tracks_alone() {
    let clash = |ts: &[&str]| match setup_answers(ts) {
        Err(HandshakeError::Transport(m)) => m,
        other => panic!("{ts:?}: {other:?}"),
    };
    // RTCP on an earlier track's RTCP channel.
    let m = clash(&["RTP/AVP/TCP;interleaved=0-1", "RTP/AVP/TCP;interleaved=2-1"]);
    assert!(m.contains("track 1") && m.contains("RTCP channel 1"), "{m}");
    assert!(m.contains("track 0's RTCP channel"), "{m}");
    // RTCP on an earlier track's RTP channel, RTP on an earlier track's RTCP channel.
    let m = clash(&["RTP/AVP/TCP;interleaved=0-1", "RTP/AVP/TCP;interleaved=4-0"]);
    assert!(m.contains("track 0's RTP channel"), "{m}");
    let m = clash(&["RTP/AVP/TCP;interleaved=0-1", "RTP/AVP/TCP;interleaved=1-2"]);
    assert!(
        m.contains("RTP channel 1") && m.contains("track 0's RTCP"),
        "{m}"
    );
    // One track's RTP and RTCP on one channel.
    let m = clash(&["RTP/AVP/TCP;interleaved=4-4"]);
    assert!(m.contains("track 0") && m.contains("4-4"), "{m}");
    // The third track against the first.
    let m = clash(&[
        "RTP/AVP/TCP;interleaved=0-1",
        "RTP/AVP/TCP;interleaved=2-3",
        "RTP/AVP/TCP;interleaved=5-0",
    ]);
    assert!(m.contains("track 2") && m.contains("track 0's RTP"), "{m}");
    // Single values: RTCP on the next channel, so 0 then 1 clash, 0 then 2 do not.
    let m = clash(&["RTP/AVP/TCP;interleaved=0", "RTP/AVP/TCP;interleaved=1"]);
    assert!(m.contains("track 0's RTCP channel"), "{m}");
    let Ok(Step::Send(_)) =
        setup_answers(&["RTP/AVP/TCP;interleaved=0", "RTP/AVP/TCP;interleaved=2"])
    else {
        panic!("distinct channels refused");
    };
    // Distinct but unusual channels are fine.
    let Ok(Step::Send(_)) = setup_answers(&[
        "RTP/AVP/TCP;interleaved=9-3",
        "RTP/AVP/TCP;interleaved=200-201",
    ]) else {
        panic!("distinct channels refused");
    };
}

fn unauthorized(cseq: u32, challenge: &str) -> Response {
    let mut r = Response::new(401, "Unauthorized");
    r.headers.push("CSeq", cseq.to_string());
    r.headers.push("WWW-Authenticate", challenge);
    r
}

fn with_creds(url: &str) -> Handshake {
    hs(url, 1).with_credentials(Some(Credentials {
        user: "u".into(),
        password: "p".into(),
    }))
}

#[test]
fn basic_auth_once_then_on_every_request() {
    let mut h = with_creds("rtsp://h/live");
    let a = h.start();
    assert_eq!(a.headers.get("Authorization"), None);
    let again = send(
        h.handle_response(&unauthorized(1, "Basic realm=\"x\""))
            .unwrap(),
    );
    assert_eq!(again.method, "ANNOUNCE");
    assert_eq!(again.headers.get("CSeq"), Some("2"));
    assert_eq!(again.headers.get("Authorization"), Some("Basic dTpw"));
    assert_eq!(again.body, a.body);
    assert_eq!(again.headers.get("Content-Type"), Some("application/sdp"));
    let setup = send(h.handle_response(&ok(2, &[])).unwrap());
    assert_eq!(setup.headers.get("Authorization"), Some("Basic dTpw"));
    // A second 401 is a refusal.
    let e = h
        .handle_response(&unauthorized(3, "Basic realm=\"x\""))
        .unwrap_err();
    assert!(matches!(e, HandshakeError::AuthRefused { .. }), "{e}");
}

#[test]
fn digest_stale_nonce_is_retried() {
    let mut h = with_creds("rtsp://h/live");
    h.start();
    let r = send(
        h.handle_response(&unauthorized(1, "Digest realm=\"x\", nonce=\"n1\""))
            .unwrap(),
    );
    assert!(r
        .headers
        .get("Authorization")
        .unwrap()
        .contains("nonce=\"n1\""));
    let r = send(
        h.handle_response(&unauthorized(
            2,
            "Digest realm=\"x\", nonce=\"n2\", stale=true",
        ))
        .unwrap(),
    );
    assert!(r
        .headers
        .get("Authorization")
        .unwrap()
        .contains("nonce=\"n2\""));
    assert_eq!(r.headers.get("CSeq"), Some("3"));
}

#[test]
fn stale_for_ever_is_refused() {
    let mut h = with_creds("rtsp://h/live");
    h.start();
    let mut cseq = 1;
    let mut step = h.handle_response(&unauthorized(cseq, "Digest realm=\"x\", nonce=\"n0\""));
    for i in 1..=MAX_STALE_RENEWALS {
        assert!(step.is_ok(), "renewal {i}: {step:?}");
        cseq += 1;
        step = h.handle_response(&unauthorized(
            cseq,
            &format!("Digest realm=\"x\", nonce=\"n{i}\", stale=true"),
        ));
    }
    assert!(step.is_ok(), "{step:?}");
    cseq += 1;
    let e = h
        .handle_response(&unauthorized(
            cseq,
            "Digest realm=\"x\", nonce=\"last\", stale=true",
        ))
        .unwrap_err();
    assert!(matches!(e, HandshakeError::AuthRefused { .. }), "{e}");
    assert!(e.to_string().contains("stale again"), "{e}");
}

#[test]
fn no_credentials_is_a_clear_error() {
    let mut h = hs("rtsp://h/live", 1);
    h.start();
    let e = h
        .handle_response(&unauthorized(1, "Digest realm=\"cams\", nonce=\"n\""))
        .unwrap_err();
    assert!(matches!(e, HandshakeError::AuthRequired { .. }));
    assert!(e.to_string().contains("user-id"), "{e}");
    assert!(e.to_string().contains("cams"), "{e}");
}

#[test]
fn options_then_announce_again_when_refused() {
    let mut h = hs("rtsp://h/live", 1);
    let a = h.start();
    let mut r = Response::new(455, "Method Not Valid in This State");
    r.headers.push("CSeq", "1");
    let o = send(h.handle_response(&r).unwrap());
    assert_eq!(o.method, "OPTIONS");
    let a2 = send(
        h.handle_response(&ok(
            2,
            &[("Public", "OPTIONS, ANNOUNCE, SETUP, RECORD, TEARDOWN")],
        ))
        .unwrap(),
    );
    assert_eq!(a2.method, "ANNOUNCE");
    assert_eq!(a2.body, a.body);
    assert_eq!(a2.headers.get("CSeq"), Some("3"));
    send(h.handle_response(&ok(3, &[])).unwrap());
    send(h.handle_response(&ok(4, &[])).unwrap());
    let Step::Done(n) = h.handle_response(&ok(5, &[])).unwrap() else {
        panic!()
    };
    assert_eq!(
        n.public.unwrap(),
        ["OPTIONS", "ANNOUNCE", "SETUP", "RECORD", "TEARDOWN"]
    );
    // A second refusal is final.
    let mut h = hs("rtsp://h/live", 1);
    h.start();
    h.handle_response(&r).unwrap();
    h.handle_response(&ok(2, &[])).unwrap();
    let mut r2 = r.clone();
    r2.headers.set("CSeq", "3");
    assert!(matches!(
        h.handle_response(&r2),
        Err(HandshakeError::Status { status: 455, .. })
    ));
}

#[test]
fn redirect_is_reported_with_location() {
    let mut h = hs("rtsp://h/live", 1);
    h.start();
    let mut r = Response::new(302, "Found");
    r.headers.push("CSeq", "1");
    r.headers.push("Location", "rtsp://other:8554/live");
    assert_eq!(
        h.handle_response(&r).unwrap_err(),
        HandshakeError::Redirect {
            status: 302,
            location: "rtsp://other:8554/live".into()
        }
    );
}

#[test]
fn bad_session_header_is_an_error() {
    let mut h = hs("rtsp://h/live", 1);
    h.start();
    assert!(h.handle_response(&ok(1, &[("Session", "")])).is_err());
}

fn savp_hs(n: usize, plain: bool, transports: &[Lower]) -> Handshake {
    hs("rtsp://h/live", n)
        .with_transports(transports)
        .with_srtp(Some(SrtpOffer {
            mikeys: (0..n).map(|i| format!("MIKEY{i}")).collect(),
            plain_sdp: plain.then(|| "v=0\r\nplain\r\n".into()),
        }))
}

#[test]
fn savp_setups_carry_their_track_keys() {
    let mut h = savp_hs(2, false, &[Lower::Tcp]);
    h.start();
    let s0 = send(h.handle_response(&ok(1, &[])).unwrap());
    assert_eq!(
        s0.headers.get("Transport"),
        Some("RTP/SAVP/TCP;unicast;interleaved=0-1;mode=record")
    );
    assert_eq!(
        s0.headers.get("KeyMgmt"),
        Some("prot=mikey; uri=\"rtsp://h:554/live/streamid=0\"; data=\"MIKEY0\"")
    );
    let s1 = send(
        h.handle_response(&ok(
            2,
            &[
                ("Transport", "RTP/SAVP/TCP;unicast;interleaved=0-1"),
                ("Session", "s1"),
                ("KeyMgmt", "prot=mikey; data=\"SERVER\""),
            ],
        ))
        .unwrap(),
    );
    assert!(s1.headers.get("KeyMgmt").unwrap().contains("MIKEY1"));
    let rec = send(
        h.handle_response(&ok(
            3,
            &[("Transport", "RTP/SAVP/TCP;unicast;interleaved=2-3")],
        ))
        .unwrap(),
    );
    let Step::Done(n) = h
        .handle_response(&ok(rec.headers.cseq().unwrap(), &[]))
        .unwrap()
    else {
        panic!("not done")
    };
    assert!(n.srtp);
    assert_eq!(
        n.tracks[0].keymgmt.as_deref(),
        Some("prot=mikey; data=\"SERVER\"")
    );
    assert_eq!(n.tracks[1].keymgmt, None);
}

#[test]
fn a_server_answering_savp_with_avp_is_refused() {
    let mut h = savp_hs(1, false, &[Lower::Tcp]);
    h.start();
    send(h.handle_response(&ok(1, &[])).unwrap());
    let e = h
        .handle_response(&ok(
            2,
            &[("Transport", "RTP/AVP/TCP;unicast;interleaved=0-1")],
        ))
        .unwrap_err();
    assert!(e.to_string().contains("unencrypted"), "{e}");
}

#[test]
fn refused_savp_without_avp_allowed_is_an_encryption_error() {
    let mut h = savp_hs(1, false, &[Lower::Tcp]);
    h.start();
    send(h.handle_response(&ok(1, &[])).unwrap());
    let e = h
        .handle_response(&refused(2, 461, "Unsupported transport"))
        .unwrap_err();
    assert!(matches!(
        e,
        HandshakeError::EncryptionRefused { status: 461, .. }
    ));
    let text = e.to_string();
    assert!(text.contains("server refused encryption"), "{text}");
    assert!(
        text.contains("SETUP rtsp://h:554/live/streamid=0"),
        "{text}"
    );
    assert!(text.contains("add avp to profiles"), "{text}");
}

#[test]
fn refused_savp_tries_the_next_transport_then_falls_back_to_avp() {
    let mut h = savp_hs(1, true, &[Lower::Tcp, Lower::Udp]);
    h.start();
    send(h.handle_response(&ok(1, &[])).unwrap());
    // 461 on TCP: UDP, still encrypted.
    assert!(matches!(
        h.handle_response(&refused(2, 461, "Unsupported transport"))
            .unwrap(),
        Step::BindUdp(0)
    ));
    let s = send(h.udp_ports_bound(0, 5000, 5001));
    assert!(s.headers.get("Transport").unwrap().starts_with("RTP/SAVP;"));
    // Another 4xx: plain RTP from ANNOUNCE on, first transport first.
    let again = send(h.handle_response(&refused(3, 403, "Forbidden")).unwrap());
    assert_eq!(again.method, "ANNOUNCE");
    assert_eq!(again.body, b"v=0\r\nplain\r\n");
    let s = send(h.handle_response(&ok(4, &[])).unwrap());
    assert_eq!(
        s.headers.get("Transport"),
        Some("RTP/AVP/TCP;unicast;interleaved=0-1;mode=record")
    );
    assert_eq!(s.headers.get("KeyMgmt"), None);
    let rec = send(
        h.handle_response(&ok(
            5,
            &[("Transport", "RTP/AVP/TCP;unicast;interleaved=0-1")],
        ))
        .unwrap(),
    );
    let Step::Done(n) = h
        .handle_response(&ok(rec.headers.cseq().unwrap(), &[]))
        .unwrap()
    else {
        panic!("not done")
    };
    assert!(!n.srtp);
    let why = n.srtp_refused.expect("the fallback is reported");
    assert!(
        why.contains("server refused encryption") && why.contains("403"),
        "{why}"
    );
}

#[test]
fn an_announce_refusing_savp_falls_back_or_says_encryption() {
    // gst-rtsp-server answers 415 to an SAVP SDP its factory does not take.
    let mut h = savp_hs(1, true, &[Lower::Tcp]);
    h.start();
    let again = send(
        h.handle_response(&refused(1, 415, "Unsupported Media Type"))
            .unwrap(),
    );
    assert_eq!(again.method, "ANNOUNCE");
    assert_eq!(again.body, b"v=0\r\nplain\r\n");
    let s = send(h.handle_response(&ok(2, &[])).unwrap());
    assert!(s
        .headers
        .get("Transport")
        .unwrap()
        .starts_with("RTP/AVP/TCP;"));

    let mut h = savp_hs(1, false, &[Lower::Tcp]);
    h.start();
    let e = h
        .handle_response(&refused(1, 415, "Unsupported Media Type"))
        .unwrap_err();
    assert!(
        e.to_string()
            .starts_with("server refused encryption: ANNOUNCE"),
        "{e}"
    );
    // A refusal that is not about SRTP keeps its own error.
    let mut h = savp_hs(1, false, &[Lower::Tcp]);
    h.start();
    let e = h
        .handle_response(&refused(1, 403, "Forbidden"))
        .unwrap_err();
    assert!(
        matches!(e, HandshakeError::Status { status: 403, .. }),
        "{e}"
    );
}
