//! Port pairs, sends to the right ports, RTCP back, on whichever send path the build uses.

use super::*;

fn frame(payload: &[u8], channel: u8, pt: Option<u8>) -> OutFrame {
    OutFrame::rtp(gst::Buffer::from_slice(payload.to_vec()), channel, pt).unwrap()
}

#[test]
fn pairs_are_even_and_adjacent() {
    let local: SocketAddr = "127.0.0.1:0".parse().unwrap();
    let mut held = Vec::new();
    for _ in 0..4 {
        let (rtp, rtcp) = bind_pair(local, None).unwrap();
        let p = rtp.local_addr().unwrap().port();
        assert_eq!(p % 2, 0);
        assert_eq!(rtcp.local_addr().unwrap().port(), p + 1);
        held.push((rtp, rtcp));
    }
    // A range: the first free pair in it, then the next.
    let (a, _b) = bind_pair(local, None).unwrap();
    let base = a.local_addr().unwrap().port();
    drop(a);
    drop(_b);
    let (r1, _c1) = bind_pair(local, Some((base - 1, base + 3))).unwrap();
    assert_eq!(r1.local_addr().unwrap().port(), base);
    let (r2, _c2) = bind_pair(local, Some((base - 1, base + 3))).unwrap();
    assert_eq!(r2.local_addr().unwrap().port(), base + 2);
    let e = bind_pair(local, Some((base, base + 3))).unwrap_err();
    assert!(e.to_string().contains("port-range"), "{e}");
}

#[test]
fn ipv6_loopback_pair_and_send() {
    gst::init().unwrap();
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let local: SocketAddr = "[::1]:0".parse().unwrap();
    let srv_rtp = UdpSocket::bind(local).unwrap();
    let srv_rtcp = UdpSocket::bind(local).unwrap();
    srv_rtp
        .set_read_timeout(Some(Duration::from_secs(5)))
        .unwrap();
    let session = rt.block_on(async {
        let (rtp, rtcp) = bind_pair(local, None).unwrap();
        assert!(rtp.local_addr().unwrap().is_ipv6());
        UdpSession::new(
            vec![Arc::new(
                UdpTrack::new(
                    rtp,
                    rtcp,
                    srv_rtp.local_addr().unwrap(),
                    srv_rtcp.local_addr().unwrap(),
                )
                .unwrap(),
            )],
            false,
        )
        .unwrap()
    });
    session.send(&[frame(&[0x80, 96, 0, 1], 0, None)]).unwrap();
    let mut buf = [0u8; 16];
    let (n, from) = srv_rtp.recv_from(&mut buf).unwrap();
    assert_eq!(&buf[..n], &[0x80, 96, 0, 1]);
    assert_eq!(from.port(), session.tracks[0].client_ports.0);
}

#[test]
fn source_is_honoured_when_usable() {
    let peer: IpAddr = "127.0.0.1".parse().unwrap();
    assert_eq!(destination(peer, None), peer);
    assert_eq!(
        destination(peer, Some("127.0.0.2")),
        "127.0.0.2".parse::<IpAddr>().unwrap()
    );
    assert_eq!(destination(peer, Some("::1")), peer);
    assert_eq!(destination(peer, Some("0.0.0.0")), peer);
    assert_eq!(destination(peer, Some("server.example")), peer);
}

