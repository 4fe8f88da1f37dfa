//! The WebSocket transport's parsers and stream on arbitrary bytes (see `ncx::fuzzing::websocket`).
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    ncx::fuzzing::websocket(data);
});
