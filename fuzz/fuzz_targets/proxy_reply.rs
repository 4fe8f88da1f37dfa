//! HTTP CONNECT and SOCKS5 answers from a proxy, on arbitrary bytes (see `ncx::fuzzing::proxy_replies`).
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    ncx::fuzzing::proxy_replies(data);
});
