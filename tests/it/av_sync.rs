//! A/V sync at a real receiver: gst-rtsp-server's rtpbin lines tracks up from our sender
//! reports. Audio is stamped 500 ms after video but produced (and, with sync=false, sent) at
//! the same moment as the video: only the reports can tell the receiver about the offset.

use crate::harness;

use crate::record_server::*;
use gst::prelude::*;
use std::time::Duration;

#[test]
fn audio_500ms_after_video_lines_up_at_the_receiver() {
    harness::init();
    let server = RecordServer::start(
        RecordServerConfig::new("/live/av", Tracks::H264Aac).with_stock_rtpbin(),
    )
    .unwrap();
    let p = gst::parse::launch(&format!(
        "rtspannounce name=s location={} sync=false \
         videotestsrc is-live=true num-buffers=90 ! video/x-raw,width=320,height=240,framerate=30/1 ! \
           x264enc tune=zerolatency bframes=0 ! rtph264pay name=vpay ! s.sink_0 \
         audiotestsrc timestamp-offset=500000000 num-buffers=141 samplesperbuffer=1024 ! \
           audio/x-raw,rate=48000,channels=2 ! identity sync=true ts-offset=-500000000 ! \
           avenc_aac ! aacparse ! rtpmp4gpay name=apay ! s.sink_1",
        server.url()
    ))
    .unwrap()
    .downcast::<gst::Pipeline>()
    .unwrap();
    // The offset as sent: the running time of each payloader's first packet.
    let first_pts = |name: &str| {
        let slot = std::sync::Arc::new(std::sync::Mutex::new(None::<u64>));
        let s2 = slot.clone();
        p.by_name(name)
            .unwrap()
            .static_pad("src")
            .unwrap()
            .add_probe(
                gst::PadProbeType::BUFFER | gst::PadProbeType::BUFFER_LIST,
                move |pad, info| {
                    let pts = match &info.data {
                        Some(gst::PadProbeData::Buffer(b)) => b.pts(),
                        Some(gst::PadProbeData::BufferList(l)) => l.get(0).and_then(|b| b.pts()),
                        _ => None,
                    };
                    // Running time, not PTS: x264enc shifts its timestamps by 1000 h.
                    let seg = pad
                        .sticky_event::<gst::event::Segment>(0)
                        .and_then(|e| e.segment().downcast_ref::<gst::ClockTime>().cloned());
                    let rt = seg.zip(pts).and_then(|(seg, pts)| seg.to_running_time(pts));
                    let mut s = s2.lock().unwrap();
                    if s.is_none() {
                        *s = rt.map(|t| t.nseconds());
                    }
                    gst::PadProbeReturn::Ok
                },
            );
        slot
    };
    let (v0, a0) = (first_pts("vpay"), first_pts("apay"));
    let out = harness::run(&p, Duration::from_secs(30));
    let sent = a0.lock().unwrap().unwrap() as i64 - v0.lock().unwrap().unwrap() as i64;
    assert!(out.eos, "{out:?}");
    let report = server.wait_finished(Duration::from_secs(20)).unwrap();
    let v = report.tracks.iter().find(|t| t.is_video()).unwrap();
    let a = report.tracks.iter().find(|t| !t.is_video()).unwrap();
    let offset = a.first_pts.unwrap().nseconds() as i64 - v.first_pts.unwrap().nseconds() as i64;
    eprintln!(
        "{report}\naudio - video first PTS: sent {} ms, received {} ms",
        sent / 1_000_000,
        offset / 1_000_000
    );
    assert!(
        (sent - 500_000_000).abs() < 100_000_000,
        "test setup: sent offset {sent}"
    );
    assert!(
        (offset - sent).abs() <= 20_000_000,
        "audio starts {} ms after video at the receiver, {} ms as sent (± 20 ms)\n{report}",
        offset / 1_000_000,
        sent / 1_000_000
    );
}
