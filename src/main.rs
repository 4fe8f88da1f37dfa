//! The `ncx` binary: parse the command line, set up logging, turn signals into a shutdown, and hand
//! over to the library.
#![forbid(unsafe_code)]

use std::io::IsTerminal;
use std::process::ExitCode;

use clap::Parser;
use tokio_util::sync::CancellationToken;

/// Prints an error line on stderr like `eprintln!`, but never panics when stderr is gone.
macro_rules! complain {
    ($($arg:tt)*) => {{
        use std::io::Write as _;
        let _ = writeln!(std::io::stderr(), $($arg)*);
    }};
}

fn main() -> ExitCode {
    keep_freed_buffers();
    let cli = ncx::cli::Cli::parse();
    let log = cli.log_options();
    // Run by the Windows service manager: no console, so the log goes to the file install chose.
    if let ncx::cli::Command::Service(ncx::service::ServiceArgs {
        action:
            ncx::service::ServiceAction::Run {
                name,
                dir,
                log_file,
                command,
            },
    }) = cli.command
    {
        return run_as_service(log, name, dir, log_file, command);
    }
    if let Err(e) = ncx::logging::init(&log, std::io::stderr, std::io::stderr().is_terminal()) {
        complain!("error: {e}");
        return ExitCode::from(2);
    }
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            complain!("error: starting the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    runtime.block_on(async {
        let shutdown = CancellationToken::new();
        // The server and the client reload on SIGHUP (src/cli/execute.rs); it stops the others.
        let hup_stops = !matches!(
            cli.command,
            ncx::cli::Command::Server(_) | ncx::cli::Command::Client(_)
        );
        tokio::spawn(signals(shutdown.clone(), hup_stops));
        match ncx::cli::execute(cli.command, shutdown).await {
            Ok(code) => code,
            Err(e) => {
                complain!("error: {e:#}");
                ExitCode::FAILURE
            }
        }
    })
}

