//! Shared test fixtures: certificates made with rcgen in the test, a real server and real clients on
//! 127.0.0.1 with OS-assigned ports, and small local services.
#![allow(dead_code)]

pub mod delay;
pub mod programs;
pub mod raw_yamux;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use ncx::auth::Token;
use ncx::client::{Client, ClientError, Connected};
use ncx::config::{
    ClientSettings, IdentityPolicy, PortRange, ServerCert, ServerSettings, ServiceSpec,
};
use ncx::server::Server;
use ncx::tls::{ServerIdentity, ServerTrust};
use ncx_proto::Name;
use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair,
    KeyUsagePurpose,
};
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

/// Upper bound for any single wait in these tests; reaching it means a bug, not a slow machine.
pub const WAIT: Duration = Duration::from_secs(20);

/// A CA and a server certificate it signed, for `localhost` and 127.0.0.1.
pub struct Pki {
    pub ca_der: CertificateDer<'static>,
    pub ca_pem: String,
    pub server: ServerIdentity,
    issuer: Issuer<'static, KeyPair>,
}

impl Pki {
    pub fn new() -> Self {
        let mut ca = CertificateParams::new(Vec::<String>::new()).unwrap();
        ca.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        ca.key_usages = vec![
            KeyUsagePurpose::KeyCertSign,
            KeyUsagePurpose::DigitalSignature,
        ];
        ca.distinguished_name.push(DnType::CommonName, "test CA");
        let ca_key = KeyPair::generate().unwrap();
        let ca_cert = ca.self_signed(&ca_key).unwrap();
        let issuer = Issuer::new(ca, ca_key);
        let mut sp =
            CertificateParams::new(vec!["localhost".to_owned(), "127.0.0.1".to_owned()]).unwrap();
        sp.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
        let sk = KeyPair::generate().unwrap();
        let srv = sp.signed_by(&sk, &issuer).unwrap();
        Pki {
            ca_der: ca_cert.der().clone(),
            ca_pem: ca_cert.pem(),
            server: ServerIdentity {
                chain: vec![srv.der().clone(), ca_cert.der().clone()],
                key: PrivateKeyDer::try_from(sk.serialize_der()).unwrap(),
            },
            issuer,
        }
    }

    /// A client certificate for `identity` (common name), signed by this CA.
    pub fn client_cert(&self, identity: &str) -> ncx::tls::ClientCertificate {
        self.client_cert_valid(identity, None)
    }

    /// Like [`Pki::client_cert`], optionally with a validity that ended yesterday.
    pub fn client_cert_valid(
        &self,
        identity: &str,
        expired: Option<()>,
    ) -> ncx::tls::ClientCertificate {
        let mut p = CertificateParams::new(vec![identity.to_owned()]).unwrap();
        p.distinguished_name.push(DnType::CommonName, identity);
        p.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
        if expired.is_some() {
            let now = time::OffsetDateTime::now_utc();
            p.not_before = now - time::Duration::days(30);
            p.not_after = now - time::Duration::days(1);
        }
        let k = KeyPair::generate().unwrap();
        let c = p.signed_by(&k, &self.issuer).unwrap();
        ncx::tls::ClientCertificate {
            chain: vec![c.der().clone()],
            key: PrivateKeyDer::try_from(k.serialize_der()).unwrap(),
        }
    }

    /// A certificate for `localhost` and 127.0.0.1 with a key of its own, signed by this CA, for a
    /// third-party program (a web server): written as PEM to `dir/NAME.crt` and `dir/NAME.key`.
    pub fn write_other_server(
        &self,
        dir: &std::path::Path,
        name: &str,
    ) -> (std::path::PathBuf, std::path::PathBuf) {
        let mut p =
            CertificateParams::new(vec!["localhost".to_owned(), "127.0.0.1".to_owned()]).unwrap();
        p.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
        let k = KeyPair::generate().unwrap();
        let c = p.signed_by(&k, &self.issuer).unwrap();
        let (crt, key) = (
            dir.join(format!("{name}.crt")),
            dir.join(format!("{name}.key")),
        );
        std::fs::write(&crt, c.pem()).unwrap();
        std::fs::write(&key, k.serialize_pem()).unwrap();
        (crt, key)
    }

