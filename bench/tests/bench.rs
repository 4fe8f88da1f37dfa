//! `ncx-bench` as a user runs it, against the `ncx` binary of the same build.

use std::path::PathBuf;
use std::process::Stdio;
use std::time::Duration;

use tokio::process::Command;

/// The `ncx` binary cargo built beside `ncx-bench` (both land in `target/PROFILE/`; the README's
/// test command, `cargo test --workspace`, builds both before any test runs).
fn ncx_binary() -> PathBuf {
    let path = PathBuf::from(env!("CARGO_BIN_EXE_ncx-bench"))
        .with_file_name(format!("ncx{}", std::env::consts::EXE_SUFFIX));
    assert!(
        path.is_file(),
        "no ncx binary at {}: run the tests with `cargo test --workspace`, which builds it",
        path.display()
    );
    path
}

fn bench() -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_ncx-bench"));
    c.env_remove("RUST_LOG")
        .arg("--ncx")
        .arg(ncx_binary())
        .stdin(Stdio::null())
        .kill_on_drop(true);
    c
}

/// Asserts that the process exited 0 and returns its standard output.
fn succeeded(out: &std::process::Output, what: &str) -> String {
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        out.status.success(),
        "{what} failed: {stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    stdout
}

/// `ncx-bench` end to end with tiny sizes: every figure is measured on every path it belongs to.
/// Only the plumbing is checked here; numbers are the benchmark's business, never a test's.
#[tokio::test]
async fn bench_measures_direct_relay_floor_and_tunnel() {
    let dir = tempfile::tempdir().unwrap();
    let json = dir.path().join("bench.json");
    let out = tokio::time::timeout(
        Duration::from_secs(120),
        bench()
            .args(["--repetitions", "1", "--bulk-mib", "32"])
            .args(["--idle-connections", "20", "--json"])
            .arg(&json)
            .output(),
    )
    .await
    .expect("the bench finishes")
    .unwrap();
    let stdout = succeeded(&out, "ncx-bench");
    assert!(stdout.contains("| metric | unit | direct | relay floor | ncx (TLS) |"));
    let doc: serde_json::Value = serde_json::from_slice(&std::fs::read(&json).unwrap()).unwrap();
    let rows = doc["rows"].as_array().unwrap();
    let find = |name: &str| {
        rows.iter()
            .find(|r| r["metric"].as_str().unwrap().starts_with(name))
            .unwrap_or_else(|| panic!("no row {name}: {doc}"))
    };
    let positive = |v: &serde_json::Value| v.as_f64().is_some_and(|x| x.is_finite() && x > 0.0);
    // Measured on all three paths, with both ratios.
    for name in [
        "bulk download, 1 stream",
        "bulk upload, 1 stream",
        "bulk download, 8 streams",
        "64 B round trip p50",
        "64 B round trip p99 under bulk",
        "connect to first byte p50",
        "new connections/s, 32 openers",
    ] {
        let r = find(name);
        for key in ["direct", "relay", "ncx", "relay_ratio", "ratio"] {
            assert!(positive(&r[key]), "{name}: {key} in {r}");
        }
    }
    // CPU cost: the relay chain and the tunnel, no direct figure.
    let r = find("CPU per GiB moved");
    assert!(
        positive(&r["relay"]) && positive(&r["ncx"]) && r["direct"].is_null(),
        "{r}"
    );
    let r = find("page faults per GiB moved");
    assert!(
        r["relay"].is_f64() && r["ncx"].is_f64() && r["direct"].is_null(),
        "{r}"
    );
    // Memory: the tunnel's processes only, with every idle visitor held.
    let r = find("server RSS, 20 idle visitors");
    assert!(positive(&r["ncx"]) && r["relay"].is_null(), "{r}");
    // UDP: direct and through a UDP service, no relay floor; a rate and a loss for each.
    let r = find("UDP echo, 1400 B datagrams at 100 Mbit/s offered: received");
    assert!(
        positive(&r["direct"]) && positive(&r["ncx"]) && r["relay"].is_null(),
        "{r}"
    );
    let r = find("UDP echo, 1400 B datagrams at 100 Mbit/s offered: lost");
    let percent = |v: &serde_json::Value| v.as_f64().is_some_and(|x| (0.0..=100.0).contains(&x));
    assert!(percent(&r["direct"]) && percent(&r["ncx"]), "{r}");
}

/// The two halves of the WAN mode (`bench/wan.sh`) on loopback: the bench service, and the probe
/// loading it in both directions with round trips beside the load. Plumbing only, as above.
#[tokio::test]
async fn wan_probe_loads_a_path_both_ways_and_reports_round_trips() {
    let mut service = Command::new(env!("CARGO_BIN_EXE_ncx-bench"))
        .args(["service", "--listen", "127.0.0.1:0"])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let mut out = tokio::io::BufReader::new(service.stdout.take().unwrap());
    let mut line = String::new();
    tokio::time::timeout(
        Duration::from_secs(20),
        tokio::io::AsyncBufReadExt::read_line(&mut out, &mut line),
    )
    .await
    .expect("the service starts")
    .unwrap();
    let addr = line.trim().rsplit(' ').next().unwrap().to_string();
    for direction in ["download", "upload"] {
        let out = tokio::time::timeout(
            Duration::from_secs(60),
            Command::new(env!("CARGO_BIN_EXE_ncx-bench"))
                .args(["probe", "--bulk", &addr, "--ping", &addr])
                .args(["--direction", direction, "--streams", "2"])
                .args([
                    "--seconds",
                    "1",
                    "--warmup",
                    "0.2",
                    "--ping-interval-ms",
                    "10",
                ])
                .stdin(Stdio::null())
                .output(),
        )
        .await
        .expect("the probe finishes")
        .unwrap();
        let stdout = succeeded(&out, "ncx-bench probe");
        let field = |name: &str| -> f64 {
            stdout
                .split_whitespace()
                .find_map(|kv| kv.strip_prefix(&format!("{name}=")))
                .unwrap_or_else(|| panic!("no {name}= in {stdout}"))
                .split(',')
                .next()
                .unwrap()
                .parse()
                .unwrap_or_else(|e| panic!("{name} in {stdout}: {e}"))
        };
        assert!(field("mbit") > 0.0, "{direction}: {stdout}");
        assert!(field("rtts") >= 1.0, "{direction}: {stdout}");
        assert!(field("rtt_p99_ms") >= field("rtt_p50_ms"), "{stdout}");
        let streams = stdout
            .split_whitespace()
            .find_map(|kv| kv.strip_prefix("streams="))
            .unwrap();
        assert_eq!(streams.split(',').count(), 2, "{stdout}");
    }
}
