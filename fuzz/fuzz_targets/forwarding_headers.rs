//! `tower_redis_layers::fuzz::forwarding_headers` on arbitrary bytes: it must never panic.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    tower_redis_layers::fuzz::forwarding_headers(data);
});