    /// Writes the CA certificate to `dir/ca.crt` (the server's `tls.client_ca`).
    pub fn write_ca(&self, dir: &std::path::Path) -> std::path::PathBuf {
        let path = dir.join("ca.crt");
        std::fs::write(&path, &self.ca_pem).unwrap();
        path
    }

    pub fn server_identity(&self) -> ServerIdentity {
        ServerIdentity {
            chain: self.server.chain.clone(),
            key: self.server.key.clone_key(),
        }
    }

    pub fn ca_trust(&self) -> ServerTrust {
        let mut roots = rustls::RootCertStore::empty();
        roots.add(self.ca_der.clone()).unwrap();
        ServerTrust::Ca {
            path: "test-ca.pem".into(),
            roots: Arc::new(roots),
        }
    }

    pub fn pinned(&self) -> ServerTrust {
        ServerTrust::Pinned(vec![self.server.fingerprint()])
    }
}

/// A hello of this protocol version for `identity`, proving `token` over `exported`, as a client
/// sends it first on its control stream.
pub fn hello(identity: &str, token: &str, exported: &ncx::auth::ExportedKey) -> ncx_proto::Message {
    let id = name(identity);
    ncx_proto::Message::Hello {
        version: ncx_proto::PROTOCOL_VERSION,
        proof: ncx::auth::prove(&Token::new(token), exported, &id),
        identity: id,
        instance: None,
    }
}

pub fn name(s: &str) -> Name {
    Name::new(s).unwrap()
}

/// An identity allowed to bind any unprivileged port on 127.0.0.1.
pub fn identity(n: &str, token: &str) -> IdentityPolicy {
    identity_ports(n, token, vec![PortRange(1024..=65535)])
}

pub fn identity_ports(n: &str, token: &str, ports: Vec<PortRange>) -> IdentityPolicy {
    IdentityPolicy {
        name: name(n),
        auth: ncx::config::ClientAuth::Token(Token::new(token)),
        bind: "127.0.0.1".parse().unwrap(),
        ports,
    }
}

pub fn server_settings(identities: Vec<IdentityPolicy>) -> ServerSettings {
    ServerSettings::new(
        "127.0.0.1:0".parse().unwrap(),
        ServerCert::Auto(Default::default()),
        identities,
    )
}

/// A server running in this process on 127.0.0.1:0.
pub struct TestServer {
    pub addr: SocketAddr,
    pub shutdown: CancellationToken,
    pub task: JoinHandle<()>,
}

impl TestServer {
    pub async fn start(pki: &Pki, settings: ServerSettings) -> Self {
        let server = Server::new(settings, pki.server_identity()).unwrap();
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let shutdown = CancellationToken::new();
        let task = {
            let shutdown = shutdown.clone();
            tokio::spawn(async move { server.run(listener, shutdown).await })
        };
        TestServer {
            addr,
            shutdown,
            task,
        }
    }

    pub async fn stop(self) {
        self.shutdown.cancel();
        tokio::time::timeout(WAIT, self.task)
            .await
            .expect("server stops in time")
            .unwrap();
    }
}

/// A TLS 1.3 client trusting `pki`'s CA and offering `alpn`, for hand-made sessions.
pub fn raw_tls_client_for(pki: &Pki, alpn: Vec<Vec<u8>>) -> tokio_rustls::TlsConnector {
    let mut roots = rustls::RootCertStore::empty();
    roots.add(pki.ca_der.clone()).unwrap();
    let mut cfg = rustls::ClientConfig::builder_with_provider(ncx::tls::provider())
        .with_protocol_versions(&[&rustls::version::TLS13])
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth();
    cfg.alpn_protocols = alpn;
    tokio_rustls::TlsConnector::from(Arc::new(cfg))
}

