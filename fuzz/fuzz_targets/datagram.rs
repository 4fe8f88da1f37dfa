//! The datagram framing of UDP flows on arbitrary bytes, read whole and in chunks.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    ncx_proto::check::datagrams_arbitrary(data);
});
