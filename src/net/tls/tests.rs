use super::dates::{der_time, utc, validity};
use super::verify::{assess, Findings, Verifier};
use super::*;
use rustls::pki_types::UnixTime;
use rustls::RootCertStore;
use std::io::Read;
use std::time::Duration;

#[test]
fn dates() {
    assert_eq!(
        utc(UnixTime::since_unix_epoch(Duration::ZERO)),
        "1970-01-01 00:00:00 UTC"
    );
    assert_eq!(
        utc(UnixTime::since_unix_epoch(Duration::from_secs(
            951_782_400 + 3661
        ))),
        "2000-02-29 01:01:01 UTC"
    );
    assert_eq!(
        utc(UnixTime::since_unix_epoch(Duration::from_secs(
            4_102_444_799
        ))),
        "2099-12-31 23:59:59 UTC"
    );
}

#[test]
fn server_names() {
    assert!(matches!(
        server_name("127.0.0.1"),
        Ok(ServerName::IpAddress(_))
    ));
    assert!(matches!(server_name("::1"), Ok(ServerName::IpAddress(_))));
    assert!(matches!(
        server_name("cam.example"),
        Ok(ServerName::DnsName(_))
    ));
    assert!(server_name("bad name").is_err());
}

struct Ca {
    cert: rcgen::Certificate,
    key: rcgen::KeyPair,
}

fn ca(name: &str) -> Ca {
    let key = rcgen::KeyPair::generate().unwrap();
    let mut p = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
    p.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    p.distinguished_name.push(rcgen::DnType::CommonName, name);
    Ca {
        cert: p.self_signed(&key).unwrap(),
        key,
    }
}

fn leaf(
    ca: &Ca,
    names: &[&str],
    years: Option<(i32, i32)>,
) -> (CertificateDer<'static>, rcgen::KeyPair) {
    let key = rcgen::KeyPair::generate().unwrap();
    let mut p =
        rcgen::CertificateParams::new(names.iter().map(|n| n.to_string()).collect::<Vec<_>>())
            .unwrap();
    if let Some((a, b)) = years {
        p.not_before = rcgen::date_time_ymd(a, 1, 1);
        p.not_after = rcgen::date_time_ymd(b, 1, 1);
    }
    let c = p.signed_by(&key, &ca.cert, &ca.key).unwrap();
    (c.der().clone(), key)
}

fn roots(ca: &Ca) -> Anchors {
    anchors_of(ca.cert.der().clone())
}

/// As if `cert` were the one certificate of tls-ca-file.
fn anchors_of(cert: CertificateDer<'static>) -> Anchors {
    let mut roots = RootCertStore::empty();
    roots.add(cert.clone()).unwrap();
    Anchors {
        roots,
        pinned: vec![cert],
        source: "test".into(),
    }
}

fn check(anchors: &Anchors, cert: &CertificateDer<'_>, host: &str) -> Findings {
    assess(
        anchors,
        cert,
        &[],
        &server_name(host).unwrap(),
        UnixTime::now(),
        &rustls::crypto::ring::default_provider(),
    )
}

#[test]
fn a_good_chain_has_no_findings() {
    let ca = ca("test CA");
    let (cert, _) = leaf(&ca, &["cam.example", "127.0.0.1"], None);
    assert_eq!(
        check(&roots(&ca), &cert, "cam.example").flags,
        Flags::empty()
    );
    assert_eq!(check(&roots(&ca), &cert, "127.0.0.1").flags, Flags::empty());
}