/// A session made by hand as identity `a` (token `t`) to a server in this process: real TLS and yamux,
/// and every message written by the test, so it can send what ncx's client would not, or send
/// it at a moment of the test's choosing.
pub struct RawSession {
    pub ctrl: tokio_util::compat::Compat<yamux::Stream>,
    pub reader: ncx::framed::MessageReader,
    /// The server's answer to the hello: a welcome or a refusal.
    pub answer: ncx_proto::Message,
    /// The substreams the server opened (visitors), up to 16 waiting; more are dropped.
    pub inbound: tokio::sync::mpsc::Receiver<yamux::Stream>,
    /// Ends the session's connection.
    pub cancel: CancellationToken,
    /// The connection's driver, which ends when either side closes it.
    pub driver: JoinHandle<ncx::mux::SessionEnd>,
}

impl RawSession {
    /// Connects to the server at `server` (certified by `pki`) and says hello with protocol
    /// `version`.
    pub async fn start(server: SocketAddr, pki: &Pki, version: u16) -> Self {
        use ncx_proto::Message;
        let tcp = TcpStream::connect(server).await.unwrap();
        let tls = raw_tls_client_for(pki, vec![ncx_proto::ALPN.to_vec()])
            .connect(
                rustls::pki_types::ServerName::try_from("localhost").unwrap(),
                tcp,
            )
            .await
            .unwrap();
        let exported = ncx::auth::export(tls.get_ref().1).unwrap();
        let cancel = CancellationToken::new();
        let (inbound_tx, inbound) = tokio::sync::mpsc::channel(16);
        let (handle, driver) = ncx::mux::start(
            tls,
            yamux::Mode::Client,
            Box::new(move |s, _| {
                let _ = inbound_tx.try_send(s);
            }),
            cancel.clone(),
        );
        let driver = tokio::spawn(driver);
        let stream = handle.open().await.unwrap();
        let mut ctrl = tokio_util::compat::FuturesAsyncReadCompatExt::compat(stream);
        let mut reader = ncx::framed::MessageReader::new();
        let hello = match hello("a", "t", &exported) {
            Message::Hello {
                identity, proof, ..
            } => Message::Hello {
                instance: None,
                version,
                identity,
                proof,
            },
            _ => unreachable!(),
        };
        ncx::framed::write_message(&mut ctrl, &hello).await.unwrap();
        let answer = tokio::time::timeout(WAIT, reader.read(&mut ctrl))
            .await
            .unwrap()
            .unwrap();
        RawSession {
            ctrl,
            reader,
            answer,
            inbound,
            cancel,
            driver,
        }
    }

    /// Sends `msg` on the control stream.
    pub async fn send(&mut self, msg: &ncx_proto::Message) {
        ncx::framed::write_message(&mut self.ctrl, msg)
            .await
            .unwrap();
    }

    /// The next message on the control stream, within [`WAIT`].
    pub async fn next(&mut self) -> ncx_proto::Message {
        tokio::time::timeout(WAIT, self.reader.read(&mut self.ctrl))
            .await
            .expect("a message in time")
            .unwrap()
    }

    /// Sends `msg` and returns the next message.
    pub async fn ask(&mut self, msg: ncx_proto::Message) -> ncx_proto::Message {
        self.send(&msg).await;
        self.next().await
    }

    /// Registers the public service `service` on `remote_port` (0: any), without a group or
    /// access rules, and returns the server's answer.
    pub async fn register(&mut self, service: &str, remote_port: u16) -> ncx_proto::Message {
        self.ask(ncx_proto::Message::Register {
            group: None,
            service: name(service),
            remote_port,
            access: Default::default(),
        })
        .await
    }
}

pub fn service(n: &str, local: SocketAddr, remote_port: u16) -> ServiceSpec {
    ServiceSpec {
        name: name(n),
        local: local.to_string(),
        remote_port,
        access: Default::default(),
        proxy_protocol: None,
        visitors: None,
        group: None,
        health: None,
        udp: false,
    }
}

