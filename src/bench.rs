//! `ncx bench`: the real `ncx server` and `ncx client` as separate processes on 127.0.0.1 with TLS,
//! measured against a direct connection to the same service in the same run.
//!
//! Every figure is measured for the direct path and for the tunnel in turn, repetition by
//! repetition (interleaved, so a noisy neighbour hurts both alike), and the medians are reported
//! with the ratio tunnel/direct. The machine this runs on is shared and noisy: quote ratios.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use anyhow::{bail, Context};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::process::{Child, Command};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

/// What to measure and how long.
#[derive(Debug, Clone)]
pub struct BenchOptions {
    /// Repetitions of every measurement (medians are reported).
    pub repetitions: usize,
    /// Bytes per single-stream bulk transfer.
    pub bulk_bytes: u64,
    /// Concurrent idle visitors held for the memory measurement.
    pub idle_connections: usize,
    /// Where to write the JSON results.
    pub json: Option<PathBuf>,
}

const TOKEN: &str = "bench-token-not-secret";
/// Round trips per latency sample set.
const ROUND_TRIPS: usize = 2000;
/// New connections per connect-latency sample set.
const CONNECTS: usize = 300;
/// Concurrent openers for the connection-rate measurement, and how long it runs.
const OPENERS: usize = 32;
const OPEN_RATE_WINDOW: Duration = Duration::from_secs(2);
/// Parallel streams of the multi-stream bulk measurement.
const PARALLEL: usize = 8;

/// The bench service's commands, sent as the first byte of a connection.
const CMD_DOWNLOAD: u8 = b'D'; // then u64 n: the service sends n bytes
const CMD_UPLOAD: u8 = b'U'; // the service reads to EOF, then answers the u64 count
const CMD_ECHO: u8 = b'E'; // the service echoes everything

/// A measured value for the direct path and the tunnel.
#[derive(Debug, Clone, serde::Serialize)]
struct Row {
    metric: String,
    unit: String,
    direct: Option<f64>,
    ncx: f64,
    /// ncx / direct.
    ratio: Option<f64>,
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    if v.is_empty() {
        return f64::NAN;
    }
    v[v.len() / 2]
}

fn percentile(sorted: &[Duration], p: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i].as_secs_f64() * 1e6
}

/// Runs the benchmark and prints the table.
pub async fn run(opts: BenchOptions, shutdown: CancellationToken) -> anyhow::Result<()> {
    let tracker = TaskTracker::new();
    let cancel = shutdown.child_token();
    let dir = std::env::temp_dir().join(format!("ncx-bench-{}", std::process::id()));
    std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
    let result = run_inner(&opts, &dir, &tracker, &cancel).await;
    cancel.cancel();
    tracker.close();
    tracker.wait().await;
    let _ = std::fs::remove_dir_all(&dir);
    result
}

struct Setup {
    server: Child,
    client: Child,
    echo: Child,
    /// The bench service, direct and through the tunnel.
    svc_direct: SocketAddr,
    svc_tunnel: SocketAddr,
    /// The echo process (banner, then echo), through the tunnel.
    echo_tunnel: SocketAddr,
}

fn free_port() -> anyhow::Result<u16> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port())
}

fn ncx_command(exe: &Path) -> Command {
    let mut c = Command::new(exe);
    c.env_remove("RUST_LOG")
        .env("NCX_TOKEN", TOKEN)
        .arg("--log-level")
        .arg("error")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .kill_on_drop(true);
    c
}

