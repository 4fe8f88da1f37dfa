//! The service control manager's side of `ncx service` (Windows only): registering and removing
//! the service, and running as it.
//!
//! The service manager starts `ncx.exe service run …` and expects it to connect back at once
//! (`StartServiceCtrlDispatcher`, which blocks the main thread until the service stops) and to run
//! the service on the thread the dispatcher calls back. `windows-service` wraps that API; the
//! callback is ours, a plain `extern "system" fn` that ignores the service arguments (raw
//! pointers it never reads), so no `unsafe` is needed here. The job waits for it in a static, the
//! one way to hand the callback anything.
//!
//! Stop and Shutdown cancel the command's shutdown token: the client closes its listeners and
//! lets visitors finish for `drain_timeout_secs`, reporting StopPending with that as the wait
//! hint, and then Stopped.
//!
//! The dispatcher returns on the main thread as soon as Stopped is reported, and the process
//! ends when `main` does; so the callback logs its last line before reporting Stopped, and the
//! main thread waits for the callback to finish (a bounded wait) before returning.

use std::sync::Mutex;
use std::time::Duration;

use anyhow::{bail, Context};
use tokio_util::sync::CancellationToken;
use windows_service::service::{
    ServiceAccess, ServiceControl, ServiceControlAccept, ServiceErrorControl, ServiceExitCode,
    ServiceInfo, ServiceStartType, ServiceState, ServiceStatus, ServiceType,
};
use windows_service::service_control_handler::{self, ServiceControlHandlerResult};
use windows_service::service_dispatcher;
use windows_service::service_manager::{ServiceManager, ServiceManagerAccess};

use super::plan::{Job, Plan};

/// Win32 errors worth their own words.
const ERROR_ACCESS_DENIED: i32 = 5;
const ERROR_SERVICE_DOES_NOT_EXIST: i32 = 1060;
const ERROR_FAILED_SERVICE_CONTROLLER_CONNECT: i32 = 1063;
const ERROR_SERVICE_EXISTS: i32 = 1073;
const ERROR_SERVICE_NOT_ACTIVE: i32 = 1062;

/// How long `uninstall` waits for a running service to stop, beyond the wait hint it reports.
const STOP_WAIT_EXTRA: Duration = Duration::from_secs(10);

/// The Win32 error code inside a `windows-service` error, if it is one.
fn win32_code(e: &windows_service::Error) -> Option<i32> {
    match e {
        windows_service::Error::Winapi(io) => io.raw_os_error(),
        _ => None,
    }
}

/// A `windows-service` error as one line: the Win32 message, without the crate's "IO error in
/// winapi call" in front, and with what to do for the common ones.
fn words(e: &windows_service::Error, what: &str) -> anyhow::Error {
    match win32_code(e) {
        Some(ERROR_ACCESS_DENIED) => {
            anyhow::anyhow!("{what}: access denied: run it from an administrator's prompt")
        }
        _ => match e {
            windows_service::Error::Winapi(io) => anyhow::anyhow!("{what}: {io}"),
            other => anyhow::anyhow!("{what}: {other}"),
        },
    }
}

/// Registers the planned service: own process, LocalSystem, started at boot.
pub(super) fn install(plan: &Plan) -> anyhow::Result<()> {
    let manager = ServiceManager::local_computer(
        None::<&str>,
        ServiceManagerAccess::CONNECT | ServiceManagerAccess::CREATE_SERVICE,
    )
    .map_err(|e| words(&e, "opening the service manager"))?;
    if let Some(dir) = plan.log_file.parent() {
        std::fs::create_dir_all(dir)
            .with_context(|| format!("creating {} for the log", dir.display()))?;
    }
    let info = ServiceInfo {
        name: plan.name.clone().into(),
        display_name: plan.display_name.clone().into(),
        service_type: ServiceType::OWN_PROCESS,
        start_type: ServiceStartType::AutoStart,
        error_control: ServiceErrorControl::Normal,
        executable_path: std::env::current_exe().context("finding ncx.exe")?,
        launch_arguments: plan.arguments.clone(),
        dependencies: vec![],
        account_name: None,
        account_password: None,
    };
    let service = manager
        .create_service(&info, ServiceAccess::CHANGE_CONFIG)
        .map_err(|e| match win32_code(&e) {
            Some(ERROR_SERVICE_EXISTS) => anyhow::anyhow!(
                "a service named {} exists already: remove it with `ncx service uninstall --name {}`, or choose another --name",
                plan.name,
                plan.name
            ),
            _ => words(&e, &format!("creating service {}", plan.name)),
        })?;
    // The description is a courtesy; a service manager that cannot set it (wine's) still runs
    // the service.
    if let Err(e) = service.set_description("ncx reverse tunnel: ncx.exe service run") {
        tracing::debug!(error = %e, "setting the service description");
    }
    Ok(())
}

