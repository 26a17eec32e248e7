use super::*;

fn parse_all(bytes: &[u8]) -> Vec<Incoming> {
    let mut p = Parser::default();
    p.feed(bytes);
    let mut out = Vec::new();
    while let Some(m) = p.next_message().unwrap() {
        out.push(m);
    }
    assert_eq!(p.pending(), 0);
    out
}

#[test]
fn request_serialisation() {
    let mut r = Request::new("ANNOUNCE", "rtsp://h/live");
    r.headers.push("CSeq", "1");
    r.headers.push("Content-Type", "application/sdp");
    r.body = b"v=0\r\n".to_vec();
    assert_eq!(
        String::from_utf8(r.to_bytes()).unwrap(),
        "ANNOUNCE rtsp://h/live RTSP/1.0\r\nCSeq: 1\r\nContent-Type: application/sdp\r\nContent-Length: 5\r\n\r\nv=0\r\n"
    );
}

#[test]
fn log_string_masks_credentials() {
    let mut r = Request::new("SETUP", "rtsp://h/live");
    r.headers.push("Authorization", "Basic dXNlcjpzZWNyZXQ=");
    assert!(!r.to_log_string().contains("dXNlcjpzZWNyZXQ="));
    let mut r = Request::new("SETUP", "rtsp://h/live");
    r.headers.push(
        "Authorization",
        "Digest username=\"u\", realm=\"r\", nonce=\"n\", uri=\"rtsp://h/live\", response=\"abcdef\"",
    );
    let s = r.to_log_string();
    assert!(!s.contains("abcdef"), "{s}");
    assert!(s.contains("realm=\"r\""), "{s}");
}

#[test]
fn response_parsing_crlf_and_lf() {
    let msgs = parse_all(
        b"RTSP/1.0 200 OK\r\nCSeq: 1\r\nsession: abc;timeout=60\r\n\r\nRTSP/1.0 404 Not Found\nCSeq: 2\n\n",
    );
    match &msgs[0] {
        Incoming::Response(r) => {
            assert_eq!(r.status, 200);
            assert_eq!(r.reason, "OK");
            assert_eq!(r.headers.cseq(), Some(1));
            assert_eq!(r.headers.get("Session"), Some("abc;timeout=60"));
        }
        other => panic!("{other:?}"),
    }
    match &msgs[1] {
        Incoming::Response(r) => {
            assert_eq!(r.status, 404);
            assert_eq!(r.reason, "Not Found");
            assert_eq!(r.headers.cseq(), Some(2));
        }
        other => panic!("{other:?}"),
    }
}

#[test]
fn folded_headers_and_body() {
    let msgs =
        parse_all(b"RTSP/1.0 200 OK\r\nCSeq: 3\r\nPublic: OPTIONS,\r\n  ANNOUNCE\r\nContent-Length: 4\r\n\r\nabcd");
    let Incoming::Response(r) = &msgs[0] else {
        panic!()
    };
    assert_eq!(r.headers.get("public"), Some("OPTIONS, ANNOUNCE"));
    assert_eq!(r.body, b"abcd");
}

#[test]
fn interleaved_mixed_with_messages_in_pieces() {
    let mut all = vec![b'$', 1, 0, 3, 9, 8, 7];
    all.extend_from_slice(b"OPTIONS * RTSP/1.0\r\nCSeq: 7\r\n\r\n");
    all.extend_from_slice(&[b'$', 0, 0, 0]);
    let mut p = Parser::default();
    let mut out = Vec::new();
    for b in &all {
        p.feed(std::slice::from_ref(b));
        while let Some(m) = p.next_message().unwrap() {
            out.push(m);
        }
    }
    assert_eq!(
        out[0],
        Incoming::Interleaved {
            channel: 1,
            data: vec![9, 8, 7]
        }
    );
    let Incoming::Request(r) = &out[1] else {
        panic!()
    };
    assert_eq!(r.method, "OPTIONS");
    assert_eq!(r.uri, "*");
    assert_eq!(r.headers.cseq(), Some(7));
    assert_eq!(
        out[2],
        Incoming::Interleaved {
            channel: 0,
            data: vec![]
        }
    );
}

