//! KLV metadata (SMPTE 336M) for tests: valid units (16-byte universal key, BER length, value)
//! fed into an appsrc with timestamps, as a video pipeline's metadata track would carry them.

use gst::prelude::*;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Arc;
use std::time::Duration;

/// Caps of what the appsrc produces: what rtpklvpay takes.
pub const KLV_CAPS: &str = "meta/x-klv,parsed=(boolean)true";

/// MISB ST 0601's UAS Datalink local set key.
const KEY: [u8; 16] = [
    0x06, 0x0e, 0x2b, 0x34, 0x02, 0x0b, 0x01, 0x01, 0x0e, 0x01, 0x03, 0x01, 0x01, 0x00, 0x00, 0x00,
];

/// Unit `i`: its value is `i` (4 bytes) then a pattern, of a length that varies so short (one
/// byte) and long (0x81, 0x82) BER forms all occur.
pub fn unit(i: u32) -> Vec<u8> {
    let len = [12usize, 127, 128, 300, 60][i as usize % 5];
    let mut value = i.to_be_bytes().to_vec();
    value.extend((4..len).map(|k| (k as u8) ^ (i as u8)));
    let mut out = KEY.to_vec();
    match len {
        0..=127 => out.push(len as u8),
        128..=255 => out.extend([0x81, len as u8]),
        _ => out.extend([0x82, (len >> 8) as u8, len as u8]),
    }
    out.extend(value);
    out
}

/// Launch fragment of the KLV source; [`feed`] gives it data.
pub fn klv_src(name: &str) -> String {
    format!("appsrc name={name} format=time caps=\"{KLV_CAPS}\"")
}

/// Makes the appsrc `name` in `pipeline` produce `units` KLV units, one every `every`
/// (timestamps from 0), then EOS. Returns the total bytes of the units.
pub fn feed(pipeline: &gst::Pipeline, name: &str, units: u32, every: Duration) -> usize {
    let src = pipeline
        .by_name(name)
        .expect("KLV appsrc")
        .downcast::<gst_app::AppSrc>()
        .expect("an appsrc");
    let next = Arc::new(AtomicU32::new(0));
    src.set_callbacks(
        gst_app::AppSrcCallbacks::builder()
            .need_data(move |src, _| {
                let i = next.fetch_add(1, Ordering::SeqCst);
                if i >= units {
                    let _ = src.end_of_stream();
                    return;
                }
                let mut b = gst::Buffer::from_slice(unit(i));
                let at = gst::ClockTime::from_nseconds(every.as_nanos() as u64 * u64::from(i));
                let bm = b.get_mut().unwrap();
                bm.set_pts(at);
                bm.set_duration(gst::ClockTime::from_nseconds(every.as_nanos() as u64));
                let _ = src.push_buffer(b);
            })
            .build(),
    );
    (0..units).map(|i| unit(i).len()).sum()
}
