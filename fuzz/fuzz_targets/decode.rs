//! Every decoder in `ncx-proto` on arbitrary bytes (see `ncx_proto::check::decode_arbitrary`).
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    ncx_proto::check::decode_arbitrary(data);
});
