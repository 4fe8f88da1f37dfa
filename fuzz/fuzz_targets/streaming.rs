//! A valid frame sequence split at arbitrary points decodes to the same messages as the whole.
#![no_main]

libfuzzer_sys::fuzz_target!(|input: ncx_proto::check::StreamingInput| {
    input.check();
});
