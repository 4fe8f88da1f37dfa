//! The two halves of the WAN benchmark that run inside network namespaces: the bench service
//! (`ncx-bench service`) and the probe that loads a path and measures it (`ncx-bench probe`).
//! `bench/wan.sh` builds the emulated link (a router shaped with `tbf`, a delay relay in front of
//! the far end) and runs both on the direct path and through the tunnel.
//!
//! The probe runs one or more bulk streams for a fixed time, in one direction, and at the same
//! time sends a 64-byte round trip on a connection of its own at a steady pace: the keystroke
//! beside a file copy. Throughput is what arrived at the receiving end over the whole run
//! (slow start and window growth included, as a user sees them); round trips are taken after a
//! warm-up, so the figure is the steady state under load.

use std::net::SocketAddr;
use std::time::Duration;

use anyhow::{bail, Context};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use crate::run::{bench_service, connect, CMD_DOWNLOAD, CMD_ECHO, CMD_UPLOAD};

/// Which way the bulk bytes flow, seen from the probe.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Direction {
    /// The service sends, the probe reads.
    Download,
    /// The probe sends, the service counts.
    Upload,
}

/// What one probe run does.
#[derive(Debug, Clone)]
pub struct ProbeOptions {
    /// The bench service (directly, or the tunnel's public port in front of it).
    pub bulk: SocketAddr,
    pub direction: Direction,
    /// Bulk streams at once.
    pub streams: usize,
    /// How long the bulk transfer runs.
    pub seconds: f64,
    /// An echo service for the round trips (directly or through the tunnel); none: no round trips.
    pub ping: Option<SocketAddr>,
    /// Pause between round trips.
    pub ping_interval: Duration,
    /// Round trips start this long after the bulk transfer.
    pub warmup: Duration,
    /// Where to write every round trip (seconds since the start, milliseconds), if anywhere.
    pub rtt_log: Option<std::path::PathBuf>,
}

/// `ncx-bench service`: the bench service on `listen` until `shutdown`.
pub async fn service(listen: &str, shutdown: CancellationToken) -> anyhow::Result<()> {
    let listener = TcpListener::bind(listen)
        .await
        .with_context(|| format!("binding {listen}"))?;
    println!("service listening on {}", listener.local_addr()?);
    bench_service(listener, shutdown).await;
    Ok(())
}

/// `ncx-bench probe`: prints one line, `mbit=TOTAL streams=A,B,.. rtt_p50_ms=.. rtt_p99_ms=..
/// rtts=N`, throughput in 10^6 bit/s.
pub async fn probe(opts: ProbeOptions) -> anyhow::Result<()> {
    let run = Duration::from_secs_f64(opts.seconds);
    // The round-trip connection is open before the load starts, so its handshake is not measured.
    let mut ping = match opts.ping {
        Some(addr) => {
            let mut s = connect(addr).await?;
            s.write_u8(CMD_ECHO).await?;
            echo(&mut s).await.context("first round trip")?;
            Some(s)
        }
        None => None,
    };
    let start = Instant::now();
    let deadline = start + run;
    let mut bulk = tokio::task::JoinSet::new();
    for _ in 0..opts.streams {
        let (addr, dir) = (opts.bulk, opts.direction);
        bulk.spawn(async move {
            match dir {
                Direction::Download => download_until(addr, deadline).await,
                Direction::Upload => upload_until(addr, deadline).await,
            }
        });
    }
    let mut rtts = Vec::new();
    // (formatted only when asked for)
    let mut log = opts.rtt_log.as_ref().map(|_| String::new());
    if let Some(s) = ping.as_mut() {
        tokio::time::sleep_until(start + opts.warmup).await;
        while Instant::now() + opts.ping_interval < deadline {
            let at = start.elapsed();
            let rtt = echo(s).await.context("round trip under load")?;
            if let Some(log) = log.as_mut() {
                log.push_str(&format!(
                    "{:.3} {:.2}\n",
                    at.as_secs_f64(),
                    rtt.as_secs_f64() * 1e3
                ));
            }
            rtts.push(rtt);
            tokio::time::sleep(opts.ping_interval).await;
        }
    }
    if let (Some(path), Some(log)) = (&opts.rtt_log, log) {
        std::fs::write(path, log).with_context(|| format!("writing {}", path.display()))?;
    }
    let mut per_stream = Vec::new();
    while let Some(r) = bulk.join_next().await {
        let (bytes, secs) = r.context("a bulk stream panicked")??;
        per_stream.push(bytes as f64 * 8.0 / secs / 1e6);
    }
    per_stream.sort_by(|a, b| b.total_cmp(a));
    rtts.sort();
    let ms = |p: f64| -> f64 {
        if rtts.is_empty() {
            return f64::NAN;
        }
        let i = ((rtts.len() as f64 - 1.0) * p).round() as usize;
        rtts[i].as_secs_f64() * 1e3
    };
    let streams: Vec<String> = per_stream.iter().map(|m| format!("{m:.1}")).collect();
    println!(
        "mbit={:.1} streams={} rtt_p50_ms={:.2} rtt_p99_ms={:.2} rtts={}",
        per_stream.iter().sum::<f64>(),
        streams.join(","),
        ms(0.5),
        ms(0.99),
        rtts.len()
    );
    Ok(())
}

/// One 64-byte round trip on an echo connection.
async fn echo(s: &mut tokio::net::TcpStream) -> anyhow::Result<Duration> {
    let msg = [7u8; 64];
    let mut back = [0u8; 64];
    let t = Instant::now();
    s.write_all(&msg).await?;
    s.read_exact(&mut back).await?;
    Ok(t.elapsed())
}

/// Reads from a download until `deadline`; bytes read and seconds since the request.
async fn download_until(addr: SocketAddr, deadline: Instant) -> anyhow::Result<(u64, f64)> {
    let mut s = connect(addr).await?;
    let t = Instant::now();
    s.write_u8(CMD_DOWNLOAD).await?;
    s.write_u64(u64::MAX).await?;
    let mut buf = vec![0u8; 256 * 1024];
    let mut got = 0u64;
    loop {
        tokio::select! {
            _ = tokio::time::sleep_until(deadline) => break,
            r = s.read(&mut buf) => match r? {
                0 => bail!("download from {addr} ended after {got} bytes"),
                k => got += k as u64,
            },
        }
    }
    Ok((got, t.elapsed().as_secs_f64()))
}

/// Writes an upload until `deadline`, then half-closes and waits for the service's count; the
/// bytes it counted and the seconds until the count arrived (so bytes still queued in the path
/// at the deadline are waited for, not credited).
async fn upload_until(addr: SocketAddr, deadline: Instant) -> anyhow::Result<(u64, f64)> {
    let mut s = connect(addr).await?;
    let t = Instant::now();
    s.write_u8(CMD_UPLOAD).await?;
    let chunk = vec![0xa5u8; 256 * 1024];
    let mut sent = 0u64;
    loop {
        tokio::select! {
            _ = tokio::time::sleep_until(deadline) => break,
            r = s.write(&chunk) => sent += r? as u64,
        }
    }
    s.shutdown().await?;
    let count = tokio::time::timeout(Duration::from_secs(60), s.read_u64())
        .await
        .context("the service's count did not arrive within 60 s")??;
    if count != sent {
        bail!("upload to {addr}: the service counted {count} of {sent} bytes");
    }
    Ok((count, t.elapsed().as_secs_f64()))
}