async fn setup(
    dir: &Path,
    tracker: &TaskTracker,
    cancel: &CancellationToken,
) -> anyhow::Result<Setup> {
    let exe = std::env::current_exe().context("finding the ncx executable")?;
    let svc = TcpListener::bind("127.0.0.1:0").await?;
    let svc_direct = svc.local_addr()?;
    tracker.spawn(bench_service(svc, cancel.clone()));

    let mut echo = ncx_command(&exe)
        .args(["echo", "--listen", "127.0.0.1:0"])
        .spawn()
        .context("starting ncx echo")?;
    let echo_addr: SocketAddr = {
        let mut out = tokio::io::BufReader::new(echo.stdout.take().context("echo stdout")?);
        let mut line = String::new();
        tokio::io::AsyncBufReadExt::read_line(&mut out, &mut line).await?;
        line.trim()
            .rsplit(' ')
            .next()
            .unwrap_or_default()
            .parse()
            .context("echo address")?
    };

    let (identity, created) = crate::certs::load_or_create_self_signed(&dir.join("certs"))?;
    debug_assert!(created);
    let fingerprint = identity.fingerprint();
    let listen: SocketAddr = ([127, 0, 0, 1], free_port()?).into();
    let server = ncx_command(&exe)
        .args(["server", "--listen", &listen.to_string(), "--auto-cert-dir"])
        .arg(dir.join("certs"))
        .args([
            "--identity",
            "bench",
            "--ports",
            "1024-65535",
            "--bind",
            "127.0.0.1",
        ])
        .args(["--max-visitors-per-session", "15000"])
        .spawn()
        .context("starting ncx server")?;
    let (svc_port, echo_port) = (free_port()?, free_port()?);
    // Wait until the server accepts connections.
    let start = Instant::now();
    while TcpStream::connect(listen).await.is_err() {
        if start.elapsed() > Duration::from_secs(10) {
            bail!("the server did not start listening on {listen}");
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let client = ncx_command(&exe)
        .args([
            "client",
            "--server",
            &listen.to_string(),
            "--identity",
            "bench",
        ])
        .args(["--server-fingerprint", &fingerprint.to_string()])
        .args(["--service", &format!("svc={svc_direct}@{svc_port}")])
        .args(["--service", &format!("echo={echo_addr}@{echo_port}")])
        .spawn()
        .context("starting ncx client")?;
    let svc_tunnel: SocketAddr = ([127, 0, 0, 1], svc_port).into();
    let echo_tunnel: SocketAddr = ([127, 0, 0, 1], echo_port).into();
    let start = Instant::now();
    loop {
        if let Ok(Ok(d)) = tokio::time::timeout(Duration::from_secs(1), echo_once(svc_tunnel)).await
        {
            if d > Duration::ZERO {
                break;
            }
        }
        if start.elapsed() > Duration::from_secs(15) {
            bail!("the tunnel did not come up");
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    Ok(Setup {
        server,
        client,
        echo,
        svc_direct,
        svc_tunnel,
        echo_tunnel,
    })
}

async fn run_inner(
    opts: &BenchOptions,
    dir: &Path,
    tracker: &TaskTracker,
    cancel: &CancellationToken,
) -> anyhow::Result<()> {
    let mut s = setup(dir, tracker, cancel).await?;
    let pids = [
        s.server.id().context("server pid")?,
        s.client.id().context("client pid")?,
    ];
    let reps = opts.repetitions.max(1);
    let mut rows = Vec::new();
    let gib = |b: u64| b as f64 / (1u64 << 30) as f64;

    // Bulk throughput, interleaved direct / ncx, with CPU time of the tunnel processes.
    let mut results: Vec<(&str, Vec<f64>, Vec<f64>)> = vec![
        ("bulk download, 1 stream", vec![], vec![]),
        ("bulk upload, 1 stream", vec![], vec![]),
        ("bulk download, 8 streams", vec![], vec![]),
    ];
    let mut cpu_secs = 0.0;
    let mut kernel_secs = 0.0;
    let mut moved = 0u64;
    for _ in 0..reps {
        for (i, entry) in results.iter_mut().enumerate() {
            for (tunnel, addr) in [(false, s.svc_direct), (true, s.svc_tunnel)] {
                let before = cpu_time(&pids);
                let kernel_before = kernel_time(&pids);
                let (bytes, secs) = match i {
                    0 => download(addr, opts.bulk_bytes).await?,
                    1 => upload(addr, opts.bulk_bytes).await?,
                    _ => parallel_download(addr, opts.bulk_bytes / PARALLEL as u64).await?,
                };
                let mibs = bytes as f64 / secs / (1 << 20) as f64;
                if tunnel {
                    cpu_secs += cpu_time(&pids) - before;
                    kernel_secs += kernel_time(&pids) - kernel_before;
                    moved += bytes;
                    entry.2.push(mibs);
                } else {
                    entry.1.push(mibs);
                }
            }
        }
    }
    for (name, direct, tunnel) in results {
        rows.push(row(name, "MiB/s", Some(median(direct)), median(tunnel)));
    }

    // Round trips, idle and under a bulk transfer through the same tunnel.
    let mut rr: Vec<[Vec<f64>; 2]> = vec![[vec![], vec![]], [vec![], vec![]]]; // [p50, p99] per path
    let mut rr_bulk: [Vec<f64>; 2] = [vec![], vec![]];
    let mut rr_bulk_direct: [Vec<f64>; 2] = [vec![], vec![]];
    for _ in 0..reps {
        for (k, addr) in [s.svc_direct, s.svc_tunnel].into_iter().enumerate() {
            let lat = round_trips(addr, ROUND_TRIPS).await?;
            rr[k][0].push(percentile(&lat, 0.5));
            rr[k][1].push(percentile(&lat, 0.99));
        }
        for (k, addr) in [s.svc_direct, s.svc_tunnel].into_iter().enumerate() {
            let stop = CancellationToken::new();
            let bulk = tokio::spawn(background_download(addr, stop.clone()));
            // Let the bulk transfer fill the pipes first.
            tokio::time::sleep(Duration::from_millis(200)).await;
            let lat = round_trips(addr, ROUND_TRIPS).await;
            stop.cancel();
            let _ = bulk.await;
            let lat = lat?;
            let target = if k == 0 {
                &mut rr_bulk_direct
            } else {
                &mut rr_bulk
            };
            target[0].push(percentile(&lat, 0.5));
            target[1].push(percentile(&lat, 0.99));
        }
    }
    let [direct_rr, tunnel_rr] = [&rr[0], &rr[1]];
    rows.push(row(
        "64 B round trip p50",
        "µs",
        Some(median(direct_rr[0].clone())),
        median(tunnel_rr[0].clone()),
    ));
    rows.push(row(
        "64 B round trip p99",
        "µs",
        Some(median(direct_rr[1].clone())),
        median(tunnel_rr[1].clone()),
    ));
    rows.push(row(
        "64 B round trip p50 under bulk",
        "µs",
        Some(median(rr_bulk_direct[0].clone())),
        median(rr_bulk[0].clone()),
    ));
    rows.push(row(
        "64 B round trip p99 under bulk",
        "µs",
        Some(median(rr_bulk_direct[1].clone())),
        median(rr_bulk[1].clone()),
    ));

    // New connections: connect to first echoed byte, and rate with 32 openers.
    let mut conn: [[Vec<f64>; 2]; 2] = [[vec![], vec![]], [vec![], vec![]]];
    let mut rate: [Vec<f64>; 2] = [vec![], vec![]];
    for _ in 0..reps {
        for (k, addr) in [s.svc_direct, s.svc_tunnel].into_iter().enumerate() {
            let mut lat = Vec::with_capacity(CONNECTS);
            for _ in 0..CONNECTS {
                lat.push(echo_once(addr).await?);
            }
            lat.sort();
            conn[k][0].push(percentile(&lat, 0.5));
            conn[k][1].push(percentile(&lat, 0.99));
            rate[k].push(connection_rate(addr).await?);
        }
    }
    rows.push(row(
        "connect to first byte p50",
        "µs",
        Some(median(conn[0][0].clone())),
        median(conn[1][0].clone()),
    ));
    rows.push(row(
        "connect to first byte p99",
        "µs",
        Some(median(conn[0][1].clone())),
        median(conn[1][1].clone()),
    ));
    rows.push(row(
        "new connections/s, 32 openers",
        "conn/s",
        Some(median(rate[0].clone())),
        median(rate[1].clone()),
    ));

    // CPU per GiB through the tunnel (server + client processes).
    let per_gib = cpu_secs / gib(moved).max(1e-9);
    rows.push(row("tunnel CPU per GiB moved", "CPU s/GiB", None, per_gib));
    rows.push(row(
        "GiB moved per tunnel CPU-second",
        "GiB/CPU s",
        None,
        1.0 / per_gib.max(1e-9),
    ));
    rows.push(row(
        "share of tunnel CPU spent in the kernel",
        "%",
        None,
        100.0 * kernel_secs / cpu_secs.max(1e-9),
    ));

    // Memory: idle, then holding many idle visitors.
    let idle = [rss_kib(pids[0]), rss_kib(pids[1])];
    let idle_anon = [
        status_kib(pids[0], "RssAnon:"),
        status_kib(pids[1], "RssAnon:"),
    ];
    let held = hold_idle(s.echo_tunnel, opts.idle_connections).await;
    let loaded = [rss_kib(pids[0]), rss_kib(pids[1])];
    let held_n = held.as_ref().map(Vec::len).unwrap_or(0);
    drop(held);
    rows.push(row("server RSS idle", "MiB", None, idle[0] as f64 / 1024.0));
    rows.push(row("client RSS idle", "MiB", None, idle[1] as f64 / 1024.0));
    // RSS counts the pages of the binary and of libc that are mapped in (shared, file-backed, and
    // droppable by the kernel); the anonymous part is the memory the process itself holds.
    rows.push(row(
        "server RSS idle, anonymous part",
        "MiB",
        None,
        idle_anon[0] as f64 / 1024.0,
    ));
    rows.push(row(
        "client RSS idle, anonymous part",
        "MiB",
        None,
        idle_anon[1] as f64 / 1024.0,
    ));
    rows.push(row(
        &format!("server RSS, {held_n} idle visitors"),
        "MiB",
        None,
        loaded[0] as f64 / 1024.0,
    ));
    rows.push(row(
        &format!("client RSS, {held_n} idle visitors"),
        "MiB",
        None,
        loaded[1] as f64 / 1024.0,
    ));
    let per_conn =
        (loaded[0] + loaded[1]).saturating_sub(idle[0] + idle[1]) as f64 / held_n.max(1) as f64;
    rows.push(row(
        "memory per idle visitor (both sides)",
        "KiB",
        None,
        per_conn,
    ));

    print_table(&rows, opts);
    if let Some(path) = &opts.json {
        let doc = serde_json::json!({
            "date": time::OffsetDateTime::now_utc().date().to_string(),
            "repetitions": reps,
            "bulk_bytes": opts.bulk_bytes,
            "cpus": std::thread::available_parallelism().map(|n| n.get()).unwrap_or(0),
            "rows": rows,
        });
        std::fs::write(path, serde_json::to_string_pretty(&doc)?)
            .with_context(|| format!("writing {}", path.display()))?;
        println!("results written to {}", path.display());
    }
    let _ = s.client.kill().await;
    let _ = s.server.kill().await;
    let _ = s.echo.kill().await;
    Ok(())
}

fn row(metric: &str, unit: &str, direct: Option<f64>, ncx: f64) -> Row {
    Row {
        metric: metric.into(),
        unit: unit.into(),
        direct,
        ncx,
        ratio: direct.map(|d| ncx / d),
    }
}

fn print_table(rows: &[Row], opts: &BenchOptions) {
    println!(
        "ncx bench: {} repetitions, medians; {} MiB per bulk transfer; {} CPUs",
        opts.repetitions,
        opts.bulk_bytes >> 20,
        std::thread::available_parallelism()
            .map(|n| n.get())
            .unwrap_or(0)
    );
    println!("| metric | unit | direct | ncx (TLS) | ncx / direct |");
    println!("|---|---|---:|---:|---:|");
    for r in rows {
        let fmt = |v: f64| {
            if v >= 100.0 {
                format!("{v:.0}")
            } else {
                format!("{v:.2}")
            }
        };
        println!(
            "| {} | {} | {} | {} | {} |",
            r.metric,
            r.unit,
            r.direct.map(fmt).unwrap_or_else(|| "–".into()),
            fmt(r.ncx),
            r.ratio
                .map(|x| format!("{x:.2}×"))
                .unwrap_or_else(|| "–".into())
        );
    }
}

/// Serves the bench commands until `cancel`.
async fn bench_service(listener: TcpListener, cancel: CancellationToken) {
    let tracker = TaskTracker::new();
    loop {
        let (mut s, _) = tokio::select! {
            _ = cancel.cancelled() => break,
            r = listener.accept() => match r { Ok(c) => c, Err(_) => continue },
        };
        let cancel = cancel.clone();
        tracker.spawn(async move {
            let _ = s.set_nodelay(true);
            let work = async {
                let cmd = s.read_u8().await?;
                match cmd {
                    CMD_DOWNLOAD => {
                        let mut left = s.read_u64().await?;
                        let chunk = vec![0x5a; 256 * 1024];
                        while left > 0 {
                            let n = left.min(chunk.len() as u64) as usize;
                            s.write_all(&chunk[..n]).await?;
                            left -= n as u64;
                        }
                        s.shutdown().await
                    }
                    CMD_UPLOAD => {
                        let mut buf = vec![0u8; 256 * 1024];
                        let mut n = 0u64;
                        loop {
                            let k = s.read(&mut buf).await?;
                            if k == 0 {
                                break;
                            }
                            n += k as u64;
                        }
                        s.write_u64(n).await?;
                        s.shutdown().await
                    }
                    _ => {
                        let (mut r, mut w) = s.split();
                        tokio::io::copy(&mut r, &mut w).await?;
                        w.shutdown().await
                    }
                }
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

async fn connect(addr: SocketAddr) -> anyhow::Result<TcpStream> {
    let s = TcpStream::connect(addr)
        .await
        .with_context(|| format!("connecting to {addr}"))?;
    s.set_nodelay(true)?;
    Ok(s)
}

async fn download(addr: SocketAddr, n: u64) -> anyhow::Result<(u64, f64)> {
    let mut s = connect(addr).await?;
    let t = Instant::now();
    s.write_u8(CMD_DOWNLOAD).await?;
    s.write_u64(n).await?;
    let mut buf = vec![0u8; 256 * 1024];
    let mut got = 0u64;
    loop {
        let k = s.read(&mut buf).await?;
        if k == 0 {
            break;
        }
        got += k as u64;
    }
    if got != n {
        bail!("download from {addr}: {got} of {n} bytes");
    }
    Ok((got, t.elapsed().as_secs_f64()))
}

async fn upload(addr: SocketAddr, n: u64) -> anyhow::Result<(u64, f64)> {
    let mut s = connect(addr).await?;
    let t = Instant::now();
    s.write_u8(CMD_UPLOAD).await?;
    let chunk = vec![0xa5u8; 256 * 1024];
    let mut left = n;
    while left > 0 {
        let k = left.min(chunk.len() as u64) as usize;
        s.write_all(&chunk[..k]).await?;
        left -= k as u64;
    }
    s.shutdown().await?;
    let count = s.read_u64().await?;
    if count != n {
        bail!("upload to {addr}: the service counted {count} of {n} bytes");
    }
    Ok((n, t.elapsed().as_secs_f64()))
}

async fn parallel_download(addr: SocketAddr, each: u64) -> anyhow::Result<(u64, f64)> {
    let t = Instant::now();
    let mut set = tokio::task::JoinSet::new();
    for _ in 0..PARALLEL {
        set.spawn(download(addr, each));
    }
    let mut total = 0;
    while let Some(r) = set.join_next().await {
        total += r??.0;
    }
    Ok((total, t.elapsed().as_secs_f64()))
}

/// Downloads until `stop`, to load the path while latency is measured.
async fn background_download(addr: SocketAddr, stop: CancellationToken) {
    let Ok(mut s) = connect(addr).await else {
        return;
    };
    if s.write_u8(CMD_DOWNLOAD).await.is_err() || s.write_u64(u64::MAX).await.is_err() {
        return;
    }
    let mut buf = vec![0u8; 256 * 1024];
    loop {
        tokio::select! {
            _ = stop.cancelled() => return,
            r = s.read(&mut buf) => if !matches!(r, Ok(n) if n > 0) { return },
        }
    }
}

/// `n` round trips of 64 bytes on one connection; sorted latencies.
async fn round_trips(addr: SocketAddr, n: usize) -> anyhow::Result<Vec<Duration>> {
    let mut s = connect(addr).await?;
    s.write_u8(CMD_ECHO).await?;
    let msg = [7u8; 64];
    let mut back = [0u8; 64];
    let mut lat = Vec::with_capacity(n);
    for _ in 0..n {
        let t = Instant::now();
        s.write_all(&msg).await?;
        s.read_exact(&mut back).await?;
        lat.push(t.elapsed());
    }
    lat.sort();
    Ok(lat)
}

/// Connect, send one byte, receive it back: the time from connect to the first echoed byte.
async fn echo_once(addr: SocketAddr) -> anyhow::Result<Duration> {
    let t = Instant::now();
    let mut s = connect(addr).await?;
    s.write_all(&[CMD_ECHO, 1]).await?;
    let mut b = [0u8; 1];
    s.read_exact(&mut b).await?;
    let d = t.elapsed();
    s.shutdown().await?;
    Ok(d)
}

/// New connections per second with [`OPENERS`] concurrent openers, each connecting, echoing one
/// byte and closing, for [`OPEN_RATE_WINDOW`].
async fn connection_rate(addr: SocketAddr) -> anyhow::Result<f64> {
    let end = Instant::now() + OPEN_RATE_WINDOW;
    let mut set = tokio::task::JoinSet::new();
    for _ in 0..OPENERS {
        set.spawn(async move {
            let mut n = 0u64;
            while Instant::now() < end {
                echo_once(addr).await?;
                n += 1;
            }
            Ok::<_, anyhow::Error>(n)
        });
    }
    let mut total = 0;
    while let Some(r) = set.join_next().await {
        total += r??;
    }
    Ok(total as f64 / OPEN_RATE_WINDOW.as_secs_f64())
}

/// Opens `n` visitors to the echo service through the tunnel and keeps them open (each has read
/// the greeting, so it is spliced end to end).
async fn hold_idle(addr: SocketAddr, n: usize) -> anyhow::Result<Vec<TcpStream>> {
    let mut held = Vec::with_capacity(n);
    let banner = crate::demo::BANNER.len();
    for _ in 0..n {
        let mut s = connect(addr).await?;
        let mut b = vec![0u8; banner];
        s.read_exact(&mut b).await?;
        held.push(s);
    }
    Ok(held)
}

/// User + system CPU seconds of the given processes so far.
fn cpu_time(pids: &[u32]) -> f64 {
    proc_times(pids, true)
}

/// System (kernel) CPU seconds of the given processes so far.
fn kernel_time(pids: &[u32]) -> f64 {
    proc_times(pids, false)
}

fn proc_times(pids: &[u32], with_user: bool) -> f64 {
    let ticks = clock_ticks();
    pids.iter()
        .filter_map(|pid| std::fs::read_to_string(format!("/proc/{pid}/stat")).ok())
        .filter_map(|stat| {
            // Fields after the parenthesised command name; utime and stime are the 12th and 13th.
            let rest = stat.rsplit_once(')')?.1;
            let f: Vec<&str> = rest.split_whitespace().collect();
            let utime: f64 = f.get(11)?.parse().ok()?;
            let stime: f64 = f.get(12)?.parse().ok()?;
            Some((if with_user { utime } else { 0.0 } + stime) / ticks)
        })
        .sum()
}

fn clock_ticks() -> f64 {
    std::process::Command::new("getconf")
        .arg("CLK_TCK")
        .output()
        .ok()
        .and_then(|o| String::from_utf8(o.stdout).ok())
        .and_then(|s| s.trim().parse().ok())
        .unwrap_or(100.0)
}

fn rss_kib(pid: u32) -> u64 {
    status_kib(pid, "VmRSS:")
}

/// A `kB` field of `/proc/PID/status`, such as `VmRSS:` or `RssAnon:`.
fn status_kib(pid: u32, field: &str) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with(field))
                .and_then(|l| l.split_whitespace().nth(1))
                .and_then(|v| v.parse().ok())
        })
        .unwrap_or(0)
}
