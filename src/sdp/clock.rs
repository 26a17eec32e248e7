//! RFC 7273 clock signalling: which reference clock the RTP timestamps follow
//! (`a=ts-refclk`) and how they relate to it (`a=mediaclk`). No I/O: the element reads the
//! pipeline clock into a [`RefClock`], this module only writes the lines and does the arithmetic.

/// `publish-clock-mode`, as rtspclientsink's.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub(crate) enum PublishClockMode {
    /// No clock lines; sender reports follow `ntp-time-source`.
    None,
    /// `a=ts-refclk` and `a=mediaclk:sender`.
    #[default]
    Clock,
    /// `a=ts-refclk` and, on an NTP or PTP clock, `a=mediaclk:direct=<offset>`.
    ClockAndOffset,
}

/// A pipeline clock that RFC 7273 can name.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum RefClock {
    /// A `GstNtpClock`: the NTP server it follows.
    Ntp { address: String, port: u16 },
    /// A `GstPtpClock`: its grandmaster and domain.
    Ptp { grandmaster: u64, domain: u32 },
}

/// Nanoseconds between the PTP epoch (1970, TAI) and the NTP epoch (1900), as GStreamer's RTP
/// code converts them: leap seconds are not counted.
const PTP_TO_NTP_NS: u64 = crate::rtcp::NTP_UNIX_OFFSET * 1_000_000_000;

impl RefClock {
    /// What to add to this clock's time to get nanoseconds since the NTP epoch.
    pub(crate) fn to_ntp_era(&self) -> u64 {
        match self {
            RefClock::Ntp { .. } => 0,
            RefClock::Ptp { .. } => PTP_TO_NTP_NS,
        }
    }
}

/// The value of `a=ts-refclk` (RFC 7273 §4.8) for the pipeline clock, `local` for any clock it
/// cannot name. The NTP port is left out when it is the standard 123, the PTP domain when it is
/// 0 (both are then the defaults the grammar implies).
pub(crate) fn ts_refclk(clock: Option<&RefClock>) -> String {
    match clock {
        None => "local".to_string(),
        Some(RefClock::Ntp { address, port }) => {
            // An IPv6 literal needs brackets before a port.
            let host = if address.contains(':') && !address.starts_with('[') {
                format!("[{address}]")
            } else {
                address.clone()
            };
            if *port == 123 {
                format!("ntp={host}")
            } else {
                format!("ntp={host}:{port}")
            }
        }
        Some(RefClock::Ptp {
            grandmaster,
            domain,
        }) => {
            let id = grandmaster
                .to_be_bytes()
                .iter()
                .map(|b| format!("{b:02X}"))
                .collect::<Vec<_>>()
                .join("-");
            if *domain == 0 {
                format!("ptp=IEEE1588-2008:{id}")
            } else {
                format!("ptp=IEEE1588-2008:{id}:{domain}")
            }
        }
    }
}

/// The value of `a=mediaclk` (RFC 7273 §5): `direct=<offset>` when the offset is known,
/// otherwise `sender` (the media clock is the sender's own, with no known relation).
pub(crate) fn mediaclk(offset: Option<u32>) -> String {
    match offset {
        Some(o) => format!("direct={o}"),
        None => "sender".to_string(),
    }
}

/// The RTP timestamp at the reference clock's epoch, for `a=mediaclk:direct`: a packet stamped
/// `rtp` was captured at running time `running`, i.e. at clock time `base_time + running`;
/// the timestamps advance `clock_rate` per second of that clock, so the clock's time zero
/// reads `rtp - (base_time + running) * clock_rate / 1 s`, modulo 2^32.
pub(crate) fn direct_offset(rtp: u32, running: u64, base_time: u64, clock_rate: u32) -> u32 {
    let at = base_time as u128 + running as u128;
    let ticks = (at * clock_rate as u128 + 500_000_000) / 1_000_000_000;
    rtp.wrapping_sub(ticks as u32)
}

/// What a session's SDP says about its clock: the reference and, per track, the direct offset.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Signalling {
    pub refclk: Option<RefClock>,
    /// One per track, in track order (`None`: `mediaclk:sender`).
    pub offsets: Vec<Option<u32>>,
}

