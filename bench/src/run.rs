//! The benchmark: the real `ncx server` and `ncx client` as separate processes on 127.0.0.1 with TLS,
//! measured against a direct connection to the same service in the same run.
//!
//! A third path, the relay floor, is two relay processes (`ncx-bench relay`) in a chain: plain TCP forwarding
//! with one connection per visitor, no encryption, no multiplexing. Any tunnel made of a server
//! and a client process pays at least that on the machine at hand (two more processes to wake,
//! every byte copied through the kernel twice more), so it tells how much of a ratio to direct is
//! ncx's own cost and how much is the shape of every tunnel.
//!
//! Every figure is measured for each path in turn, repetition by repetition (interleaved, so a
//! noisy neighbour hurts all alike), and the medians are reported with the ratios to direct. The
//! machine this runs on is shared and noisy: quote ratios.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use anyhow::{bail, Context};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream, UdpSocket};
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
    /// The `ncx` executable under test.
    pub ncx: PathBuf,
}

const TOKEN: &str = "bench-token-not-secret";
/// Round trips per latency sample set.
const ROUND_TRIPS: usize = 2000;
/// New connections per connect-latency sample set.
const CONNECTS: usize = 300;
/// Concurrent openers for the connection-rate measurement, and how long it runs.
const OPENERS: usize = 32;
const OPEN_RATE_WINDOW: Duration = Duration::from_secs(2);
/// Offered rates of the UDP measurement, Mbit/s, and how long each runs.
const UDP_RATES: [u64; 2] = [100, 400];
const UDP_RUN: Duration = Duration::from_secs(2);
/// Datagrams of the UDP measurement, bytes.
const UDP_DATAGRAM: usize = 1400;
/// The server's visitor limits (per session, service and identity) for the benchmark: above any
/// `--idle-connections` it is given, at most the largest limit the server takes.
const VISITOR_LIMIT: usize = 15_000;
/// Parallel streams of the multi-stream bulk measurement.
const PARALLEL: usize = 8;

/// The bench service's commands, sent as the first byte of a connection.
pub(crate) const CMD_DOWNLOAD: u8 = b'D'; // then u64 n: the service sends n bytes
pub(crate) const CMD_UPLOAD: u8 = b'U'; // the service reads to EOF, then answers the u64 count
pub(crate) const CMD_ECHO: u8 = b'E'; // the service echoes everything

/// A measured value for the direct path, the relay floor and the tunnel.
#[derive(Debug, Clone, serde::Serialize)]
struct Row {
    metric: String,
    unit: String,
    direct: Option<f64>,
    /// Two plain TCP relay processes in a chain ([`relay`]): what any tunnel made of a server and
    /// a client process costs at least, without encryption or multiplexing.
    relay: Option<f64>,
    ncx: Option<f64>,
    /// relay / direct.
    relay_ratio: Option<f64>,
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
    /// The two relay processes, outer (visitor side) first.
    relays: [Child; 2],
    /// The bench service, direct, through the relay chain and through the tunnel.
    svc_direct: SocketAddr,
    svc_relay: SocketAddr,
    svc_tunnel: SocketAddr,
    /// The echo process (banner, then echo), through the tunnel.
    echo_tunnel: SocketAddr,
    /// A UDP echo service, direct and through the tunnel (a UDP service).
    udp_direct: SocketAddr,
    udp_tunnel: SocketAddr,
}

/// The address a child process printed as the last word of its first line.
async fn announced_address(child: &mut Child) -> anyhow::Result<SocketAddr> {
    let mut out = tokio::io::BufReader::new(child.stdout.take().context("no stdout")?);
    let mut line = String::new();
    tokio::io::AsyncBufReadExt::read_line(&mut out, &mut line).await?;
    Ok(line.trim().rsplit(' ').next().unwrap_or_default().parse()?)
}

/// Starts `ncx-bench relay` (this executable) forwarding to `to`; returns it and its listening
/// address.
async fn spawn_relay(to: SocketAddr) -> anyhow::Result<(Child, SocketAddr)> {
    let exe = std::env::current_exe().context("finding the ncx-bench executable")?;
    let mut relay = Command::new(exe)
        .args(["relay", "--listen", "127.0.0.1:0", "--to", &to.to_string()])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .context("starting the relay")?;
    let addr = announced_address(&mut relay)
        .await
        .context("relay address")?;
    Ok((relay, addr))
}

