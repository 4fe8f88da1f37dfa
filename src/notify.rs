//! Telling systemd how the process is doing (the sd_notify(3) protocol, through the sd-notify
//! crate): READY when the server listens or the client has made its first attempt, STATUS with
//! the client's connection state, RELOADING around a reload, STOPPING when a shutdown begins, and
//! WATCHDOG pings when the unit sets `WatchdogSec=`.
//!
//! Without NOTIFY_SOCKET (not run by systemd, or not `Type=notify`) every call does nothing, and
//! on Windows there is no such protocol.

use std::time::Duration;

/// The server listens, or the client has made its first attempt to connect (succeeded or not:
/// a client whose server is down at boot is still running as it should, and `systemctl start`
/// must not hang on it). `status` is the STATUS= line shown by `systemctl status`.
pub fn ready(status: &str) {
    send(&["READY=1".into(), status_line(status)]);
}

/// The STATUS= line alone, e.g. "connected to tunnel.example.com:7835".
pub fn status(status: &str) {
    send(&[status_line(status)]);
}

/// One line of the protocol: a newline in `status` (an error's text) would start another.
fn status_line(status: &str) -> String {
    format!("STATUS={}", status.replace(['\n', '\r'], " "))
}

/// A reload has begun; [`ready`] says when it is done. systemd (`Type=notify-reload`) wants the
/// monotonic time of the start with it.
pub fn reloading() {
    #[cfg(unix)]
    let now = sd_notify::NotifyState::monotonic_usec_now()
        .map(|t| t.to_string())
        .ok();
    #[cfg(not(unix))]
    let now: Option<String> = None;
    let mut lines = vec!["RELOADING=1".to_owned(), "STATUS=reloading".to_owned()];
    lines.extend(now);
    send(&lines);
}

/// A graceful shutdown has begun.
pub fn stopping() {
    send(&["STOPPING=1".into(), "STATUS=shutting down".into()]);
}

/// Pings the watchdog at half its interval, for as long as it is polled; pending forever when the
/// unit has no `WatchdogSec=`. It runs on the runtime that serves the tunnel, so a runtime that
/// has stopped making progress stops the pings and systemd restarts the process.
pub async fn watchdog() -> std::convert::Infallible {
    let Some(every) = watchdog_interval() else {
        return std::future::pending().await;
    };
    let mut ticks = tokio::time::interval(every);
    loop {
        ticks.tick().await;
        send(&["WATCHDOG=1".into()]);
    }
}

#[cfg(unix)]
fn watchdog_interval() -> Option<Duration> {
    // systemd's advice: ping at half the interval. A zero interval would spin the interval timer.
    sd_notify::watchdog_enabled()
        .map(|d| (d / 2).max(Duration::from_millis(10)))
        .filter(|_| std::env::var_os("NOTIFY_SOCKET").is_some())
}

#[cfg(not(unix))]
fn watchdog_interval() -> Option<Duration> {
    None
}

#[cfg(unix)]
fn send(lines: &[String]) {
    let states: Vec<sd_notify::NotifyState<'_>> = lines
        .iter()
        .map(|l| sd_notify::NotifyState::Custom(l))
        .collect();
    if let Err(e) = sd_notify::notify(&states) {
        tracing::debug!(error = %e, "cannot notify the service manager");
    }
}

#[cfg(not(unix))]
fn send(_: &[String]) {}
