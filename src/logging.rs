//! Where log lines go and how they look: the filter (`--log-level`, RUST_LOG), the format
//! (`--log-format`: short human lines or one JSON object per line) and the audit file
//! (`--audit-log`), which takes the audit lines (target [`AUDIT_TARGET`]) out of the main log.

use std::path::{Path, PathBuf};

use tracing_subscriber::filter::{EnvFilter, FilterFn, Targets};
use tracing_subscriber::fmt::MakeWriter;
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;
use tracing_subscriber::{Layer, Registry};

/// The target of the audit lines ([`crate::audit`]).
pub const AUDIT_TARGET: &str = "ncx::audit";

/// How a log line looks.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, clap::ValueEnum)]
pub enum LogFormat {
    /// `TIME LEVEL message key=value …`, without module paths.
    #[default]
    Human,
    /// One JSON object per line: `timestamp`, `level`, `target`, `message`, the event's fields
    /// and, under `span`, those of the span it happened in (the session's `identity`, say).
    Json,
}

/// What the command line says about logging.
#[derive(Debug, Clone, Default)]
pub struct LogOptions {
    /// A tracing filter; without it RUST_LOG, then `info`.
    pub level: Option<String>,
    pub format: LogFormat,
    /// Appends the audit lines to this file instead of the main log.
    pub audit_file: Option<PathBuf>,
}

/// Why logging could not be set up.
#[derive(Debug, thiserror::Error)]
pub enum LogError {
    #[error("invalid log level: {0}")]
    Level(#[from] tracing_subscriber::filter::ParseError),
    #[error("opening the audit log {}: {source}", path.display())]
    AuditFile {
        path: PathBuf,
        source: std::io::Error,
    },
}

/// Installs the global subscriber: the main log to `writer` (with colours when `ansi`) and, with
/// [`LogOptions::audit_file`], the audit lines to that file, always at info whatever the level.
pub fn init<W>(options: &LogOptions, writer: W, ansi: bool) -> Result<(), LogError>
where
    W: for<'w> MakeWriter<'w> + Send + Sync + 'static,
{
    let filter = filter(options.level.as_deref())?;
    let audit = options.audit_file.as_deref().map(open_append).transpose()?;
    let main = layer(options.format, writer, ansi).with_filter(filter);
    let layers = match audit {
        Some(file) => {
            let elsewhere = FilterFn::new(|m| m.target() != AUDIT_TARGET);
            let audit = layer(options.format, std::sync::Mutex::new(file), false)
                .with_filter(Targets::new().with_target(AUDIT_TARGET, tracing::Level::INFO));
            vec![main.with_filter(elsewhere).boxed(), audit.boxed()]
        }
        None => vec![main.boxed()],
    };
    tracing_subscriber::registry().with(layers).init();
    Ok(())
}

/// The main log's filter: `level`, or RUST_LOG, or `info`.
fn filter(level: Option<&str>) -> Result<EnvFilter, LogError> {
    let filter = match level {
        Some(level) => EnvFilter::try_new(level)?,
        None => EnvFilter::try_from_default_env().or_else(|_| EnvFilter::try_new("info"))?,
    };
    // yamux logs a peer that closed first as a warning; that is routine for a tunnel.
    Ok(if level.unwrap_or_default().contains("yamux") {
        filter
    } else {
        filter.add_directive("yamux=error".parse().expect("a valid literal directive"))
    })
}

/// One formatting layer writing to `writer`.
fn layer<W>(format: LogFormat, writer: W, ansi: bool) -> Box<dyn Layer<Registry> + Send + Sync>
where
    W: for<'w> MakeWriter<'w> + Send + Sync + 'static,
{
    let base = tracing_subscriber::fmt::layer()
        .with_writer(writer)
        // A log line that cannot be written (stderr is a pipe whose reader went away) is dropped;
        // by default tracing-subscriber reports that with `eprintln!`, which panics on the same
        // closed stderr and took the whole tunnel down (exit 101).
        .log_internal_errors(false);
    match format {
        LogFormat::Human => base.with_ansi(ansi).with_target(false).boxed(),
        LogFormat::Json => base
            .json()
            .flatten_event(true)
            .with_current_span(true)
            .with_span_list(false)
            .boxed(),
    }
}

fn open_append(path: &Path) -> Result<std::fs::File, LogError> {
    std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)
        .map_err(|source| LogError::AuditFile {
            path: path.to_owned(),
            source,
        })
}
