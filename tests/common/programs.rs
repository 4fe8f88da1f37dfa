//! Third-party programs the tests run next to ncx (squid, dante, HAProxy, nginx): whether they can
//! run here, waiting for them to listen, and stopping them.
//!
//! `.ci/run` installs them and sets NCX_REQUIRE_PROXIES=1, which turns a missing one into a failure
//! instead of a SKIPPED line.

use std::net::SocketAddr;
use std::path::Path;
use std::time::Duration;

use super::WAIT;

/// Whether this process runs as root.
pub fn is_root() -> bool {
    std::process::Command::new("id")
        .arg("-u")
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim() == "0")
        .unwrap_or(false)
}

/// Skips the test (with a SKIPPED line) unless `program` is installed (and this is root, when
/// `needs_root`), or fails when NCX_REQUIRE_PROXIES says it must run.
pub fn skip_without(program: &str, needs_root: bool, test: &str) -> bool {
    let why = if !Path::new(program).is_file() {
        format!("{program} is not installed")
    } else if needs_root && !is_root() {
        format!("not root ({program} needs it here)")
    } else {
        return false;
    };
    assert!(
        std::env::var_os("NCX_REQUIRE_PROXIES").is_none(),
        "NCX_REQUIRE_PROXIES is set but {why}"
    );
    eprintln!("SKIPPED {test}: {why}");
    true
}

/// Waits until something accepts connections at `addr` (a program that has started).
pub async fn wait_listening(addr: SocketAddr) {
    let start = std::time::Instant::now();
    while tokio::net::TcpStream::connect(addr).await.is_err() {
        assert!(start.elapsed() < WAIT, "nothing listens at {addr}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Stops a program the way its init script does (SIGTERM, so it reaps its own helpers), waiting a
/// bounded while; `kill_on_drop` is the fallback.
pub fn terminate(child: &mut tokio::process::Child) {
    let Some(pid) = child.id() else {
        return;
    };
    let _ = std::process::Command::new("kill")
        .args(["-TERM", &pid.to_string()])
        .status();
    for _ in 0..250 {
        if matches!(child.try_wait(), Ok(Some(_))) {
            return;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}