#[test]
fn garbage_is_an_error() {
    let mut p = Parser::default();
    p.feed(b"\x00\x01garbage\r\n\r\n");
    assert!(matches!(p.next_message(), Err(ParseError::BadStartLine(_))));
    let mut p = Parser::default();
    p.feed(b"HTTP/1.1 200 OK\r\n\r\n");
    assert!(matches!(p.next_message(), Err(ParseError::BadStartLine(_))));
    let mut p = Parser::default();
    p.feed(b"GET_PARAMETER rtsp://h/x RTSP/1.0\r\nCSeq: 3\r\n\r\n");
    assert!(matches!(p.next_message(), Ok(Some(Incoming::Request(_)))));
    let mut p = Parser::default();
    p.feed(b"RTSP/1.0 abc OK\r\n\r\n");
    assert!(matches!(p.next_message(), Err(ParseError::BadStartLine(_))));
}

#[test]
fn limits() {
    let mut p = Parser::default();
    p.feed(b"RTSP/1.0 200 OK\r\nX: ");
    p.feed(&vec![b'a'; 70 * 1024]);
    assert!(matches!(
        p.next_message(),
        Err(ParseError::HeaderTooLarge(_))
    ));
    let mut p = Parser::default();
    p.feed(b"RTSP/1.0 200 OK\r\nContent-Length: 1099511627776\r\n\r\n");
    assert!(matches!(p.next_message(), Err(ParseError::BodyTooLarge(_))));
    let mut p = Parser::default();
    p.feed(b"RTSP/1.0 200 OK\r\nContent-Length: -1\r\n\r\n");
    assert!(matches!(
        p.next_message(),
        Err(ParseError::BadContentLength(_))
    ));
    let mut p = Parser::default();
    let mut m = b"RTSP/1.0 200 OK\r\n".to_vec();
    for i in 0..300 {
        m.extend_from_slice(format!("X{i}: y\r\n").as_bytes());
    }
    m.extend_from_slice(b"\r\n");
    p.feed(&m);
    assert!(matches!(
        p.next_message(),
        Err(ParseError::TooManyHeaders(_))
    ));
}

/// Feeds `bytes` in pieces of `step` bytes, taking out every message as soon as it is
/// complete.
fn parse_in_pieces(p: &mut Parser, bytes: &[u8], step: usize) -> Vec<Incoming> {
    let mut out = Vec::new();
    for piece in bytes.chunks(step) {
        p.feed(piece);
        while let Some(m) = p.next_message().unwrap() {
            out.push(m);
        }
    }
    out
}

/// A response whose head is `lines` joined by `eol`, ending with a blank line, and a body.
fn big_response(headers: usize, value_len: usize, eol: &str, body: usize) -> Vec<u8> {
    let mut m = format!("RTSP/1.0 200 OK{eol}CSeq: 9{eol}");
    for i in 0..headers {
        m.push_str(&format!("X-H{i}: {}{eol}", "v".repeat(value_len)));
    }
    m.push_str(&format!("Content-Length: {body}{eol}{eol}"));
    let mut m = m.into_bytes();
    m.extend(std::iter::repeat_n(b'b', body));
    m
}

#[test]
fn a_head_dripped_byte_by_byte_is_scanned_once() {
    // Some 60 KiB of headers (under the 64 KiB limit), then a body, one byte per read: the
    // work stays a small multiple of the bytes, where a scan restarting from the first
    // byte on every read would cost about 60000^2 / 2 = 1.8e9 byte checks.
    for eol in ["\r\n", "\n"] {
        let msg = big_response(200, 290, eol, 1000);
        assert!(
            msg.len() > 60_000 && msg.len() < 64 * 1024 + 1000,
            "{}",
            msg.len()
        );
        let mut p = Parser::default();
        let out = parse_in_pieces(&mut p, &msg, 1);
        assert_eq!(out.len(), 1);
        let Incoming::Response(r) = &out[0] else {
            panic!("{:?}", out[0])
        };
        assert_eq!(r.headers.0.len(), 202);
        assert_eq!(r.body.len(), 1000);
        assert!(
            p.work() <= 8 * msg.len(),
            "{} bytes cost {} units of work",
            msg.len(),
            p.work()
        );
    }
    // A start line of 60 KiB (the probe) the same way.
    let msg = format!(
        "PLAY rtsp://h/{} RTSP/1.0\r\nCSeq: 1\r\n\r\n",
        "x".repeat(60_000)
    );
    let mut p = Parser::default();
    let out = parse_in_pieces(&mut p, msg.as_bytes(), 1);
    assert!(matches!(&out[..], [Incoming::Request(r)] if r.method == "PLAY"));
    assert!(p.work() <= 8 * msg.len(), "{}", p.work());
}

