//! Cuts what the queue writes into the units the ONVIF WebSocket transport sends one per
//! WebSocket message: an RTSP message (head and body), or an interleaved frame (`$`, channel,
//! length, data). What we write is our own, so a unit that does not parse is a bug: it goes out
//! as it is rather than stalling the stream.

/// Bytes waiting for the rest of their unit.
#[derive(Default)]
pub(crate) struct Splitter {
    partial: Vec<u8>,
}

/// Heads longer than this are not ours.
const MAX_HEAD: usize = 64 * 1024;

/// The length of the unit at the start of `buf`, once it is all there.
fn unit_len(buf: &[u8]) -> Option<usize> {
    if buf.first() == Some(&b'$') {
        if buf.len() < 4 {
            return None;
        }
        let n = 4 + u16::from_be_bytes([buf[2], buf[3]]) as usize;
        return (buf.len() >= n).then_some(n);
    }
    let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") else {
        // Not ours to hold forever: an unterminated head goes out as it is.
        return (buf.len() > MAX_HEAD).then_some(buf.len());
    };
    let head = String::from_utf8_lossy(&buf[..end]);
    let body = head
        .split("\r\n")
        .filter_map(|l| l.split_once(':'))
        .find(|(n, _)| n.trim().eq_ignore_ascii_case("content-length"))
        .and_then(|(_, v)| v.trim().parse::<usize>().ok())
        .unwrap_or(0);
    let n = end + 4 + body;
    (buf.len() >= n).then_some(n)
}

impl Splitter {
    /// Appends `data` and returns every unit it completes, in order.
    pub(crate) fn push(&mut self, data: &[u8]) -> Vec<Vec<u8>> {
        let mut out = Vec::new();
        let mut rest: &[u8] = data;
        if !self.partial.is_empty() {
            self.partial.extend_from_slice(data);
            rest = &[];
        }
        loop {
            let buf: &[u8] = if self.partial.is_empty() {
                rest
            } else {
                &self.partial
            };
            if buf.is_empty() {
                break;
            }
            match unit_len(buf) {
                Some(n) => {
                    out.push(buf[..n].to_vec());
                    if self.partial.is_empty() {
                        rest = &rest[n..];
                    } else {
                        self.partial.drain(..n);
                    }
                }
                None => {
                    if self.partial.is_empty() {
                        self.partial.extend_from_slice(rest);
                    }
                    break;
                }
            }
        }
        out
    }

    /// Whether bytes of an unfinished unit are held.
    pub(crate) fn holds(&self) -> bool {
        !self.partial.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn frame(ch: u8, data: &[u8]) -> Vec<u8> {
        let mut f = vec![b'$', ch];
        f.extend_from_slice(&(data.len() as u16).to_be_bytes());
        f.extend_from_slice(data);
        f
    }

    #[test]
    fn messages_and_frames_come_out_one_by_one_however_they_are_cut() {
        let announce =
            b"ANNOUNCE rtsp://h/x RTSP/1.0\r\nCSeq: 1\r\nContent-Length: 5\r\n\r\nv=0\r\n".to_vec();
        let options = b"OPTIONS rtsp://h/x RTSP/1.0\r\nCSeq: 2\r\n\r\n".to_vec();
        let units = [
            announce,
            frame(0, &[7; 300]),
            options,
            frame(1, &[]),
            frame(2, &[1, 2]),
        ];
        let all: Vec<u8> = units.concat();
        for cut in [1, 2, 3, 5, 17, 64, 299, 1000] {
            let mut s = Splitter::default();
            let mut got = Vec::new();
            for chunk in all.chunks(cut) {
                got.extend(s.push(chunk));
            }
            assert_eq!(got, units, "cut every {cut}");
            assert!(!s.holds());
        }
    }

    #[test]
    fn an_unfinished_unit_is_held() {
        let mut s = Splitter::default();
        assert!(s.push(&frame(0, &[1; 10])[..8]).is_empty());
        assert!(s.holds());
        assert_eq!(s.push(&[1; 6]), vec![frame(0, &[1; 10])]);
    }
}