/// `ncx-bench relay`: forwards every connection to `to` with the tunnel's own splice, one TCP connection
/// per visitor and no encryption. Two of these in a chain are the benchmark's floor: the least any
/// tunnel of two processes (a server and a client) costs on this machine.
pub async fn relay(listener: TcpListener, to: SocketAddr, shutdown: CancellationToken) {
    let tracker = TaskTracker::new();
    loop {
        let (visitor, _) = tokio::select! {
            _ = shutdown.cancelled() => break,
            r = listener.accept() => match r { Ok(c) => c, Err(_) => continue },
        };
        let cancel = shutdown.clone();
        tracker.spawn(async move {
            let connect = tokio::time::timeout(Duration::from_secs(5), TcpStream::connect(to));
            let Ok(Ok(upstream)) = connect.await else {
                ncx::splice::abort(visitor);
                return;
            };
            let _ = visitor.set_nodelay(true);
            let _ = upstream.set_nodelay(true);
            ncx::splice::splice(visitor, upstream, cancel.cancelled_owned()).await;
        });
    }
    tracker.close();
    tracker.wait().await;
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
    opts: &BenchOptions,
    dir: &Path,
    tracker: &TaskTracker,
    cancel: &CancellationToken,
) -> anyhow::Result<Setup> {
    let exe = opts.ncx.as_path();
    let svc = TcpListener::bind("127.0.0.1:0").await?;
    let svc_direct = svc.local_addr()?;
    tracker.spawn(bench_service(svc, cancel.clone()));

    let mut echo = ncx_command(exe)
        .args(["echo", "--listen", "127.0.0.1:0"])
        .spawn()
        .context("starting ncx echo")?;
    let echo_addr = announced_address(&mut echo).await.context("echo address")?;

    let udp = UdpSocket::bind("127.0.0.1:0").await?;
    let udp_direct = udp.local_addr()?;
    tracker.spawn(udp_echo(udp, cancel.clone()));

    let (relay_inner, inner_addr) = spawn_relay(svc_direct).await?;
    let (relay_outer, svc_relay) = spawn_relay(inner_addr).await?;

    let (identity, created) = ncx::certs::load_or_create_self_signed(&dir.join("certs"))?;
    debug_assert!(created);
    let fingerprint = identity.fingerprint();
    let listen: SocketAddr = ([127, 0, 0, 1], free_port()?).into();
    // Visitor limits above the idle visitors held, which count against their service and
    // identity as well as the session, beside the UDP flows of the UDP rows (each a visitor of the
    // identity until it idles out). Those two limits have no flags, so they come from a file
    // beside the flags.
    let config = dir.join("server.toml");
    std::fs::write(
        &config,
        format!(
            "max_visitors_per_identity = {VISITOR_LIMIT}\nmax_visitors_per_service = {VISITOR_LIMIT}\n"
        ),
    )
    .with_context(|| format!("writing {}", config.display()))?;
    let server = ncx_command(exe)
        .arg("server")
        .arg("--config")
        .arg(&config)
        .args(["--listen", &listen.to_string(), "--auto-cert-dir"])
        .arg(dir.join("certs"))
        .args([
            "--identity",
            "bench",
            "--ports",
            "1024-65535",
            "--bind",
            "127.0.0.1",
        ])
        .args(["--max-visitors-per-session", &VISITOR_LIMIT.to_string()])
        .spawn()
        .context("starting ncx server")?;
    let (svc_port, echo_port, udp_port) = (free_port()?, free_port()?, free_port()?);
    // Wait until the server accepts connections.
    let start = Instant::now();
    while TcpStream::connect(listen).await.is_err() {
        if start.elapsed() > Duration::from_secs(10) {
            bail!("the server did not start listening on {listen}");
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let client = ncx_command(exe)
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
        .args(["--service", &format!("udp={udp_direct}@{udp_port}/udp")])
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
        relays: [relay_outer, relay_inner],
        svc_direct,
        svc_relay,
        svc_tunnel,
        echo_tunnel,
        udp_direct,
        udp_tunnel: ([127, 0, 0, 1], udp_port).into(),
    })
}

/// The paths every figure is measured on, in this order.
const DIRECT: usize = 0;
const RELAY: usize = 1;
const NCX: usize = 2;

