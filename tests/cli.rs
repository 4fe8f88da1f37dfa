//! The `ncx` binary as a user runs it: real processes, real sockets on 127.0.0.1.

mod common;

use std::process::Stdio;
use std::time::Duration;

use common::*;
use tokio::process::Command;

fn ncx() -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_ncx"));
    for var in SERVICE_MANAGER_VARS {
        c.env_remove(var);
    }
    c.env_remove("RUST_LOG")
        .env_remove("NCX_TOKEN")
        .stdin(Stdio::null())
        .kill_on_drop(true);
    c
}

#[tokio::test]
async fn demo_check_exits_zero_after_a_round_trip() {
    let out = tokio::time::timeout(WAIT, ncx().args(["demo", "--check"]).output())
        .await
        .unwrap()
        .unwrap();
    let stdout = succeeded(&out, "ncx demo --check");
    assert!(
        stdout.contains("round trip through the tunnel ok"),
        "{stdout}"
    );
}

#[tokio::test]
async fn refused_client_exits_nonzero_with_the_reason() {
    let pki = Pki::new();
    let server = TestServer::start(&pki, server_settings(vec![identity("office", "right")])).await;
    let out = tokio::time::timeout(
        WAIT,
        ncx()
            .args([
                "client",
                "--server",
                &server.addr.to_string(),
                "--identity",
                "office",
            ])
            .args([
                "--server-fingerprint",
                &pki.server.fingerprint().to_string(),
            ])
            .args(["--service", "web=127.0.0.1:9@0"])
            .env("NCX_TOKEN", "hunter2-not-the-token")
            .output(),
    )
    .await
    .unwrap()
    .unwrap();
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("error: the server refused this client"),
        "{stderr}"
    );
    assert!(stderr.contains("bad token"), "{stderr}");
    assert!(
        stderr.contains("the token came from the environment variable NCX_TOKEN"),
        "{stderr}"
    );
    assert!(
        !stderr.contains("hunter2"),
        "the token must never be logged: {stderr}"
    );
    server.stop().await;
}

/// A client configuration for the server at `addr` with `token` in it.
fn client_toml(
    dir: &std::path::Path,
    addr: std::net::SocketAddr,
    fp: &str,
    token: &str,
) -> std::path::PathBuf {
    let path = dir.join("client.toml");
    std::fs::write(
        &path,
        format!(
            "server = \"{addr}\"\nidentity = \"office\"\ntoken = \"{token}\"\nserver_fingerprint = \"{fp}\"\n\n[[services]]\nname = \"web\"\nlocal = \"127.0.0.1:9\"\nremote_port = 0\n"
        ),
    )
    .unwrap();
    path
}

#[tokio::test]
async fn a_token_in_the_file_wins_over_a_stale_ncx_token_and_a_refusal_names_the_file() {
    let pki = Pki::new();
    let server = TestServer::start(&pki, server_settings(vec![identity("office", "right")])).await;
    let dir = tempfile::tempdir().unwrap();
    let fp = pki.server.fingerprint().to_string();
    // The file's token is right; a stale NCX_TOKEN beside it must not replace it.
    let good = client_toml(dir.path(), server.addr, &fp, "right");
    let mut client = ncx()
        .args(["client", "--config"])
        .arg(&good)
        .env("NCX_TOKEN", "stale")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    wait_for_line(&mut client, "connected to the server").await;
    client.kill().await.unwrap();
    // The file's token is wrong: the error says so and names the file.
    let bad = client_toml(dir.path(), server.addr, &fp, "wrong");
    let out = tokio::time::timeout(WAIT, ncx().args(["client", "--config"]).arg(&bad).output())
        .await
        .unwrap()
        .unwrap();
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains(&format!("the token came from `token` in {}", bad.display())),
        "{stderr}"
    );
    server.stop().await;
}

