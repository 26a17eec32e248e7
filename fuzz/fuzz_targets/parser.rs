//! Arbitrary bytes, split at arbitrary points, into the response/interleave parser: it must
//! never panic, never loop, and never hold more than its limits allow.
#![no_main]

use gstrtspannounce::fuzzing::{Limits, Parser};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Some((&split, rest)) = data.split_first() else {
        return;
    };
    let limits = Limits {
        max_header_bytes: 4096,
        max_headers: 32,
        max_body_bytes: 8192,
    };
    let mut p = Parser::new(limits);
    let step = (split as usize % 64) + 1;
    for chunk in rest.chunks(step) {
        p.feed(chunk);
        loop {
            match p.next_message() {
                Ok(Some(_)) => continue,
                Ok(None) => break,
                Err(_) => return,
            }
        }
        // Unparsed bytes stay bounded by the limits (plus one chunk, plus an interleaved frame).
        assert!(p.pending() <= 4096 + 8192 + 65 + 65_539, "{}", p.pending());
    }
});