/// Per path, the samples of one figure.
type Samples = [Vec<f64>; 3];

async fn run_inner(
    opts: &BenchOptions,
    dir: &Path,
    tracker: &TaskTracker,
    cancel: &CancellationToken,
) -> anyhow::Result<()> {
    let mut s = setup(opts, dir, tracker, cancel).await?;
    let pids = [
        s.server.id().context("server pid")?,
        s.client.id().context("client pid")?,
    ];
    let relay_pids = [
        s.relays[0].id().context("relay pid")?,
        s.relays[1].id().context("relay pid")?,
    ];
    let paths = [s.svc_direct, s.svc_relay, s.svc_tunnel];
    let reps = opts.repetitions.max(1);
    let mut rows = Vec::new();
    let gib = |b: u64| b as f64 / (1u64 << 30) as f64;

    // Bulk throughput, interleaved by path, with CPU time of the relay and tunnel processes.
    let mut results: Vec<(&str, Samples)> = vec![
        ("bulk download, 1 stream", Samples::default()),
        ("bulk upload, 1 stream", Samples::default()),
        ("bulk download, 8 streams", Samples::default()),
    ];
    // [relay, ncx]: what their processes used, and the bytes moved.
    let mut used = [Usage::default(); 2];
    let mut moved = [0u64; 2];
    for _ in 0..reps {
        for (i, (_, samples)) in results.iter_mut().enumerate() {
            for (k, addr) in paths.into_iter().enumerate() {
                let watched: &[u32] = match k {
                    RELAY => &relay_pids,
                    NCX => &pids,
                    _ => &[],
                };
                let before = Usage::of(watched);
                let (bytes, secs) = match i {
                    0 => download(addr, opts.bulk_bytes).await?,
                    1 => upload(addr, opts.bulk_bytes).await?,
                    _ => parallel_download(addr, opts.bulk_bytes / PARALLEL as u64).await?,
                };
                samples[k].push(bytes as f64 / secs / (1 << 20) as f64);
                if k != DIRECT {
                    used[k - 1].add(Usage::of(watched).since(before));
                    moved[k - 1] += bytes;
                }
            }
        }
    }
    for (name, samples) in &results {
        rows.push(row(name, "MiB/s", samples));
    }

    // Round trips, idle and under a bulk transfer through the same path.
    let mut rr = [Samples::default(), Samples::default()]; // p50, p99
    let mut rr_bulk = [Samples::default(), Samples::default()];
    for _ in 0..reps {
        for (k, addr) in paths.into_iter().enumerate() {
            let lat = round_trips(addr, ROUND_TRIPS).await?;
            rr[0][k].push(percentile(&lat, 0.5));
            rr[1][k].push(percentile(&lat, 0.99));
        }
        for (k, addr) in paths.into_iter().enumerate() {
            let stop = CancellationToken::new();
            let bulk = tokio::spawn(background_download(addr, stop.clone()));
            // Let the bulk transfer fill the pipes first.
            tokio::time::sleep(Duration::from_millis(200)).await;
            let lat = round_trips(addr, ROUND_TRIPS).await;
            stop.cancel();
            let _ = bulk.await;
            let lat = lat?;
            rr_bulk[0][k].push(percentile(&lat, 0.5));
            rr_bulk[1][k].push(percentile(&lat, 0.99));
        }
    }
    rows.push(row("64 B round trip p50", "µs", &rr[0]));
    rows.push(row("64 B round trip p99", "µs", &rr[1]));
    rows.push(row("64 B round trip p50 under bulk", "µs", &rr_bulk[0]));
    rows.push(row("64 B round trip p99 under bulk", "µs", &rr_bulk[1]));

    // UDP: 1,400-byte datagrams to an echo at a paced rate, direct and through a UDP service
    // (no relay floor: the relays carry TCP only). What comes back, and what was lost either way.
    for mbit in UDP_RATES {
        let (mut rate, mut lost) = (Samples::default(), Samples::default());
        for _ in 0..reps {
            for (k, addr) in [(DIRECT, s.udp_direct), (NCX, s.udp_tunnel)] {
                let (got, loss) = udp_offered(addr, mbit).await?;
                rate[k].push(got);
                lost[k].push(loss);
            }
        }
        rows.push(row(
            &format!("UDP echo, 1400 B datagrams at {mbit} Mbit/s offered: received"),
            "Mbit/s",
            &rate,
        ));
        rows.push(row(
            &format!("UDP echo, 1400 B datagrams at {mbit} Mbit/s offered: lost"),
            "%",
            &lost,
        ));
    }

    // New connections: connect to first echoed byte, and rate with 32 openers.
    let mut conn = [Samples::default(), Samples::default()]; // p50, p99
    let mut rate = Samples::default();
    for _ in 0..reps {
        for (k, addr) in paths.into_iter().enumerate() {
            let mut lat = Vec::with_capacity(CONNECTS);
            for _ in 0..CONNECTS {
                lat.push(echo_once(addr).await?);
            }
            lat.sort();
            conn[0][k].push(percentile(&lat, 0.5));
            conn[1][k].push(percentile(&lat, 0.99));
            rate[k].push(connection_rate(addr).await?);
        }
    }
    rows.push(row("connect to first byte p50", "µs", &conn[0]));
    rows.push(row("connect to first byte p99", "µs", &conn[1]));
    rows.push(row("new connections/s, 32 openers", "conn/s", &rate));

    // CPU per GiB through the relay chain and the tunnel (both processes of each). CPU time comes
    // in clock ticks (10 ms); a path that used none measurable gets no figure rather than 0.
    let ticks = clock_ticks();
    let cpu_secs = |i: usize| (used[i].user_ticks + used[i].kernel_ticks) as f64 / ticks;
    let per_gib = |i: usize| (cpu_secs(i) > 0.0).then(|| cpu_secs(i) / gib(moved[i]).max(1e-9));
    let kernel_share = |i: usize| {
        (cpu_secs(i) > 0.0).then(|| 100.0 * used[i].kernel_ticks as f64 / ticks / cpu_secs(i))
    };
    let only = |relay: Option<f64>, ncx: Option<f64>| -> Samples {
        [
            vec![],
            relay.into_iter().collect(),
            ncx.into_iter().collect(),
        ]
    };
    let inverse = |v: Option<f64>| v.map(|x| 1.0 / x);
    rows.push(row(
        "CPU per GiB moved",
        "CPU s/GiB",
        &only(per_gib(0), per_gib(1)),
    ));
    rows.push(row(
        "GiB moved per CPU-second",
        "GiB/CPU s",
        &only(inverse(per_gib(0)), inverse(per_gib(1))),
    ));
    // Page faults show an allocator that hands buffers back to the kernel after every use (see
    // `keep_freed_buffers` in main.rs): hundreds per GiB when it does not, six figures when it does.
    let faults_per_gib = |i: usize| Some(used[i].faults as f64 / gib(moved[i]).max(1e-9));
    rows.push(row(
        "page faults per GiB moved",
        "faults/GiB",
        &only(faults_per_gib(0), faults_per_gib(1)),
    ));
    rows.push(row(
        "share of CPU spent in the kernel",
        "%",
        &only(kernel_share(0), kernel_share(1)),
    ));

    // Memory: idle, then holding many idle visitors.
    let ncx_only = |v: f64| [vec![], vec![], vec![v]];
    let idle = [rss_kib(pids[0]), rss_kib(pids[1])];
    let idle_anon = [
        status_kib(pids[0], "RssAnon:"),
        status_kib(pids[1], "RssAnon:"),
    ];
    let (held, failed) = hold_idle(s.echo_tunnel, opts.idle_connections).await;
    let loaded = [rss_kib(pids[0]), rss_kib(pids[1])];
    let held_n = held.len();
    drop(held);
    if let Some(e) = failed {
        // The rows below then say how many were held; with none, there is no figure per visitor.
        eprintln!(
            "ncx-bench: held {held_n} of {} idle visitors, then: {e:#}",
            opts.idle_connections
        );
    }
    let mib = |kib: u64| ncx_only(kib as f64 / 1024.0);
    rows.push(row("server RSS idle", "MiB", &mib(idle[0])));
    rows.push(row("client RSS idle", "MiB", &mib(idle[1])));
    // RSS counts the pages of the binary and of libc that are mapped in (shared, file-backed, and
    // droppable by the kernel); the anonymous part is the memory the process itself holds.
    rows.push(row(
        "server RSS idle, anonymous part",
        "MiB",
        &mib(idle_anon[0]),
    ));
    rows.push(row(
        "client RSS idle, anonymous part",
        "MiB",
        &mib(idle_anon[1]),
    ));
    rows.push(row(
        &format!("server RSS, {held_n} idle visitors"),
        "MiB",
        &mib(loaded[0]),
    ));
    rows.push(row(
        &format!("client RSS, {held_n} idle visitors"),
        "MiB",
        &mib(loaded[1]),
    ));
    if held_n > 0 {
        let per_conn =
            (loaded[0] + loaded[1]).saturating_sub(idle[0] + idle[1]) as f64 / held_n as f64;
        rows.push(row(
            "memory per idle visitor (both sides)",
            "KiB",
            &ncx_only(per_conn),
        ));
    }

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
    for child in [&mut s.client, &mut s.server, &mut s.echo]
        .into_iter()
        .chain(s.relays.iter_mut())
    {
        let _ = child.kill().await;
    }
    Ok(())
}