#[tokio::test]
async fn the_server_starts_from_a_config_file_with_ncx_token_set() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = dir.path().join("server.toml");
    std::fs::write(
        &cfg,
        format!(
            "listen = \"127.0.0.1:0\"\n\n[tls]\nauto_cert_dir = \"{}\"\n\n[[identities]]\nname = \"office\"\ntoken = \"t\"\nports = [\"20000-20010\"]\n",
            dir.path().join("certs").display()
        ),
    )
    .unwrap();
    // At 8354efb, NCX_TOKEN (as the README has users export) made clap demand --identity and
    // --ports beside --config, exit 2.
    let mut server = ncx()
        .args(["server", "--config"])
        .arg(&cfg)
        .env("NCX_TOKEN", "something")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    wait_for_line(&mut server, "server listening").await;
    server.kill().await.unwrap();
    // --identity still takes its token from NCX_TOKEN, and says so when there is none.
    let out = ncx()
        .args([
            "server",
            "--listen",
            "127.0.0.1:0",
            "--identity",
            "a",
            "--ports",
            "20000",
        ])
        .output()
        .await
        .unwrap();
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains(
            "--identity a needs a token: pass --token or --token-file, or set the environment variable NCX_TOKEN"
        ),
        "{stderr}"
    );
}

#[tokio::test]
async fn certs_tooling_writes_private_keys_0600_and_refuses_to_overwrite() {
    use std::os::unix::fs::PermissionsExt;
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path().to_str().unwrap();
    let run = |args: Vec<&str>| {
        let mut c = ncx();
        c.arg("certs").args(["--dir", d]).args(args);
        async move {
            tokio::time::timeout(WAIT, c.output())
                .await
                .unwrap()
                .unwrap()
        }
    };
    let ca = run(vec!["ca"]).await;
    assert!(succeeded(&ca, "ncx certs ca").contains("fingerprint: sha256:"));
    succeeded(
        &run(vec!["server", "localhost", "127.0.0.1"]).await,
        "ncx certs server",
    );
    succeeded(&run(vec!["client", "office"]).await, "ncx certs client");
    for key in ["ca.key", "server.key", "client-office.key"] {
        let mode = std::fs::metadata(dir.path().join(key))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600, "{key}");
    }
    let again = run(vec!["ca"]).await;
    assert!(!again.status.success());
    assert!(String::from_utf8_lossy(&again.stderr).contains("--force"));
    succeeded(
        &run(vec!["--force", "server", "localhost", "127.0.0.1"]).await,
        "ncx certs --force server",
    );

    // The files work: a server with them, a client trusting the CA file.
    let identity = ncx::tls::ServerIdentity::from_files(
        &dir.path().join("server.crt"),
        &dir.path().join("server.key"),
    )
    .unwrap();
    let trust = ncx::tls::ServerTrust::ca_file(&dir.path().join("ca.crt")).unwrap();
    let server =
        ncx::server::Server::new(server_settings(vec![common::identity("a", "t")]), identity)
            .unwrap();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let stop = tokio_util::sync::CancellationToken::new();
    let task = tokio::spawn({
        let stop = stop.clone();
        async move { server.run(listener, stop).await }
    });
    let echo = echo_service().await;
    let client = RunningClient::start(client_settings(
        addr,
        trust,
        "a",
        "t",
        vec![service("e", echo, 0)],
    ))
    .await;
    assert_eq!(
        exchange(([127, 0, 0, 1], client.port("e")).into(), b"via ca")
            .await
            .unwrap(),
        b"via ca"
    );
    client.stop().await;
    stop.cancel();
    task.await.unwrap();
}

#[tokio::test]
async fn server_without_certificate_creates_one_and_reuses_it() {
    use std::os::unix::fs::PermissionsExt;
    let dir = tempfile::tempdir().unwrap();
    let start = || {
        let mut c = ncx();
        c.args(["server", "--listen", "127.0.0.1:0", "--auto-cert-dir"])
            .arg(dir.path())
            .args(["--identity", "a", "--ports", "20000-20010"])
            .env("NCX_TOKEN", "t")
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        c.spawn().unwrap()
    };
    let mut first = start();
    let fp1 = wait_for_line(&mut first, "server certificate fingerprint:").await;
    first.kill().await.unwrap();
    let key = dir.path().join("ncx-server.key");
    let mode = std::fs::metadata(&key).unwrap().permissions().mode();
    assert_eq!(mode & 0o777, 0o600);
    let mut second = start();
    let fp2 = wait_for_line(&mut second, "server certificate fingerprint:").await;
    second.kill().await.unwrap();
    assert_eq!(fp1, fp2, "a restarted server keeps its certificate");
    assert!(fp1.contains("sha256:"));
}

