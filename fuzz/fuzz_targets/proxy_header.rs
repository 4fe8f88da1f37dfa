//! The PROXY protocol header reader on arbitrary bytes (see `ncx_proto::check::proxy_header_arbitrary`).
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    ncx_proto::check::proxy_header_arbitrary(data);
});