impl Signalling {
    /// Adds the lines to every media of `msg`, at media level as gst-rtsp-server writes them
    /// (each track may have its own offset).
    pub(crate) fn apply(&self, msg: &mut gst_sdp::SDPMessageRef) {
        let refclk = ts_refclk(self.refclk.as_ref());
        for i in 0..msg.medias_len() {
            let Some(media) = msg.media_mut(i) else {
                continue;
            };
            let offset = self.offsets.get(i as usize).copied().flatten();
            media.add_attribute("ts-refclk", Some(&refclk));
            media.add_attribute("mediaclk", Some(&mediaclk(offset)));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ntp_clocks_name_their_server_and_port() {
        let c = RefClock::Ntp {
            address: "127.0.0.1".into(),
            port: 40123,
        };
        assert_eq!(ts_refclk(Some(&c)), "ntp=127.0.0.1:40123");
        let std = RefClock::Ntp {
            address: "pool.ntp.org".into(),
            port: 123,
        };
        assert_eq!(ts_refclk(Some(&std)), "ntp=pool.ntp.org");
        let v6 = RefClock::Ntp {
            address: "::1".into(),
            port: 1234,
        };
        assert_eq!(ts_refclk(Some(&v6)), "ntp=[::1]:1234");
    }

    #[test]
    fn ptp_clocks_name_their_grandmaster_and_domain() {
        let c = RefClock::Ptp {
            grandmaster: 0x0011_22ff_fe33_4455,
            domain: 0,
        };
        assert_eq!(
            ts_refclk(Some(&c)),
            "ptp=IEEE1588-2008:00-11-22-FF-FE-33-44-55"
        );
        let d = RefClock::Ptp {
            grandmaster: 0xa0b0_c0d0_e0f0_0102,
            domain: 7,
        };
        assert_eq!(
            ts_refclk(Some(&d)),
            "ptp=IEEE1588-2008:A0-B0-C0-D0-E0-F0-01-02:7"
        );
    }

    #[test]
    fn other_clocks_are_local_and_offsets_direct() {
        assert_eq!(ts_refclk(None), "local");
        assert_eq!(mediaclk(None), "sender");
        assert_eq!(mediaclk(Some(4_000_000_000)), "direct=4000000000");
    }

    #[test]
    fn direct_offset_is_the_timestamp_at_the_clock_epoch() {
        // 90 kHz, a packet stamped 1000 at clock time 1 s: time zero read 1000 - 90000.
        assert_eq!(
            direct_offset(1000, 400_000_000, 600_000_000, 90000),
            1000u32.wrapping_sub(90000)
        );
        // Every packet of the same stream gives the same offset.
        let (base, rate, ts0) = (3_900_000_000_123_456_789u64, 48000u32, 0x1234_5678u32);
        let at = |rt: u64| ts0.wrapping_add(((rt as u128 * rate as u128) / 1_000_000_000) as u32);
        let a = direct_offset(at(0), 0, base, rate);
        for rt in [20_000_000u64, 1_000_000_000, 3_600_000_000_000] {
            let b = direct_offset(at(rt), rt, base, rate);
            assert!(a.wrapping_sub(b) <= 1 || b.wrapping_sub(a) <= 1, "{a} {b}");
        }
        // The PTP era shift is 70 years of seconds.
        let ptp = RefClock::Ptp {
            grandmaster: 1,
            domain: 0,
        };
        assert_eq!(ptp.to_ntp_era(), 2_208_988_800 * 1_000_000_000);
    }

    #[test]
    fn lines_go_on_every_media() {
        gst::init().unwrap();
        let mut msg = gst_sdp::SDPMessage::new();
        for _ in 0..2 {
            msg.add_media(gst_sdp::SDPMedia::new());
        }
        Signalling {
            refclk: Some(RefClock::Ntp {
                address: "10.0.0.1".into(),
                port: 5000,
            }),
            offsets: vec![Some(7), None],
        }
        .apply(&mut msg);
        let m0 = msg.media(0).unwrap();
        assert_eq!(m0.attribute_val("ts-refclk"), Some("ntp=10.0.0.1:5000"));
        assert_eq!(m0.attribute_val("mediaclk"), Some("direct=7"));
        let m1 = msg.media(1).unwrap();
        assert_eq!(m1.attribute_val("mediaclk"), Some("sender"));
    }
}
