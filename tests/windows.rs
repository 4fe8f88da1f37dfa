//! The Windows build under wine: `ncx.exe demo --check`, a Windows `ncx.exe client` serving a
//! visitor through a Linux `ncx server`, and a Windows `ncx.exe visit` reaching a private service
//! offered by a Linux client. Real bytes through each, checked.
//!
//! Needs `target/x86_64-pc-windows-gnu/debug/ncx.exe` (`cargo build --target
//! x86_64-pc-windows-gnu --bin ncx`), `wine` and mingw-w64's `x86_64-w64-mingw32-gcc`, which builds
//! the test-only `bcryptprimitives.dll` stand-in wine 8 needs (tests/windows/bcryptprimitives.c).
//! `.ci/run` installs and builds all of it and sets NCX_REQUIRE_WINE=1, which turns a missing piece
//! into a failure instead of a skip.

mod common;

use std::path::{Path, PathBuf};
use std::process::Stdio;

use common::*;

fn windows_exe() -> PathBuf {
    let target = std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join("target"));
    target.join("x86_64-pc-windows-gnu/debug/ncx.exe")
}

fn on_path(program: &str) -> bool {
    std::process::Command::new(program)
        .arg("--version")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok()
}

fn missing_requirement() -> Option<String> {
    if !windows_exe().is_file() {
        return Some(format!("{} is not built", windows_exe().display()));
    }
    if !on_path("wine") {
        return Some("wine is not installed".into());
    }
    if !on_path("x86_64-w64-mingw32-gcc") {
        return Some("mingw-w64 (x86_64-w64-mingw32-gcc) is not installed".into());
    }
    None
}

/// A directory with ncx.exe and the `bcryptprimitives.dll` stand-in, and a wine prefix of its own.
struct Wine {
    dir: tempfile::TempDir,
}

impl Wine {
    fn new() -> Self {
        let dir = tempfile::tempdir().unwrap();
        std::fs::copy(windows_exe(), dir.path().join("ncx.exe")).unwrap();
        let shim = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/windows/bcryptprimitives.c");
        let out = std::process::Command::new("x86_64-w64-mingw32-gcc")
            .args(["-shared", "-O2", "-o"])
            .arg(dir.path().join("bcryptprimitives.dll"))
            .arg(shim)
            .arg("-ladvapi32")
            .output()
            .unwrap();
        succeeded(&out, "building bcryptprimitives.dll");
        Wine { dir }
    }

    /// `ncx.exe ARGS` under wine, killed when dropped.
    fn ncx(&self, args: &[&str]) -> tokio::process::Command {
        let mut c = tokio::process::Command::new("wine");
        c.arg(self.dir.path().join("ncx.exe"))
            .args(args)
            .current_dir(self.dir.path())
            .env("WINEPREFIX", self.dir.path().join("prefix"))
            .env("WINEDEBUG", "-all")
            .env_remove("RUST_LOG")
            .env_remove("NCX_TOKEN")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .kill_on_drop(true);
        c
    }
}

impl Drop for Wine {
    fn drop(&mut self) {
        // The prefix's wineserver would otherwise linger a few seconds after the last process.
        let _ = std::process::Command::new("wineserver")
            .arg("-k")
            .env("WINEPREFIX", self.dir.path().join("prefix"))
            .status();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_windows_binary_runs_the_demo_serves_a_visitor_and_visits_under_wine() {
    if let Some(why) = missing_requirement() {
        assert!(
            std::env::var_os("NCX_REQUIRE_WINE").is_none(),
            "NCX_REQUIRE_WINE is set but {why}"
        );
        eprintln!("SKIPPED Windows test under wine: {why}");
        return;
    }
    let wine = Wine::new();

    // 1. The demo, self-checking (the first run also creates the wine prefix).
    let out = tokio::time::timeout(
        std::time::Duration::from_secs(120),
        wine.ncx(&["demo", "--check"]).output(),
    )
    .await
    .expect("the demo finishes in time")
    .unwrap();
    let text = succeeded(&out, "ncx.exe demo --check");
    let all = format!("{text}{}", String::from_utf8_lossy(&out.stderr));
    assert!(all.contains("round trip through the tunnel ok"), "{all}");

    // 2. A Windows client serves a visitor through a Linux server.
    let dir = tempfile::tempdir().unwrap();
    let (mut server, addr) = server_process(dir.path(), "127.0.0.1:0".parse().unwrap()).await;
    let fp = fingerprint(dir.path());
    let echo = echo_service().await;
    let mut client = wine
        .ncx(&[
            "client",
            "--server",
            &addr.to_string(),
            "--identity",
            "a",
            "--server-fingerprint",
            &fp,
            "--service",
            &format!("e={echo}@0"),
        ])
        .env("NCX_TOKEN", "t")
        .spawn()
        .unwrap();
    let line = wait_for_line(&mut client, "service available").await;
    let public: std::net::SocketAddr = log_field(&line, "public").parse().unwrap();
    let payload = Rng(11).bytes(256 * 1024);
    assert_eq!(
        exchange(public, &payload).await.unwrap(),
        payload,
        "a visitor's bytes through the Windows client"
    );
    client.kill().await.unwrap();

    // 3. A Windows `ncx visit` reaches a private service a Linux client offers.
    let trust = ncx::tls::ServerTrust::Pinned(fp.parse().unwrap());
    let office = RunningClient::start(client_settings(
        addr,
        trust,
        "a",
        "t",
        vec![private_service("p", echo, &["a"])],
    ))
    .await;
    let mut visit = wine
        .ncx(&[
            "visit",
            "--server",
            &addr.to_string(),
            "--identity",
            "a",
            "--server-fingerprint",
            &fp,
            "--service",
            "a/p",
            "--listen",
            "127.0.0.1:0",
        ])
        .env("NCX_TOKEN", "t")
        .spawn()
        .unwrap();
    let line = wait_for_line(&mut visit, "visit listener ready").await;
    let local: std::net::SocketAddr = log_field(&line, "listen").parse().unwrap();
    let payload = Rng(12).bytes(256 * 1024);
    assert_eq!(
        exchange(local, &payload).await.unwrap(),
        payload,
        "bytes through the Windows visit listener"
    );
    visit.kill().await.unwrap();
    office.stop().await;
    server.kill().await.unwrap();
}