/// A private service that only `visitors` may reach.
pub fn private_service(n: &str, local: SocketAddr, visitors: &[&str]) -> ServiceSpec {
    ServiceSpec {
        visitors: Some(visitors.iter().map(|v| name(v)).collect()),
        group: None,
        health: None,
        udp: false,
        ..service(n, local, 0)
    }
}

pub fn client_settings(
    server: SocketAddr,
    trust: ServerTrust,
    identity: &str,
    token: &str,
    services: Vec<ServiceSpec>,
) -> ClientSettings {
    ClientSettings::new(
        server.to_string(),
        rustls::pki_types::ServerName::try_from("localhost")
            .unwrap()
            .to_owned(),
        trust,
        name(identity),
        Token::new(token),
        services,
    )
}

/// `settings` with its session inside a WebSocket at `url` (whose host and port `settings.server`
/// already names), `Host` being the URL's host and port, and `ca` for a `wss://` URL's outer TLS.
pub fn over_websocket(
    mut settings: ClientSettings,
    url: &str,
    ca: Option<std::path::PathBuf>,
) -> ClientSettings {
    let url: ncx::config::WsUrl = url.parse().unwrap();
    settings.websocket = Some(ncx::config::WebSocketSettings {
        host_header: format!("{}:{}", url.host, url.port),
        url,
        ca,
    });
    settings
}

pub async fn connect(settings: ClientSettings) -> Result<Connected, ClientError> {
    tokio::time::timeout(WAIT, Client::new(settings)?.connect())
        .await
        .expect("connect finishes in time")
}

/// A connected client serving visitors in a task; `stop` shuts it down and waits.
pub struct RunningClient {
    pub ports: Vec<(String, Result<u16, String>)>,
    pub shutdown: CancellationToken,
    pub task: JoinHandle<Result<(), ClientError>>,
}

impl RunningClient {
    pub async fn start(settings: ClientSettings) -> Self {
        let connected = connect(settings).await.expect("client connects");
        let ports = connected
            .services
            .iter()
            .map(|s| {
                (
                    s.name.to_string(),
                    s.result
                        .clone()
                        .map_err(|r| format!("{}: {}", r.code, r.message)),
                )
            })
            .collect();
        let shutdown = CancellationToken::new();
        let task = {
            let shutdown = shutdown.clone();
            tokio::spawn(async move { connected.run(shutdown).await })
        };
        RunningClient {
            ports,
            shutdown,
            task,
        }
    }

    pub fn port(&self, service: &str) -> u16 {
        self.ports
            .iter()
            .find(|(n, _)| n == service)
            .and_then(|(_, r)| r.clone().ok())
            .unwrap_or_else(|| panic!("service {service} not registered: {:?}", self.ports))
    }

    pub async fn stop(self) {
        self.shutdown.cancel();
        tokio::time::timeout(WAIT, self.task)
            .await
            .expect("client stops in time")
            .unwrap()
            .expect("client ends cleanly on shutdown");
    }

    /// Ends the client abruptly: its task is aborted, which drops the session without go-away or
    /// drain, as when the process dies.
    pub async fn kill(self) {
        self.task.abort();
        let _ = self.task.await;
    }
}

/// An echo service: every byte back, FIN answered with FIN. Runs until the test ends.
pub async fn echo_service() -> SocketAddr {
    let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((mut s, _)) = l.accept().await {
            tokio::spawn(async move {
                let (mut r, mut w) = s.split();
                let _ = tokio::io::copy(&mut r, &mut w).await;
                let _ = w.shutdown().await;
            });
        }
    });
    addr
}

/// An echo service that counts the connections it accepts, to prove that a refused visitor never
/// reached it.
pub async fn counting_echo() -> (SocketAddr, Arc<std::sync::atomic::AtomicUsize>) {
    let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap();
    let count = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let c = count.clone();
    tokio::spawn(async move {
        while let Ok((mut s, _)) = l.accept().await {
            c.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            tokio::spawn(async move {
                let (mut r, mut w) = s.split();
                let _ = tokio::io::copy(&mut r, &mut w).await;
                let _ = w.shutdown().await;
            });
        }
    });
    (addr, count)
}

