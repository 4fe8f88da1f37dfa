//! Structured messages: decode(encode(m)) == m and re-encoding is byte-identical.
#![no_main]

libfuzzer_sys::fuzz_target!(|msg: ncx_proto::Message| {
    ncx_proto::check::round_trip(&msg);
});
