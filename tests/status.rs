//! `ncx status` and `ncx ctl reload` through the admin sockets of real server and client
//! processes (Unix sockets, mode 0600).
#![cfg(unix)]

mod common;

use std::os::unix::fs::PermissionsExt;
use std::path::Path;

use common::*;

async fn ncx(args: &[&str]) -> (Option<i32>, String, String) {
    let out = ncx_process().args(args).output().await.unwrap();
    (
        out.status.code(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

fn server_config(dir: &Path, identities: &[&str]) -> String {
    let mut c = format!(
        "listen = \"127.0.0.1:0\"\nadmin_socket = \"admin.sock\"\n[tls]\nauto_cert_dir = \"{}\"\n",
        dir.join("tls").display()
    );
    for (i, name) in identities.iter().enumerate() {
        let base = 20000 + i * 1000;
        c.push_str(&format!(
            "[[identities]]\nname = \"{name}\"\ntoken = \"t\"\nbind = \"127.0.0.1\"\nports = [\"{base}-{}\"]\n",
            base + 999
        ));
    }
    c
}

#[tokio::test]
async fn status_shows_sessions_and_client_state_and_ctl_reloads() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let config = d.join("server.toml");
    std::fs::write(&config, server_config(d, &["a"])).unwrap();
    // A socket file left by a process that is gone is replaced.
    drop(std::os::unix::net::UnixListener::bind(d.join("admin.sock")).unwrap());
    let mut server = ncx_process()
        .args(["server", "--config"])
        .arg(&config)
        .spawn()
        .unwrap();
    let mut log = LogLines::new(&mut server);
    let addr = log_field(&log.wait_for("server listening").await, "addr");
    let socket = d.join("admin.sock");
    let mode = std::fs::metadata(&socket).unwrap().permissions().mode();
    assert_eq!(mode & 0o777, 0o600, "{mode:o}");
    let socket = socket.to_str().unwrap().to_owned();

    let client_socket = d.join("client.sock").to_str().unwrap().to_owned();
    let echo = echo_service().await;
    let fp = fingerprint(&d.join("tls"));
    let mut client = client_command(&addr, &fp, "a", "t", &[format!("echo={echo}@0")])
        .args(["--admin-socket", &client_socket])
        .spawn()
        .unwrap();
    let public = log_field(
        &wait_for_line(&mut client, "service available").await,
        "public",
    );
    let payload = vec![1u8; 5000];
    assert_eq!(
        exchange(public.parse().unwrap(), &payload).await.unwrap(),
        payload
    );

    // The server's table, and its JSON.
    let port = public.rsplit(':').next().unwrap();
    let (code, table, err) = ncx(&["status", "--socket", &socket]).await;
    assert_eq!(code, Some(0), "{err}");
    assert!(
        table.starts_with("ncx server on 127.0.0.1:0, fingerprint sha256:"),
        "{table}"
    );
    assert!(table.contains("1 session(s)\nIDENTITY  ADDRESS"), "{table}");
    assert!(table.contains(&format!("echo:{port}")), "{table}");
    let (code, json, _) = ncx(&["status", "--socket", &socket, "--json"]).await;
    assert_eq!(code, Some(0));
    let v: serde_json::Value = serde_json::from_str(&json).unwrap();
    assert_eq!(v["kind"], "server");
    let session = &v["sessions"][0];
    assert_eq!(session["identity"], "a");
    assert_eq!(session["services"][0], format!("echo:{port}"));
    // The visitor's substream may still be closing; its bytes were counted as they moved.
    assert_eq!(session["bytes_in"], 5000, "{v}");
    assert_eq!(session["bytes_out"], 5000, "{v}");

    // The client's state.
    let (code, text, err) = ncx(&["status", "--socket", &client_socket]).await;
    assert_eq!(code, Some(0), "{err}");
    assert!(
        text.starts_with(&format!("ncx client a -> {addr}: connected for ")),
        "{text}"
    );
    assert!(
        text.contains(&format!("service echo -> {public}\n")),
        "{text}"
    );
    assert!(
        text.contains("server verified by its pinned fingerprint sha256:"),
        "{text}"
    );

    // ncx ctl reload: what changed, or why not.
    std::fs::write(&config, server_config(d, &["a", "b"])).unwrap();
    let (code, out, err) = ncx(&["ctl", "--socket", &socket, "reload"]).await;
    assert_eq!(code, Some(0), "{err}");
    assert_eq!(out, "reloaded: added b; removed none; changed none\n");
    std::fs::write(&config, "listen = 1\n").unwrap();
    let (code, _, err) = ncx(&["ctl", "--socket", &socket, "reload"]).await;
    assert_eq!(code, Some(1));
    assert!(
        err.starts_with("error: reload refused; the configuration in force stays: ")
            && err.contains("server.toml:1:10"),
        "{err}"
    );
    // The client re-reads its flags: nothing changed.
    let (code, out, err) = ncx(&["ctl", "--socket", &client_socket, "reload"]).await;
    assert_eq!(code, Some(0), "{err}");
    assert_eq!(
        out,
        "reloaded: added none; removed none; changed none
"
    );

    client.kill().await.unwrap();
    server.kill().await.unwrap();
}

#[tokio::test]
async fn an_admin_socket_path_that_is_taken_is_refused_with_the_reason() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    std::fs::write(d.join("not-a-socket"), "").unwrap();
    let out = server_command(d, "127.0.0.1:0".parse().unwrap())
        .arg("--admin-socket")
        .arg(d.join("not-a-socket"))
        .output()
        .await
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("the path exists and is not a socket"), "{err}");

    let (code, _, err) = ncx(&[
        "status",
        "--socket",
        d.join("nobody.sock").to_str().unwrap(),
    ])
    .await;
    assert_eq!(code, Some(1));
    assert!(err.contains("connecting to the admin socket"), "{err}");
}
