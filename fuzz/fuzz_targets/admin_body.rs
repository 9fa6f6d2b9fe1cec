//! Any bytes as an admin request body: decoding must return, never panic.
#![no_main]

use libfuzzer_sys::fuzz_target;
use turnout::admin::{ReasonBody, WeightsBody, decode};

fuzz_target!(|body: &[u8]| {
    let _ = decode::<WeightsBody>(body);
    let _ = decode::<ReasonBody>(body);
});
