use super::*;
use std::sync::Arc;

fn buf(bytes: &[u8]) -> gst::Buffer {
    gst::Buffer::from_slice(bytes.to_vec())
}

/// A runtime for driving the writer's side by hand.
fn current_thread() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
}

/// A connected loopback pair on `rt`: the accepted side, and the client's write half as the
/// queue's wire (nothing is read on the client side).
fn tcp_pair(rt: &tokio::runtime::Runtime) -> (tokio::net::TcpStream, Wire) {
    let listener = rt
        .block_on(tokio::net::TcpListener::bind("127.0.0.1:0"))
        .unwrap();
    let client = rt
        .block_on(tokio::net::TcpStream::connect(
            listener.local_addr().unwrap(),
        ))
        .unwrap();
    let (server, _) = rt.block_on(listener.accept()).unwrap();
    let (_rd, wr) = client.into_split();
    let wire = Wire::Plain(crate::net::socket::PlainWire::Tcp(Arc::new(wr)));
    (server, wire)
}

fn wire(frames: &[OutFrame]) -> Vec<u8> {
    let mut out = Vec::new();
    for f in frames {
        f.append_to(&mut out).unwrap();
    }
    out
}

#[test]
fn frame_layout_and_pt_rewrite() {
    gst::init().unwrap();
    let pkt = [0x80u8, 0xe0, 1, 2, 3];
    let f = OutFrame::rtp(buf(&pkt), 2, None).unwrap();
    assert_eq!(f.len(), 9);
    assert_eq!(wire(&[f]), [b'$', 2, 0, 5, 0x80, 0xe0, 1, 2, 3]);

    // PT 96 -> 97, marker bit kept.
    let f = OutFrame::rtp(buf(&pkt), 3, Some(97)).unwrap();
    assert_eq!(f.len(), 9);
    assert_eq!(wire(&[f]), [b'$', 3, 0, 5, 0x80, 0x80 | 97, 1, 2, 3]);

    assert_eq!(
        OutFrame::rtp(buf(&vec![0u8; 70000]), 0, None).err(),
        Some(70000)
    );
}

#[test]
fn multi_memory_buffers_are_copied_memory_by_memory() {
    gst::init().unwrap();
    // Header split over memories of 1, 3 and 2 bytes, as payloaders append payloads.
    let mut b = gst::Buffer::new();
    {
        let b = b.get_mut().unwrap();
        b.append_memory(gst::Memory::from_slice(vec![0x80u8]));
        b.append_memory(gst::Memory::from_slice(vec![0x60u8, 7, 8]));
        b.append_memory(gst::Memory::from_slice(vec![9u8, 10]));
    }
    let plain = OutFrame::rtp(b.clone(), 0, None).unwrap();
    let remapped = OutFrame::rtp(b, 1, Some(100)).unwrap();
    assert_eq!(plain.len() + remapped.len(), 20);
    assert_eq!(
        wire(&[plain, remapped]),
        [b'$', 0, 0, 6, 0x80, 0x60, 7, 8, 9, 10, b'$', 1, 0, 6, 0x80, 100, 7, 8, 9, 10]
    );
}

#[test]
fn backpressure_and_cancel() {
    gst::init().unwrap();
    let q = Arc::new(SendQueue::new(10));
    q.push_control(vec![0; 20]).unwrap();
    let q2 = q.clone();
    let t = std::thread::spawn(move || {
        q2.push_control(vec![1])
            .and(q2.push_all([OutFrame::Control(vec![2; 4])]))
    });
    // The producer is blocked on a full queue until cancel wakes it.
    q.cancel();
    assert_eq!(t.join().unwrap(), Err(QueueError::Cancelled));
    let q = SendQueue::new(10);
    q.fail("gone".into());
    assert_eq!(
        q.push_all([OutFrame::Control(vec![1])]),
        Err(QueueError::Failed("gone".into()))
    );
}