#[test]
fn batches_reach_the_right_ports_with_pt_rewrite() {
    gst::init().unwrap();
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let local: SocketAddr = "127.0.0.1:0".parse().unwrap();
    // The "server": two RTP and two RTCP sockets.
    let srv: Vec<UdpSocket> = (0..4).map(|_| UdpSocket::bind(local).unwrap()).collect();
    for s in &srv {
        s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    }
    let addr = |i: usize| srv[i].local_addr().unwrap();
    let session = rt.block_on(async {
        let t0 = bind_pair(local, None).unwrap();
        let t1 = bind_pair(local, None).unwrap();
        UdpSession::new(
            vec![
                Arc::new(UdpTrack::new(t0.0, t0.1, addr(0), addr(1)).unwrap()),
                Arc::new(UdpTrack::new(t1.0, t1.1, addr(2), addr(3)).unwrap()),
            ],
            true,
        )
        .unwrap()
    });
    let mut frames: Vec<OutFrame> = (0..40u8)
        .map(|i| frame(&[0x80, 96, 0, i, 9, 9], 0, None))
        .collect();
    frames.push(OutFrame::Control(vec![b'$', 3, 0, 4, 0x80, 200, 0, 0]));
    frames.push(frame(&[0x80, 0xe0, 7, 7], 2, Some(97)));
    session.send(&frames).unwrap();
    let mut buf = [0u8; 64];
    for i in 0..40u8 {
        let n = srv[0].recv(&mut buf).unwrap();
        assert_eq!(&buf[..n], &[0x80, 96, 0, i, 9, 9]);
    }
    let n = srv[3].recv(&mut buf).unwrap();
    assert_eq!(&buf[..n], &[0x80, 200, 0, 0]);
    let n = srv[2].recv(&mut buf).unwrap();
    assert_eq!(&buf[..n], &[0x80, 0x80 | 97, 7, 7]);
    // RTCP from the server reaches the handler with the track's RTCP channel.
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
    let client_rtcp = session.tracks[1].client_ports.1;
    rt.block_on(async {
        session.start_readers(Arc::new(move |ch, data| {
            let _ = tx.send((ch, data.to_vec()));
        }));
    });
    srv[3]
        .send_to(&[0x80, 201, 0, 1, 1, 2, 3, 4], ("127.0.0.1", client_rtcp))
        .unwrap();
    let got = rt.block_on(async {
        tokio::time::timeout(Duration::from_secs(5), rx.recv())
            .await
            .unwrap()
            .unwrap()
    });
    assert_eq!(got, (3, vec![0x80, 201, 0, 1, 1, 2, 3, 4]));
    session.close();
    assert_eq!(session.send(&frames), Err(UdpError::Cancelled));
}

/// One track sending to a server socket on loopback.
fn one_track(block: bool) -> (Arc<UdpSession>, UdpSocket) {
    let local: SocketAddr = "127.0.0.1:0".parse().unwrap();
    let srv = UdpSocket::bind(local).unwrap();
    srv.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let session = rt.block_on(async {
        let (rtp, rtcp) = bind_pair(local, None).unwrap();
        let to = srv.local_addr().unwrap();
        UdpSession::new(
            vec![Arc::new(UdpTrack::new(rtp, rtcp, to, to).unwrap())],
            block,
        )
        .unwrap()
    });
    (session, srv)
}

#[test]
fn multi_memory_packets_go_out_whole_and_too_many_memories_are_dropped() {
    gst::init().unwrap();
    for block in [true, false] {
        let (session, srv) = one_track(block);
        // The payload type rewrite skips two bytes that span the first memory's end.
        let mut b = gst::Buffer::new();
        for part in [&[0x80u8, 96, 0][..], &[1, 2], &[3, 4, 5]] {
            b.get_mut()
                .unwrap()
                .append_memory(gst::Memory::from_slice(part.to_vec()));
        }
        let rewritten = OutFrame::rtp(b, 0, Some(100)).unwrap();
        // Nine memories do not fit one packet's iovecs: dropped and counted, never sent by halves.
        let mut many = gst::Buffer::new();
        for i in 0..9u8 {
            many.get_mut()
                .unwrap()
                .append_memory(gst::Memory::from_slice(vec![0x80, i]));
        }
        let many = OutFrame::rtp(many, 0, None).unwrap();
        let last = frame(&[0x80, 96, 0, 9], 0, None);
        session.send(&[rewritten, many, last]).unwrap();
        let mut buf = [0u8; 64];
        let n = srv.recv(&mut buf).unwrap();
        assert_eq!(&buf[..n], &[0x80, 100, 0, 1, 2, 3, 4, 5], "block={block}");
        let n = srv.recv(&mut buf).unwrap();
        assert_eq!(&buf[..n], &[0x80, 96, 0, 9], "block={block}");
        assert_eq!(session.tracks[0].dropped.load(Ordering::Relaxed), 1);
    }
}

#[test]
fn a_packet_no_datagram_can_carry_is_an_error() {
    gst::init().unwrap();
    let (session, _srv) = one_track(true);
    let mut big = vec![0u8; 65_508];
    big[0] = 0x80;
    let f = OutFrame::Rtp {
        head: [b'$', 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0],
        head_len: 4,
        buffer: gst::Buffer::from_slice(big),
        skip: 0,
    };
    assert_eq!(session.send(&[f]), Err(UdpError::TooLarge(65_508)));
    assert_eq!(session.tracks[0].dropped.load(Ordering::Relaxed), 0);
}
