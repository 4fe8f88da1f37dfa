//! The Windows build under wine: `ncx.exe demo --check`, a Windows `ncx.exe client` serving a
//! visitor and UDP datagrams through a Linux `ncx server` (and answering `ncx.exe status` and
//! `ncx.exe ctl reload` on its named pipe), and a Windows `ncx.exe visit` reaching a private TCP
//! and a private UDP service offered by a Linux client; and `ncx.exe service install`, a client
//! as a Windows service that wine's service manager starts when the prefix boots, that serves a
//! visitor and that lets it finish when `sc stop` stops it. Real bytes through each, checked.
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
        let mut c = self.program("ncx.exe");
        c.args(args);
        c
    }

    /// A program (ncx.exe in the directory, or one of wine's such as `sc`) under wine.
    fn program(&self, program: &str) -> tokio::process::Command {
        let mut c = tokio::process::Command::new("wine");
        let local = self.dir.path().join(program);
        if local.is_file() {
            c.arg(local);
        } else {
            c.arg(program);
        }
        c.current_dir(self.dir.path())
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

impl Wine {
    /// Ends every process of the prefix (services included) and waits for its wineserver to go:
    /// the next wine process boots the prefix again, as a machine boots.
    fn shut_down(&self) {
        for flag in ["-k", "-w"] {
            let _ = std::process::Command::new("wineserver")
                .arg(flag)
                .env("WINEPREFIX", self.dir.path().join("prefix"))
                .status();
        }
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

/// The time a wine command may take (the first one creates the prefix).
const WINE_WAIT: std::time::Duration = std::time::Duration::from_secs(120);

/// `cmd`'s output, within [`WINE_WAIT`].
async fn output(cmd: &mut tokio::process::Command) -> std::process::Output {
    tokio::time::timeout(WINE_WAIT, cmd.output())
        .await
        .expect("the wine command finishes in time")
        .unwrap()
}

/// Waits until the log file has a line containing `needle` (the service writes there; wine gives
/// it no console) and returns the line. Polls: a file offers nothing to wait on.
async fn wait_for_log(log: &Path, needle: &str) -> String {
    let start = std::time::Instant::now();
    loop {
        let text = std::fs::read_to_string(log).unwrap_or_default();
        if let Some(line) = text.lines().find(|l| l.contains(needle)) {
            return line.to_owned();
        }
        assert!(
            start.elapsed() < WINE_WAIT,
            "no {needle:?} in {} within {WINE_WAIT:?}:\n{text}",
            log.display()
        );
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
}

/// Asks the prefix's service manager until it reports service `name` STOPPED, within
/// [`WINE_WAIT`] (`sc query` is the only way to learn the state; there is nothing to wait on).
async fn wait_for_stopped(wine: &Wine, name: &str) {
    let start = std::time::Instant::now();
    loop {
        let out = output(wine.program("sc").args(["query", name])).await;
        let state = String::from_utf8_lossy(&out.stdout).into_owned();
        if state.contains("STOPPED") {
            return;
        }
        assert!(
            start.elapsed() < WINE_WAIT,
            "service {name} is not STOPPED within {WINE_WAIT:?}: {state}"
        );
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
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
    let udp = udp_echo().await;
    // Its admin endpoint is a named pipe, unique to this run.
    let pipe = format!(r"\\.\pipe\ncx-test-{}", std::process::id());
    let service = format!("e={echo}@0");
    let udp_service = format!("u={udp}@0/udp");
    let client_args = [
        "client",
        "--server",
        &addr.to_string(),
        "--identity",
        "a",
        "--server-fingerprint",
        &fp,
        "--service",
        &service,
        "--service",
        &udp_service,
        "--admin-socket",
        &pipe,
    ]
    .map(str::to_owned);
    let client_args: Vec<&str> = client_args.iter().map(String::as_str).collect();
    let mut client = wine
        .ncx(&client_args)
        .env("NCX_TOKEN", "t")
        .spawn()
        .unwrap();
    let mut log = LogLines::new(&mut client);
    // One line per service, in either order.
    let (mut public, mut udp_public) = (None, None);
    for _ in 0..2 {
        let line = log.wait_for("service available").await;
        let addr: std::net::SocketAddr = log_field(&line, "public").parse().unwrap();
        if line.contains("service=u ") {
            udp_public = Some(addr);
        } else {
            public = Some(addr);
        }
    }
    let (public, udp_public) = (public.unwrap(), udp_public.unwrap());
    let payload = Rng(11).bytes(256 * 1024);
    assert_eq!(
        exchange(public, &payload).await.unwrap(),
        payload,
        "a visitor's bytes through the Windows client"
    );
    // ncx status and ncx ctl reload through the pipe.
    let out = output(&mut wine.ncx(&["status", "--socket", &pipe])).await;
    let table = succeeded(&out, "ncx.exe status");
    assert!(
        table.starts_with(&format!("ncx client a -> {addr}: connected for ")),
        "{table}"
    );
    assert!(table.contains(&format!("service e -> {public}")), "{table}");
    let out = output(&mut wine.ncx(&["ctl", "--socket", &pipe, "reload"])).await;
    assert_eq!(
        succeeded(&out, "ncx.exe ctl reload"),
        "reloaded: added none; removed none; changed none\n"
    );
    // A second process cannot take the pipe's name.
    let out = output(wine.ncx(&client_args).env("NCX_TOKEN", "t")).await;
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success() && err.contains("another process serves it"),
        "{err}"
    );
    assert_eq!(exchange(public, b"still").await.unwrap(), b"still");
    // Datagrams through the Windows client's UDP service, each visitor its own flow.
    for (i, payload) in [&b"one"[..], &[b'u'; 1400][..]].into_iter().enumerate() {
        let visitor = tokio::net::UdpSocket::bind("127.0.0.1:0").await.unwrap();
        let (_, back) = split_reply(&ask(&visitor, udp_public, payload).await);
        assert_eq!(back, payload, "datagram {i} through the Windows client");
    }
    client.kill().await.unwrap();

    // 3. A Windows `ncx visit` reaches a private service a Linux client offers.
    let trust = ncx::tls::ServerTrust::Pinned(vec![fp.parse().unwrap()]);
    let office = RunningClient::start(client_settings(
        addr,
        trust,
        "a",
        "t",
        vec![
            private_service("p", echo, &["a"]),
            ncx::config::ServiceSpec {
                udp: true,
                ..private_service("pu", udp, &["a"])
            },
        ],
    ))
    .await;
    // A Windows `ncx visit` of one of a's private services, and the local address it listens on.
    let start_visit = |service: &'static str| {
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
                service,
                "--listen",
                "127.0.0.1:0",
            ])
            .env("NCX_TOKEN", "t")
            .spawn()
            .unwrap();
        async move {
            let line = wait_for_line(&mut visit, "visit listener ready").await;
            let local: std::net::SocketAddr = log_field(&line, "listen").parse().unwrap();
            (visit, local)
        }
    };
    let (mut visit, local) = start_visit("a/p").await;
    let payload = Rng(12).bytes(256 * 1024);
    assert_eq!(
        exchange(local, &payload).await.unwrap(),
        payload,
        "bytes through the Windows visit listener"
    );
    visit.kill().await.unwrap();
    // And a Windows `ncx visit` of a private UDP service: its local UDP port, two senders, each
    // answered.
    let (mut visit, local) = start_visit("a/pu/udp").await;
    let mut sources = Vec::new();
    for payload in [&b"first sender"[..], &b"second sender"[..]] {
        let sender = tokio::net::UdpSocket::bind("127.0.0.1:0").await.unwrap();
        let (source, back) = split_reply(&ask(&sender, local, payload).await);
        assert_eq!(back, payload, "a datagram through the Windows visit");
        sources.push(source);
    }
    assert_ne!(
        sources[0], sources[1],
        "each local sender is a flow of its own"
    );
    visit.kill().await.unwrap();
    office.stop().await;
    server.kill().await.unwrap();
}

/// The commands of the README's "As a Windows service" block, each split into words.
fn readme_service_commands() -> Vec<Vec<String>> {
    let readme =
        std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("README.md")).unwrap();
    let section = readme
        .split_once("### As a Windows service")
        .expect("README has the Windows service section")
        .1;
    let block = section
        .split_once("```bat\n")
        .unwrap()
        .1
        .split_once("\n```")
        .unwrap()
        .0;
    block
        .lines()
        .map(|l| l.split_whitespace().map(str::to_owned).collect())
        .collect()
}