/// A service that speaks first: writes `banner`, then echoes.
pub async fn banner_service(banner: &'static [u8]) -> SocketAddr {
    let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((mut s, _)) = l.accept().await {
            tokio::spawn(async move {
                if s.write_all(banner).await.is_err() {
                    return;
                }
                let (mut r, mut w) = s.split();
                let _ = tokio::io::copy(&mut r, &mut w).await;
                let _ = w.shutdown().await;
            });
        }
    });
    addr
}

/// A service that reads until EOF, then answers with the byte count and a large reply.
pub async fn read_all_then_answer_service(reply_len: usize) -> SocketAddr {
    let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((mut s, _)) = l.accept().await {
            tokio::spawn(async move {
                let mut buf = Vec::new();
                if s.read_to_end(&mut buf).await.is_err() {
                    return;
                }
                let mut reply = format!("got {} bytes\n", buf.len()).into_bytes();
                reply.extend((0..reply_len).map(|i| (i % 251) as u8));
                let _ = s.write_all(&reply).await;
                let _ = s.shutdown().await;
            });
        }
    });
    addr
}

/// A deterministic xorshift generator, so payloads differ without a `rand` dependency.
pub struct Rng(pub u64);

impl Rng {
    pub fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }

    pub fn bytes(&mut self, n: usize) -> Vec<u8> {
        let mut v = Vec::with_capacity(n + 8);
        while v.len() < n {
            v.extend_from_slice(&self.next().to_le_bytes());
        }
        v.truncate(n);
        v
    }
}

/// Sends `payload` to `addr`, half-closes, and returns everything read back.
pub async fn exchange(addr: SocketAddr, payload: &[u8]) -> std::io::Result<Vec<u8>> {
    let s = TcpStream::connect(addr).await?;
    s.set_nodelay(true)?;
    let (mut r, mut w) = s.into_split();
    let payload = payload.to_vec();
    let writer = tokio::spawn(async move {
        w.write_all(&payload).await?;
        w.shutdown().await?;
        Ok::<_, std::io::Error>(w)
    });
    let mut out = Vec::new();
    r.read_to_end(&mut out).await?;
    let _w = writer.await.expect("writer task")?;
    Ok(out)
}