/// `ncx service run`: in the directory install ran in (a service starts in the system
/// directory), logging to `log_file`, the registered command as the service `name`.
fn run_as_service(
    mut log: ncx::logging::LogOptions,
    name: String,
    dir: std::path::PathBuf,
    log_file: std::path::PathBuf,
    command: Vec<std::ffi::OsString>,
) -> ExitCode {
    let file = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(&log_file);
    let file = match file {
        Ok(f) => f,
        Err(e) => {
            complain!("error: opening the log file {}: {e}", log_file.display());
            return ExitCode::FAILURE;
        }
    };
    let inner = ncx::cli::service::parse_cli(&command);
    if let Ok(inner) = &inner {
        let given = inner.log_options();
        log.level = log.level.or(given.level);
        log.audit_file = log.audit_file.or(given.audit_file);
        if given.format != ncx::logging::LogFormat::default() {
            log.format = given.format;
        }
    }
    if let Err(e) = ncx::logging::init(&log, std::sync::Mutex::new(file), false) {
        complain!("error: {e}");
        return ExitCode::from(2);
    }
    let prepared = std::env::set_current_dir(&dir)
        .map_err(|e| anyhow::anyhow!("changing to {}: {e}", dir.display()))
        .and_then(|()| {
            // Parsed twice: the settings say how long a stop may take, the command runs.
            let drain = ncx::cli::service::parse(&command)?
                .client_settings()?
                .timing
                .drain_timeout;
            let command = ncx::cli::service::parse(&command)?;
            let job: ncx::service::Job = Box::new(move |shutdown| {
                Box::pin(async move { ncx::cli::execute(command, shutdown).await.map(|_| ()) })
            });
            Ok((drain, job))
        });
    let result = prepared.and_then(|(drain, job)| ncx::service::run_as_service(name, drain, job));
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            tracing::error!("{e:#}");
            complain!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

/// Size of the block [`keep_freed_buffers`] allocates and frees once.
const ALLOCATOR_PROBE: usize = 4 * 1024 * 1024;

/// Stops glibc's allocator from handing the buffers of a busy tunnel back to the kernel after
/// every use.
///
/// yamux allocates a zeroed buffer for every data frame it reads and holds a stream's unread
/// frames (up to its window, megabytes on a long fast path), the splice takes copy buffers, rustls
/// its records; all are freed moments later. glibc's default trims a heap whose free top exceeds
/// 128 KiB (`madvise(MADV_DONTNEED)`), so the next allocation faulted fresh zeroed pages in again.
/// glibc raises its trim threshold to twice the size of the largest mmap-served block freed so
/// far (mallopt(3), "dynamic mmap threshold"); allocating and freeing one block here sets it
/// without `unsafe` or a foreign allocator. History, measured on a 2-core VM:
/// - 256 KiB (threshold about 512 KiB): single-stream loopback downloads fell from 180,000–
///   420,000 page faults per GiB to under 600 and 18–35% less CPU per GiB; `ncx-bench`'s
///   eight-stream mix still showed 44,000–70,000 per GiB, and a 20 ms path at 2 Gbit/s, whose
///   windows hold megabytes, 140,000 per GiB in each process (about a tenth of its CPU).
/// - 4 MiB (threshold about 8 MiB, now): 330 per GiB in `ncx-bench`, none in the server on the
///   20 ms path, 12–15% less CPU per GiB there; the price is that a process which moved bulk data
///   keeps up to that much freed heap for the next burst (about 3 MiB more anonymous memory per
///   process after the benchmark's transfers).
///
/// Other C libraries ignore the probe.
fn keep_freed_buffers() {
    let probe: Vec<u8> = Vec::with_capacity(ALLOCATOR_PROBE);
    // Keeps the compiler from eliding the allocation.
    std::hint::black_box(&probe);
    drop(probe);
}

/// The first SIGINT, SIGTERM or SIGHUP asks for a graceful shutdown; a second one exits at once.
/// SIGHUP (the terminal went away) used to kill the process without a line or a drain (exit 129).
/// With `hup_stops` false (the server, the client) SIGHUP is left to the reload instead.
///
/// On Windows the same holds for Ctrl-C and Ctrl-Break (the console's two interrupts; a service
/// stop comes through the service manager instead).
async fn signals(shutdown: CancellationToken, hup_stops: bool) {
    let mut other = match OtherStop::new(hup_stops) {
        Ok(s) => s,
        Err(e) => {
            tracing::warn!(error = %e, "cannot watch {}", OtherStop::NAME);
            return;
        }
    };
    for n in 0..2 {
        tokio::select! {
            _ = tokio::signal::ctrl_c() => {}
            _ = other.recv() => {}
        }
        if n == 0 {
            tracing::info!("shutting down (signal again to exit at once)");
            ncx::notify::stopping();
            shutdown.cancel();
        } else {
            std::process::exit(130);
        }
    }
}

/// The stop requests beside Ctrl-C: SIGTERM and SIGHUP on Unix, Ctrl-Break on Windows.
#[cfg(unix)]
struct OtherStop {
    term: tokio::signal::unix::Signal,
    /// Absent for the server and the client, which reload on SIGHUP instead.
    hup: Option<tokio::signal::unix::Signal>,
}

#[cfg(unix)]
impl OtherStop {
    const NAME: &'static str = "SIGTERM and SIGHUP";
    fn new(hup_stops: bool) -> std::io::Result<Self> {
        use tokio::signal::unix::{signal, SignalKind};
        Ok(OtherStop {
            term: signal(SignalKind::terminate())?,
            hup: if hup_stops {
                Some(signal(SignalKind::hangup())?)
            } else {
                None
            },
        })
    }
    async fn recv(&mut self) {
        let hup = async {
            match &mut self.hup {
                Some(hup) => hup.recv().await,
                None => std::future::pending().await,
            }
        };
        tokio::select! {
            _ = self.term.recv() => {}
            _ = hup => tracing::info!("SIGHUP: stopping as for SIGTERM (the server and the client reload on it; this command does not)"),
        }
    }
}

#[cfg(windows)]
struct OtherStop(tokio::signal::windows::CtrlBreak);

#[cfg(windows)]
impl OtherStop {
    const NAME: &'static str = "Ctrl-Break";
    fn new(_hup_stops: bool) -> std::io::Result<Self> {
        tokio::signal::windows::ctrl_break().map(OtherStop)
    }
    async fn recv(&mut self) {
        self.0.recv().await;
    }
}