/// webpki reports only the first problem; every one is found and named.
#[test]
fn every_problem_is_found() {
    let ours = ca("test CA");
    let other = ca("someone else");
    let ca = ours;
    let (cert, _) = leaf(&ca, &["cam.example"], Some((2020, 2021)));
    let f = check(&roots(&other), &cert, "other.example");
    assert_eq!(
        f.flags,
        Flags::EXPIRED | Flags::UNKNOWN_CA | Flags::BAD_IDENTITY,
        "{f:?}"
    );
    let all = f.describe(Flags::all());
    assert!(all.contains("expired on 2021-01-01 00:00:00 UTC"), "{all}");
    assert!(all.contains("unknown issuer"), "{all}");
    assert!(
        all.contains("not valid for other.example (it is for cam.example)"),
        "{all}"
    );
    // Only what the mask keeps is described.
    assert_eq!(
        f.describe(Flags::BAD_IDENTITY),
        "host name mismatch: the certificate is not valid for other.example (it is for cam.example)"
    );

    let (future, _) = leaf(&ca, &["cam.example"], Some((2090, 2091)));
    let f = check(&roots(&ca), &future, "cam.example");
    assert_eq!(f.flags, Flags::NOT_ACTIVATED, "{f:?}");
    // An IP address is checked against IP SANs only, never DNS names.
    let (cert, _) = leaf(&ca, &["cam.example"], None);
    assert_eq!(
        check(&roots(&ca), &cert, "10.0.0.1").flags,
        Flags::BAD_IDENTITY
    );
    assert_eq!(
        check(&roots(&ca), &cert, "cam.example").flags,
        Flags::empty()
    );
}

/// The server thread: the plaintext it decrypted and the application-data records it saw.
type TestServer = std::thread::JoinHandle<(Vec<u8>, usize)>;

/// `openssl req -x509` makes self-signed server certificates that say CA:TRUE, which webpki
/// refuses as a server certificate: trusted as themselves when given in tls-ca-file.
#[test]
fn self_signed_ca_certificates_are_trusted_as_themselves() {
    let self_signed = |years: Option<(i32, i32)>| {
        let key = rcgen::KeyPair::generate().unwrap();
        let mut p = rcgen::CertificateParams::new(vec!["cam.example".to_string()]).unwrap();
        p.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        if let Some((a, b)) = years {
            p.not_before = rcgen::date_time_ymd(a, 1, 1);
            p.not_after = rcgen::date_time_ymd(b, 1, 1);
        }
        p.self_signed(&key).unwrap().der().clone()
    };
    let cert = self_signed(None);
    let trusted = anchors_of(cert.clone());
    assert_eq!(check(&trusted, &cert, "cam.example").flags, Flags::empty());
    assert_eq!(
        check(&trusted, &cert, "other.example").flags,
        Flags::BAD_IDENTITY
    );
    let f = check(&roots(&ca("another CA")), &cert, "cam.example");
    assert_eq!(f.flags, Flags::UNKNOWN_CA, "{f:?}");
    assert!(f.describe(Flags::all()).contains("self-signed"), "{f:?}");
    // Its own dates still count.
    let old = self_signed(Some((2020, 2021)));
    let f = check(&anchors_of(old.clone()), &old, "cam.example");
    assert_eq!(f.flags, Flags::EXPIRED, "{f:?}");
    assert!(f
        .describe(Flags::all())
        .contains("expired on 2021-01-01 00:00:00 UTC"));
    let future = self_signed(Some((2090, 2091)));
    assert_eq!(
        check(&anchors_of(future.clone()), &future, "cam.example").flags,
        Flags::NOT_ACTIVATED
    );
}

#[test]
fn der_validity_dates() {
    let ca = ca("test CA");
    for (a, b) in [(1999, 2049), (2020, 2021), (2050, 2100)] {
        let (cert, _) = leaf(&ca, &["x.example"], Some((a, b)));
        let (nb, na) = validity(cert.as_ref()).unwrap();
        let year = |t: u64| utc(UnixTime::since_unix_epoch(Duration::from_secs(t)));
        assert_eq!(year(nb), format!("{a}-01-01 00:00:00 UTC"));
        assert_eq!(year(na), format!("{b}-01-01 00:00:00 UTC"));
    }
    assert_eq!(validity(b"\x30\x03\x02\x01"), None);
    assert_eq!(der_time(0x17, b"491231235959Z"), Some(2_524_607_999));
    // UTCTime years 50-99 are 19xx: before 1970 is out of range here.
    assert_eq!(der_time(0x17, b"500101000000Z"), None);
    assert_eq!(der_time(0x18, b"20500101000000Z"), Some(2_524_608_000));
}