#[tokio::test]
async fn walkthrough_with_processes_pinned_fingerprint() {
    // The README's two-machine walkthrough, both machines on loopback.
    let dir = tempfile::tempdir().unwrap();
    let mut server = ncx()
        .args(["server", "--listen", "127.0.0.1:0", "--auto-cert-dir"])
        .arg(dir.path())
        .args([
            "--identity",
            "office",
            "--ports",
            "1024-65535",
            "--bind",
            "127.0.0.1",
        ])
        .env("NCX_TOKEN", "s3cret-token")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let listening = wait_for_line(&mut server, "server listening").await;
    let addr = log_field(&listening, "addr");
    let fingerprint = ncx::certs::load_or_create_self_signed(dir.path())
        .unwrap()
        .0
        .fingerprint()
        .to_string();
    let echo = echo_service().await;
    let mut client = ncx()
        .args(["client", "--server", &addr, "--identity", "office"])
        .args(["--server-fingerprint", &fingerprint])
        .args(["--service", &format!("echo={echo}@0")])
        .env("NCX_TOKEN", "s3cret-token")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let available = wait_for_line(&mut client, "service available").await;
    let public: std::net::SocketAddr = log_field(&available, "public").parse().unwrap();
    assert_eq!(
        exchange(public, b"through processes").await.unwrap(),
        b"through processes"
    );
    client.kill().await.unwrap();
    wait_until_refused(public, Duration::from_secs(1)).await;
    server.kill().await.unwrap();
}

#[tokio::test]
async fn server_writes_one_audit_line_per_visitor_connection() {
    let dir = tempfile::tempdir().unwrap();
    let mut server = ncx()
        .args(["server", "--listen", "127.0.0.1:0", "--auto-cert-dir"])
        .arg(dir.path())
        .args([
            "--identity",
            "office",
            "--ports",
            "1024-65535",
            "--bind",
            "127.0.0.1",
        ])
        .env("NCX_TOKEN", "audit-token")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut log = LogLines::new(&mut server);
    let addr = log_field(&log.wait_for("server listening").await, "addr");
    let fingerprint = ncx::certs::load_or_create_self_signed(dir.path())
        .unwrap()
        .0
        .fingerprint();
    let echo = echo_service().await;
    let dead = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap();
    let client = RunningClient::start(client_settings(
        addr.parse().unwrap(),
        ncx::tls::ServerTrust::Pinned(vec![fingerprint]),
        "office",
        "audit-token",
        vec![service("echo", echo, 0), service("dead", dead, 0)],
    ))
    .await;
    let public = ([127, 0, 0, 1], client.port("echo")).into();
    assert_eq!(
        exchange(public, b"twelve bytes").await.unwrap(),
        b"twelve bytes"
    );
    let line = log.wait_for("visitor connection").await;
    assert!(
        line.contains(" INFO ") && line.contains(" visitor connection service="),
        "{line}"
    );
    assert_eq!(log_field(&line, "service"), "echo");
    assert_eq!(log_field(&line, "bytes_in"), "12");
    assert_eq!(log_field(&line, "bytes_out"), "12");
    assert!(line.contains("end=finished"), "{line}");
    assert!(line.contains("duration_ms="), "{line}");
    // A visitor the client cannot serve gets its line too, saying why.
    let _ = exchange(([127, 0, 0, 1], client.port("dead")).into(), b"x").await;
    let line = log.wait_for("visitor connection").await;
    assert_eq!(log_field(&line, "service"), "dead");
    assert!(line.contains("refused by the client"), "{line}");
    client.stop().await;
    server.kill().await.unwrap();
}

