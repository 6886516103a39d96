//! The cache entry decoder on arbitrary bytes (as stored, and with a valid
//! checksum appended so the field parsing is reached): it must never panic.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    tower_redis_layers::fuzz::entry_decode(data);
});