#[test]
fn der_time_takes_ascii_digits_only_and_never_panics() {
    // Multi-byte UTF-8 of the right byte length: slicing the text at byte offsets cut
    // into a character and panicked.
    for (tag, bad) in [
        (0x17, "2\u{e9}010100000Z"),
        (0x17, "24\u{e9}01000000Z"),
        (0x17, "2401\u{e9}100000Z"),
        (0x17, "240110000\u{e9}0Z"),
        (0x18, "202\u{e9}010100000Z"),
        (0x18, "2024\u{e9}01000000Z"),
        (0x18, "2401\u{e9}10000000Z"),
        (0x17, "\u{1f600}01010000Z"),
    ] {
        let n = if tag == 0x17 { 13 } else { 15 };
        assert_eq!(bad.len(), n, "{bad:?} has the length of a good one");
        assert_eq!(der_time(tag, bad.as_bytes()), None, "{bad:?}");
    }
    // Bytes that are no UTF-8 at all, signs and spaces that parse::<i64> took as numbers.
    assert_eq!(der_time(0x17, b"24\xff\xfe01000000Z"), None);
    assert_eq!(der_time(0x17, b"24+101000000Z"), None);
    assert_eq!(der_time(0x17, b"24-101000000Z"), None);
    assert_eq!(der_time(0x18, b"+0240101000000Z"), None);
    assert_eq!(der_time(0x17, b"24 101000000Z"), None);
    // Fields out of range, lengths and tags that do not fit.
    assert_eq!(der_time(0x17, b"241301000000Z"), None);
    assert_eq!(der_time(0x17, b"240100000000Z"), None);
    assert_eq!(der_time(0x17, b"240132000000Z"), None);
    assert_eq!(der_time(0x17, b"240101240000Z"), None);
    assert_eq!(der_time(0x17, b"240101006000Z"), None);
    assert_eq!(der_time(0x17, b"240101000061Z"), None);
    assert_eq!(der_time(0x17, b"2401010000Z"), None);
    assert_eq!(der_time(0x18, b"240101000000Z"), None);
    assert_eq!(der_time(0x17, b"240101000000"), None);
    assert_eq!(der_time(0x13, b"240101000000Z"), None);
    assert_eq!(der_time(0x17, b""), None);
    // And good ones still read.
    assert_eq!(der_time(0x17, b"700101000000Z"), Some(0));
    assert_eq!(der_time(0x17, b"240229123456Z"), Some(1_709_210_096));
    assert_eq!(der_time(0x18, b"20240229123456Z"), Some(1_709_210_096));
}

