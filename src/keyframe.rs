//! Where a decodable stream may start, read from RTP payloads: after a reconnect a server must
//! get a keyframe first, never a delta frame it cannot decode.

/// What a packet's payload says about where it sits in the stream.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Start {
    /// A receiver can start decoding here (parameter sets or a random-access picture begin).
    Key,
    /// Part of a frame that needs earlier frames.
    Delta,
    /// The payload format is not one we parse: use the buffer's DELTA_UNIT flag.
    Unknown,
}

/// Codecs whose payload we inspect, from the caps' encoding-name.
pub fn classify(encoding_name: &str, payload: &[u8]) -> Start {
    match encoding_name.to_ascii_uppercase().as_str() {
        "H264" => h264(payload),
        "H265" => h265(payload),
        _ => Start::Unknown,
    }
}

fn key_if(b: bool) -> Start {
    if b {
        Start::Key
    } else {
        Start::Delta
    }
}

/// RFC 6184: a single NAL, the first NAL of a STAP-A, or the first fragment of an FU-A that
/// is an SPS (7) or an IDR slice (5).
fn h264(p: &[u8]) -> Start {
    let key_type = |t: u8| t == 5 || t == 7;
    let Some(&b0) = p.first() else {
        return Start::Delta;
    };
    match b0 & 0x1f {
        t @ 1..=23 => key_if(key_type(t)),
        24 => key_if(p.get(3).is_some_and(|b| key_type(b & 0x1f))),
        28 => key_if(
            p.get(1)
                .is_some_and(|b| b & 0x80 != 0 && key_type(b & 0x1f)),
        ),
        _ => Start::Delta,
    }
}

/// RFC 7798: VPS/SPS/PPS (32-34) or an IRAP picture (16-21), alone, first in an aggregation
/// packet, or in the first fragment of an FU.
fn h265(p: &[u8]) -> Start {
    let key_type = |t: u8| (16..=21).contains(&t) || (32..=34).contains(&t);
    let Some(&b0) = p.first() else {
        return Start::Delta;
    };
    match (b0 >> 1) & 0x3f {
        48 => key_if(p.get(4).is_some_and(|b| key_type((b >> 1) & 0x3f))),
        49 => key_if(
            p.get(2)
                .is_some_and(|b| b & 0x80 != 0 && key_type(b & 0x3f)),
        ),
        t if t < 48 => key_if(key_type(t)),
        _ => Start::Delta,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn h264_packets() {
        assert_eq!(classify("H264", &[0x67, 0x42]), Start::Key); // SPS
        assert_eq!(classify("h264", &[0x65, 0x88]), Start::Key); // IDR
        assert_eq!(classify("H264", &[0x41, 0x9a]), Start::Delta); // non-IDR slice
        assert_eq!(classify("H264", &[0x68, 0xce]), Start::Delta); // PPS alone
                                                                   // STAP-A starting with SPS.
        assert_eq!(
            classify("H264", &[0x78, 0x00, 0x0f, 0x67, 0x42]),
            Start::Key
        );
        assert_eq!(
            classify("H264", &[0x78, 0x00, 0x0f, 0x06, 0x05]),
            Start::Delta
        );
        // FU-A: start of an IDR, middle of an IDR, start of a P slice.
        assert_eq!(classify("H264", &[0x7c, 0x85, 0x88]), Start::Key);
        assert_eq!(classify("H264", &[0x7c, 0x05, 0x88]), Start::Delta);
        assert_eq!(classify("H264", &[0x7c, 0x81, 0x9a]), Start::Delta);
        assert_eq!(classify("H264", &[]), Start::Delta);
        assert_eq!(classify("H264", &[0x7c]), Start::Delta);
    }

    #[test]
    fn h265_packets() {
        assert_eq!(classify("H265", &[32 << 1, 1]), Start::Key); // VPS
        assert_eq!(classify("H265", &[19 << 1, 1]), Start::Key); // IDR_W_RADL
        assert_eq!(classify("H265", &[1 << 1, 1]), Start::Delta); // TRAIL_R
        assert_eq!(
            classify("H265", &[48 << 1, 1, 0, 20, 32 << 1, 1]),
            Start::Key
        ); // AP
        assert_eq!(classify("H265", &[49 << 1, 1, 0x80 | 19]), Start::Key); // FU start
        assert_eq!(classify("H265", &[49 << 1, 1, 19]), Start::Delta); // FU middle
    }

    #[test]
    fn other_codecs_are_unknown() {
        assert_eq!(classify("VP8", &[0x10, 0]), Start::Unknown);
        assert_eq!(classify("MPEG4-GENERIC", &[0, 16]), Start::Unknown);
    }
}
