//! `ncx-bench`: the benchmark of the real `ncx server` and `ncx client` processes, kept out of the
//! product so the `ncx` binary carries neither the benchmark nor what only it needs (JSON output,
//! child processes).
//!
//! Run it from the workspace root with the README's command:
//! `cargo build --release && cargo run --release -p ncx-bench`.
#![forbid(unsafe_code)]

mod run;
mod wan;

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
    /// Idle visitors to hold open for the memory measurement (the benchmark's server takes at most
    /// 15,000 visitors at once, the UDP rows' flows among them while they last).
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
    /// The bench service (download, upload, echo) on its own, for bench/wan.sh.
    #[command(hide = true)]
    Service {
        /// Address to listen on.
        #[arg(long)]
        listen: String,
    },
    /// Loads a path with bulk streams for a fixed time and measures 64-byte round trips beside
    /// them, for bench/wan.sh; prints one line of results.
    #[command(hide = true)]
    Probe {
        /// The bench service, directly or through the tunnel.
        #[arg(long)]
        bulk: std::net::SocketAddr,
        /// Which way the bulk bytes flow, seen from the probe.
        #[arg(long, value_enum)]
        direction: wan::Direction,
        /// Bulk streams at once.
        #[arg(long, default_value_t = 1)]
        streams: usize,
        /// Seconds the bulk transfer runs.
        #[arg(long, default_value_t = 20.0)]
        seconds: f64,
        /// An echo service for the round trips beside the bulk transfer.
        #[arg(long)]
        ping: Option<std::net::SocketAddr>,
        /// Milliseconds between round trips.
        #[arg(long, default_value_t = 50)]
        ping_interval_ms: u64,
        /// Seconds after the start before round trips are taken.
        #[arg(long, default_value_t = 3.0)]
        warmup: f64,
        /// Also write every round trip to this file, one line each: seconds since the start
        /// of the bulk transfer, then milliseconds (where in a run the slow ones fall).
        #[arg(long)]
        rtt_log: Option<std::path::PathBuf>,
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
    match cli.command {
        Some(Command::Relay { listen, to }) => {
            let listener = TcpListener::bind(&listen)
                .await
                .with_context(|| format!("binding {listen}"))?;
            println!("relay listening on {}", listener.local_addr()?);
            run::relay(listener, to, shutdown).await;
            return Ok(());
        }
        Some(Command::Service { listen }) => return wan::service(&listen, shutdown).await,
        Some(Command::Probe {
            bulk,
            direction,
            streams,
            seconds,
            ping,
            ping_interval_ms,
            warmup,
            rtt_log,
        }) => {
            let run = std::time::Duration::try_from_secs_f64(seconds).ok();
            let warm = std::time::Duration::try_from_secs_f64(warmup).ok();
            let (Some(run), Some(warm)) = (run, warm) else {
                anyhow::bail!("--seconds and --warmup must be numbers of seconds, 0 or more");
            };
            if streams == 0 || run.is_zero() {
                anyhow::bail!("--streams must be at least 1 and --seconds above 0");
            }
            return wan::probe(wan::ProbeOptions {
                bulk,
                direction,
                streams,
                seconds: run.as_secs_f64(),
                ping,
                ping_interval: std::time::Duration::from_millis(ping_interval_ms),
                warmup: warm,
                rtt_log,
            })
            .await;
        }
        None => {}
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