#[test]
fn many_messages_in_one_read_cost_linear_work() {
    // 16 KiB of empty interleaved frames in one read: taking each out must not move the
    // rest of the buffer (4096 frames times 8 KiB on average, if it did).
    let frames: Vec<u8> = std::iter::repeat_n([b'$', 1, 0, 0], 4096)
        .flatten()
        .collect();
    let mut p = Parser::default();
    let out = parse_in_pieces(&mut p, &frames, frames.len());
    assert_eq!(out.len(), 4096);
    assert_eq!(p.pending(), 0);
    assert!(p.work() <= 4 * frames.len(), "{}", p.work());
    // Answers and frames mixed, in reads of 1000 bytes.
    let mut mixed = Vec::new();
    for i in 0..500 {
        mixed.extend_from_slice(format!("RTSP/1.0 200 OK\r\nCSeq: {i}\r\n\r\n").as_bytes());
        mixed.extend_from_slice(&[b'$', 0, 0, 2, 7, 7]);
    }
    let mut p = Parser::default();
    let out = parse_in_pieces(&mut p, &mixed, 1000);
    assert_eq!(out.len(), 1000);
    assert!(p.work() <= 6 * mixed.len(), "{}", p.work());
}

#[test]
fn line_ends_cut_by_reads_are_found() {
    // Every way of ending lines and the head, cut at every byte, and dripped.
    let messages: [&[u8]; 6] = [
        b"RTSP/1.0 200 OK\r\nCSeq: 1\r\nSession: a\r\n\r\n",
        b"RTSP/1.0 200 OK\nCSeq: 1\nSession: a\n\n",
        b"RTSP/1.0 200 OK\r\nCSeq: 1\r\nSession: a\n\n",
        b"RTSP/1.0 200 OK\nCSeq: 1\nSession: a\r\n\r\n",
        b"RTSP/1.0 200 OK\r\nCSeq: 1\r\nSession: a\n\r\n",
        b"RTSP/1.0 200 OK\r\nCSeq: 1\r\nSession:\r\n a\r\n\t\r\n\r\n",
    ];
    for m in messages {
        let mut two = m.to_vec();
        two.extend_from_slice(b"$\x01\x00\x01z");
        two.extend_from_slice(m);
        let whole = parse_all(&two);
        assert_eq!(whole.len(), 3, "{:?}", String::from_utf8_lossy(m));
        let Incoming::Response(r) = &whole[0] else {
            panic!()
        };
        assert_eq!(
            r.headers.get("Session"),
            Some("a"),
            "{:?}",
            String::from_utf8_lossy(m)
        );
        assert_eq!(r.headers.cseq(), Some(1));
        for cut in 1..two.len() {
            let mut p = Parser::default();
            let mut out = Vec::new();
            for piece in [&two[..cut], &two[cut..]] {
                p.feed(piece);
                while let Some(msg) = p.next_message().unwrap() {
                    out.push(msg);
                }
            }
            assert_eq!(
                out,
                whole,
                "cut at {cut} of {:?}",
                String::from_utf8_lossy(m)
            );
            assert_eq!(p.pending(), 0);
        }
        let mut p = Parser::default();
        assert_eq!(parse_in_pieces(&mut p, &two, 1), whole);
    }
}

#[test]
fn short_methods_are_requests_byte_by_byte() {
    for method in ["A", "AB", "ABC", "PLAY", "PAUSE", "GET_PARAMETER", "x-Ok.1"] {
        let msg = format!("{method} rtsp://h/x RTSP/1.0\r\nCSeq: 4\r\n\r\n");
        let mut p = Parser::default();
        let out = parse_in_pieces(&mut p, msg.as_bytes(), 1);
        let [Incoming::Request(r)] = &out[..] else {
            panic!("{method}: {out:?}")
        };
        assert_eq!(r.method, method);
        assert_eq!(r.uri, "rtsp://h/x");
        assert_eq!(r.headers.cseq(), Some(4));
    }
    // A method that is no RFC 2326 token is still a framed request: it is answered 400
    // (see rtsp::server_request), the connection goes on.
    let out = parse_all(b"SET(X) rtsp://h/x RTSP/1.0\r\nCSeq: 5\r\n\r\nOPTIONS * RTSP/1.0\r\n\r\n");
    assert!(
        matches!(&out[..], [Incoming::Request(a), Incoming::Request(b)]
        if a.method == "SET(X)" && b.method == "OPTIONS")
    );
    // Several spaces between the parts, as before.
    let out = parse_all(b"PLAY  rtsp://h/x  RTSP/1.0\r\n\r\n");
    assert!(matches!(&out[..], [Incoming::Request(r)] if r.uri == "rtsp://h/x"));
}

