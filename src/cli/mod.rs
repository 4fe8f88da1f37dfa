//! The command line: clap definitions (their doc comments are the `--help` text) and what each
//! subcommand does with them.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context;
use clap::{Args, Parser, Subcommand};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use toml::Spanned;

mod execute;
mod files;
mod reloading;
pub mod service;

pub use execute::execute;

use crate::config::{
    ClientFile, ClientSettings, IdentityFile, ServerCert, ServerFile, ServerSettings,
    ServerTlsFile, ServiceFile, ServiceSpec, Source, VisitFile,
};

/// ncx: a reverse tunnel. A client behind NAT dials the server once (TLS 1.3, one TCP connection,
/// yamux on top); every visitor at a public port of the server becomes a substream to that client.
#[derive(Debug, Parser)]
#[command(name = "ncx", version = env!("NCX_VERSION"))]
pub struct Cli {
    /// Log level (error, warn, info, debug, trace) or a tracing filter such as `ncx=debug`.
    /// Without it, RUST_LOG is used, and then `info`.
    #[arg(long, global = true)]
    pub log_level: Option<String>,

    /// How log lines look: `human` (short lines, no module paths) or `json` (one object per
    /// line, with the fields of the span an event happened in).
    #[arg(long, global = true, value_enum, default_value_t)]
    pub log_format: crate::logging::LogFormat,

    /// Append the server's audit lines (one per visitor connection) to this file instead of the
    /// main log, in the --log-format.
    #[arg(long, global = true)]
    pub audit_log: Option<PathBuf>,

    #[command(subcommand)]
    pub command: Command,
}

impl Cli {
    /// What the command line says about logging.
    pub fn log_options(&self) -> crate::logging::LogOptions {
        crate::logging::LogOptions {
            level: self.log_level.clone(),
            format: self.log_format,
            audit_file: self.audit_log.clone(),
        }
    }
}

/// What to run.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run the public server.
    Server(ServerArgs),
    /// Run the client inside the private network.
    Client(ClientArgs),
    /// Reach a private service: listen locally and carry every local connection to the service
    /// through the server. Unmodified programs (mstsc, xfreerdp, ssh) connect to the listen address.
    Visit(VisitArgs),
    /// Create a CA, server and client certificates.
    Certs(CertsArgs),
    /// Run a server, a client and a sample service on loopback, and tunnel a round trip.
    Demo(DemoArgs),
    /// Run the demo's sample service alone: a greeting line, then every byte echoed back. Handy as
    /// a local service while trying a tunnel.
    Echo(EchoArgs),
    /// Register `ncx client` or `ncx visit` as a Windows service, or remove it.
    Service(crate::service::ServiceArgs),
    /// Show a running server's sessions, or a running client's state, through its admin socket.
    Status(StatusArgs),
    /// Control a running server through its admin socket.
    Ctl(CtlArgs),
    /// Print the shell completion script for SHELL, e.g.
    /// `ncx completions bash > /etc/bash_completion.d/ncx`.
    Completions {
        /// The shell.
        shell: clap_complete::Shell,
    },
    /// Print the man page (roff), e.g. `ncx man > /usr/local/share/man/man1/ncx.1`, or write one
    /// page per subcommand (ncx.1, ncx-server.1, …) into --dir.
    Man {
        /// Write every page into this directory instead of printing ncx.1.
        #[arg(long)]
        dir: Option<PathBuf>,
    },
}

impl Command {
    /// The settings a `client` or `visit` command runs with, checked (for `ncx service install`,
    /// which checks a configuration before registering it).
    pub fn client_settings(self) -> anyhow::Result<ClientSettings> {
        match self {
            Command::Client(args) => args.settings(),
            Command::Visit(args) => args.settings(),
            _ => anyhow::bail!("not a client or visit command"),
        }
    }
}

