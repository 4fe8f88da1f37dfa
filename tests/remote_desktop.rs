//! The README's "Remote desktop safely" walkthrough, run for real: the configuration files of
//! `examples/remote-desktop/`, certificates made by `ncx certs`, the server, the office client and
//! alice's `ncx visit` as separate processes, and an unmodified OpenSSH client talking to a real
//! OpenSSH server (throwaway host and user keys) through the private service.
//!
//! Needs `sshd`, `ssh` and `ssh-keygen` and root (sshd's privilege separation). `.ci/run` installs
//! OpenSSH and sets NCX_REQUIRE_SSHD=1, which turns a missing piece into a failure instead of a
//! skip.

mod common;

use std::path::{Path, PathBuf};
use std::process::Stdio;

use common::*;
use tokio::net::TcpListener;

const SSHD: &str = "/usr/sbin/sshd";

/// Whether this machine can run the test; the reason if not.
fn missing_requirement() -> Option<String> {
    for tool in [SSHD, "/usr/bin/ssh", "/usr/bin/ssh-keygen"] {
        if !Path::new(tool).exists() {
            return Some(format!(
                "{tool} is not installed (apt-get install openssh-server openssh-client)"
            ));
        }
    }
    let uid = std::process::Command::new("id").arg("-u").output().ok()?;
    if String::from_utf8_lossy(&uid.stdout).trim() != "0" {
        return Some("sshd needs root for privilege separation".into());
    }
    None
}

/// Writes `examples/remote-desktop/NAME` into `dir` with each `(from, to)` replaced; every `from`
/// must occur, so the example cannot drift away from what this test runs.
fn example(dir: &Path, name: &str, replace: &[(&str, &str)]) -> PathBuf {
    let src = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("examples/remote-desktop")
        .join(name);
    let mut text = std::fs::read_to_string(&src).unwrap();
    for (from, to) in replace {
        assert!(text.contains(from), "{name} no longer contains {from:?}");
        text = text.replace(from, to);
    }
    let out = dir.join(name);
    std::fs::write(&out, text).unwrap();
    out
}

async fn run_ok(cmd: &mut tokio::process::Command) -> String {
    let out = tokio::time::timeout(WAIT, cmd.output())
        .await
        .expect("the command finishes in time")
        .unwrap();
    succeeded(&out, &format!("{cmd:?}"))
}

/// An SSH server on 127.0.0.1:0: every accepted connection is handed to `sshd -i` (inetd mode) as
/// its stdin and stdout, so no port has to be chosen up front.
async fn start_sshd(dir: &Path) -> std::net::SocketAddr {
    let host_key = dir.join("ssh_host_ed25519_key");
    run_ok(
        tokio::process::Command::new("ssh-keygen")
            .args(["-q", "-t", "ed25519", "-N", "", "-f"])
            .arg(&host_key),
    )
    .await;
    // Privilege separation needs this directory; Debian creates it only when the service starts.
    std::fs::create_dir_all("/run/sshd").unwrap();
    let config = dir.join("sshd_config");
    std::fs::write(
        &config,
        format!(
            "HostKey {}\nAuthorizedKeysFile {}\nPasswordAuthentication no\nKbdInteractiveAuthentication no\nUsePAM no\nStrictModes no\nPermitRootLogin prohibit-password\nPidFile none\nLogLevel ERROR\n",
            host_key.display(),
            dir.join("authorized_keys").display()
        ),
    )
    .unwrap();
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((tcp, _)) = listener.accept().await {
            let std = tcp.into_std().unwrap();
            std.set_nonblocking(false).unwrap();
            let input = std::os::fd::OwnedFd::from(std);
            let output = input.try_clone().unwrap();
            let child = tokio::process::Command::new(SSHD)
                .arg("-i")
                .arg("-f")
                .arg(&config)
                .stdin(Stdio::from(input))
                .stdout(Stdio::from(output))
                .stderr(Stdio::null())
                .kill_on_drop(true)
                .spawn()
                .unwrap();
            tokio::spawn(async move {
                let _ = tokio::time::timeout(WAIT, child.wait_with_output()).await;
            });
        }
    });
    addr
}

