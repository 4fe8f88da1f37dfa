//! Arbitrary text into the configuration parsers: a clear error or a valid configuration.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    if let Ok(text) = std::str::from_utf8(data) {
        ncx::fuzzing::config(text);
    }
});
