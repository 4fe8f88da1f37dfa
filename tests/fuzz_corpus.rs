//! Replays every committed fuzz corpus input and every past crash input through the same checks
//! the fuzz targets run, so a regression is caught by `cargo test` on stable, without a fuzzer.

use std::path::{Path, PathBuf};

use arbitrary::{Arbitrary, Unstructured};

fn inputs(target: &str) -> Vec<(PathBuf, Vec<u8>)> {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("fuzz");
    let mut out = Vec::new();
    for dir in [
        root.join("corpus").join(target),
        root.join("regressions").join(target),
    ] {
        let Ok(entries) = std::fs::read_dir(&dir) else {
            continue;
        };
        for e in entries {
            let path = e.unwrap().path();
            if path.is_file() {
                let data = std::fs::read(&path).unwrap();
                out.push((path, data));
            }
        }
    }
    out.sort();
    out
}

#[test]
fn decode_corpus() {
    let all = inputs("decode");
    assert!(!all.is_empty(), "the decode corpus is committed");
    for (path, data) in all {
        println!("{}", path.display());
        ncx_proto::check::decode_arbitrary(&data);
    }
}

#[test]
fn roundtrip_corpus() {
    let all = inputs("roundtrip");
    assert!(!all.is_empty());
    for (path, data) in all {
        println!("{}", path.display());
        if let Ok(msg) = ncx_proto::Message::arbitrary_take_rest(Unstructured::new(&data)) {
            ncx_proto::check::round_trip(&msg);
        }
    }
}

#[test]
fn streaming_corpus() {
    let all = inputs("streaming");
    assert!(!all.is_empty());
    for (path, data) in all {
        println!("{}", path.display());
        if let Ok(input) =
            ncx_proto::check::StreamingInput::arbitrary_take_rest(Unstructured::new(&data))
        {
            input.check();
        }
    }
}

#[test]
fn proxy_header_corpus() {
    let all = inputs("proxy_header");
    assert!(!all.is_empty());
    for (path, data) in all {
        println!("{}", path.display());
        ncx_proto::check::proxy_header_arbitrary(&data);
    }
}

#[test]
fn proxy_reply_corpus() {
    let all = inputs("proxy_reply");
    assert!(!all.is_empty());
    for (path, data) in all {
        println!("{}", path.display());
        ncx::fuzzing::proxy_replies(&data);
    }
}

#[test]
fn websocket_corpus() {
    let all = inputs("websocket");
    assert!(!all.is_empty());
    for (path, data) in all {
        println!("{}", path.display());
        ncx::fuzzing::websocket(&data);
    }
}

#[test]
fn datagram_corpus() {
    let all = inputs("datagram");
    assert!(!all.is_empty());
    for (path, data) in all {
        println!("{}", path.display());
        ncx_proto::check::datagrams_arbitrary(&data);
    }
}

#[test]
fn config_corpus() {
    let all = inputs("config");
    assert!(!all.is_empty());
    for (path, data) in all {
        println!("{}", path.display());
        if let Ok(text) = std::str::from_utf8(&data) {
            ncx::fuzzing::config(text);
        }
    }
}

#[test]
fn session_corpus() {
    let all = inputs("session");
    assert!(!all.is_empty());
    let harness = ncx::fuzzing::SessionHarness::new();
    for (path, data) in all {
        println!("{}", path.display());
        harness.feed(&data);
    }
}