#[tokio::test]
async fn ncx_visit_with_flags_reaches_a_private_service_and_logs_a_refusal() {
    let pki = Pki::new();
    let server = TestServer::start(
        &pki,
        server_settings(vec![
            identity_ports("office", "office-token", vec![]),
            identity_ports("alice", "alice-token", vec![]),
            identity_ports("bob", "bob-token", vec![]),
        ]),
    )
    .await;
    let echo = echo_service().await;
    let owner = RunningClient::start(client_settings(
        server.addr,
        pki.pinned(),
        "office",
        "office-token",
        vec![private_service("rdp", echo, &["alice"])],
    ))
    .await;
    let visit = |who: &str, token: &str| {
        let mut c = ncx();
        c.args(["visit", "--server", &server.addr.to_string()])
            .args([
                "--server-fingerprint",
                &pki.server.fingerprint().to_string(),
            ])
            .args([
                "--identity",
                who,
                "--service",
                "office/rdp",
                "--listen",
                "127.0.0.1:0",
            ])
            .env("NCX_TOKEN", token)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        c.spawn().unwrap()
    };
    let mut alice = visit("alice", "alice-token");
    let mut alice_log = LogLines::new(&mut alice);
    let line = alice_log.wait_for("visit listener ready").await;
    let local: std::net::SocketAddr = log_field(&line, "listen").parse().unwrap();
    assert_eq!(
        exchange(local, b"via ncx visit").await.unwrap(),
        b"via ncx visit"
    );

    let mut bob = visit("bob", "bob-token");
    let mut bob_log = LogLines::new(&mut bob);
    let line = bob_log.wait_for("visit listener ready").await;
    let local: std::net::SocketAddr = log_field(&line, "listen").parse().unwrap();
    let refused = exchange(local, b"let me in").await;
    assert!(
        refused.as_ref().map_or(true, Vec::is_empty),
        "bob got data: {refused:?}"
    );
    let line = bob_log.wait_for("refused the visit").await;
    assert!(line.contains("code=not allowed"), "{line}");
    assert!(
        line.contains("identity bob may not visit office/rdp"),
        "{line}"
    );
    for mut c in [alice, bob] {
        c.kill().await.unwrap();
    }
    owner.stop().await;
    server.stop().await;
}

#[tokio::test]
async fn version_names_the_git_revision_it_was_built_from() {
    let out = ncx().arg("--version").output().await.unwrap();
    let stdout = succeeded(&out, "ncx --version");
    let expected_rev = std::process::Command::new("git")
        .args(["rev-parse", "--short=12", "HEAD"])
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .output()
        .ok()
        .filter(|o| o.status.success())
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_owned());
    let want = match expected_rev {
        Some(r) => format!("ncx {} ({r})", env!("CARGO_PKG_VERSION")),
        None => format!("ncx {} (revision unknown)", env!("CARGO_PKG_VERSION")),
    };
    assert_eq!(stdout.trim(), want);
}

#[tokio::test]
async fn a_closed_stdout_and_stderr_do_not_stop_the_tunnel() {
    use tokio::io::AsyncBufReadExt;
    // As `ncx demo 2>&1 | head -1` leaves it: at 8354efb the next log line panicked (exit 101).
    let mut demo = ncx()
        .arg("demo")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut lines = tokio::io::BufReader::new(demo.stdout.take().unwrap()).lines();
    let public: std::net::SocketAddr = tokio::time::timeout(WAIT, async {
        while let Some(l) = lines.next_line().await.unwrap() {
            if let Some(addr) = l.split(" is exposed at ").nth(1) {
                return addr.trim().parse().unwrap();
            }
        }
        panic!("the demo ended before naming its public address")
    })
    .await
    .unwrap();
    // Both readers go away.
    drop(lines);
    drop(demo.stderr.take());
    // Visitors make the demo log; the tunnel keeps working.
    for _ in 0..3 {
        let reply = tokio::time::timeout(WAIT, ncx::demo::round_trip(public))
            .await
            .unwrap()
            .unwrap();
        assert_eq!(reply, "ping");
    }
    assert!(std::process::Command::new("kill")
        .args(["-TERM", &demo.id().unwrap().to_string()])
        .status()
        .unwrap()
        .success());
    let status = tokio::time::timeout(WAIT, demo.wait())
        .await
        .unwrap()
        .unwrap();
    assert!(status.success(), "{status:?}");
}

