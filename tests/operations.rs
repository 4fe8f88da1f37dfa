//! Running ncx as an operator does: JSON logs and the audit file, configuration checks, shell
//! completions and the man page, and the systemd notification protocol. Real processes, real
//! sockets on 127.0.0.1.

mod common;

use std::process::Stdio;

use common::*;

/// Every line a process wrote to stderr, each parsed as one JSON object.
fn json_lines(text: &str) -> Vec<serde_json::Value> {
    text.lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("not JSON ({e}): {l:?}")))
        .collect()
}

#[tokio::test]
async fn json_logs_carry_the_span_fields_and_the_audit_file_takes_the_audit_lines() {
    let dir = tempfile::tempdir().unwrap();
    let audit = dir.path().join("audit.log");
    let mut server = server_command(dir.path(), "127.0.0.1:0".parse().unwrap())
        .args(["--log-format", "json", "--audit-log"])
        .arg(&audit)
        .spawn()
        .unwrap();
    let mut log = LogLines::new(&mut server);
    let listening = log.wait_for("server listening").await;
    let listening: serde_json::Value = serde_json::from_str(&listening).unwrap();
    assert_eq!(listening["level"], "INFO");
    let addr: std::net::SocketAddr = listening["addr"].as_str().unwrap().parse().unwrap();
    let (mut client, public) = client_process(
        addr,
        &fingerprint(dir.path()),
        &[format!("echo={}@0", echo_service().await)],
    )
    .await;
    let public: std::net::SocketAddr = public.parse().unwrap();
    assert_eq!(
        exchange(public, b"eleven byte").await.unwrap(),
        b"eleven byte"
    );
    // The session's lines name the client in their span.
    let authenticated = log.wait_for("client authenticated").await;
    let authenticated: serde_json::Value = serde_json::from_str(&authenticated).unwrap();
    assert_eq!(authenticated["span"]["name"], "session", "{authenticated}");
    assert_eq!(authenticated["span"]["client"], "a", "{authenticated}");

    // The audit line is written when the visitor's substream has closed: wait for it in the file.
    let start = std::time::Instant::now();
    let line = loop {
        let text = std::fs::read_to_string(&audit).unwrap_or_default();
        if let Some(l) = text.lines().next() {
            break l.to_owned();
        }
        assert!(
            start.elapsed() < WAIT,
            "no audit line in {}",
            audit.display()
        );
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    };
    let record: serde_json::Value = serde_json::from_str(&line).unwrap();
    assert_eq!(record["target"], "ncx::audit");
    assert_eq!(record["message"], "visitor connection");
    assert_eq!(record["service"], "echo");
    assert_eq!(record["bytes_in"], 11);
    assert_eq!(record["bytes_out"], 11);
    assert_eq!(record["end"], "finished");

    client.kill().await.unwrap();
    server.kill().await.unwrap();
    let all = log.all().await.join("\n");
    // stdout's lines (for an operator to read and copy) are plain text; the log's are JSON.
    let stdout = [
        "created a self-signed server certificate",
        "server certificate fingerprint: ",
        "clients pin it with: ",
    ];
    let stderr: String = all
        .lines()
        .filter(|l| !stdout.iter().any(|s| l.starts_with(s)))
        .map(|l| format!("{l}\n"))
        .collect();
    let lines = json_lines(&stderr);
    assert!(lines.len() >= 3, "{all}");
    assert!(
        lines.iter().all(|l| l["target"] != "ncx::audit"),
        "the audit line went to the file only:\n{all}"
    );
}

#[tokio::test]
async fn human_lines_have_no_module_paths() {
    let dir = tempfile::tempdir().unwrap();
    let mut server = server_command(dir.path(), "127.0.0.1:0".parse().unwrap())
        .spawn()
        .unwrap();
    let line = wait_for_line(&mut server, "server listening").await;
    assert!(line.contains(" INFO server listening addr="), "{line}");
    assert!(!line.contains("ncx::"), "{line}");
    server.kill().await.unwrap();
}

#[tokio::test]
async fn an_audit_file_that_cannot_be_opened_is_named() {
    let dir = tempfile::tempdir().unwrap();
    let out = ncx_process()
        .args(["--audit-log"])
        .arg(dir.path().join("missing/audit.log"))
        .args(["echo", "--listen", "127.0.0.1:0"])
        .stdout(Stdio::null())
        .output()
        .await
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.starts_with("error: opening the audit log ") && stderr.contains("missing/audit.log"),
        "{stderr}"
    );
}

