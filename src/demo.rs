//! `ncx demo`: a server, a client and a small service on loopback in one process, with throwaway
//! credentials, to see the tunnel work with nothing prepared.

use std::net::SocketAddr;
use std::time::Duration;

use anyhow::{bail, Context};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::{TcpListener, TcpStream};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::auth::Token;
use crate::config::{
    ClientSettings, IdentityPolicy, PortRange, ServerCert, ServerSettings, ServiceSpec,
};
use crate::tls::ServerTrust;

/// The first line the demo service writes to every connection (it speaks first, like SSH).
pub const BANNER: &str = "hello from the ncx demo service; type a line and it comes back\n";

/// How long the demo's own round trip may take.
const ROUND_TRIP_TIMEOUT: Duration = Duration::from_secs(10);

/// Serves the demo service on `listener`: a banner, then every byte echoed back, until `cancel`.
pub async fn serve_echo(listener: TcpListener, cancel: CancellationToken) {
    let tracker = TaskTracker::new();
    loop {
        let conn = tokio::select! {
            _ = cancel.cancelled() => break,
            r = listener.accept() => r,
        };
        let Ok((mut tcp, _)) = conn else { continue };
        let cancel = cancel.clone();
        tracker.spawn(async move {
            let _ = tcp.set_nodelay(true);
            let work = async {
                tcp.write_all(BANNER.as_bytes()).await?;
                let (mut r, mut w) = tcp.split();
                tokio::io::copy(&mut r, &mut w).await?;
                w.shutdown().await
            };
            tokio::select! {
                _ = cancel.cancelled() => {}
                _ = work => {}
            }
        });
    }
    tracker.close();
    tracker.wait().await;
}

/// Runs the demo. With `check`, returns after the round trip; otherwise serves until `shutdown`.
pub async fn run(check: bool, shutdown: CancellationToken) -> anyhow::Result<()> {
    let cancel = shutdown.child_token();
    let tracker = TaskTracker::new();
    let result = run_inner(check, &cancel, &tracker).await;
    cancel.cancel();
    tracker.close();
    tracker.wait().await;
    result
}

async fn run_inner(
    check: bool,
    cancel: &CancellationToken,
    tracker: &TaskTracker,
) -> anyhow::Result<()> {
    let service = TcpListener::bind("127.0.0.1:0")
        .await
        .context("binding the demo service")?;
    let service_addr = service.local_addr()?;
    tracker.spawn(serve_echo(service, cancel.clone()));

    let (identity, _, _) = crate::tls::self_signed(&["localhost".into(), "127.0.0.1".into()])?;
    let fingerprint = identity.fingerprint();
    let mut token_bytes = [0u8; 24];
    aws_lc_rs::rand::fill(&mut token_bytes).map_err(|_| anyhow::anyhow!("no randomness"))?;
    let token: String = token_bytes.iter().map(|b| format!("{b:02x}")).collect();
    let name = ncx_proto::Name::new("demo").expect("a valid literal name");
    let listener = TcpListener::bind("127.0.0.1:0")
        .await
        .context("binding the demo server")?;
    let server_addr = listener.local_addr()?;
    let settings = ServerSettings::new(
        server_addr,
        ServerCert::Auto(Default::default()),
        vec![IdentityPolicy {
            name: name.clone(),
            auth: crate::config::ClientAuth::Token(Token::new(token.clone())),
            bind: "127.0.0.1".parse()?,
            ports: vec![PortRange(1024..=65535)],
        }],
    );
    let server = crate::server::Server::new(settings, identity)?;
    {
        let server = server.clone();
        let cancel = cancel.clone();
        tracker.spawn(async move { server.run(listener, cancel).await });
    }

    let client = crate::client::Client::new(ClientSettings::new(
        server_addr.to_string(),
        rustls::pki_types::ServerName::try_from("localhost")?.to_owned(),
        ServerTrust::Pinned(vec![fingerprint]),
        name,
        Token::new(token),
        vec![ServiceSpec {
            name: ncx_proto::Name::new("echo").expect("a valid literal name"),
            local: service_addr.to_string(),
            remote_port: 0,
            access: Default::default(),
            proxy_protocol: None,
            visitors: None,
            group: None,
            health: None,
            udp: false,
        }],
    ))?;
    let connected = client.connect().await.context("the demo client")?;
    let port = connected
        .port("echo")
        .context("the demo service was not registered")?;
    {
        let cancel = cancel.clone();
        tracker.spawn(async move {
            if let Err(e) = connected.run(cancel).await {
                tracing::error!(error = %e, "the demo client stopped");
            }
        });
    }
    let public = SocketAddr::new(server_addr.ip(), port);
    let reply = tokio::time::timeout(ROUND_TRIP_TIMEOUT, round_trip(public))
        .await
        .context("the round trip through the tunnel timed out")??;
    crate::say!("ncx demo: server {server_addr} (fingerprint {fingerprint}), client connected once over TLS 1.3 + yamux");
    crate::say!("ncx demo: service {service_addr} is exposed at {public}");
    crate::say!("ncx demo: round trip through the tunnel ok: sent \"ping\", got {reply:?} back");
    if check {
        return Ok(());
    }
    crate::say!(
        "ncx demo: try it: nc {} {} (or telnet {} {}, or any TCP client)   (Ctrl-C to stop)",
        public.ip(),
        public.port(),
        public.ip(),
        public.port()
    );
    cancel.cancelled().await;
    Ok(())
}

/// Connects through the tunnel, reads the banner, sends a line and reads it back.
pub async fn round_trip(public: SocketAddr) -> anyhow::Result<String> {
    let tcp = TcpStream::connect(public)
        .await
        .with_context(|| format!("connecting to {public}"))?;
    let mut reader = BufReader::new(tcp);
    let mut banner = String::new();
    reader.read_line(&mut banner).await?;
    if banner != BANNER {
        bail!("unexpected banner {banner:?}");
    }
    reader.get_mut().write_all(b"ping\n").await?;
    reader.get_mut().shutdown().await?;
    let mut rest = String::new();
    reader.read_to_string(&mut rest).await?;
    if rest != "ping\n" {
        bail!("expected \"ping\\n\" back, got {rest:?}");
    }
    Ok(rest.trim_end().to_owned())
}
