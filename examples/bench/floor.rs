//! The floor: what the kernel alone costs to move the same interleaved frames over loopback.
//!
//! `--dump-frames INPUT OUT` runs demux, parse, rtph264pay config-interval=1 and rtpmp4gpay
//! (the packets rtspannounce's built-in payloaders make, byte for byte) into appsinks once and stores every RTP packet as it would go on the wire, with
//! its running time. `--floor-child rt|max URL FRAMES` then does a minimal RECORD handshake and
//! writes those frames: unsynced in 64 KiB writes, or in real time one write per group of
//! packets with the same running time (one access unit, as our element queues a buffer list).
//! Its own CPU is measured around the sending alone (loading the file is not the floor's cost)
//! and printed as `floor: send cpu S s` on stderr, which the bench reads back. With
//! `FLOOR_PER_PACKET` set, the rt floor writes each packet of a group on its own (as FFmpeg's
//! RTSP muxer does), to compare what the write size costs at the same pacing.
//! `FLOOR_NAGLE` leaves Nagle's algorithm on (FFmpeg's default; we set TCP_NODELAY).

use std::io::{BufWriter, Read, Write};
use std::net::TcpStream;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context, Result};
use gst::prelude::*;

use crate::proc;

/// Record header in the frames file: running time (ns, LE), then the interleaved frame itself.
const TIME_LEN: usize = 8;
/// Write size of the unsynced floor: what a batching sender hands the kernel at a time.
const MAX_WRITE: usize = 64 * 1024;
pub const CPU_PREFIX: &str = "floor: send cpu ";

/// `bench --dump-frames INPUT OUT`
pub fn dump_child(args: &[String]) -> Result<()> {
    let [input, out] = args else {
        bail!("usage: --dump-frames INPUT OUT");
    };
    gst::init()?;
    let desc = format!(
        "filesrc location=\"{input}\" ! qtdemux name=d \
         d.video_0 ! queue ! h264parse ! rtph264pay config-interval=1 ! appsink name=v sync=false \
         d.audio_0 ! queue ! aacparse ! rtpmp4gpay ! appsink name=a sync=false"
    );
    let pipeline = gst::parse::launch(&desc)?
        .downcast::<gst::Pipeline>()
        .map_err(|_| anyhow!("not a pipeline"))?;
    let tmp = format!("{out}.part");
    let file = Arc::new(Mutex::new(BufWriter::with_capacity(
        1 << 20,
        std::fs::File::create(&tmp)?,
    )));
    for (name, channel) in [("v", 0u8), ("a", 2u8)] {
        let sink = pipeline
            .by_name(name)
            .and_then(|e| e.downcast::<gst_app::AppSink>().ok())
            .context("appsink")?;
        sink.set_property("buffer-list", true);
        let file = file.clone();
        sink.set_callbacks(
            gst_app::AppSinkCallbacks::builder()
                .new_sample(move |s| {
                    let sample = s.pull_sample().map_err(|_| gst::FlowError::Flushing)?;
                    let seg = sample
                        .segment()
                        .and_then(|s| s.downcast_ref::<gst::ClockTime>().cloned());
                    let mut w = file.lock().unwrap();
                    let mut put = |b: &gst::BufferRef| -> std::io::Result<()> {
                        let rt = seg
                            .as_ref()
                            .zip(b.pts())
                            .and_then(|(s, p)| s.to_running_time(p))
                            .map(|t| t.nseconds())
                            .unwrap_or(0);
                        let map = b.map_readable().map_err(std::io::Error::other)?;
                        w.write_all(&rt.to_le_bytes())?;
                        w.write_all(&[b'$', channel])?;
                        w.write_all(&(map.len() as u16).to_be_bytes())?;
                        w.write_all(&map)
                    };
                    let res = if let Some(list) = sample.buffer_list() {
                        list.iter().try_for_each(&mut put)
                    } else if let Some(b) = sample.buffer() {
                        put(b)
                    } else {
                        Ok(())
                    };
                    res.map_err(|_| gst::FlowError::Error)?;
                    Ok(gst::FlowSuccess::Ok)
                })
                .build(),
        );
    }
    pipeline.set_state(gst::State::Playing)?;
    let bus = pipeline.bus().unwrap();
    let res = loop {
        let Some(msg) = bus.timed_pop(gst::ClockTime::from_seconds(300)) else {
            break Err(anyhow!("no EOS within 5 minutes"));
        };
        match msg.view() {
            gst::MessageView::Eos(_) => break Ok(()),
            gst::MessageView::Error(e) => break Err(anyhow!("{}", e.error())),
            _ => {}
        }
    };
    pipeline.set_state(gst::State::Null)?;
    res?;
    file.lock().unwrap().flush()?;
    std::fs::rename(&tmp, out)?;
    Ok(())
}

/// Sends one request and reads its answer's head, returning it.
pub fn request(sock: &mut TcpStream, text: &str) -> Result<String> {
    sock.write_all(text.as_bytes())?;
    let mut got = Vec::new();
    let mut b = [0u8; 1024];
    while !got.windows(4).any(|w| w == b"\r\n\r\n") {
        let n = sock.read(&mut b)?;
        if n == 0 {
            bail!("the receiver closed the connection");
        }
        got.extend_from_slice(&b[..n]);
    }
    let head = String::from_utf8_lossy(&got).to_string();
    if !head.starts_with("RTSP/1.0 200") {
        bail!("refused: {}", head.lines().next().unwrap_or(""));
    }
    Ok(head)
}

