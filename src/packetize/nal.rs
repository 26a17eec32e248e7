//! NAL unit plumbing shared by H.264 and H.265: start codes, length prefixes, parameter set
//! lists.

use base64::Engine;

/// Offset of the first `00 00 01` in `data`, or its length.
pub(super) fn next_start_code(data: &[u8]) -> usize {
    data.windows(3)
        .position(|w| w == [0, 0, 1])
        .unwrap_or(data.len())
}

/// The NAL units of a byte-stream access unit as rtph264pay/rtph265pay cut them: from each
/// start code to the next, trailing zero bytes dropped (they belong to a 4-byte start code)
/// down to `keep` bytes; anything before the first start code and a last unit of one byte or
/// less are skipped. Each unit comes with its untrimmed form too (what parameter-set parsing
/// sees).
pub(super) fn byte_stream_units(au: &[u8], keep: usize) -> Vec<(&[u8], &[u8])> {
    let mut out = Vec::new();
    let mut data = &au[next_start_code(au)..];
    while data.len() > 4 {
        data = &data[3..];
        let next = next_start_code(data);
        let raw = &data[..next];
        let mut n = raw.len();
        while n > keep && raw[n - 1] == 0 {
            n -= 1;
        }
        out.push((&raw[..n], raw));
        data = &data[next..];
    }
    out
}

/// The NAL units of a length-prefixed access unit (avcC/hvcC style), each with whether it is
/// the last of the access unit. A length running past the end is cut to what is there, and
/// bytes too few for a length are ignored, as the payloaders do.
pub(super) fn length_prefixed_units(au: &[u8], len_size: usize) -> Vec<(&[u8], bool)> {
    let mut out = Vec::new();
    let mut rest = au;
    while rest.len() > len_size {
        let len = rest[..len_size]
            .iter()
            .fold(0usize, |acc, b| (acc << 8) | *b as usize);
        rest = &rest[len_size..];
        let len = len.min(rest.len());
        let last = rest.len() - len <= len_size;
        out.push((&rest[..len], last));
        rest = &rest[len..];
    }
    out
}

/// Reads exp-Golomb codes from the start of a parameter set (no emulation prevention is
/// removed, as the payloaders' own id parsing does not either).
pub(super) struct Bits<'a> {
    data: &'a [u8],
    pos: usize,
}

impl<'a> Bits<'a> {
    pub(super) fn new(data: &'a [u8]) -> Self {
        Bits { data, pos: 0 }
    }

    pub(super) fn skip(&mut self, n: usize) -> Option<()> {
        (self.pos + n <= self.data.len() * 8).then(|| self.pos += n)
    }

    fn bit(&mut self) -> Option<u32> {
        let b = *self.data.get(self.pos / 8)?;
        let v = (b >> (7 - self.pos % 8)) & 1;
        self.pos += 1;
        Some(v as u32)
    }

    pub(super) fn bits(&mut self, n: usize) -> Option<u32> {
        (0..n).try_fold(0u32, |acc, _| Some((acc << 1) | self.bit()?))
    }

    pub(super) fn ue(&mut self) -> Option<u32> {
        let mut zeros = 0;
        while self.bit()? == 0 {
            zeros += 1;
            if zeros > 31 {
                return None;
            }
        }
        Some((1u32 << zeros) - 1 + self.bits(zeros)?)
    }
}

/// Parameter sets by id, in the order the payloaders keep them: a new one with a known id
/// replaces the old (moving to the end), an identical one changes nothing.
#[derive(Default, Clone)]
pub(super) struct ParamSets {
    sets: Vec<(u32, Vec<u8>)>,
}

impl ParamSets {
    /// True if the list changed.
    pub(super) fn add(&mut self, id: u32, nal: &[u8]) -> bool {
        if let Some(i) = self.sets.iter().position(|(k, _)| *k == id) {
            if self.sets[i].1 == nal {
                return false;
            }
            self.sets.remove(i);
        }
        self.sets.push((id, nal.to_vec()));
        true
    }

    pub(super) fn iter(&self) -> impl Iterator<Item = &[u8]> {
        self.sets.iter().map(|(_, v)| v.as_slice())
    }

    pub(super) fn is_empty(&self) -> bool {
        self.sets.is_empty()
    }

    /// Base64 of each set, comma-separated.
    pub(super) fn base64(&self) -> String {
        let e = base64::engine::general_purpose::STANDARD;
        self.iter()
            .map(|s| e.encode(s))
            .collect::<Vec<_>>()
            .join(",")
    }
}

/// Drops trailing zero bytes (not part of a parameter set).
pub(super) fn trim_zeros(mut nal: &[u8]) -> &[u8] {
    while let [rest @ .., 0] = nal {
        nal = rest;
    }
    nal
}

/// Parameter sets go out again when the last ones are this old (config-interval=1).
const INTERVAL_NS: u64 = 1_000_000_000;

/// Whether the parameter sets are due before a slice at `running`, the last ones having gone
/// out (or been seen in-band) at `last`. Without a running time the payloaders compute a huge
/// one, so they are due.
pub(super) fn params_due(last: Option<u64>, running: Option<u64>) -> bool {
    last.is_none_or(|l| running.unwrap_or(u64::MAX).saturating_sub(l) >= INTERVAL_NS)
}