#[tokio::test]
async fn an_error_names_its_cause_once() {
    // At 8354efb the cause was both in the message and in the error chain, so it printed twice:
    // "... pass --force to overwrite it: File exists (os error 17): File exists (os error 17)".
    let dir = tempfile::tempdir().unwrap();
    let run = |args: &'static [&'static str]| {
        let mut c = ncx();
        c.args(args).current_dir(dir.path());
        c
    };
    succeeded(
        &run(&["certs", "ca"]).output().await.unwrap(),
        "ncx certs ca",
    );
    let out = run(&["certs", "ca"]).output().await.unwrap();
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("pass --force to overwrite it"), "{stderr}");
    assert_eq!(stderr.matches("os error 17").count(), 1, "{stderr}");

    let out = run(&["server", "--config", "no-such-server.toml"])
        .output()
        .await
        .unwrap();
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("reading no-such-server.toml"), "{stderr}");
    assert_eq!(stderr.matches("os error 2").count(), 1, "{stderr}");

    // A key that belongs to another certificate. At 8354efb: "KeyMismatch: keys may not be
    // consistent: KeyMismatch".
    succeeded(
        &run(&["certs", "server", "localhost"])
            .output()
            .await
            .unwrap(),
        "ncx certs server",
    );
    let out = run(&[
        "server",
        "--listen",
        "127.0.0.1:0",
        "--cert",
        "certs/server.crt",
        "--key",
        "certs/ca.key",
        "--identity",
        "a",
        "--token",
        "t",
        "--ports",
        "20000",
    ])
    .output()
    .await
    .unwrap();
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("using the server certificate and key: the private key does not belong to the certificate: give the key that was made with it"),
        "{stderr}"
    );
    assert!(!stderr.contains("KeyMismatch"), "{stderr}");
}