/// A rustls server on a loopback socket, decrypting what the wire sends; the raw bytes
/// are parsed into TLS records to count them.
fn tls_pair(
    rt: &tokio::runtime::Runtime,
) -> (
    Arc<TlsWire>,
    TlsReader,
    TestServer,
    std::sync::mpsc::Sender<usize>,
) {
    let ca = ca("test CA");
    let (cert, key) = leaf(&ca, &["127.0.0.1"], None);
    let server_cfg = rustls::ServerConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .unwrap()
    .with_no_client_auth()
    .with_single_cert(
        vec![cert],
        rustls::pki_types::PrivateKeyDer::try_from(key.serialize_der()).unwrap(),
    )
    .unwrap();
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    // Blocking server on a thread: std sockets, rustls' own I/O helpers.
    // The server reads once told how many plaintext bytes to wait for (or to the end).
    let (go_tx, go_rx) = std::sync::mpsc::channel::<usize>();
    let server = std::thread::spawn(move || {
        let (mut sock, _) = listener.accept().unwrap();
        socket2::SockRef::from(&sock)
            .set_recv_buffer_size(64 * 1024)
            .unwrap();
        let mut conn = rustls::ServerConnection::new(Arc::new(server_cfg)).unwrap();
        while conn.is_handshaking() {
            conn.complete_io(&mut sock).unwrap();
        }
        // Not reading until the client queued everything: its socket fills up.
        let want = go_rx.recv().unwrap_or(usize::MAX);
        sock.set_read_timeout(Some(Duration::from_secs(10)))
            .unwrap();
        // From here read the raw records ourselves, feeding rustls.
        let mut raw = Vec::new();
        let mut plain = Vec::new();
        let mut buf = vec![0u8; 64 * 1024];
        while plain.len() < want {
            let n = sock.read(&mut buf).unwrap_or(0);
            if n == 0 {
                break;
            }
            raw.extend_from_slice(&buf[..n]);
            let mut rd = &buf[..n];
            while !rd.is_empty() {
                conn.read_tls(&mut rd).unwrap();
                let st = conn.process_new_packets().unwrap();
                let mut p = vec![0u8; st.plaintext_bytes_to_read()];
                conn.reader().read_exact(&mut p).unwrap();
                plain.extend_from_slice(&p);
                if st.peer_has_closed() {
                    break;
                }
            }
        }
        let mut records = 0;
        let mut at = 0;
        while at + 5 <= raw.len() {
            if raw[at] == 23 {
                records += 1;
            }
            at += 5 + u16::from_be_bytes([raw[at + 3], raw[at + 4]]) as usize;
        }
        (plain, records)
    });
    let mut roots = RootCertStore::empty();
    roots.add(ca.cert.der().clone()).unwrap();
    let cfg = client_config_with_roots(roots);
    let tcp = rt.block_on(tokio::net::TcpStream::connect(addr)).unwrap();
    socket2::SockRef::from(&tcp)
        .set_send_buffer_size(64 * 1024)
        .unwrap();
    let tls = rt
        .block_on(
            tokio_rustls::TlsConnector::from(cfg).connect(server_name("127.0.0.1").unwrap(), tcp),
        )
        .unwrap();
    let (tcp, conn) = tls.into_inner();
    let (rd, wr) = tcp.into_split();
    let wire = TlsWire::new(conn, wr);
    let reader = TlsReader::new(rd, wire.clone());
    (wire, reader, server, go_tx)
}

fn client_config_with_roots(roots: RootCertStore) -> Arc<ClientConfig> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    Arc::new(
        ClientConfig::builder_with_provider(provider.clone())
            .with_safe_default_protocol_versions()
            .unwrap()
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(Verifier {
                anchors: Anchors {
                    roots,
                    pinned: Vec::new(),
                    source: "test".into(),
                },
                flags: Flags::VALIDATE_ALL,
                accept: None,
                provider,
            }))
            .with_no_client_auth(),
    )
}

