//! The `stats` property: built from a snapshot the session takes under its lock, turned into a
//! structure here. Per-track figures sit in a `tracks` array of `track` structures (Python
//! reads GstValueArray with Debian's python3-gst-1.0 overrides; see examples/push.py).

use super::connection::Connection;
use std::sync::atomic::Ordering;

pub(crate) struct Snapshot<'a> {
    /// The session's phase, as `state` names it.
    pub state: &'static str,
    /// The latest connection, live or gone.
    pub connection: Option<&'a Connection>,
    /// Whether that connection is the one recording (or draining) now.
    pub live: bool,
    /// Per track: pad name, buffers held for the handshake.
    pub tracks: Vec<(&'a str, usize)>,
    pub reconnects: u32,
    pub reannounces: u32,
    pub dropped_offline: u64,
}

impl Snapshot<'_> {
    fn track(&self, i: usize, pad: &str, held: usize) -> gst::Structure {
        let mut b = gst::Structure::builder("track").field("pad", pad);
        let Some((conn, tx)) = self
            .connection
            .and_then(|c| c.senders().get(i).map(|tx| (c, tx)))
        else {
            return b.field("held-buffers", held as u32).build();
        };
        b = match conn.udp().and_then(|u| u.tracks.get(i)) {
            Some(u) => b
                .field("transport", "udp")
                .field("client-rtp-port", u.client_ports.0 as u32)
                .field("client-rtcp-port", u.client_ports.1 as u32)
                .field("server-address", u.server_rtp.ip().to_string())
                .field("server-rtp-port", u.server_rtp.port() as u32)
                .field("server-rtcp-port", u.server_rtcp.port() as u32)
                .field("udp-dropped", u.dropped.load(Ordering::Relaxed))
                .field("rtcp-received", u.rtcp_received.load(Ordering::Relaxed)),
            None => b.field("transport", "tcp"),
        };
        let c = tx.counters.lock().unwrap();
        b.field("ssrc", c.ssrc.unwrap_or(0))
            .field("channel", tx.channel as u32)
            .field("rtcp-channel", tx.rtcp_channel as u32)
            .field(
                "payload-type-rewrite",
                tx.pt_rewrite.map(u32::from).unwrap_or(0),
            )
            .field("srtp", tx.is_srtp())
            .field("srtcp-unreadable", c.srtcp_unreadable)
            .field("packets", c.packets)
            .field("payload-bytes", c.octets)
            .field("bytes", c.bytes)
            .field("sender-reports", c.sender_reports)
            .field("receiver-reports", c.receiver.reports)
            .field("fraction-lost", c.receiver.fraction_lost as u32)
            .field("cumulative-lost", c.receiver.cumulative_lost)
            .field("jitter", c.receiver.jitter)
            .field(
                "rtt-us",
                c.receiver.rtt.map(|r| r.as_micros() as u64).unwrap_or(0),
            )
            .build()
    }

    pub(crate) fn to_structure(&self) -> gst::Structure {
        let tracks: Vec<gst::glib::SendValue> = self
            .tracks
            .iter()
            .enumerate()
            .map(|(i, (pad, held))| self.track(i, pad, *held).to_send_value())
            .collect();
        let conn = self.connection;
        let info = conn.map(|c| &c.info);
        let sender_drops: u64 = conn
            .map(|c| {
                c.senders()
                    .iter()
                    .map(|tx| tx.counters.lock().unwrap().dropped)
                    .sum()
            })
            .unwrap_or(0);
        gst::Structure::builder("application/x-rtspannounce-stats")
            .field("state", self.state)
            .field(
                "transport",
                match conn {
                    Some(c) if c.udp().is_some() => "udp",
                    Some(_) => "tcp",
                    None => "",
                },
            )
            .field(
                "server",
                info.and_then(|i| i.server.clone()).unwrap_or_default(),
            )
            .field("tls", info.and_then(|i| i.tls.clone()).unwrap_or_default())
            .field(
                "session-id",
                info.and_then(|i| i.session_id.clone()).unwrap_or_default(),
            )
            .field(
                "handshake-us",
                info.map(|i| i.handshake.as_micros() as u64).unwrap_or(0),
            )
            .field("round-trips", info.map(|i| i.round_trips).unwrap_or(0))
            .field(
                "queue-bytes",
                conn.filter(|_| self.live)
                    .map(|c| c.queue().level() as u64)
                    .unwrap_or(0),
            )
            .field("reconnects", self.reconnects)
            .field("reannounces", self.reannounces)
            .field("dropped-packets", self.dropped_offline + sender_drops)
            .field("tracks", gst::Array::from_values(tracks))
            .build()
    }
}

// Needed by `to_send_value` on structures.
use gst::prelude::ToSendValue as _;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn before_any_connection_tracks_show_what_they_hold() {
        gst::init().unwrap();
        let s = Snapshot {
            state: "waiting-for-data",
            connection: None,
            live: false,
            tracks: vec![("sink_0", 3), ("sink_1", 0)],
            reconnects: 0,
            reannounces: 0,
            dropped_offline: 7,
        }
        .to_structure();
        assert_eq!(s.get::<&str>("state").unwrap(), "waiting-for-data");
        assert_eq!(s.get::<&str>("transport").unwrap(), "");
        assert_eq!(s.get::<u64>("dropped-packets").unwrap(), 7);
        let tracks = s.get::<gst::Array>("tracks").unwrap();
        let first = tracks.as_slice()[0].get::<gst::Structure>().unwrap();
        assert_eq!(first.get::<&str>("pad").unwrap(), "sink_0");
        assert_eq!(first.get::<u32>("held-buffers").unwrap(), 3);
        assert!(!first.has_field("packets"));
    }
}