/// Where `ncx status` and `ncx ctl` find the process.
#[derive(Debug, Args)]
pub struct AdminSocketArg {
    /// The admin socket of the server or client (its `admin_socket`; on Windows a named pipe).
    #[cfg_attr(not(windows), arg(long, default_value = "/run/ncx/server.sock"))]
    #[cfg_attr(windows, arg(long, default_value = r"\\.\pipe\ncx-server"))]
    pub socket: PathBuf,
}

/// `ncx status`.
#[derive(Debug, Args)]
pub struct StatusArgs {
    #[command(flatten)]
    pub admin: AdminSocketArg,
    /// Print the answer as JSON (one object) instead of a table.
    #[arg(long)]
    pub json: bool,
}

/// `ncx ctl`.
#[derive(Debug, Args)]
pub struct CtlArgs {
    #[command(flatten)]
    pub admin: AdminSocketArg,
    #[command(subcommand)]
    pub action: CtlAction,
}

/// What `ncx ctl` asks for.
#[derive(Debug, Subcommand)]
pub enum CtlAction {
    /// Reload the configuration of the server or client behind the socket, as SIGHUP does;
    /// prints what changed, or why the new configuration was refused (exit 1).
    Reload,
}

/// `ncx echo`.
#[derive(Debug, Args)]
pub struct EchoArgs {
    /// Address to listen on.
    #[arg(long, default_value = "127.0.0.1:7000")]
    pub listen: String,
}

/// `ncx server`.
#[derive(Debug, Clone, Args)]
pub struct ServerArgs {
    /// TOML configuration file (see README); flags given as well override its values.
    #[arg(long, short)]
    pub config: Option<PathBuf>,
    /// Check this configuration file (with the flags given as well) and its certificates, then
    /// exit: 0 when the server would start with it, 1 with the error (FILE:LINE:COL) otherwise.
    /// Binds nothing and creates nothing.
    #[arg(long, conflicts_with = "config")]
    pub check_config: Option<PathBuf>,
    /// Address to accept clients on [default: 0.0.0.0:7835].
    #[arg(long)]
    pub listen: Option<String>,
    /// PEM certificate chain of the server (leaf first). Without it a self-signed certificate is
    /// created on first start and reused.
    #[arg(long, requires = "key")]
    pub cert: Option<PathBuf>,
    /// PEM private key of the server certificate.
    #[arg(long, requires = "cert")]
    pub key: Option<PathBuf>,
    /// Where the self-signed certificate is kept when --cert is not given [default: certs].
    #[arg(long)]
    pub auto_cert_dir: Option<PathBuf>,
    /// Seconds for a client's TLS handshake, hello and authentication together [default: 10].
    #[arg(long)]
    pub handshake_timeout_secs: Option<u64>,
    /// Concurrent visitors per client session [default: 10000].
    #[arg(long)]
    pub max_visitors_per_session: Option<usize>,
    /// Add an identity (a client name) with --token (or NCX_TOKEN) and --ports; more need a
    /// config file.
    #[arg(long, requires = "ports")]
    pub identity: Option<String>,
    /// The token of --identity [default: the environment variable NCX_TOKEN]. Only --identity
    /// reads NCX_TOKEN, so it does not get in the way of a configuration file.
    #[arg(long, requires = "identity", conflicts_with = "token_file")]
    pub token: Option<String>,
    /// A file holding the token of --identity (a relative path is looked up in
    /// $CREDENTIALS_DIRECTORY when systemd sets it).
    #[arg(long, requires = "identity")]
    pub token_file: Option<PathBuf>,
    /// Public ports the identity may use, e.g. `3389,20000-20100`.
    #[arg(long, value_delimiter = ',', requires = "identity")]
    pub ports: Vec<String>,
    /// Address the identity's public ports are bound on [default: 0.0.0.0].
    #[arg(long, requires = "identity")]
    pub bind: Option<String>,
    /// Load balancers (addresses or blocks, e.g. `10.0.0.5,10.1.0.0/16`) whose connections start
    /// with a PROXY protocol header (v1 or v2) naming the real client.
    #[arg(long, value_delimiter = ',')]
    pub proxy_protocol_from: Vec<String>,
    /// Share the port with a website: every connection that is not an ncx client (its TLS hello
    /// does not offer ALPN ncx/1) is passed untouched to this web server, `HOST:PORT`.
    #[arg(long)]
    pub fallback: Option<String>,
    /// Accept clients whose transport is a WebSocket, upgrading this path (e.g. `/ncx`), on the
    /// same listener (usually behind a TLS-terminating reverse proxy).
    #[arg(long)]
    pub websocket_path: Option<String>,
    /// Serve Prometheus metrics (GET /metrics) and GET /ready on IP:PORT, or on PORT of
    /// 127.0.0.1. No authentication: keep it off the internet.
    #[arg(long)]
    pub metrics_listen: Option<String>,
    /// Unix socket (made with mode 0600) for `ncx status` and `ncx ctl reload`; on Windows a
    /// named pipe, `\\.\pipe\NAME`.
    #[arg(long)]
    pub admin_socket: Option<PathBuf>,
}

