//! `tower_redis_layers::fuzz::idempotency_key` on arbitrary bytes: it must never panic.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    tower_redis_layers::fuzz::idempotency_key(data);
});