#[test]
fn writer_drains_then_ends_on_close() {
    gst::init().unwrap();
    let rt = current_thread();
    let q = SendQueue::new(1000);
    q.push_control(b"a".to_vec()).unwrap();
    q.push_control(b"b".to_vec()).unwrap();
    q.close();
    rt.block_on(async {
        let mut out = Vec::new();
        assert_eq!(q.take(&mut out).await, Some(false));
        assert_eq!(out, b"ab");
        // The batch counts against the bound until it is written.
        assert_eq!(q.level(), 2);
        q.written(&mut out);
        assert!(out.is_empty());
        assert_eq!(q.take(&mut out).await, None);
    });
    assert_eq!(q.level(), 0);
}

#[test]
fn fail_after_control_keeps_only_control_messages() {
    gst::init().unwrap();
    let q = SendQueue::new(1 << 20);
    q.push_all([OutFrame::rtp(buf(&[0x80, 96, 1, 2]), 0, None).unwrap()])
        .unwrap();
    q.push_control(b"RTSP/1.0 200 OK\r\n\r\n".to_vec()).unwrap();
    q.push_all([OutFrame::rtp(buf(&[0x80, 96, 3, 4]), 0, None).unwrap()])
        .unwrap();
    assert!(q.has_media());
    q.fail_after_control("server TEARDOWN".into());
    assert!(!q.has_media());
    assert_eq!(
        q.push_control(vec![1]),
        Err(QueueError::Failed("server TEARDOWN".into()))
    );
    let rt = current_thread();
    rt.block_on(async {
        let mut out = Vec::new();
        assert_eq!(q.take(&mut out).await, Some(false));
        assert_eq!(out, b"RTSP/1.0 200 OK\r\n\r\n");
    });
}

#[test]
fn trim_keeps_the_usual_size_and_gives_back_a_backlog() {
    let mut peak = 0;
    let mut buf: Vec<u8> = Vec::with_capacity(128 * 1024);
    // A video list of 100 KB now and then, small audio packets between: no shrinking.
    for _ in 0..20 {
        trim(&mut buf, 100_000, &mut peak);
        trim(&mut buf, 400, &mut peak);
        assert!(buf.capacity() >= 128 * 1024);
    }
    // A 4 MB backlog passes; then only small writes: the capacity goes back down.
    buf.reserve(4 << 20);
    trim(&mut buf, 4 << 20, &mut peak);
    assert!(buf.capacity() >= 4 << 20);
    for _ in 0..200 {
        trim(&mut buf, 6_000, &mut peak);
    }
    assert!(buf.capacity() <= 64 * 1024, "{}", buf.capacity());
}