/// How to reach and authenticate to the server: shared by `ncx client` and `ncx visit`.
#[derive(Debug, Clone, Args)]
pub struct ConnectArgs {
    /// TOML configuration file (see README); flags given as well override its values.
    #[arg(long, short)]
    pub config: Option<PathBuf>,
    /// The server, as HOST:PORT. Repeat for several servers (see --server-mode).
    #[arg(long)]
    pub server: Vec<String>,
    /// With several servers: `all` (a session to each, the default) or `failover` (one at a
    /// time, in order).
    #[arg(long)]
    pub server_mode: Option<String>,
    /// Which instance of the identity this client is, when one identity runs on several
    /// machines (their sessions then coexist on a server).
    #[arg(long)]
    pub instance: Option<String>,
    /// Name expected in the server's certificate with --ca [default: the host of --server].
    #[arg(long)]
    pub server_name: Option<String>,
    /// The identity to authenticate as.
    #[arg(long)]
    pub identity: Option<String>,
    /// The identity's token [default: the configuration file's `token`, then the environment
    /// variable NCX_TOKEN].
    #[arg(long, conflicts_with = "token_file")]
    pub token: Option<String>,
    /// A file holding the identity's token (a relative path is looked up in
    /// $CREDENTIALS_DIRECTORY when systemd sets it).
    #[arg(long)]
    pub token_file: Option<PathBuf>,
    /// SHA-256 fingerprint of the server's certificate, as the server prints it at start.
    /// Repeat for several servers: each must present one of them.
    #[arg(long)]
    pub server_fingerprint: Vec<String>,
    /// PEM file of the CA that signed the server's certificate.
    #[arg(long)]
    pub ca: Option<PathBuf>,
    /// Do not verify the server at all. Anyone on the network path can then impersonate it.
    #[arg(long)]
    pub insecure_skip_verify: bool,
    /// The proxy to reach the server through: http://[USER:PASS@]HOST[:PORT], https://…,
    /// socks5://…, or `direct` [default: the configuration file's `proxy`, then HTTPS_PROXY,
    /// ALL_PROXY and NO_PROXY].
    #[arg(long)]
    pub proxy: Option<String>,
    /// Carry the session inside a WebSocket at this URL (wss://HOST[:PORT]/PATH, or ws://… to
    /// a TLS-terminating proxy's plain side): for networks that let only web traffic out. Takes
    /// the place of --server.
    #[arg(long, conflicts_with = "server")]
    pub websocket: Option<String>,
    /// PEM client certificate (from `ncx certs client NAME`), for identities that need one.
    #[arg(long, requires = "key")]
    pub cert: Option<PathBuf>,
    /// PEM private key of --cert.
    #[arg(long, requires = "cert")]
    pub key: Option<PathBuf>,
}

