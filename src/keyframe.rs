//! Where a decodable stream may start, read from RTP payloads: after a reconnect a server must
//! get a keyframe first, never a delta frame it cannot decode.

/// What a packet's payload says about where it sits in the stream.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Start {
    /// A receiver can start decoding here (parameter sets or a random-access picture begin).
    Key,
    /// Part of a frame that needs earlier frames.
    Delta,
    /// Says nothing either way (access unit delimiter, SEI, PPS alone): the decision comes with
    /// the next packet of the same frame.
    Neutral,
    /// The payload format is not one we parse: use the buffer's DELTA_UNIT flag.
    Unknown,
}

/// Codecs whose payload we inspect, from the caps' encoding-name.
pub(crate) fn classify(encoding_name: &str, payload: &[u8]) -> Start {
    match encoding_name.to_ascii_uppercase().as_str() {
        "H264" => h264(payload),
        "H265" => h265(payload),
        _ => Start::Unknown,
    }
}

/// RFC 6184: a single NAL, the first NAL of a STAP-A, or the first fragment of an FU-A that
/// is an SPS (7) or an IDR slice (5) is a keyframe; AUD (9), SEI (6) and PPS (8) are neutral.
fn h264(p: &[u8]) -> Start {
    let nal = |t: u8| match t {
        5 | 7 => Start::Key,
        6 | 8 | 9 => Start::Neutral,
        _ => Start::Delta,
    };
    let Some(&b0) = p.first() else {
        return Start::Delta;
    };
    match b0 & 0x1f {
        t @ 1..=23 => nal(t),
        24 => p.get(3).map_or(Start::Delta, |b| nal(b & 0x1f)),
        28 => match p.get(1) {
            Some(b) if b & 0x80 != 0 => nal(b & 0x1f),
            _ => Start::Delta,
        },
        _ => Start::Delta,
    }
}

/// RFC 7798: VPS/SPS (32, 33) or an IRAP picture (16-21), alone, first in an aggregation
/// packet, or in the first fragment of an FU; PPS, AUD and SEI (34, 35, 39, 40) are neutral.
fn h265(p: &[u8]) -> Start {
    let nal = |t: u8| match t {
        16..=21 | 32 | 33 => Start::Key,
        34 | 35 | 39 | 40 => Start::Neutral,
        _ => Start::Delta,
    };
    let Some(&b0) = p.first() else {
        return Start::Delta;
    };
    match (b0 >> 1) & 0x3f {
        48 => p.get(4).map_or(Start::Delta, |b| nal((b >> 1) & 0x3f)),
        49 => match p.get(2) {
            Some(b) if b & 0x80 != 0 => nal(b & 0x3f),
            _ => Start::Delta,
        },
        t if t < 48 => nal(t),
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
        assert_eq!(classify("H264", &[0x68, 0xce]), Start::Neutral); // PPS alone
        assert_eq!(classify("H264", &[0x09, 0xf0]), Start::Neutral); // AUD
        assert_eq!(classify("H264", &[0x06, 0x05]), Start::Neutral); // SEI
                                                                     // STAP-A starting with SPS, with SEI, with a slice.
        assert_eq!(
            classify("H264", &[0x78, 0x00, 0x0f, 0x67, 0x42]),
            Start::Key
        );
        assert_eq!(
            classify("H264", &[0x78, 0x00, 0x0f, 0x06, 0x05]),
            Start::Neutral
        );
        assert_eq!(
            classify("H264", &[0x78, 0x00, 0x0f, 0x01, 0x9a]),
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
        assert_eq!(classify("H265", &[35 << 1, 1]), Start::Neutral); // AUD
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