/// A row from the samples of each path; a path without samples shows "–".
fn row(metric: &str, unit: &str, samples: &Samples) -> Row {
    let value = |k: usize| (!samples[k].is_empty()).then(|| median(samples[k].clone()));
    let (direct, relay) = (value(DIRECT), value(RELAY));
    let ncx = value(NCX);
    Row {
        metric: metric.into(),
        unit: unit.into(),
        direct,
        relay,
        ncx,
        // No ratio to nothing (a loss of 0% direct).
        relay_ratio: direct
            .zip(relay)
            .filter(|(d, _)| *d != 0.0)
            .map(|(d, r)| r / d),
        ratio: direct
            .zip(ncx)
            .filter(|(d, _)| *d != 0.0)
            .map(|(d, n)| n / d),
    }
}

fn print_table(rows: &[Row], opts: &BenchOptions) {
    println!(
        "ncx-bench: {} repetitions, medians; {} MiB per bulk transfer; {} CPUs",
        opts.repetitions,
        opts.bulk_bytes >> 20,
        std::thread::available_parallelism()
            .map(|n| n.get())
            .unwrap_or(0)
    );
    println!(
        "| metric | unit | direct | relay floor | ncx (TLS) | floor / direct | ncx / direct |"
    );
    println!("|---|---|---:|---:|---:|---:|---:|");
    let fmt = |v: Option<f64>| match v {
        Some(v) if v >= 100.0 => format!("{v:.0}"),
        Some(v) => format!("{v:.2}"),
        None => "–".into(),
    };
    let ratio = |v: Option<f64>| v.map_or_else(|| "–".into(), |x| format!("{x:.2}×"));
    for r in rows {
        println!(
            "| {} | {} | {} | {} | {} | {} | {} |",
            r.metric,
            r.unit,
            fmt(r.direct),
            fmt(r.relay),
            fmt(r.ncx),
            ratio(r.relay_ratio),
            ratio(r.ratio),
        );
    }
}