pub fn handshake(url: &str) -> Result<TcpStream> {
    let rest = url.strip_prefix("rtsp://").context("rtsp:// URL")?;
    let host = rest.split('/').next().unwrap_or(rest);
    let mut sock = TcpStream::connect(host)?;
    sock.set_nodelay(std::env::var_os("FLOOR_NAGLE").is_none())?;
    let sdp = "v=0\r\no=- 1 1 IN IP4 127.0.0.1\r\ns=floor\r\nc=IN IP4 127.0.0.1\r\nt=0 0\r\n\
               m=video 0 RTP/AVP 96\r\na=rtpmap:96 H264/90000\r\na=control:streamid=0\r\n\
               m=audio 0 RTP/AVP 97\r\na=rtpmap:97 MPEG4-GENERIC/48000/2\r\na=control:streamid=1\r\n";
    request(
        &mut sock,
        &format!(
            "ANNOUNCE {url} RTSP/1.0\r\nCSeq: 1\r\nContent-Type: application/sdp\r\n\
             Content-Length: {}\r\n\r\n{sdp}",
            sdp.len()
        ),
    )?;
    let head = request(
        &mut sock,
        &format!(
            "SETUP {url}/streamid=0 RTSP/1.0\r\nCSeq: 2\r\n\
             Transport: RTP/AVP/TCP;unicast;interleaved=0-1;mode=record\r\n\r\n"
        ),
    )?;
    let session = head
        .lines()
        .find_map(|l| l.strip_prefix("Session:"))
        .map(|v| v.split(';').next().unwrap_or("").trim().to_string())
        .context("no Session in the SETUP answer")?;
    request(
        &mut sock,
        &format!(
            "SETUP {url}/streamid=1 RTSP/1.0\r\nCSeq: 3\r\nSession: {session}\r\n\
             Transport: RTP/AVP/TCP;unicast;interleaved=2-3;mode=record\r\n\r\n"
        ),
    )?;
    request(
        &mut sock,
        &format!("RECORD {url} RTSP/1.0\r\nCSeq: 4\r\nSession: {session}\r\nRange: npt=0-\r\n\r\n"),
    )?;
    Ok(sock)
}

/// `bench --floor-child rt|max URL FRAMES`
pub fn floor_child(args: &[String]) -> Result<()> {
    let [mode, url, frames] = args else {
        bail!("usage: --floor-child rt|max URL FRAMES");
    };
    let data = std::fs::read(frames)?;
    // (running time, wire bytes) per group of packets with one running time.
    let mut wire = Vec::with_capacity(data.len());
    let mut groups: Vec<(u64, usize)> = Vec::new();
    let mut pos = 0;
    while pos + TIME_LEN + 4 <= data.len() {
        let rt = u64::from_le_bytes(data[pos..pos + TIME_LEN].try_into().unwrap());
        let f = &data[pos + TIME_LEN..];
        let len = 4 + u16::from_be_bytes([f[2], f[3]]) as usize;
        wire.extend_from_slice(&f[..len]);
        match groups.last_mut() {
            Some((t, end)) if *t == rt => *end = wire.len(),
            _ => groups.push((rt, wire.len())),
        }
        pos += TIME_LEN + len;
    }
    drop(data);
    let mut sock = handshake(url)?;
    let cpu0 = proc::self_cpu_s();
    match mode.as_str() {
        "max" => {
            for chunk in wire.chunks(MAX_WRITE) {
                sock.write_all(chunk)?;
            }
        }
        "rt" => {
            let start = Instant::now();
            let t0 = groups.iter().map(|g| g.0).min().unwrap_or(0);
            let mut from = 0;
            for &(rt, end) in &groups {
                let due = start + Duration::from_nanos(rt.saturating_sub(t0));
                if let Some(wait) = due.checked_duration_since(Instant::now()) {
                    std::thread::sleep(wait);
                }
                if std::env::var_os("FLOOR_PER_PACKET").is_some() {
                    let mut at = from;
                    while at < end {
                        let len = 4 + u16::from_be_bytes([wire[at + 2], wire[at + 3]]) as usize;
                        sock.write_all(&wire[at..at + len])?;
                        at += len;
                    }
                } else {
                    sock.write_all(&wire[from..end])?;
                }
                from = end;
            }
        }
        _ => bail!("mode must be rt or max"),
    }
    let cpu = proc::self_cpu_s() - cpu0;
    eprintln!("{CPU_PREFIX}{cpu:.6} s");
    let _ = request(
        &mut sock,
        &format!("TEARDOWN {url} RTSP/1.0\r\nCSeq: 5\r\n\r\n"),
    );
    Ok(())
}

/// The send CPU a floor child printed in its log.
pub fn logged_cpu(log: &str) -> Option<f64> {
    log.lines()
        .find_map(|l| l.strip_prefix(CPU_PREFIX))
        .and_then(|v| v.trim_end_matches(" s").parse().ok())
}