/// Producers on several threads write directly while the socket has room and leave the rest
/// to the writer when it fills: the bytes arrive complete and in queue order per producer.
#[test]
fn direct_writes_and_writer_keep_order() {
    gst::init().unwrap();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .unwrap();
    let (server, wire) = tcp_pair(&rt);
    let q = Arc::new(SendQueue::new(64 * 1024));
    q.set_wire(Some(wire.clone()));
    let writer = {
        let q = q.clone();
        rt.spawn(async move {
            let mut batch = Vec::new();
            while q.take(&mut batch).await.is_some() {
                write_all(&wire, &batch, Duration::from_secs(5))
                    .await
                    .unwrap();
                q.written(&mut batch);
            }
            q.set_wire(None);
        })
    };
    const PER_THREAD: u32 = 20_000;
    let reader = rt.spawn(async move {
        use tokio::io::AsyncReadExt;
        let mut server = server;
        let mut v = Vec::new();
        // Read slowly at first so the socket fills and the writer takes over.
        let mut chunk = vec![0u8; 4096];
        for _ in 0..50 {
            let n = server.read(&mut chunk).await.unwrap();
            v.extend_from_slice(&chunk[..n]);
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
        server.read_to_end(&mut v).await.unwrap();
        v
    });
    let producers: Vec<_> = (0..2u8)
        .map(|ch| {
            let q = q.clone();
            std::thread::spawn(move || {
                for i in 0..PER_THREAD {
                    let mut pkt = vec![0x80u8, 96];
                    pkt.extend_from_slice(&i.to_be_bytes());
                    pkt.resize(200 + (i % 1200) as usize, ch);
                    q.push_all([OutFrame::rtp(buf(&pkt), ch * 2, None).unwrap()])
                        .unwrap();
                }
            })
        })
        .collect();
    for p in producers {
        p.join().unwrap();
    }
    q.close();
    rt.block_on(writer).unwrap();
    let bytes = rt.block_on(reader).unwrap();
    let mut next = [0u32; 2];
    let mut at = 0;
    while at < bytes.len() {
        assert_eq!(bytes[at], b'$');
        let ch = bytes[at + 1] / 2;
        let len = u16::from_be_bytes([bytes[at + 2], bytes[at + 3]]) as usize;
        let pkt = &bytes[at + 4..at + 4 + len];
        let seq = u32::from_be_bytes(pkt[2..6].try_into().unwrap());
        assert_eq!(seq, next[ch as usize], "channel {ch}");
        assert_eq!(len, 200 + (seq % 1200) as usize);
        assert!(pkt[6..].iter().all(|b| *b == ch));
        next[ch as usize] += 1;
        at += 4 + len;
    }
    assert_eq!(next, [PER_THREAD; 2]);
}

#[test]
fn packetized_frames_into_an_empty_queue_are_moved_not_copied() {
    gst::init().unwrap();
    let rt = current_thread();
    let au = |b: u8| OutFrame::Wire {
        bytes: vec![b'$', 0, 0, 1, b],
        packets: 1,
        last: (b as u16, 0),
    };
    let q = SendQueue::new(1000);
    let mut frames = vec![au(1), au(2), OutFrame::Control(b"c".to_vec()), au(3)];
    let OutFrame::Wire { bytes, .. } = &frames[0] else {
        unreachable!()
    };
    let at = bytes.as_ptr();
    q.push_all_until(&mut frames, &AtomicBool::new(false))
        .unwrap();
    // The first frame's allocation is now the queue's; the others queued behind it are copied
    // and keep their bytes. What a frame says about its last packet survives the move.
    assert_eq!(frames[0].len(), 0);
    assert_eq!(frames[0].last_seq_ts(), Some((1, 0)));
    assert_eq!(frames[1].len(), 5);
    assert_eq!(frames[3].len(), 5);
    q.close();
    rt.block_on(async {
        let mut out = Vec::new();
        assert_eq!(q.take(&mut out).await, Some(true));
        assert_eq!(out.as_ptr(), at);
        assert_eq!(out, b"$\0\0\x01\x01$\0\0\x01\x02c$\0\0\x01\x03");
        q.written(&mut out);
        assert_eq!(q.take(&mut out).await, None);
    });
}

#[test]
fn an_idle_writer_frees_its_batch_buffer_after_a_run_of_direct_writes() {
    gst::init().unwrap();
    let rt = current_thread();
    let (_server, wr) = tcp_pair(&rt);
    let q = SendQueue::new(1 << 20).with_release_after(4);
    rt.block_on(async {
        // A burst, before the socket is there: the writer's batch grows to hold it.
        q.push_control(vec![7; 200_000]).unwrap();
        let mut out = Vec::new();
        assert_eq!(q.take(&mut out).await, Some(false));
        q.written(&mut out);
        assert!(out.capacity() >= 200_000);
        q.set_wire(Some(wr));
        // Three direct writes: the writer keeps its buffer (a burst may come back).
        for _ in 0..3 {
            q.push_control(vec![1; 100]).unwrap();
        }
        let _ = tokio::time::timeout(Duration::from_millis(50), q.take(&mut out)).await;
        assert!(out.capacity() >= 200_000);
        // The fourth in a row: it is freed the next time the writer looks.
        q.push_control(vec![1; 100]).unwrap();
        assert_eq!(q.level(), 0, "written directly");
        let _ = tokio::time::timeout(Duration::from_millis(50), q.take(&mut out)).await;
        assert_eq!(out.capacity(), 0);
    });
}
