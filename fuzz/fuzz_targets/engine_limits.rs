//! See `weft_fuzz::checks::check_limits` for what this target checks.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| weft_fuzz::checks::check_limits(data));