/// `ncx client`.
#[derive(Debug, Clone, Args)]
pub struct ClientArgs {
    #[command(flatten)]
    pub connect: ConnectArgs,
    /// Check this configuration file (with the flags given as well), its certificates and token
    /// files, then exit: 0 when the client would start with it, 1 with the error (FILE:LINE:COL)
    /// otherwise. Connects to nothing.
    #[arg(long, conflicts_with = "config")]
    pub check_config: Option<PathBuf>,
    /// A service to expose: NAME=LOCAL_HOST:PORT@REMOTE_PORT (0 lets the server pick the port).
    /// Repeat for more services.
    #[arg(long = "service", short = 's')]
    pub services: Vec<ServiceSpec>,
    /// Seconds to wait for a local service to accept a connection [default: 5].
    #[arg(long)]
    pub local_connect_timeout_secs: Option<u64>,
    /// Exit with the reasons when the server refuses any service, instead of serving the others
    /// (like ssh's ExitOnForwardFailure).
    #[arg(long)]
    pub exit_on_forward_failure: bool,
    /// Serve Prometheus metrics (GET /metrics) and GET /ready (200 while connected) on IP:PORT,
    /// or on PORT of 127.0.0.1.
    #[arg(long)]
    pub metrics_listen: Option<String>,
    /// Unix socket (made with mode 0600) for `ncx status` and `ncx ctl reload`; on Windows a
    /// named pipe, `\\.\pipe\NAME`.
    #[arg(long)]
    pub admin_socket: Option<PathBuf>,
}

/// `ncx visit`.
#[derive(Debug, Args)]
pub struct VisitArgs {
    #[command(flatten)]
    pub connect: ConnectArgs,
    /// A private service to reach, as OWNER/SERVICE: the identity that offers it, and its name.
    /// Repeat it, each followed by its --listen, to reach several.
    #[arg(long, requires = "listen")]
    pub service: Vec<String>,
    /// Local IP:PORT to listen on for the --service before it, e.g. 127.0.0.1:13389; point the
    /// program (mstsc, ssh) there.
    #[arg(long, requires = "service")]
    pub listen: Vec<String>,
}

/// `ncx certs`.
#[derive(Debug, Args)]
pub struct CertsArgs {
    /// Directory to write into (and to read the CA from).
    #[arg(long, default_value = "certs", global = true)]
    pub dir: PathBuf,
    /// Overwrite existing files.
    #[arg(long, global = true)]
    pub force: bool,
    #[command(subcommand)]
    pub kind: CertsKind,
}

/// What `ncx certs` creates.
#[derive(Debug, Subcommand)]
pub enum CertsKind {
    /// A new CA: ca.crt and ca.key (mode 0600).
    Ca {
        /// The CA's common name.
        #[arg(long, default_value = "ncx CA")]
        name: String,
    },
    /// A server certificate signed by the CA: server.crt (with the CA appended) and server.key.
    Server {
        /// DNS names and IP addresses clients use to reach the server.
        #[arg(required = true)]
        names: Vec<String>,
    },
    /// A client certificate signed by the CA for an identity: client-NAME.crt and client-NAME.key.
    Client {
        /// The identity.
        name: String,
    },
}

/// `ncx demo`.
#[derive(Debug, Args)]
pub struct DemoArgs {
    /// Exit 0 after the round trip (non-zero with the reason if it failed) instead of serving.
    #[arg(long)]
    pub check: bool,
}

/// A value from a flag, which has no place in a file to point at.
fn spanned<T>(v: T) -> Spanned<T> {
    Spanned::new(0..0, v)
}

/// The environment variable NCX_TOKEN, the token used when neither a flag nor a file names one.
pub(crate) fn env_token() -> Option<String> {
    std::env::var("NCX_TOKEN").ok()
}