#[tokio::test]
async fn completions_are_scripts_each_shell_can_read() {
    for shell in ["bash", "zsh", "fish", "powershell", "elvish"] {
        let out = ncx_process()
            .args(["completions", shell])
            .output()
            .await
            .unwrap();
        let script = succeeded(&out, &format!("ncx completions {shell}"));
        for word in ["server", "visit", "log-format", "server-fingerprint"] {
            assert!(script.contains(word), "{shell}: no {word}");
        }
        if shell == "bash" {
            // bash itself parses it without running it.
            let dir = tempfile::tempdir().unwrap();
            let path = dir.path().join("ncx.bash");
            std::fs::write(&path, &script).unwrap();
            let checked = std::process::Command::new("bash")
                .arg("-n")
                .arg(&path)
                .output()
                .unwrap();
            assert!(checked.status.success(), "{checked:?}");
        }
    }
}

#[tokio::test]
async fn man_pages_describe_every_subcommand() {
    let out = ncx_process().arg("man").output().await.unwrap();
    let page = succeeded(&out, "ncx man");
    assert!(page.contains(".TH ncx 1"), "{page}");
    let dir = tempfile::tempdir().unwrap();
    let out = ncx_process()
        .args(["man", "--dir"])
        .arg(dir.path())
        .output()
        .await
        .unwrap();
    succeeded(&out, "ncx man --dir");
    for (page, option) in [
        ("ncx-server.1", "\\-\\-websocket\\-path"),
        ("ncx-client.1", "\\-\\-exit\\-on\\-forward\\-failure"),
        ("ncx-visit.1", "\\-\\-listen"),
    ] {
        let text = std::fs::read_to_string(dir.path().join(page)).unwrap();
        assert!(text.contains(option), "{page} lacks {option}:\n{text}");
    }
}

