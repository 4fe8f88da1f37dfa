//! Third-party programs the tests run next to ncx (squid, dante, HAProxy, nginx, systemd-analyze):
//! whether they can run here, waiting for them to listen, and stopping them.
//!
//! `.ci/run` installs them and sets NCX_REQUIRE_PROXIES=1, which turns a missing one into a failure
//! instead of a SKIPPED line.

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

/// How many times [`start_on_ports`] starts a program that exits before it listens.
const STARTS: usize = 5;

/// Starts a program on `N` loopback ports chosen here (`spawn` writes its configuration for them
/// and runs it) and waits until it listens on all of them. A port from [`super::free_port`] is
/// only free when chosen: another test of the same binary can take it (an ephemeral port of an
/// outgoing connection, say) before the program binds it, and the program then exits. So one
/// that exits before listening is started again on fresh ports, at most [`STARTS`] times; `log`
/// is the file it writes its errors to, shown when it never comes up.
pub async fn start_on_ports<const N: usize>(
    name: &str,
    log: &Path,
    mut spawn: impl FnMut([u16; N]) -> tokio::process::Child,
) -> (tokio::process::Child, [u16; N]) {
    let mut exits = Vec::new();
    for _ in 0..STARTS {
        let ports: [u16; N] = std::array::from_fn(|_| super::free_port());
        let mut child = spawn(ports);
        let start = std::time::Instant::now();
        loop {
            if let Ok(Some(status)) = child.try_wait() {
                exits.push(status);
                break;
            }
            let mut up = true;
            for port in ports {
                up &= tokio::net::TcpStream::connect((std::net::Ipv4Addr::LOCALHOST, port))
                    .await
                    .is_ok();
            }
            if up {
                return (child, ports);
            }
            assert!(
                start.elapsed() < WAIT,
                "{name} runs but does not listen on {ports:?}; its log:\n{}",
                read_log(log)
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
    panic!(
        "{name} exited before listening, {STARTS} times ({exits:?}); its log:\n{}",
        read_log(log)
    );
}

fn read_log(log: &Path) -> String {
    std::fs::read_to_string(log).unwrap_or_else(|e| format!("({}: {e})", log.display()))
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
