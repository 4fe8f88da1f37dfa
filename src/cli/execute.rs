//! What each subcommand does with its parsed flags: `execute` and the pieces it runs.

use super::*;

/// Runs the parsed command until it finishes or `shutdown` fires.
pub async fn execute(command: Command, shutdown: CancellationToken) -> anyhow::Result<ExitCode> {
    match command {
        Command::Server(mut args) => {
            if let Some(path) = args.check_config.take() {
                args.config = Some(path.clone());
                let settings = args.settings()?;
                let identity = match &settings.cert {
                    ServerCert::Files { cert, key } => {
                        crate::tls::ServerIdentity::from_files(cert, key)?
                    }
                    // An existing self-signed certificate is checked; a missing one would be
                    // created at start, which a check does not do.
                    ServerCert::Auto(dir) if dir.join("ncx-server.crt").exists() => {
                        crate::certs::load_or_create_self_signed(dir)?.0
                    }
                    ServerCert::Auto(_) => crate::tls::self_signed(&["localhost".into()])?.0,
                };
                crate::server::Server::new(settings, identity)?;
                crate::say!("{}: the server configuration is valid", path.display());
                return Ok(ExitCode::SUCCESS);
            }
            let hangups = reloading::Hangups::watch();
            let settings = args.clone().settings()?;
            let identity = match &settings.cert {
                ServerCert::Files { cert, key } => {
                    crate::tls::ServerIdentity::from_files(cert, key)?
                }
                ServerCert::Auto(dir) => {
                    let (identity, created) = crate::certs::load_or_create_self_signed(dir)?;
                    // The absolute path, so an operator sees which identity this server uses.
                    let shown = std::path::absolute(dir).unwrap_or_else(|_| dir.clone());
                    if created {
                        crate::say!(
                            "created a self-signed server certificate in {} (key mode 0600)",
                            shown.display()
                        );
                    } else {
                        crate::say!(
                            "using the self-signed server certificate in {}",
                            shown.display()
                        );
                    }
                    identity
                }
            };
            let fingerprint = identity.fingerprint();
            // Everything that can refuse the certificate or the settings runs before the
            // fingerprint is printed: a fingerprint followed by an error is a server that never ran.
            let server = crate::server::Server::new(settings.clone(), identity)?;
            let listener = TcpListener::bind(settings.listen)
                .await
                .with_context(|| format!("binding {}", settings.listen))?;
            let metrics = match settings.metrics_listen {
                Some(addr) => Some(
                    TcpListener::bind(addr)
                        .await
                        .with_context(|| format!("binding metrics_listen {addr}"))?,
                ),
                None => None,
            };
            let admin = match &settings.admin_socket {
                Some(path) => Some((crate::admin::bind(path).await?, path.clone())),
                None => None,
            };
            crate::say!("server certificate fingerprint: {fingerprint}");
            crate::say!("clients pin it with: --server-fingerprint {fingerprint}");
            if let Some(limit) = crate::fdlimit::raise() {
                tracing::debug!(?limit, "open-file limit");
                let shortfall = crate::fdlimit::server_shortfall(
                    limit,
                    settings.max_visitors_per_session,
                    settings.max_handshakes,
                );
                if let Some(warning) = shortfall {
                    tracing::warn!("{warning}");
                }
            }
            let bound = listener.local_addr()?;
            crate::notify::ready(&format!("listening on {bound}"));
            let endpoint = async {
                if let Some(listener) = metrics {
                    let source = server.metrics_source();
                    crate::metrics::endpoint::serve(listener, source, shutdown.clone()).await;
                }
            };
            let status = format!("listening on {bound}");
            let admin_endpoint = async {
                if let Some((listener, path)) = admin {
                    let handler =
                        reloading::server_admin(args.clone(), server.clone(), status.clone());
                    crate::admin::serve(listener, path, handler, shutdown.clone()).await;
                }
            };
            let serving = async {
                tokio::join!(
                    server.run(listener, shutdown.clone()),
                    endpoint,
                    admin_endpoint
                )
            };
            with_watchdog(async {
                tokio::select! {
                    _ = serving => {}
                    never = reloading::reload_on_hangup(hangups, &args, &server, &status) => match never {},
                }
            })
            .await;
            Ok(ExitCode::SUCCESS)
        }
        Command::Client(mut args) => {
            if let Some(path) = args.check_config.take() {
                args.connect.config = Some(path.clone());
                let settings = args.settings()?;
                crate::client::Client::new(settings)?;
                crate::say!("{}: the client configuration is valid", path.display());
                return Ok(ExitCode::SUCCESS);
            }
            let hangups = reloading::Hangups::watch();
            let settings = args.clone().settings()?;
            if let Some(limit) = crate::fdlimit::raise() {
                tracing::debug!(?limit, "open-file limit");
            }
            let reread: crate::client::Reread = {
                let args = args.clone();
                std::sync::Arc::new(move || args.clone().settings().map_err(|e| format!("{e:#}")))
            };
            let (reloader, reloads) = crate::client::reloads(reread);
            let running = crate::client::run_reloading(settings, reloads, shutdown);
            with_watchdog(async {
                tokio::select! {
                    r = running => r,
                    never = reloading::client_reload_on_hangup(hangups, reloader) => match never {},
                }
            })
            .await?;
            Ok(ExitCode::SUCCESS)
        }
        Command::Visit(args) => {
            let settings = args.settings()?;
            if let Some(limit) = crate::fdlimit::raise() {
                tracing::debug!(?limit, "open-file limit");
            }
            with_watchdog(crate::client::run(settings, shutdown)).await?;
            Ok(ExitCode::SUCCESS)
        }
        Command::Certs(args) => {
            let written = match &args.kind {
                CertsKind::Ca { name } => crate::certs::create_ca(&args.dir, name, args.force)?,
                CertsKind::Server { names } => crate::certs::create_leaf(
                    &args.dir,
                    crate::certs::LeafKind::Server,
                    names,
                    "server",
                    args.force,
                )?,
                CertsKind::Client { name } => {
                    let name = ncx_proto::Name::new(name.clone())
                        .with_context(|| format!("identity {name:?}"))?;
                    crate::certs::create_leaf(
                        &args.dir,
                        crate::certs::LeafKind::Client,
                        &[name.to_string()],
                        &format!("client-{name}"),
                        args.force,
                    )?
                }
            };
            crate::say!("wrote {}", written.cert.display());
            crate::say!("wrote {} (mode 0600)", written.key.display());
            crate::say!("fingerprint: {}", written.fingerprint);
            Ok(ExitCode::SUCCESS)
        }
        Command::Demo(args) => {
            crate::demo::run(args.check, shutdown).await?;
            Ok(ExitCode::SUCCESS)
        }
        Command::Service(args) => {
            args.action.execute()?;
            Ok(ExitCode::SUCCESS)
        }
        Command::Status(args) => {
            let answer = admin_request(&args.admin.socket, "status").await?;
            if args.json {
                print_all(format!("{}\n", answer.trim()).as_bytes())?;
            } else {
                let now = crate::admin::epoch_secs(std::time::SystemTime::now());
                print_all(crate::admin::show::human(&answer, now)?.as_bytes())?;
            }
            Ok(ExitCode::SUCCESS)
        }
        Command::Ctl(args) => match args.action {
            CtlAction::Reload => {
                let answer = admin_request(&args.admin.socket, "reload").await?;
                let v: serde_json::Value = serde_json::from_str(&answer)
                    .with_context(|| format!("not an answer to a reload: {answer:.200}"))?;
                if v["reloaded"] == true {
                    let list = |k: &str| {
                        let names: Vec<&str> = v[k]
                            .as_array()
                            .map(|a| a.iter().filter_map(|n| n.as_str()).collect())
                            .unwrap_or_default();
                        if names.is_empty() {
                            "none".to_owned()
                        } else {
                            names.join(", ")
                        }
                    };
                    crate::say!(
                        "reloaded: added {}; removed {}; changed {}",
                        list("added"),
                        list("removed"),
                        list("changed")
                    );
                    let session = list("new_session");
                    if session != "none" {
                        crate::say!("a new session took these: {session}");
                    }
                    let refused = list("refused");
                    if refused != "none" {
                        crate::say!("refused by the server: {refused}");
                    }
                    let later = list("need_restart");
                    if later != "none" {
                        crate::say!("apply at the next start: {later}");
                    }
                    Ok(ExitCode::SUCCESS)
                } else {
                    let why = v["error"].as_str().unwrap_or("no reason given");
                    anyhow::bail!("reload refused; the configuration in force stays: {why}")
                }
            }
        },
        Command::Completions { shell } => {
            let mut out = Vec::new();
            clap_complete::generate(
                shell,
                &mut <Cli as clap::CommandFactory>::command(),
                "ncx",
                &mut out,
            );
            print_all(&out)?;
            Ok(ExitCode::SUCCESS)
        }
        Command::Man { dir: None } => {
            let mut out = Vec::new();
            clap_mangen::Man::new(<Cli as clap::CommandFactory>::command()).render(&mut out)?;
            print_all(&out)?;
            Ok(ExitCode::SUCCESS)
        }
        Command::Man { dir: Some(dir) } => {
            clap_mangen::generate_to(<Cli as clap::CommandFactory>::command(), &dir)
                .with_context(|| format!("writing the man pages into {}", dir.display()))?;
            crate::say!("wrote the man pages into {}", dir.display());
            Ok(ExitCode::SUCCESS)
        }
        Command::Echo(args) => {
            let listener = TcpListener::bind(&args.listen)
                .await
                .with_context(|| format!("binding {}", args.listen))?;
            crate::say!("echo service listening on {}", listener.local_addr()?);
            crate::demo::serve_echo(listener, shutdown).await;
            Ok(ExitCode::SUCCESS)
        }
    }
}

/// One request to an admin socket (a named pipe on Windows).
async fn admin_request(socket: &std::path::Path, request: &str) -> anyhow::Result<String> {
    crate::admin::request(socket, request).await
}

/// Runs `work` while pinging systemd's watchdog (when the unit asks for it).
async fn with_watchdog<T>(work: impl std::future::Future<Output = T>) -> T {
    tokio::select! {
        out = work => out,
        never = crate::notify::watchdog() => match never {},
    }
}

/// Writes a generated file to stdout; unlike [`crate::say!`] a failure is an error, since the
/// output is the whole point.
fn print_all(bytes: &[u8]) -> anyhow::Result<()> {
    use std::io::Write as _;
    let mut stdout = std::io::stdout().lock();
    stdout
        .write_all(bytes)
        .and_then(|()| stdout.flush())
        .context("writing to stdout")
}