/// Stops the service if it runs (its visitors drain first), waits for it, and removes it.
pub(super) fn uninstall(name: &str) -> anyhow::Result<()> {
    let manager = ServiceManager::local_computer(None::<&str>, ServiceManagerAccess::CONNECT)
        .map_err(|e| words(&e, "opening the service manager"))?;
    let service = manager
        .open_service(
            name,
            ServiceAccess::QUERY_STATUS | ServiceAccess::STOP | ServiceAccess::DELETE,
        )
        .map_err(|e| match win32_code(&e) {
            Some(ERROR_SERVICE_DOES_NOT_EXIST) => {
                anyhow::anyhow!("there is no service named {name}")
            }
            _ => words(&e, &format!("opening service {name}")),
        })?;
    let status = service
        .query_status()
        .map_err(|e| words(&e, &format!("asking service {name} for its state")))?;
    if status.current_state != ServiceState::Stopped {
        crate::say!("stopping service {name} (its visitors may finish first)");
        let hint = match service.stop() {
            Ok(s) => s.wait_hint,
            Err(e) if win32_code(&e) == Some(ERROR_SERVICE_NOT_ACTIVE) => Duration::ZERO,
            Err(e) => return Err(words(&e, &format!("stopping service {name}"))),
        };
        let deadline =
            std::time::Instant::now() + hint.max(Duration::from_secs(30)) + STOP_WAIT_EXTRA;
        loop {
            let state = service
                .query_status()
                .map_err(|e| words(&e, &format!("asking service {name} for its state")))?
                .current_state;
            if state == ServiceState::Stopped {
                break;
            }
            if std::time::Instant::now() > deadline {
                bail!("service {name} did not stop in time (it is {state:?}); try again, or end ncx.exe");
            }
            std::thread::sleep(Duration::from_millis(200));
        }
    }
    service
        .delete()
        .map_err(|e| words(&e, &format!("removing service {name}")))?;
    Ok(())
}

/// The service waiting for the dispatcher's callback.
struct Waiting {
    name: String,
    drain: Duration,
    job: Job,
    /// Told when the callback has finished, so that the process ends only after its last line.
    finished: std::sync::mpsc::SyncSender<()>,
}

/// How long the main thread waits for the callback after the dispatcher returned: the callback
/// has reported Stopped by then, and has only a runtime shut down and a line to write.
const CALLBACK_FINISH: Duration = Duration::from_secs(5);

static WAITING: Mutex<Option<Waiting>> = Mutex::new(None);

/// Runs as the service `name`: connects to the service manager, which calls [`service_main`] on
/// a thread of its own, and returns when the service has stopped.
pub(super) fn run(name: String, drain: Duration, job: Job) -> anyhow::Result<()> {
    let (finished, callback_done) = std::sync::mpsc::sync_channel(1);
    *WAITING.lock().unwrap_or_else(|e| e.into_inner()) = Some(Waiting {
        name: name.clone(),
        drain,
        job,
        finished,
    });
    service_dispatcher::start(&name, service_main).map_err(|e| {
        match win32_code(&e) {
            Some(ERROR_FAILED_SERVICE_CONTROLLER_CONNECT) => anyhow::anyhow!(
                "`ncx service run` is what the service manager starts: start the service with `sc start {name}`"
            ),
            _ => words(&e, "connecting to the service manager"),
        }
    })?;
    // The callback's last steps (and its error, if any) come after Stopped was reported. A
    // callback that never ran left its sender in the static: dropping it ends the wait at once.
    drop(WAITING.lock().unwrap_or_else(|e| e.into_inner()).take());
    let _ = callback_done.recv_timeout(CALLBACK_FINISH);
    Ok(())
}

/// The dispatcher's callback. The service arguments (`sc start NAME ARGS`) are not used: the
/// command was fixed at install.
extern "system" fn service_main(_argc: u32, _argv: *mut *mut u16) {
    let Some(waiting) = WAITING.lock().unwrap_or_else(|e| e.into_inner()).take() else {
        return;
    };
    let finished = waiting.finished.clone();
    if let Err(e) = serve(waiting) {
        tracing::error!(error = %format!("{e:#}"), "the service stopped with an error");
    }
    let _ = finished.send(());
}

/// Runs the job's command until it ends or the service manager stops it, reporting each state.
fn serve(waiting: Waiting) -> anyhow::Result<()> {
    let Waiting {
        name, drain, job, ..
    } = waiting;
    let shutdown = CancellationToken::new();
    let handler = {
        let shutdown = shutdown.clone();
        move |control| match control {
            ServiceControl::Stop | ServiceControl::Shutdown => {
                shutdown.cancel();
                ServiceControlHandlerResult::NoError
            }
            ServiceControl::Interrogate => ServiceControlHandlerResult::NoError,
            _ => ServiceControlHandlerResult::NotImplemented,
        }
    };
    let status = service_control_handler::register(&name, handler)
        .map_err(|e| words(&e, "registering with the service manager"))?;
    let report = move |state, accept, wait_hint, exit_code| {
        let s = ServiceStatus {
            service_type: ServiceType::OWN_PROCESS,
            current_state: state,
            controls_accepted: accept,
            exit_code,
            checkpoint: 0,
            wait_hint,
            process_id: None,
        };
        if let Err(e) = status.set_service_status(s) {
            tracing::warn!(error = %e, ?state, "reporting the service's state");
        }
    };
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("starting the runtime")?;
    report(
        ServiceState::Running,
        ServiceControlAccept::STOP | ServiceControlAccept::SHUTDOWN,
        Duration::ZERO,
        ServiceExitCode::Win32(0),
    );
    tracing::info!(service = %name, "running as a Windows service");
    let result = runtime.block_on(async {
        let stopping = shutdown.clone();
        let watcher = tokio::spawn(async move {
            stopping.cancelled().await;
            tracing::info!("the service manager stops the service: visitors may finish first");
            report(
                ServiceState::StopPending,
                ServiceControlAccept::empty(),
                drain + Duration::from_secs(5),
                ServiceExitCode::Win32(0),
            );
        });
        let result = job(shutdown.clone()).await;
        watcher.abort();
        result
    });
    runtime.shutdown_timeout(Duration::from_secs(1));
    let code = match &result {
        Ok(_) => ServiceExitCode::Win32(0),
        Err(_) => ServiceExitCode::ServiceSpecific(1),
    };
    // Logged first: once Stopped is reported the main thread may return and the process end.
    tracing::info!(service = %name, "service stopped");
    report(
        ServiceState::Stopped,
        ServiceControlAccept::empty(),
        Duration::ZERO,
        code,
    );
    result
}
