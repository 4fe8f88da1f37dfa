//! `ncx-bench`: the benchmark of the real `ncx server` and `ncx client` processes, kept out of the
//! product so the `ncx` binary carries neither the benchmark nor what only it needs (JSON output,
//! child processes).
//!
//! Run it from the workspace root with the README's command:
//! `cargo build --release && cargo run --release -p ncx-bench`.
#![forbid(unsafe_code)]

mod run;

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context;
use clap::{Parser, Subcommand};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

/// Benchmark: the ncx server and client as separate processes on 127.0.0.1 with TLS, against a
/// direct connection and a relay floor in the same run. Build ncx with --release first.
#[derive(Debug, Parser)]
#[command(name = "ncx-bench", version)]
struct Cli {
    /// Repetitions of every measurement; medians are reported.
    #[arg(long, default_value_t = 5)]
    repetitions: usize,
    /// MiB per single-stream bulk transfer (the 8-stream transfer moves the same in total).
    #[arg(long, default_value_t = 512)]
    bulk_mib: u64,
    /// Idle visitors to hold open for the memory measurement.
    #[arg(long, default_value_t = 10_000)]
    idle_connections: usize,
    /// Also write the results as JSON to this file.
    #[arg(long)]
    json: Option<PathBuf>,
    /// The ncx executable to measure [default: `ncx` beside this executable, which is where cargo
    /// puts it].
    #[arg(long)]
    ncx: Option<PathBuf>,
    #[command(subcommand)]
    command: Option<Command>,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// A plain TCP forwarder (no TLS, no multiplexing), started by the benchmark as the floor that
    /// any two-process tunnel costs.
    #[command(hide = true)]
    Relay {
        /// Address to listen on.
        #[arg(long)]
        listen: String,
        /// Address every connection is forwarded to.
        #[arg(long)]
        to: std::net::SocketAddr,
    },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: starting the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    runtime.block_on(async {
        let shutdown = CancellationToken::new();
        tokio::spawn({
            let shutdown = shutdown.clone();
            async move {
                if tokio::signal::ctrl_c().await.is_ok() {
                    shutdown.cancel();
                }
            }
        });
        match execute(cli, shutdown).await {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                eprintln!("error: {e:#}");
                ExitCode::FAILURE
            }
        }
    })
}

async fn execute(cli: Cli, shutdown: CancellationToken) -> anyhow::Result<()> {
    if let Some(Command::Relay { listen, to }) = cli.command {
        let listener = TcpListener::bind(&listen)
            .await
            .with_context(|| format!("binding {listen}"))?;
        println!("relay listening on {}", listener.local_addr()?);
        run::relay(listener, to, shutdown).await;
        return Ok(());
    }
    let ncx = match cli.ncx {
        Some(path) => path,
        None => beside_this_executable()?,
    };
    if !ncx.is_file() {
        anyhow::bail!(
            "no ncx executable at {}: build it first (`cargo build --release`) or pass --ncx PATH",
            ncx.display()
        );
    }
    let opts = run::BenchOptions {
        repetitions: cli.repetitions,
        bulk_bytes: cli.bulk_mib << 20,
        idle_connections: cli.idle_connections,
        json: cli.json,
        ncx,
    };
    run::run(opts, shutdown).await
}

/// `ncx` in the folder of this executable: cargo builds both into the same `target/PROFILE/`.
fn beside_this_executable() -> anyhow::Result<PathBuf> {
    let me = std::env::current_exe().context("finding the ncx-bench executable")?;
    Ok(me.with_file_name(format!("ncx{}", std::env::consts::EXE_SUFFIX)))
}