/// Echoes every datagram to its sender until `cancel`.
async fn udp_echo(socket: UdpSocket, cancel: CancellationToken) {
    let mut buf = vec![0u8; 65_536];
    loop {
        tokio::select! {
            _ = cancel.cancelled() => return,
            r = socket.recv_from(&mut buf) => {
                if let Ok((n, from)) = r {
                    let _ = socket.send_to(&buf[..n], from).await;
                }
            }
        }
    }
}

/// Sends 1,400-byte datagrams to the echo at `addr` at `mbit` Mbit/s for [`UDP_RUN`] (a batch
/// every millisecond) and counts the echoes that come back within half a second after: the
/// received rate in Mbit/s and the share lost, in percent.
async fn udp_offered(addr: SocketAddr, mbit: u64) -> anyhow::Result<(f64, f64)> {
    let socket = std::sync::Arc::new(UdpSocket::bind("127.0.0.1:0").await?);
    socket.connect(addr).await?;
    let received = std::sync::Arc::new(std::sync::atomic::AtomicU64::new(0));
    let counting = tokio::spawn({
        let (socket, received) = (socket.clone(), received.clone());
        async move {
            let mut buf = vec![0u8; 65_536];
            while socket.recv(&mut buf).await.is_ok() {
                received.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            }
        }
    });
    let per_ms = (mbit * 1_000_000 / 8 / 1000) as f64 / UDP_DATAGRAM as f64;
    let datagram = vec![0x5au8; UDP_DATAGRAM];
    let start = Instant::now();
    let mut tick = tokio::time::interval(Duration::from_millis(1));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Burst);
    let mut sent = 0u64;
    while start.elapsed() < UDP_RUN {
        tick.tick().await;
        let due = (start.elapsed().as_secs_f64() * 1000.0 * per_ms) as u64;
        while sent < due {
            // A full socket buffer drops, as the network would.
            let _ = socket.send(&datagram).await;
            sent += 1;
        }
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    counting.abort();
    let got = received.load(std::sync::atomic::Ordering::Relaxed);
    let secs = UDP_RUN.as_secs_f64();
    Ok((
        got as f64 * UDP_DATAGRAM as f64 * 8.0 / secs / 1e6,
        100.0 * (1.0 - got as f64 / sent.max(1) as f64),
    ))
}