/// Polls until connecting to `addr` is refused and returns how long that took. A bounded poll (every
/// 5 ms, at most `within`), not a sleep standing in for synchronisation: the test asserts the bound.
pub async fn wait_until_refused(addr: SocketAddr, within: Duration) -> Duration {
    let start = tokio::time::Instant::now();
    loop {
        match TcpStream::connect(addr).await {
            Err(e) if e.kind() == std::io::ErrorKind::ConnectionRefused => return start.elapsed(),
            _ => {}
        }
        assert!(
            start.elapsed() < within,
            "{addr} still accepts after {within:?}"
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

/// Reads lines from `child`'s stdout and stderr until one contains `needle`; returns that line.
/// The pipes keep being drained afterwards so the child never blocks on them.
pub async fn wait_for_line(child: &mut tokio::process::Child, needle: &str) -> String {
    use tokio::io::AsyncBufReadExt;
    let stdout = child.stdout.take().expect("stdout piped");
    let stderr = child.stderr.take().expect("stderr piped");
    let (tx, mut rx) = tokio::sync::mpsc::channel::<String>(64);
    for reader in [
        Box::new(stdout) as Box<dyn tokio::io::AsyncRead + Unpin + Send>,
        Box::new(stderr),
    ] {
        let tx = tx.clone();
        tokio::spawn(async move {
            let mut lines = tokio::io::BufReader::new(reader).lines();
            while let Ok(Some(l)) = lines.next_line().await {
                if tx.send(l).await.is_err() {
                    break;
                }
            }
        });
    }
    drop(tx);
    let found = tokio::time::timeout(WAIT, async {
        while let Some(l) = rx.recv().await {
            if l.contains(needle) {
                return Some(l);
            }
        }
        None
    })
    .await
    .expect("the line appears in time");
    // NCX_TEST_SHOW_LOGS=1 prints what the child says afterwards, for debugging a failing test.
    let show = std::env::var_os("NCX_TEST_SHOW_LOGS").is_some();
    tokio::spawn(async move {
        while let Some(l) = rx.recv().await {
            if show {
                eprintln!("[child] {l}");
            }
        }
    });
    found.unwrap_or_else(|| panic!("the process ended without printing {needle:?}"))
}

/// The value after `key=` in a log line (up to the next space).
pub fn log_field(line: &str, key: &str) -> String {
    line.split(&format!("{key}="))
        .nth(1)
        .and_then(|s| s.split_whitespace().next())
        .unwrap_or_else(|| panic!("no {key}= in {line:?}"))
        .to_owned()
}

/// The stdout of a process that must have succeeded; otherwise fails naming `what` and showing
/// both its outputs.
pub fn succeeded(out: &std::process::Output, what: &str) -> String {
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        out.status.success(),
        "{what} failed: {stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    stdout
}

/// `ncx` as a child process with a clean environment, killed when dropped.
/// What systemd hands a service. A test run inside a unit must not hand its own to the ncx it
/// starts; a test that plays systemd sets them after this.
pub const SERVICE_MANAGER_VARS: [&str; 5] = [
    "NOTIFY_SOCKET",
    "WATCHDOG_USEC",
    "WATCHDOG_PID",
    "CREDENTIALS_DIRECTORY",
    "STATE_DIRECTORY",
];

pub fn ncx_process() -> tokio::process::Command {
    let mut c = tokio::process::Command::new(env!("CARGO_BIN_EXE_ncx"));
    for var in ncx::proxy::PROXY_VARS
        .iter()
        .chain(&["no_proxy", "NO_PROXY"])
    {
        c.env_remove(var);
    }
    for var in SERVICE_MANAGER_VARS {
        c.env_remove(var);
    }
    c.env_remove("RUST_LOG")
        .env_remove("NCX_TOKEN")
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .kill_on_drop(true);
    c
}

/// Peak and current resident memory of a process, in KiB, from /proc.
pub fn memory_kib(pid: u32) -> (u64, u64) {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let field = |name: &str| {
        status
            .lines()
            .find(|l| l.starts_with(name))
            .and_then(|l| l.split_whitespace().nth(1))
            .and_then(|v| v.parse::<u64>().ok())
            .unwrap_or(0)
    };
    (field("VmHWM:"), field("VmRSS:"))
}

/// Lines a child process prints on stdout and stderr, to wait for several in turn.
pub struct LogLines {
    rx: tokio::sync::mpsc::Receiver<String>,
    history: Vec<String>,
}

impl LogLines {
    pub fn new(child: &mut tokio::process::Child) -> Self {
        use tokio::io::AsyncBufReadExt;
        let (tx, rx) = tokio::sync::mpsc::channel::<String>(1024);
        for reader in [
            Box::new(child.stdout.take().expect("stdout piped"))
                as Box<dyn tokio::io::AsyncRead + Unpin + Send>,
            Box::new(child.stderr.take().expect("stderr piped")),
        ] {
            let tx = tx.clone();
            tokio::spawn(async move {
                let mut lines = tokio::io::BufReader::new(reader).lines();
                while let Ok(Some(l)) = lines.next_line().await {
                    if tx.send(l).await.is_err() {
                        break;
                    }
                }
            });
        }
        LogLines {
            rx,
            history: Vec::new(),
        }
    }

    /// Whether a line read so far (by [`LogLines::wait_for`]) contains `needle`.
    pub fn seen(&self, needle: &str) -> bool {
        self.history.iter().any(|l| l.contains(needle))
    }

    /// Every line, read so far and until the process has closed its outputs (it has ended).
    pub async fn all(mut self) -> Vec<String> {
        tokio::time::timeout(WAIT, async {
            while let Some(l) = self.rx.recv().await {
                self.history.push(l);
            }
        })
        .await
        .expect("the process closes its outputs in time");
        self.history
    }

    /// A server started with `--metrics-listen`: its tunnel address and its metrics address,
    /// from the two "listening" lines it prints in either order.
    pub async fn listen_and_metrics_addrs(&mut self) -> (String, String) {
        let (mut addr, mut metrics) = (String::new(), String::new());
        for _ in 0..2 {
            let line = self.wait_for(" listening").await;
            let field = log_field(&line, "addr");
            if line.contains("metrics listening") {
                metrics = field;
            } else {
                addr = field;
            }
        }
        (addr, metrics)
    }

    /// The next line containing `needle` (earlier lines are skipped).
    pub async fn wait_for(&mut self, needle: &str) -> String {
        tokio::time::timeout(WAIT, async {
            while let Some(l) = self.rx.recv().await {
                self.history.push(l.clone());
                if l.contains(needle) {
                    return l;
                }
            }
            panic!(
                "the process ended without printing {needle:?}; its last lines:\n{}",
                self.tail()
            );
        })
        .await
        .unwrap_or_else(|_| {
            panic!(
                "no line with {needle:?} in time; the last lines:\n{}",
                self.tail()
            )
        })
    }

    /// The last lines read so far, for a failure message.
    fn tail(&self) -> String {
        let from = self.history.len().saturating_sub(40);
        self.history[from..].join("\n")
    }
}

/// A port that was free a moment ago on 127.0.0.1 (for tests that must name a port up front, such
/// as a server restarted on the same address).
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// Polls (every 20 ms, each try bounded to 1 s, at most [`WAIT`]) until a one-byte round trip
/// through the echo service at `public` works; returns how long that took.
pub async fn wait_for_tunnel(public: SocketAddr) -> Duration {
    let start = tokio::time::Instant::now();
    loop {
        if let Ok(Ok(b)) =
            tokio::time::timeout(Duration::from_secs(1), exchange(public, b"x")).await
        {
            if b == b"x" {
                return start.elapsed();
            }
        }
        assert!(start.elapsed() < WAIT, "the tunnel did not come back");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// `ncx server` on `listen` with its certificate in `dir` and one identity `a`/`t` that may bind
/// any port above 1023 on 127.0.0.1; more flags may be added before it is spawned.
pub fn server_command(dir: &std::path::Path, listen: SocketAddr) -> tokio::process::Command {
    let mut c = ncx_process();
    c.args(["server", "--listen", &listen.to_string(), "--auto-cert-dir"])
        .arg(dir)
        .args([
            "--identity",
            "a",
            "--ports",
            "1024-65535",
            "--bind",
            "127.0.0.1",
        ])
        .env("NCX_TOKEN", "t");
    c
}

/// Starts [`server_command`] on `listen` (port 0: any); returns the process and the address it
/// listens on.
pub async fn server_process(
    dir: &std::path::Path,
    listen: SocketAddr,
) -> (tokio::process::Child, SocketAddr) {
    let mut child = server_command(dir, listen).spawn().unwrap();
    let line = wait_for_line(&mut child, "server listening").await;
    (child, log_field(&line, "addr").parse().unwrap())
}

pub fn fingerprint(dir: &std::path::Path) -> String {
    ncx::certs::load_or_create_self_signed(dir)
        .unwrap()
        .0
        .fingerprint()
        .to_string()
}

/// `ncx client` of `identity` with `token`, pinning `fp`, exposing `services`
/// (`NAME=HOST:PORT@REMOTE_PORT`); more flags may be added before it is spawned.
pub fn client_command(
    server: &str,
    fp: &str,
    identity: &str,
    token: &str,
    services: &[String],
) -> tokio::process::Command {
    let mut c = ncx_process();
    c.args(["client", "--server", server, "--identity", identity])
        .args(["--server-fingerprint", fp])
        .env("NCX_TOKEN", token);
    for s in services {
        c.args(["--service", s]);
    }
    c
}

/// [`client_command`] as `a`/`t`, started; returns it and the first service's public address.
pub async fn client_process(
    server: SocketAddr,
    fp: &str,
    services: &[String],
) -> (tokio::process::Child, String) {
    let mut child = client_command(&server.to_string(), fp, "a", "t", services)
        .spawn()
        .unwrap();
    let line = wait_for_line(&mut child, "service available").await;
    (child, log_field(&line, "public"))
}

pub async fn echo_process() -> (tokio::process::Child, SocketAddr) {
    let mut child = ncx_process()
        .args(["echo", "--listen", "127.0.0.1:0"])
        .spawn()
        .unwrap();
    let line = wait_for_line(&mut child, "echo service listening on").await;
    (child, line.rsplit(' ').next().unwrap().parse().unwrap())
}

/// One HTTP GET of `path` at `addr`: the status code and the body.
pub async fn get(addr: &str, path: &str) -> (u16, String) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
    tcp.write_all(format!("GET {path} HTTP/1.1\r\nHost: {addr}\r\n\r\n").as_bytes())
        .await
        .unwrap();
    let mut reply = String::new();
    tokio::time::timeout(WAIT, tcp.read_to_string(&mut reply))
        .await
        .unwrap()
        .unwrap();
    let status = reply
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("not an HTTP reply: {reply:?}"));
    let body = reply.split_once("\r\n\r\n").map(|(_, b)| b).unwrap_or("");
    (status, body.to_owned())
}

/// The value of one series (its name and labels exactly as exposed) in a scrape.
pub fn series(scrape: &str, name: &str) -> Option<f64> {
    scrape
        .lines()
        .find_map(|l| l.strip_prefix(name)?.strip_prefix(' ')?.parse().ok())
}

/// Scrapes `addr` until `series` has at least `at_least`; returns the scrape.
pub async fn scrape_until(addr: &str, name: &str, at_least: f64) -> String {
    let start = std::time::Instant::now();
    loop {
        let (status, body) = get(addr, "/metrics").await;
        assert_eq!(status, 200, "{body}");
        if series(&body, name).is_some_and(|v| v >= at_least) {
            return body;
        }
        assert!(
            start.elapsed() < WAIT,
            "{name} never reached {at_least}:\n{body}"
        );
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
}

/// A UDP service that answers every datagram with the address it came from, then the datagram.
pub async fn udp_echo() -> SocketAddr {
    let socket = Arc::new(tokio::net::UdpSocket::bind("127.0.0.1:0").await.unwrap());
    let addr = socket.local_addr().unwrap();
    tokio::spawn(async move {
        let mut buf = vec![0u8; 65_536];
        while let Ok((n, from)) = socket.recv_from(&mut buf).await {
            let mut reply = format!("{from} ").into_bytes();
            reply.extend_from_slice(&buf[..n]);
            let _ = socket.send_to(&reply, from).await;
        }
    });
    addr
}

/// Sends `payload` to `to` from `socket` and waits for the reply, sending again every 500 ms
/// (UDP may lose a datagram), at most 20 times.
pub async fn ask(socket: &tokio::net::UdpSocket, to: SocketAddr, payload: &[u8]) -> Vec<u8> {
    let mut buf = vec![0u8; 65_536 + 64];
    for _ in 0..20 {
        socket.send_to(payload, to).await.unwrap();
        if let Ok(Ok((n, _))) = tokio::time::timeout(
            std::time::Duration::from_millis(500),
            socket.recv_from(&mut buf),
        )
        .await
        {
            return buf[..n].to_vec();
        }
    }
    panic!("no reply from {to} after 20 tries");
}

/// The echo's reply, split into the source address the service saw and the datagram.
pub fn split_reply(reply: &[u8]) -> (String, Vec<u8>) {
    let space = reply
        .iter()
        .position(|&b| b == b' ')
        .expect("an address first");
    (
        String::from_utf8(reply[..space].to_vec()).unwrap(),
        reply[space + 1..].to_vec(),
    )
}