#[tokio::test]
async fn ssh_reaches_the_office_pc_through_a_private_service_and_ncx_visit() {
    if let Some(why) = missing_requirement() {
        assert!(
            std::env::var_os("NCX_REQUIRE_SSHD").is_none(),
            "NCX_REQUIRE_SSHD is set but {why}"
        );
        eprintln!("SKIPPED ssh end-to-end test: {why}");
        return;
    }
    let work = tempfile::tempdir().unwrap();
    let dir = work.path();

    // The certificates, exactly as the README makes them.
    for args in [
        vec!["certs", "ca"],
        vec!["certs", "server", "tunnel.example.com"],
        vec!["certs", "client", "office-pc"],
        vec!["certs", "client", "alice"],
    ] {
        run_ok(ncx_process().args(&args).current_dir(dir)).await;
    }

    // The office network: an SSH server, and something standing in for RDP.
    let sshd = start_sshd(dir).await;
    let rdp = banner_service(b"RDP stand-in\n").await;
    let user_key = dir.join("alice_ed25519");
    run_ok(
        tokio::process::Command::new("ssh-keygen")
            .args(["-q", "-t", "ed25519", "-N", "", "-f"])
            .arg(&user_key),
    )
    .await;
    std::fs::copy(dir.join("alice_ed25519.pub"), dir.join("authorized_keys")).unwrap();

    // The public server.
    let server_cfg = example(dir, "server.toml", &[("0.0.0.0:7835", "127.0.0.1:0")]);
    let mut server = ncx_process()
        .args(["server", "--config"])
        .arg(&server_cfg)
        .current_dir(dir)
        .spawn()
        .unwrap();
    let mut server_log = LogLines::new(&mut server);
    let server_addr = log_field(&server_log.wait_for("server listening").await, "addr");

    // The office PC's client, offering both services privately.
    let office_cfg = example(
        dir,
        "office-pc.toml",
        &[
            ("tunnel.example.com:7835", &server_addr),
            ("127.0.0.1:22", &sshd.to_string()),
            ("127.0.0.1:3389", &rdp.to_string()),
        ],
    );
    let mut office = ncx_process()
        .args(["client", "--config"])
        .arg(&office_cfg)
        .current_dir(dir)
        .spawn()
        .unwrap();
    let mut office_log = LogLines::new(&mut office);
    office_log.wait_for("service=office-ssh").await;

    // alice's laptop.
    let alice_cfg = example(
        dir,
        "alice.toml",
        &[
            ("tunnel.example.com:7835", &server_addr),
            ("127.0.0.1:13389", "127.0.0.1:0"),
            ("127.0.0.1:10022", "127.0.0.1:0"),
        ],
    );
    let mut alice = ncx_process()
        .args(["visit", "--config"])
        .arg(&alice_cfg)
        .current_dir(dir)
        .spawn()
        .unwrap();
    let mut alice_log = LogLines::new(&mut alice);
    let mut listen = std::collections::HashMap::new();
    for _ in 0..2 {
        let line = alice_log.wait_for("visit listener ready").await;
        listen.insert(log_field(&line, "service"), log_field(&line, "listen"));
    }
    let ssh_port = listen["office-ssh"].rsplit(':').next().unwrap().to_owned();

    // Plain OpenSSH, pinned to the throwaway host key, through alice's local port.
    let host_pub = std::fs::read_to_string(dir.join("ssh_host_ed25519_key.pub")).unwrap();
    std::fs::write(
        dir.join("known_hosts"),
        format!("[127.0.0.1]:{ssh_port} {host_pub}"),
    )
    .unwrap();
    let out = run_ok(
        tokio::process::Command::new("ssh")
            .args([
                "-F",
                "/dev/null",
                "-o",
                "BatchMode=yes",
                "-o",
                "IdentitiesOnly=yes",
            ])
            .args(["-o", "StrictHostKeyChecking=yes", "-o", "ConnectTimeout=10"])
            .arg("-o")
            .arg(format!(
                "UserKnownHostsFile={}",
                dir.join("known_hosts").display()
            ))
            .arg("-i")
            .arg(&user_key)
            .args(["-p", &ssh_port, "root@127.0.0.1"])
            .arg("echo hello-from-the-office-pc; echo $((6 * 7))")
            .stdin(Stdio::null())
            .kill_on_drop(true),
    )
    .await;
    assert_eq!(out, "hello-from-the-office-pc\n42\n");

    // The server's audit line names the service, the visiting identity and the bytes.
    let audit = server_log.wait_for("visitor connection").await;
    assert!(audit.contains(" service=office-ssh "), "{audit}");
    assert!(
        audit.contains(" INFO ") && audit.contains(" visitor connection "),
        "{audit}"
    );
    assert_eq!(log_field(&audit, "identity"), "alice");
    assert!(log_field(&audit, "bytes_in").parse::<u64>().unwrap() > 0);
    assert!(audit.contains("end=finished"), "{audit}");

    // The other visit reaches the RDP stand-in.
    let rdp_local: std::net::SocketAddr = listen["office-rdp"].parse().unwrap();
    let back = exchange(rdp_local, b"").await.unwrap();
    assert_eq!(back, b"RDP stand-in\n");

    for mut child in [alice, office, server] {
        child.kill().await.unwrap();
    }
}
