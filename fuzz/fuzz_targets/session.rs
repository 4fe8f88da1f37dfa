//! The server's session handling fed arbitrary bytes as if they came out of TLS, beside a
//! well-behaved session that must keep working (see `ncx::fuzzing::SessionHarness`).
#![no_main]

use std::sync::OnceLock;

static HARNESS: OnceLock<ncx::fuzzing::SessionHarness> = OnceLock::new();

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    HARNESS
        .get_or_init(ncx::fuzzing::SessionHarness::new)
        .feed(data);
});
