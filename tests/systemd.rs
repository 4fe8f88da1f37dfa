//! The systemd units in contrib/systemd/: checked by systemd's own `systemd-analyze verify` and
//! `security`, and their command lines run the way systemd would start them (credentials in a
//! directory named by CREDENTIALS_DIRECTORY and `%d`, a notification socket), with the example
//! configurations next to them, until a visitor's bytes go through.
//!
//! systemd-analyze comes with Debian's systemd package (`.ci/run` installs it); no running
//! systemd is needed.

mod common;

use std::path::{Path, PathBuf};

use common::programs::skip_without;
use common::*;

const ANALYZE: &str = "/usr/bin/systemd-analyze";

fn contrib(file: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("contrib/systemd")
        .join(file)
}

/// A unit file with its `ExecStart=` pointing at the ncx under test (verify checks that the
/// program exists and is executable), written into `dir` as `name`.
fn unit_here(dir: &Path, unit: &str, name: &str) -> PathBuf {
    let text = std::fs::read_to_string(contrib(unit))
        .unwrap()
        .replace("/usr/local/bin/ncx", env!("CARGO_BIN_EXE_ncx"));
    let path = dir.join(name);
    std::fs::write(&path, text).unwrap();
    path
}

/// The values of `key=` lines in a unit file.
fn values(unit: &str, key: &str) -> Vec<String> {
    std::fs::read_to_string(contrib(unit))
        .unwrap()
        .lines()
        .filter_map(|l| l.strip_prefix(&format!("{key}=")))
        .map(str::to_owned)
        .collect()
}

#[test]
fn units_pass_systemd_analyze_verify_and_security() {
    if skip_without(ANALYZE, false, "systemd unit check") {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let units = [
        unit_here(dir.path(), "ncx-server.service", "ncx-server.service"),
        // A template is verified through an instance of it.
        unit_here(
            dir.path(),
            "ncx-client@.service",
            "ncx-client@office.service",
        ),
    ];
    let out = std::process::Command::new(ANALYZE)
        .args(["verify", "--man=no"])
        .args(&units)
        .output()
        .unwrap();
    let said = String::from_utf8_lossy(&out.stderr);
    // An unknown or misspelt key is only a warning to verify: any line at all fails here.
    assert!(
        out.status.success() && said.trim().is_empty(),
        "systemd-analyze verify: {said}"
    );
    for unit in &units {
        let out = std::process::Command::new(ANALYZE)
            .args(["security", "--offline=true", "--no-pager"])
            .arg(unit)
            .output()
            .unwrap();
        let text = String::from_utf8_lossy(&out.stdout);
        let level: f64 = text
            .lines()
            .find_map(|l| l.split("Overall exposure level for ").nth(1))
            .and_then(|l| l.split(": ").nth(1))
            .and_then(|l| l.split_whitespace().next())
            .and_then(|n| n.parse().ok())
            .unwrap_or_else(|| panic!("no exposure level in {text}"));
        // systemd rates 0–10; under 2 is as hardened as a network service gets without a
        // system-call allow list of its own.
        assert!(level < 2.0, "{}: exposure {level}\n{text}", unit.display());
    }
}

#[cfg(unix)]
#[tokio::test]
async fn units_run_their_example_configurations_as_systemd_would_start_them() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();

    // The server: its credentials directory holds server.toml and office.token, as the unit's
    // LoadCredential= lines say; the example is changed only to stay on loopback.
    let credentials = d.join("server-credentials");
    std::fs::create_dir(&credentials).unwrap();
    let loaded = values("ncx-server.service", "LoadCredential");
    assert_eq!(
        loaded,
        [
            "server.toml:/etc/ncx/server.toml",
            "office.token:/etc/ncx/office.token"
        ]
    );
    let state = d.join("state");
    let config = std::fs::read_to_string(contrib("server.toml"))
        .unwrap()
        .replace("0.0.0.0:7835", "127.0.0.1:0")
        .replace("/var/lib/ncx/tls", &state.display().to_string())
        .replace("bind = \"0.0.0.0\"", "bind = \"127.0.0.1\"")
        .replace(
            "ports = [\"13389\", \"20000-20099\"]",
            "ports = [\"1024-65535\"]",
        );
    std::fs::write(credentials.join("server.toml"), config).unwrap();
    std::fs::write(credentials.join("office.token"), "a long random secret\n").unwrap();
    let runtime = d.join("run");
    std::fs::create_dir_all(runtime.join("ncx")).unwrap();
    std::fs::create_dir_all(runtime.join("ncx-client-office")).unwrap();
    let mut server = exec_start("ncx-server.service", &credentials, &runtime);
    let line = wait_for_line(&mut server, "server listening").await;
    let addr = log_field(&line, "addr");

    // The client: client.toml and the token as "token".
    let credentials = d.join("client-credentials");
    std::fs::create_dir(&credentials).unwrap();
    assert_eq!(
        values("ncx-client@.service", "LoadCredential"),
        [
            "client.toml:/etc/ncx/client-%i.toml",
            "token:/etc/ncx/client-%i.token"
        ]
    );
    let echo = echo_service().await;
    let example = std::fs::read_to_string(contrib("client.toml")).unwrap();
    let pinned = example
        .lines()
        .find_map(|l| l.strip_prefix("server_fingerprint = "))
        .unwrap()
        .to_owned();
    let config = example
        .replace("tunnel.example.com:7835", &addr)
        .replace(&pinned, &format!("{:?}", fingerprint(&state)))
        .replace("127.0.0.1:3389", &echo.to_string())
        .replace("remote_port = 13389", "remote_port = 0");
    std::fs::write(credentials.join("client.toml"), config).unwrap();
    std::fs::write(credentials.join("token"), "a long random secret\n").unwrap();
    let mut client = exec_start("ncx-client@.service", &credentials, &runtime);
    let line = wait_for_line(&mut client, "service available").await;
    let public: std::net::SocketAddr = log_field(&line, "public").parse().unwrap();
    assert_eq!(
        exchange(public, b"through the units").await.unwrap(),
        b"through the units"
    );
    // Their admin sockets answer `ncx status`.
    for socket in ["ncx/server.sock", "ncx-client-office/client.sock"] {
        let out = ncx_process()
            .args(["status", "--socket"])
            .arg(runtime.join(socket))
            .output()
            .await
            .unwrap();
        let text = succeeded(&out, "ncx status");
        assert!(text.starts_with("ncx "), "{text}");
    }
    client.kill().await.unwrap();
    server.kill().await.unwrap();
}

/// The unit's `ExecStart=` as systemd runs it: `%d` is the credentials directory, which the
/// process also finds in CREDENTIALS_DIRECTORY, `%t` the runtime directory (`/run`) and `%i`
/// the instance, here `office`.
#[cfg(unix)]
fn exec_start(unit: &str, credentials: &Path, runtime: &Path) -> tokio::process::Child {
    let [line] = values(unit, "ExecStart").try_into().unwrap();
    let line = line
        .replace("%d", &credentials.display().to_string())
        .replace("%t", &runtime.display().to_string())
        .replace("%i", "office");
    let mut words = line.split_whitespace();
    assert_eq!(words.next(), Some("/usr/local/bin/ncx"), "{line}");
    let mut c = ncx_process();
    c.args(words)
        .env("CREDENTIALS_DIRECTORY", credentials)
        .current_dir(credentials);
    c.spawn().unwrap()
}