/// Serves the bench commands until `cancel`.
pub(crate) async fn bench_service(listener: TcpListener, cancel: CancellationToken) {
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

pub(crate) async fn connect(addr: SocketAddr) -> anyhow::Result<TcpStream> {
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
/// the greeting, so it is spliced end to end). Stops at the first that fails, and returns the
/// ones held with that error, so a limit met on the way shows as such instead of as a figure.
async fn hold_idle(addr: SocketAddr, n: usize) -> (Vec<TcpStream>, Option<anyhow::Error>) {
    let mut held = Vec::with_capacity(n);
    let banner = ncx::demo::BANNER.len();
    for _ in 0..n {
        let opened = async {
            let mut s = connect(addr).await?;
            let mut b = vec![0u8; banner];
            s.read_exact(&mut b)
                .await
                .context("reading the echo's banner")?;
            anyhow::Ok(s)
        };
        match opened.await {
            Ok(s) => held.push(s),
            Err(e) => return (held, Some(e)),
        }
    }
    (held, None)
}

/// What some processes have used so far, summed, from one read of each `/proc/PID/stat`.
#[derive(Debug, Default, Clone, Copy)]
struct Usage {
    user_ticks: u64,
    kernel_ticks: u64,
    /// Minor page faults.
    faults: u64,
}

impl Usage {
    fn of(pids: &[u32]) -> Usage {
        let mut total = Usage::default();
        for pid in pids {
            if let Some(u) = std::fs::read_to_string(format!("/proc/{pid}/stat"))
                .ok()
                .and_then(|stat| Usage::parse(&stat))
            {
                total.add(u);
            }
        }
        total
    }

    fn parse(stat: &str) -> Option<Usage> {
        // Fields after the parenthesised command name: minflt is the 8th, utime and stime the
        // 12th and 13th (fields 10, 14 and 15 of proc(5)).
        let f: Vec<&str> = stat.rsplit_once(')')?.1.split_whitespace().collect();
        Some(Usage {
            faults: f.get(7)?.parse().ok()?,
            user_ticks: f.get(11)?.parse().ok()?,
            kernel_ticks: f.get(12)?.parse().ok()?,
        })
    }

    fn since(self, before: Usage) -> Usage {
        Usage {
            user_ticks: self.user_ticks.saturating_sub(before.user_ticks),
            kernel_ticks: self.kernel_ticks.saturating_sub(before.kernel_ticks),
            faults: self.faults.saturating_sub(before.faults),
        }
    }

    fn add(&mut self, other: Usage) {
        self.user_ticks += other.user_ticks;
        self.kernel_ticks += other.kernel_ticks;
        self.faults += other.faults;
    }
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

#[cfg(test)]
mod tests {
    use super::Usage;

    #[test]
    fn usage_reads_faults_and_cpu_ticks_after_the_command_name() {
        // A command name may itself contain ") ", so fields count from the last ')'.
        let stat = "42 (ncx) x) S 1 42 42 0 -1 4194560 1234 0 5 0 77 33 0 0 20 0 3 0 100 0 0";
        let u = Usage::parse(stat).unwrap();
        assert_eq!((u.faults, u.user_ticks, u.kernel_ticks), (1234, 77, 33));
        let later = Usage {
            faults: 1300,
            user_ticks: 80,
            kernel_ticks: 40,
        };
        let d = later.since(u);
        assert_eq!((d.faults, d.user_ticks, d.kernel_ticks), (66, 3, 7));
        assert!(Usage::parse("42 (ncx) S 1").is_none());
    }
}