/// How many bytes of `bytes`, fed one at a time, the parser needs to call them not RTSP.
fn rejected_after(bytes: &[u8]) -> Option<usize> {
    let mut p = Parser::default();
    for (i, b) in bytes.iter().enumerate() {
        p.feed(std::slice::from_ref(b));
        match p.next_message() {
            Ok(_) => {}
            Err(ParseError::BadStartLine(_)) => return Some(i + 1),
            Err(e) => panic!("{e}"),
        }
    }
    None
}

#[test]
fn what_cannot_be_rtsp_is_rejected_early() {
    // An HTTP answer: "HTTP/1.1" and "200" could be a method and a URI, "O" is no "RTSP/".
    assert_eq!(rejected_after(b"HTTP/1.1 200 OK\r\n\r\n"), Some(14));
    assert_eq!(rejected_after(b"GET / HTTP/1.1\r\n\r\n"), Some(7));
    // Binary: at the first byte.
    assert_eq!(rejected_after(b"\x00\x01garbage\r\n\r\n"), Some(1));
    assert_eq!(rejected_after(b"\x16\x03\x01\x02\x00"), Some(1));
    // A line that ends before it is a request.
    assert_eq!(rejected_after(b"OPTIONS\r\n\r\n"), Some(8));
    assert_eq!(rejected_after(b"OPTIONS *\r\n\r\n"), Some(10));
    assert_eq!(
        rejected_after(b"PLAY rtsp://h/x RTSX/1.0\r\n\r\n"),
        Some(20)
    );
    assert_eq!(
        rejected_after(b" PLAY rtsp://h/x RTSP/1.0\r\n\r\n"),
        Some(1)
    );
    assert_eq!(
        rejected_after(b"PLAY\trtsp://h/x RTSP/1.0\r\n\r\n"),
        Some(5)
    );
    // Responses and requests are not.
    assert_eq!(rejected_after(b"RTSP/1.0 200 OK\r\n\r\n"), None);
    assert_eq!(rejected_after(b"RTSP/2.0 200 OK\r\nCSeq: 1\r\n\r\n"), None);
    assert_eq!(rejected_after(b"ABC rtsp://h/x RTSP/1.0\r\n\r\n"), None);
    assert_eq!(rejected_after(b"RTS rtsp://h/x RTSP/1.0\r\n\r\n"), None);
    assert_eq!(
        rejected_after("PLAY rtsp://h/caf\u{e9} RTSP/1.0\r\n\r\n".as_bytes()),
        None
    );
    // A start line growing without end hits the header limit, not the probe.
    let mut p = Parser::default();
    p.feed(&vec![b'A'; 70 * 1024]);
    assert!(matches!(
        p.next_message(),
        Err(ParseError::HeaderTooLarge(_))
    ));
}

#[test]
fn srtp_keys_are_masked_in_logs() {
    let mut r = Request::new("SETUP", "rtsp://h/x/streamid=0");
    r.headers.push(
        "KeyMgmt",
        "prot=mikey; uri=\"rtsp://h/x/streamid=0\"; data=\"U0VDUkVUS0VZ\"",
    );
    r.body = b"v=0\r\nm=video 0 RTP/SAVP 96\r\na=key-mgmt:mikey U0VDUkVUS0VZ\r\na=control:streamid=0\r\n"
        .to_vec();
    let s = r.to_log_string();
    assert!(!s.contains("U0VDUkVUS0VZ"), "{s}");
    assert!(
        s.contains("a=key-mgmt:mikey <key>\r\na=control:streamid=0"),
        "{s}"
    );
    assert!(s.contains("uri=\"rtsp://h/x/streamid=0\""), "{s}");
    let mut a = Response::new(200, "OK");
    a.headers.push("KeyMgmt", "prot=mikey;data=U0VDUkVUS0VZ");
    let s = a.to_log_string();
    assert!(!s.contains("U0VDUkVUS0VZ") && s.contains("<mikey>"), "{s}");
}