impl Wine {
    /// One command of the README's block: `ncx …` is ncx.exe, anything else one of wine's.
    fn readme_command(&self, words: &[String]) -> tokio::process::Command {
        let args: Vec<&str> = words[1..].iter().map(String::as_str).collect();
        match words[0].as_str() {
            "ncx" => self.ncx(&args),
            other => {
                let mut c = self.program(other);
                c.args(&args);
                c
            }
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_windows_service_starts_at_boot_serves_and_drains_on_stop_under_wine() {
    if let Some(why) = missing_requirement() {
        assert!(
            std::env::var_os("NCX_REQUIRE_WINE").is_none(),
            "NCX_REQUIRE_WINE is set but {why}"
        );
        eprintln!("SKIPPED Windows service test under wine: {why}");
        return;
    }
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    // The README's commands, run as written (in another order: a boot comes first).
    let readme = readme_service_commands();
    let [install, start, stop, uninstall] = &readme[..] else {
        panic!("the README's block has install, sc start, sc stop, uninstall: {readme:?}")
    };
    assert_eq!(&install[..3], ["ncx", "service", "install"]);
    assert_eq!(install.last().unwrap(), "C:\\ncx\\client.toml");
    let name = install[4].clone();
    assert_eq!(start, &["sc", "start", &name]);
    assert_eq!(stop, &["sc", "stop", &name]);
    assert_eq!(uninstall, &["ncx", "service", "uninstall", "--name", &name]);

    let wine = Wine::new();
    // The first command creates the prefix, whose C: drive then gets the configuration.
    succeeded(
        &output(&mut wine.ncx(&["--version"])).await,
        "ncx.exe --version",
    );
    let drive_c = wine.dir.path().join("prefix/drive_c");
    let conf = drive_c.join("ncx");
    std::fs::create_dir_all(&conf).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let (mut server, addr) = server_process(dir.path(), "127.0.0.1:0".parse().unwrap()).await;
    let echo = echo_service().await;
    std::fs::write(conf.join("a.token"), "t\n").unwrap();
    std::fs::write(
        conf.join("client.toml"),
        format!(
            "server = \"{addr}\"\nidentity = \"a\"\ntoken_file = \"a.token\"\nserver_fingerprint = \"{}\"\ndrain_timeout_secs = 60\n\n[[services]]\nname = \"e\"\nlocal = \"{echo}\"\nremote_port = 0\n",
            fingerprint(dir.path())
        ),
    )
    .unwrap();

    // Install: the configuration is checked, nothing runs yet.
    let text = succeeded(
        &output(&mut wine.readme_command(install)).await,
        "service install",
    );
    assert!(
        text.contains(&format!("installed service {name}")),
        "{text}"
    );
    assert!(text.contains("it starts at boot"), "{text}");
    let log = drive_c.join(format!("ProgramData/ncx/{name}.log"));
    assert!(
        text.contains(&format!("C:\\ProgramData\\ncx\\{name}.log")),
        "{text}"
    );

    // Boot: the prefix's service manager starts the service by itself. A user process keeps the
    // prefix up (wine ends services with its last user process).
    wine.shut_down();
    assert!(!log.exists(), "the service has not run before the boot");
    let mut keep_up = wine
        .ncx(&["echo", "--listen", "127.0.0.1:0"])
        .spawn()
        .unwrap();
    wait_for_line(&mut keep_up, "echo service listening on").await;
    wait_for_log(&log, "running as a Windows service").await;
    let line = wait_for_log(&log, "service available").await;
    let public: std::net::SocketAddr = log_field(&line, "public").parse().unwrap();
    let payload = Rng(13).bytes(128 * 1024);
    assert_eq!(
        exchange(public, &payload).await.unwrap(),
        payload,
        "a visitor's bytes through the Windows service"
    );

    // Stop: a visitor in flight is still served while the service drains, and then it stops.
    let mut visitor = tokio::net::TcpStream::connect(public).await.unwrap();
    let mut b = [0u8; 6];
    visitor.write_all(b"before").await.unwrap();
    visitor.read_exact(&mut b).await.unwrap();
    assert_eq!(&b, b"before");
    let out = output(&mut wine.readme_command(stop)).await;
    assert!(out.status.success(), "sc stop: {out:?}");
    wait_for_log(&log, "the service manager stops the service").await;
    visitor.write_all(b"during").await.unwrap();
    visitor.read_exact(&mut b).await.unwrap();
    assert_eq!(
        &b, b"during",
        "the visitor is served while the service drains"
    );
    drop(visitor);
    wait_for_log(&log, "service stopped").await;
    // The line comes just before the service reports Stopped to the service manager.
    wait_for_stopped(&wine, &name).await;

    // Start by hand, and a visitor again.
    std::fs::write(&log, "").unwrap();
    let out = output(&mut wine.readme_command(start)).await;
    assert!(out.status.success(), "sc start: {out:?}");
    let line = wait_for_log(&log, "service available").await;
    let public: std::net::SocketAddr = log_field(&line, "public").parse().unwrap();
    assert_eq!(exchange(public, b"again").await.unwrap(), b"again");

    // Uninstall stops the running service and removes it.
    let text = succeeded(
        &output(&mut wine.readme_command(uninstall)).await,
        "service uninstall",
    );
    assert!(text.contains(&format!("stopping service {name}")), "{text}");
    assert!(text.contains(&format!("removed service {name}")), "{text}");
    wait_for_log(&log, "service stopped").await;
    let out = output(wine.program("sc").args(["query", &name])).await;
    assert!(!out.status.success(), "the service is gone: {out:?}");
    let out = output(&mut wine.readme_command(uninstall)).await;
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains(&format!("there is no service named {name}")),
        "{out:?}"
    );
    keep_up.kill().await.unwrap();
    server.kill().await.unwrap();
}
