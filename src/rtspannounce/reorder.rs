//! Frames whose presentation order is not their decode order (B-frames). They are pushed as
//! they come (each RTP timestamp is its frame's PTS, as the payloader wrote it), but a reader
//! that cannot reorder (WebRTC, some HLS players) stutters on them, so the element warns once
//! per video pad (audio whose timestamps jitter back is another matter).
//!
//! The sign is a presentation time going back in decode order: every reordered stream has one,
//! and nothing else does. `PTS > DTS` alone is not enough: a muxer or an encoder may delay DTS by
//! a constant without reordering anything.

/// One pad's view of its presentation times.
#[derive(Debug, Default)]
pub(crate) struct ReorderWatch {
    /// The latest presentation running time since the last flush (a flushing seek starts the
    /// running time again).
    latest: Option<u64>,
    /// The pad was warned about (once in its life).
    warned: bool,
}

/// What the warning is about: the first presentation time seen going back.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Reordered {
    pub(crate) from: u64,
    pub(crate) to: u64,
}

impl ReorderWatch {
    /// Looks at the presentation running times of the buffers of one render call, in decode
    /// order; buffers without one are skipped. Some the first time on this pad one goes back.
    pub(crate) fn observe(
        &mut self,
        times: impl Iterator<Item = Option<u64>>,
    ) -> Option<Reordered> {
        let mut first = None;
        for t in times.flatten() {
            match self.latest {
                Some(l) if t < l => {
                    first.get_or_insert(Reordered { from: l, to: t });
                }
                _ => self.latest = Some(t),
            }
        }
        match first {
            Some(r) if !self.warned => {
                self.warned = true;
                Some(r)
            }
            _ => None,
        }
    }

    pub(crate) fn flushed(&mut self) {
        self.latest = None;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MS: u64 = 1_000_000;

    #[test]
    fn decode_order_b_frames_warn_once() {
        let mut w = ReorderWatch::default();
        // I0 P3 B1 B2 P6 B4 B5, one buffer per frame, in decode order.
        let pts = [0, 3, 1, 2, 6, 4, 5].map(|f| Some(f * 33 * MS));
        let got: Vec<_> = pts.iter().map(|t| w.observe(std::iter::once(*t))).collect();
        assert_eq!(
            got[2],
            Some(Reordered {
                from: 99 * MS,
                to: 33 * MS
            })
        );
        assert_eq!(got.iter().filter(|g| g.is_some()).count(), 1, "{got:?}");
    }

    #[test]
    fn in_order_streams_and_repeated_times_never_warn() {
        let mut w = ReorderWatch::default();
        // Several RTP packets of one frame share its PTS; buffers without one are skipped.
        for f in 0..100u64 {
            let t = Some(f * 20 * MS);
            assert_eq!(w.observe([t, t, None, t].into_iter()), None);
        }
    }

    #[test]
    fn a_flush_starts_again_and_one_list_is_seen_whole() {
        let mut w = ReorderWatch::default();
        assert_eq!(w.observe([Some(5 * MS), Some(9 * MS)].into_iter()), None);
        // A flushing seek: running time restarts.
        w.flushed();
        assert_eq!(w.observe([Some(0), Some(MS)].into_iter()), None);
        // Reordering inside one buffer list.
        let r = w.observe([Some(4 * MS), Some(2 * MS), Some(3 * MS)].into_iter());
        assert_eq!(
            r,
            Some(Reordered {
                from: 4 * MS,
                to: 2 * MS
            })
        );
        assert_eq!(w.observe([Some(8 * MS), Some(6 * MS)].into_iter()), None);
    }
}