/// One write of many frames' bytes becomes a few 16 KiB records, not one per frame; what
/// the socket did not take stays sealed in rustls until the writer flushes it, and every
/// byte arrives once, in order.
#[test]
fn writes_are_batched_into_full_records_and_nothing_is_stranded() {
    use crate::net::queue::{write_all, OutFrame, SendQueue, Wire};
    gst::init().unwrap();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let (wire, _reader, server, go) = tls_pair(&rt);
    let q = Arc::new(SendQueue::new(8 << 20));
    let w = Wire::Plain(crate::net::socket::PlainWire::Tls(wire.clone()));
    q.set_wire(Some(w.clone()));
    // 2000 frames of 1000 bytes (2 MB) queued at once: direct writes until the socket is
    // full, sealed records waiting in rustls, the rest for the writer.
    let mut expected = Vec::new();
    let frames: Vec<OutFrame> = (0..2000u32)
        .map(|i| {
            let mut pkt = vec![0x80u8, 96];
            pkt.extend_from_slice(&i.to_be_bytes());
            pkt.resize(996, (i % 251) as u8);
            expected.extend_from_slice(&[b'$', 0, 0x03, 0xe4]);
            expected.extend_from_slice(&pkt);
            OutFrame::rtp(gst::Buffer::from_slice(pkt), 0, None).unwrap()
        })
        .collect();
    q.push_all(frames).unwrap();
    // The socket is full: sealed records wait in rustls, the rest in the queue.
    assert!(
        wire.backlog(),
        "the socket took everything: the test proves nothing"
    );
    assert!(q.level() > 0);
    go.send(usize::MAX).unwrap();
    let writer = {
        let q = q.clone();
        rt.spawn(async move {
            let mut batch = Vec::new();
            while q.take(&mut batch).await.is_some() {
                write_all(&w, &batch, Duration::from_secs(5)).await.unwrap();
                q.written(&mut batch);
            }
            q.set_wire(None);
            w.close(Duration::from_secs(5)).await;
        })
    };
    q.close();
    rt.block_on(writer).unwrap();
    let (plain, records) = server.join().unwrap();
    assert_eq!(plain.len(), expected.len());
    assert!(plain == expected, "bytes differ");
    // 2 MB in 16 KiB records is 123; allow for partial records at batch edges.
    assert!(records < 300, "{records} records for 2000 frames");
    println!("2000 frames, {} bytes: {records} TLS records", plain.len());
}

/// A direct write that leaves sealed records in rustls (the socket filled up) and then no
/// more data: the writer task must send them when the socket drains, with nothing queued.
#[test]
fn sealed_bytes_left_by_a_direct_write_are_flushed_by_the_writer() {
    use crate::net::queue::{write_all, SendQueue, Wire};
    gst::init().unwrap();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let (wire, _reader, server, go) = tls_pair(&rt);
    // Direct writes until one is sealed whole but not all sent: the socket is full, the
    // rest waits in rustls, nothing is queued.
    let chunk = vec![7u8; 1000];
    let mut sent = 0;
    for _ in 0..20_000 {
        sent += wire.try_write(&chunk).unwrap();
        if wire.backlog() {
            break;
        }
    }
    assert!(wire.backlog(), "the socket never filled");
    let q = Arc::new(SendQueue::new(8 << 20));
    let w = Wire::Plain(crate::net::socket::PlainWire::Tls(wire.clone()));
    // The queue sees the backlog (as after a producer's direct write) and wakes the writer.
    q.set_wire(Some(w.clone()));
    assert_eq!(q.level(), 0, "bytes queued: the case is not the one tested");
    let writer = {
        let q = q.clone();
        rt.spawn(async move {
            let mut batch = Vec::new();
            while q.take(&mut batch).await.is_some() {
                write_all(&w, &batch, Duration::from_secs(5)).await.unwrap();
                q.written(&mut batch);
            }
        })
    };
    // The queue stays open: only the writer's flush can deliver the rest.
    go.send(sent).unwrap();
    let (plain, _) = server.join().unwrap();
    assert_eq!(plain.len(), sent, "sealed bytes stranded in rustls");
    assert!(!wire.backlog());
    q.cancel();
    rt.block_on(writer).unwrap();
}

#[test]
fn ca_file_errors_name_the_file() {
    let e = load_roots(Some(std::path::Path::new("/nonexistent/ca.pem"))).unwrap_err();
    assert!(e.contains("/nonexistent/ca.pem"), "{e}");
    let dir = std::env::temp_dir().join(format!("rtspannounce-tls-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let empty = dir.join("empty.pem");
    std::fs::write(&empty, "no certificates here\n").unwrap();
    let e = load_roots(Some(&empty)).unwrap_err();
    assert!(e.contains("no usable CA certificate"), "{e}");
    let _ = std::fs::remove_dir_all(&dir);
}