#[tokio::test]
async fn log_lines_carry_human_durations_and_no_empty_counts() {
    // At 8354efb: `retry_in=1.187090867s` and `held_back=0` on every rate-limited line.
    let port = free_port();
    let mut client = ncx()
        .args(["client", "--server", &format!("127.0.0.1:{port}")])
        .args(["--identity", "a", "--token", "t", "--insecure-skip-verify"])
        .args(["--service", "web=127.0.0.1:9@0"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let line = wait_for_line(&mut client, "not connected; retrying").await;
    let retry_in = log_field(&line, "retry_in");
    let human = |s: &str| {
        s.strip_suffix("ms")
            .is_some_and(|n| n.parse::<u32>().is_ok())
            || s.strip_suffix('s').is_some_and(|n| {
                n.parse::<u32>().is_ok()
                    || n.split_once('.').is_some_and(|(a, b)| {
                        a.parse::<u32>().is_ok() && b.len() == 1 && b.parse::<u32>().is_ok()
                    })
            })
    };
    assert!(human(&retry_in), "{line}");
    client.kill().await.unwrap();

    // A server logs a connection that never authenticated (rate-limited): no held_back=0.
    let dir = tempfile::tempdir().unwrap();
    let mut server = ncx_process()
        .args(["server", "--listen", "127.0.0.1:0", "--auto-cert-dir"])
        .arg(dir.path())
        .args(["--identity", "a", "--token", "t", "--ports", "20000"])
        .spawn()
        .unwrap();
    let mut log = LogLines::new(&mut server);
    let addr: std::net::SocketAddr = log_field(&log.wait_for("server listening").await, "addr")
        .parse()
        .unwrap();
    let trust = ncx::tls::ServerTrust::Pinned(vec![fingerprint(dir.path()).parse().unwrap()]);
    let cfg = ncx::tls::client_config(&trust, None).unwrap();
    let tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
    let tls = tokio_rustls::TlsConnector::from(std::sync::Arc::new(cfg))
        .connect(
            rustls::pki_types::ServerName::try_from("localhost").unwrap(),
            tcp,
        )
        .await
        .unwrap();
    drop(tls);
    let line = log.wait_for("session ended before authentication").await;
    assert!(!line.contains("held_back"), "{line}");
    server.kill().await.unwrap();
}

#[tokio::test]
async fn the_server_keeps_its_identity_whatever_directory_it_starts_from() {
    // At 8354efb the self-signed certificate went to ./certs of the working directory: started
    // from elsewhere, the server made a new identity and every pinned client failed.
    let conf = tempfile::tempdir().unwrap();
    let elsewhere = tempfile::tempdir().unwrap();
    let cfg = conf.path().join("server.toml");
    std::fs::write(
        &cfg,
        "listen = \"127.0.0.1:0\"\n\n[[identities]]\nname = \"a\"\ntoken = \"t\"\nports = [\"20000\"]\n",
    )
    .unwrap();
    let start = |cwd: &std::path::Path, state: Option<&std::path::Path>| {
        let mut c = ncx();
        c.args(["server", "--config"])
            .arg(&cfg)
            .current_dir(cwd)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        if let Some(s) = state {
            c.env("STATE_DIRECTORY", s);
        }
        c.spawn().unwrap()
    };
    let mut first = start(elsewhere.path(), None);
    let mut log = LogLines::new(&mut first);
    let line = log
        .wait_for("created a self-signed server certificate in")
        .await;
    let fp1 = log.wait_for("clients pin it with").await;
    first.kill().await.unwrap();
    let certs = conf.path().join("certs");
    assert!(line.contains(&certs.display().to_string()), "{line}");
    assert!(certs.join("ncx-server.crt").is_file());
    assert!(!elsewhere.path().join("certs").exists());
    // From yet another directory: the same identity.
    let other = tempfile::tempdir().unwrap();
    let mut second = start(other.path(), None);
    let mut log = LogLines::new(&mut second);
    log.wait_for("using the self-signed server certificate in")
        .await;
    assert_eq!(log.wait_for("clients pin it with").await, fp1);
    second.kill().await.unwrap();
    // Under systemd, StateDirectory= wins.
    let state = tempfile::tempdir().unwrap();
    let mut third = start(other.path(), Some(state.path()));
    let mut log = LogLines::new(&mut third);
    let line = log
        .wait_for("created a self-signed server certificate in")
        .await;
    assert!(
        line.contains(&state.path().join("certs").display().to_string()),
        "{line}"
    );
    third.kill().await.unwrap();
}

#[tokio::test]
async fn a_server_configured_by_flags_keeps_its_identity_in_the_state_directory() {
    // Until this change a server without a file kept it in ./certs of wherever it started.
    let home = tempfile::tempdir().unwrap();
    let start = |cwd: &std::path::Path| {
        let mut c = ncx();
        c.args(["server", "--listen", "127.0.0.1:0"])
            .args(["--identity", "a", "--token", "t", "--ports", "20000"])
            .current_dir(cwd)
            .env("HOME", home.path())
            .env_remove("XDG_STATE_HOME")
            .env_remove("STATE_DIRECTORY")
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        c.spawn().unwrap()
    };
    let (one, two) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let state = home.path().join(".local/state/ncx/certs");
    let mut first = start(one.path());
    let mut log = LogLines::new(&mut first);
    let line = log
        .wait_for("created a self-signed server certificate in")
        .await;
    assert!(line.contains(&state.display().to_string()), "{line}");
    let fp = log.wait_for("clients pin it with").await;
    first.kill().await.unwrap();
    assert!(state.join("ncx-server.crt").is_file());
    assert!(!one.path().join("certs").exists());
    let mut second = start(two.path());
    let mut log = LogLines::new(&mut second);
    log.wait_for("using the self-signed server certificate in")
        .await;
    assert_eq!(log.wait_for("clients pin it with").await, fp);
    second.kill().await.unwrap();
    // A server that an earlier version set up in ./certs keeps that identity.
    let legacy = tempfile::tempdir().unwrap();
    ncx::certs::load_or_create_self_signed(&legacy.path().join("certs")).unwrap();
    let mut third = start(legacy.path());
    let mut log = LogLines::new(&mut third);
    let line = log
        .wait_for("using the self-signed server certificate in")
        .await;
    assert!(
        line.contains(&legacy.path().join("certs").display().to_string()),
        "{line}"
    );
    third.kill().await.unwrap();
}

#[tokio::test]
async fn tokens_come_from_files_and_from_systemd_credentials() {
    // Server and client each read the token from $CREDENTIALS_DIRECTORY (systemd's
    // LoadCredential=), named by a relative --token-file; the token is on no command line.
    let dir = tempfile::tempdir().unwrap();
    let (server_creds, client_creds) = (dir.path().join("srv"), dir.path().join("cli"));
    for d in [&server_creds, &client_creds] {
        std::fs::create_dir(d).unwrap();
        let token = d.join("office.token");
        std::fs::write(&token, "from-a-credential\n").unwrap();
        std::fs::set_permissions(&token, std::os::unix::fs::PermissionsExt::from_mode(0o600))
            .unwrap();
    }
    let certs = dir.path().join("certs");
    let mut server = ncx()
        .args(["server", "--listen", "127.0.0.1:0", "--auto-cert-dir"])
        .arg(&certs)
        .args(["--identity", "office", "--token-file", "office.token"])
        .args(["--ports", "1024-65535", "--bind", "127.0.0.1"])
        .env("CREDENTIALS_DIRECTORY", &server_creds)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let line = wait_for_line(&mut server, "server listening").await;
    let addr = log_field(&line, "addr");
    let echo = echo_service().await;
    let mut client = ncx()
        .args(["client", "--server", &addr, "--identity", "office"])
        .args(["--server-fingerprint", &fingerprint(&certs)])
        .args(["--token-file", "office.token", "--service"])
        .arg(format!("web={echo}@0"))
        .env("CREDENTIALS_DIRECTORY", &client_creds)
        .env("NCX_TOKEN", "stale")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let line = wait_for_line(&mut client, "service available").await;
    let public: std::net::SocketAddr = log_field(&line, "public").parse().unwrap();
    assert_eq!(
        exchange(public, b"token file").await.unwrap(),
        b"token file"
    );
    client.kill().await.unwrap();
    // A wrong token from a file: the refusal names the file it came from.
    std::fs::write(client_creds.join("office.token"), "wrong").unwrap();
    let out = tokio::time::timeout(
        WAIT,
        ncx()
            .args(["client", "--server", &addr, "--identity", "office"])
            .args(["--server-fingerprint", &fingerprint(&certs)])
            .args(["--token-file", "office.token", "--service"])
            .arg(format!("web={echo}@0"))
            .env("CREDENTIALS_DIRECTORY", &client_creds)
            .output(),
    )
    .await
    .unwrap()
    .unwrap();
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    let shown = client_creds.join("office.token");
    assert!(
        stderr.contains(&format!(
            "the token came from --token-file ({})",
            shown.display()
        )),
        "{stderr}"
    );
    server.kill().await.unwrap();
}

/// `ncx client` as identity `office` (token `right`) of `server`, offering one service, with its
/// output piped for [`LogLines`].
fn office_client(pki: &Pki, server: &TestServer) -> tokio::process::Child {
    ncx()
        .args(["client", "--server", &server.addr.to_string()])
        .args(["--identity", "office", "--token", "right"])
        .args([
            "--server-fingerprint",
            &pki.server.fingerprint().to_string(),
        ])
        .args(["--service", "web=127.0.0.1:9@0"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap()
}

#[tokio::test]
async fn a_client_says_it_is_connected_before_it_lists_its_services() {
    let pki = Pki::new();
    let server = TestServer::start(&pki, server_settings(vec![identity("office", "right")])).await;
    let mut client = office_client(&pki, &server);
    let mut log = LogLines::new(&mut client);
    // Lines before the needle are skipped, so the second wait fails if the order is reversed.
    log.wait_for("connected to the server").await;
    log.wait_for("service available").await;
    client.kill().await.unwrap();
    server.stop().await;
}

#[tokio::test]
async fn a_client_whose_services_are_taken_over_says_so() {
    // At 8354efb a takeover read as INFO "the server is going away".
    let pki = Pki::new();
    let server = TestServer::start(&pki, server_settings(vec![identity("office", "right")])).await;
    let mut first = office_client(&pki, &server);
    let mut log = LogLines::new(&mut first);
    log.wait_for("service available").await;
    // A second client of the same identity connects.
    let svc = echo_service().await;
    let second = RunningClient::start(client_settings(
        server.addr,
        pki.pinned(),
        "office",
        "right",
        vec![service("web", svc, 0)],
    ))
    .await;
    let line = log
        .wait_for("a newer session of this identity took over")
        .await;
    assert!(line.contains("WARN"), "{line}");
    first.kill().await.unwrap();
    second.stop().await;
    server.stop().await;
}

#[tokio::test]
async fn one_visit_process_reaches_several_private_services() {
    // At 8354efb `ncx visit` took one --service.
    let pki = Pki::new();
    let server = TestServer::start(&pki, server_settings(vec![identity("office", "right")])).await;
    let echo = echo_service().await;
    let banner = banner_service(b"second service\n").await;
    let office = RunningClient::start(client_settings(
        server.addr,
        pki.pinned(),
        "office",
        "right",
        vec![
            private_service("echo", echo, &["office"]),
            private_service("banner", banner, &["office"]),
        ],
    ))
    .await;
    let mut visit = ncx()
        .args(["visit", "--server", &server.addr.to_string()])
        .args(["--identity", "office", "--token", "right"])
        .args([
            "--server-fingerprint",
            &pki.server.fingerprint().to_string(),
        ])
        .args(["--service", "office/echo", "--listen", "127.0.0.1:0"])
        .args(["--service", "office/banner", "--listen", "127.0.0.1:0"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut log = LogLines::new(&mut visit);
    let mut listen = std::collections::HashMap::new();
    for _ in 0..2 {
        let line = log.wait_for("visit listener ready").await;
        listen.insert(
            log_field(&line, "service"),
            log_field(&line, "listen")
                .parse::<std::net::SocketAddr>()
                .unwrap(),
        );
    }
    assert_eq!(exchange(listen["echo"], b"hello").await.unwrap(), b"hello");
    let mut s = tokio::net::TcpStream::connect(listen["banner"])
        .await
        .unwrap();
    let mut got = vec![0u8; b"second service\n".len()];
    tokio::io::AsyncReadExt::read_exact(&mut s, &mut got)
        .await
        .unwrap();
    assert_eq!(got, b"second service\n");
    visit.kill().await.unwrap();
    // An unpaired --service is refused with the reason.
    let out = ncx()
        .args(["visit", "--server", &server.addr.to_string()])
        .args(["--identity", "office", "--token", "right"])
        .args(["--service", "office/echo", "--listen", "127.0.0.1:0"])
        .args(["--service", "office/banner"])
        .output()
        .await
        .unwrap();
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("each --service needs its --listen: got 2 --service and 1 --listen"),
        "{stderr}"
    );
    office.stop().await;
    server.stop().await;
}

#[tokio::test]
async fn service_install_checks_the_command_before_registering_anything() {
    // The checks are the same on every platform; only registering needs Windows (tests/windows.rs).
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("a.token"), "t").unwrap();
    let with_token_file = format!(
        "server = \"127.0.0.1:7835\"\nidentity = \"a\"\ntoken_file = \"a.token\"\nserver_fingerprint = \"sha256:{}\"\n\n[[services]]\nname = \"e\"\nlocal = \"127.0.0.1:9\"\n",
        "ab".repeat(32)
    );
    std::fs::write(dir.path().join("client.toml"), &with_token_file).unwrap();
    std::fs::write(
        dir.path().join("env.toml"),
        with_token_file.replace("token_file = \"a.token\"\n", ""),
    )
    .unwrap();
    let install = |args: &[&str], env_token: Option<&str>| {
        let mut c = ncx();
        c.args(["service", "install"])
            .args(args)
            .current_dir(dir.path());
        if let Some(t) = env_token {
            c.env("NCX_TOKEN", t);
        }
        c.output()
    };
    let cases: &[(&[&str], Option<&str>, &str)] = &[
        (
            &["client", "--config", "client.toml", "--token", "x"],
            None,
            "--token would be stored in the service's command line, which every local user can read",
        ),
        (
            &["client", "--config", "env.toml"],
            Some("t"),
            "the token comes from NCX_TOKEN, which a service does not see",
        ),
        (
            &["server", "--config", "server.toml"],
            None,
            "a service runs `client …` or `visit …`",
        ),
        (
            &["--name", "a b", "client", "--config", "client.toml"],
            None,
            "service name \"a b\": use 1-64 of A-Z a-z 0-9 . _ -",
        ),
        (
            &["client", "--config", "missing.toml"],
            None,
            "checking the service's configuration: reading missing.toml",
        ),
        (
            &["client", "--config", "client.toml"],
            None,
            "`ncx service` registers Windows services; on Linux run ncx under systemd",
        ),
    ];
    for (args, env_token, expected) in cases {
        let out = tokio::time::timeout(WAIT, install(args, *env_token))
            .await
            .unwrap()
            .unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(1), "{args:?}: {stderr}");
        assert!(stderr.contains(expected), "{args:?}: {stderr}");
    }
}