/// `ncx ARGS` run to its end: exit code, stdout, stderr.
async fn run(args: &[&str], dir: &std::path::Path) -> (Option<i32>, String, String) {
    let out = ncx_process()
        .args(args)
        .current_dir(dir)
        .output()
        .await
        .unwrap();
    (
        out.status.code(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[tokio::test]
async fn check_config_validates_without_starting_and_names_the_place_of_an_error() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let server = "listen = \"127.0.0.1:0\"\n[tls]\nauto_cert_dir = \"state\"\n[[identities]]\nname = \"a\"\ntoken = \"t\"\nports = [\"20000\"]\n";
    std::fs::write(d.join("server.toml"), server).unwrap();
    let (code, stdout, stderr) = run(&["server", "--check-config", "server.toml"], d).await;
    assert_eq!(code, Some(0), "{stdout}{stderr}");
    assert_eq!(stdout, "server.toml: the server configuration is valid\n");
    assert!(!d.join("state").exists(), "a check creates no certificate");

    std::fs::write(
        d.join("bad.toml"),
        server.replace("ports = [\"20000\"]", "ports = [\"70000\"]"),
    )
    .unwrap();
    let (code, _, stderr) = run(&["server", "--check-config", "bad.toml"], d).await;
    assert_eq!(code, Some(1));
    assert!(stderr.starts_with("error: bad.toml:7:"), "{stderr}");

    std::fs::write(
        d.join("certs.toml"),
        server.replace(
            "auto_cert_dir = \"state\"",
            "cert = \"no.crt\"\nkey = \"no.key\"",
        ),
    )
    .unwrap();
    let (code, _, stderr) = run(&["server", "--check-config", "certs.toml"], d).await;
    assert_eq!(code, Some(1));
    assert!(stderr.contains("no.crt"), "{stderr}");

    let client = "server = \"127.0.0.1:7835\"\nidentity = \"a\"\ntoken_file = \"token\"\nserver_fingerprint = \"sha256:5f1c5f1c5f1c5f1c5f1c5f1c5f1c5f1c5f1c5f1c5f1c5f1c5f1c5f1c5f1c5f1c\"\n[[services]]\nname = \"ssh\"\nlocal = \"127.0.0.1:22\"\nremote_port = 20000\n";
    std::fs::write(d.join("client.toml"), client).unwrap();
    std::fs::write(d.join("token"), "t\n").unwrap();
    let (code, stdout, stderr) = run(&["client", "--check-config", "client.toml"], d).await;
    assert_eq!(code, Some(0), "{stdout}{stderr}");
    assert_eq!(stdout, "client.toml: the client configuration is valid\n");
    std::fs::remove_file(d.join("token")).unwrap();
    let (code, _, stderr) = run(&["client", "--check-config", "client.toml"], d).await;
    assert_eq!(code, Some(1));
    assert!(stderr.contains("token"), "{stderr}");
    std::fs::write(
        d.join("client.toml"),
        client.replace("remote_port = 20000", "remote_prot = 1"),
    )
    .unwrap();
    let (code, _, stderr) = run(&["client", "--check-config", "client.toml"], d).await;
    assert_eq!(code, Some(1));
    assert!(stderr.starts_with("error: client.toml:8:1"), "{stderr}");
}

/// A datagram socket standing in for systemd's notification socket, with what arrived on it.
#[cfg(unix)]
struct Systemd {
    socket: tokio::net::UnixDatagram,
    path: std::path::PathBuf,
    got: Vec<String>,
}

#[cfg(unix)]
impl Systemd {
    fn new(dir: &std::path::Path) -> Systemd {
        let path = dir.join("notify.sock");
        let socket = tokio::net::UnixDatagram::bind(&path).unwrap();
        Systemd {
            socket,
            path,
            got: Vec::new(),
        }
    }

    /// Reads notifications until one has the line `line`; returns that notification.
    async fn wait_for(&mut self, line: &str) -> String {
        self.wait_until(|m| m.lines().any(|l| l == line)).await
    }

    /// Reads notifications until one is `wanted`; returns it.
    async fn wait_until(&mut self, wanted: impl Fn(&str) -> bool) -> String {
        let mut buf = vec![0u8; 4096];
        tokio::time::timeout(WAIT, async {
            loop {
                let n = self.socket.recv(&mut buf).await.unwrap();
                let message = String::from_utf8(buf[..n].to_vec()).unwrap();
                self.got.push(message.clone());
                if wanted(&message) {
                    return message;
                }
            }
        })
        .await
        .unwrap_or_else(|_| panic!("not among {:?}", self.got))
    }
}

#[cfg(unix)]
#[tokio::test]
async fn systemd_hears_ready_status_watchdog_and_stopping() {
    let dir = tempfile::tempdir().unwrap();
    let mut systemd = Systemd::new(dir.path());
    let mut server = server_command(dir.path(), "127.0.0.1:0".parse().unwrap())
        .env("NOTIFY_SOCKET", &systemd.path)
        .env("WATCHDOG_USEC", "200000")
        .spawn()
        .unwrap();
    let line = wait_for_line(&mut server, "server listening").await;
    let addr = log_field(&line, "addr");
    let ready = systemd.wait_for("READY=1").await;
    assert!(
        ready.contains(&format!("STATUS=listening on {addr}\n")),
        "{ready:?}"
    );
    // Pinged at half the interval: a few within a second.
    for _ in 0..3 {
        systemd.wait_for("WATCHDOG=1").await;
    }

    // The client: READY once its first attempt is made, then its state as it changes.
    let client_dir = tempfile::tempdir().unwrap();
    let mut client_systemd = Systemd::new(client_dir.path());
    let echo = echo_service().await;
    let fp = fingerprint(dir.path());
    let mut client = client_command(&addr, &fp, "a", "t", &[format!("echo={echo}@0")])
        .env("NOTIFY_SOCKET", &client_systemd.path)
        .spawn()
        .unwrap();
    let ready = client_systemd.wait_for("READY=1").await;
    assert!(
        ready.contains(&format!("STATUS=connected to {addr}\n")),
        "{ready:?}"
    );
    // The server goes: the client says it is not connected.
    let pid = server.id().unwrap().to_string();
    let stopped = std::process::Command::new("kill")
        .args(["-TERM", &pid])
        .status()
        .unwrap();
    assert!(stopped.success());
    systemd.wait_for("STOPPING=1").await;
    tokio::time::timeout(WAIT, server.wait())
        .await
        .unwrap()
        .unwrap();
    let gone = format!("STATUS=not connected to {addr} (");
    let lost = client_systemd.wait_until(|m| m.starts_with(&gone)).await;
    assert!(!lost.contains("READY=1"), "{lost:?}");
    assert_eq!(
        lost.lines().count(),
        1,
        "one line, whatever the error says: {lost:?}"
    );
    client.kill().await.unwrap();
}

#[tokio::test]
async fn metrics_move_with_real_traffic_and_ready_follows_the_session() {
    let dir = tempfile::tempdir().unwrap();
    let mut server = server_command(dir.path(), "127.0.0.1:0".parse().unwrap())
        .args(["--metrics-listen", "127.0.0.1:0"])
        .spawn()
        .unwrap();
    let mut log = LogLines::new(&mut server);
    let (addr, server_metrics) = log.listen_and_metrics_addrs().await;
    assert_eq!(
        get(&server_metrics, "/ready").await,
        (200, "ready\n".into())
    );
    assert_eq!(get(&server_metrics, "/other").await.0, 404);
    let body = scrape_until(&server_metrics, "ncx_sessions{identity=\"a\"}", 0.0).await;
    assert!(
        body.contains("# TYPE ncx_session_rtt_seconds histogram"),
        "{body}"
    );

    // A client with the wrong token is counted by reason.
    let fp = fingerprint(dir.path());
    let wrong = client_command(&addr, &fp, "a", "wrong", &["x=127.0.0.1:9@0".into()])
        .output()
        .await
        .unwrap();
    assert_eq!(wrong.status.code(), Some(1));
    scrape_until(
        &server_metrics,
        "ncx_auth_failures_total{reason=\"bad_token\"}",
        1.0,
    )
    .await;

    // The client pings every second, so its round trips show soon.
    let config = dir.path().join("client.toml");
    std::fs::write(
        &config,
        format!(
            "server = \"{addr}\"\nidentity = \"a\"\ntoken = \"t\"\nserver_fingerprint = \"{}\"\nping_interval_secs = 1\nliveness_timeout_secs = 5\nmetrics_listen = \"127.0.0.1:0\"\n[[services]]\nname = \"echo\"\nlocal = \"{}\"\nremote_port = 0\n",
            fingerprint(dir.path()),
            echo_service().await
        ),
    )
    .unwrap();
    let mut client = ncx_process()
        .args(["client", "--config"])
        .arg(&config)
        .spawn()
        .unwrap();
    let mut client_log = LogLines::new(&mut client);
    let client_metrics = log_field(&client_log.wait_for("metrics listening").await, "addr");
    let public: std::net::SocketAddr =
        log_field(&client_log.wait_for("service available").await, "public")
            .parse()
            .unwrap();
    assert_eq!(get(&client_metrics, "/ready").await.0, 200);
    scrape_until(&client_metrics, "ncx_client_connected", 1.0).await;
    scrape_until(&server_metrics, "ncx_sessions{identity=\"a\"}", 1.0).await;

    let payload = vec![7u8; 100_000];
    assert_eq!(exchange(public, &payload).await.unwrap(), payload);
    let labels = "identity=\"a\",service=\"echo\"";
    let body = scrape_until(
        &server_metrics,
        &format!("ncx_visitors_total{{{labels},end=\"finished\"}}"),
        1.0,
    )
    .await;
    assert_eq!(
        series(
            &body,
            &format!("ncx_bytes_total{{{labels},direction=\"in\"}}")
        ),
        Some(100_000.0),
        "{body}"
    );
    assert_eq!(
        series(
            &body,
            &format!("ncx_bytes_total{{{labels},direction=\"out\"}}")
        ),
        Some(100_000.0),
        "{body}"
    );
    assert_eq!(
        series(&body, &format!("ncx_visitors_active{{{labels}}}")),
        Some(0.0),
        "{body}"
    );
    scrape_until(&client_metrics, "ncx_client_session_rtt_seconds_count", 1.0).await;
    scrape_until(&server_metrics, "ncx_session_rtt_seconds_count", 1.0).await;

    // The server goes: the client is no longer ready, and counts its reconnects.
    server.kill().await.unwrap();
    scrape_until(&client_metrics, "ncx_client_reconnects_total", 1.0).await;
    assert_eq!(
        get(&client_metrics, "/ready").await,
        (503, "not ready\n".into())
    );
    client.kill().await.unwrap();
}

#[tokio::test]
async fn the_metrics_endpoint_bounds_what_a_request_may_send() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let dir = tempfile::tempdir().unwrap();
    let mut server = server_command(dir.path(), "127.0.0.1:0".parse().unwrap())
        .args(["--metrics-listen", "127.0.0.1:0"])
        .spawn()
        .unwrap();
    let metrics = log_field(
        &wait_for_line(&mut server, "metrics listening").await,
        "addr",
    );
    // A head that never ends is cut off at its cap: the connection is closed, not answered.
    let mut tcp = tokio::net::TcpStream::connect(&metrics).await.unwrap();
    let header = format!("X-Pad: {}\r\n", "a".repeat(1000));
    let mut sent = tcp.write_all(b"GET /metrics HTTP/1.1\r\n").await;
    for _ in 0..20 {
        if sent.is_err() {
            break;
        }
        sent = tcp.write_all(header.as_bytes()).await;
    }
    let mut reply = Vec::new();
    let read = tokio::time::timeout(WAIT, tcp.read_to_end(&mut reply))
        .await
        .unwrap();
    assert!(
        reply.is_empty() || read.is_err(),
        "{:?}",
        String::from_utf8_lossy(&reply)
    );
    // Not a GET: 400.
    let mut tcp = tokio::net::TcpStream::connect(&metrics).await.unwrap();
    tcp.write_all(b"POST /metrics HTTP/1.1\r\n\r\n")
        .await
        .unwrap();
    let mut reply = String::new();
    tcp.read_to_string(&mut reply).await.unwrap();
    assert!(reply.starts_with("HTTP/1.1 400 "), "{reply}");
    server.kill().await.unwrap();
}
