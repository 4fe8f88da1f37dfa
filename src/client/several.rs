//! Several servers in mode `all`: one reconnect loop per server, each with a client of its own
//! whose sessions register every service, so that DNS round robin or a load balancer in front of
//! the servers reaches a live one. Each loop reconnects on its own. The visit listeners use
//! whichever session is up (the first server's while it is); a reload goes to every loop, and a
//! server added by it gets a loop, a server removed has its loop drain and end.

use std::collections::HashMap;

use tokio::sync::{mpsc, oneshot, watch};
use tokio::task::JoinHandle;

use super::outbound::Target;
use super::report::{ClientReloaded, Request};
use super::*;
use tracing::error;

/// What woke [`run_all`].
enum Event {
    /// A loop's session came or went (`None`), or the loop ended.
    Loop(String, Option<Box<LoopEnd>>),
    Reload(Box<Request>),
}

/// How a loop's task ended.
type LoopEnd = Result<Result<(), ClientError>, tokio::task::JoinError>;

/// A loop's status, shared with its client.
type SharedStatus = Arc<std::sync::Mutex<crate::admin::ClientStatus>>;

/// Reload requests queued for one loop.
const LOOP_RELOADS: usize = 4;

/// One server's loop.
struct Loop {
    /// Stops the loop (its session drains).
    stop: CancellationToken,
    reloads: mpsc::Sender<Request>,
    /// The loop's current session, for visits.
    target: watch::Receiver<Option<Target>>,
    task: JoinHandle<Result<(), ClientError>>,
}

/// Starts the loop of `server`, with a client of its own (metrics and health shared with
/// `base`, a status of its own on `board`).
fn start(
    base: &Client,
    server: &str,
    shutdown: &CancellationToken,
    board: &StatusBoard,
) -> Result<Loop, ClientError> {
    let client = base.for_server(server)?;
    board.insert(server, client.status.clone());
    let stop = shutdown.child_token();
    let (reloads, requests) = mpsc::channel(LOOP_RELOADS);
    let (target_tx, target) = watch::channel(None);
    let span = tracing::info_span!("server", server = %server);
    let task = tokio::spawn({
        let stop = stop.clone();
        async move { sessions::run_sessions(client, Some(requests), &target_tx, &stop).await }
            .instrument(span)
    });
    Ok(Loop {
        stop,
        reloads,
        target,
        task,
    })
}

/// The statuses of the loops, by server, in the order of the configuration: what `ncx status`
/// shows.
#[derive(Clone, Default)]
pub(super) struct StatusBoard {
    inner: Arc<std::sync::Mutex<Vec<(String, SharedStatus)>>>,
}

impl StatusBoard {
    fn insert(&self, server: &str, status: SharedStatus) {
        let mut inner = self.inner.lock().unwrap_or_else(|e| e.into_inner());
        inner.retain(|(s, _)| s != server);
        inner.push((server.to_owned(), status));
    }

    fn remove(&self, server: &str) {
        self.inner
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .retain(|(s, _)| s != server);
    }

    /// The first loop's status, with every loop's under `servers` when there are several.
    pub fn view(&self) -> crate::admin::ClientStatus {
        let inner = self.inner.lock().unwrap_or_else(|e| e.into_inner());
        let all: Vec<crate::admin::ClientStatus> = inner
            .iter()
            .map(|(_, s)| s.lock().unwrap_or_else(|e| e.into_inner()).clone())
            .collect();
        let mut first = all.first().cloned().unwrap_or_default();
        if all.len() > 1 {
            first.servers = all;
        }
        first
    }

    /// A board with one status.
    pub fn single(status: SharedStatus) -> Self {
        let board = StatusBoard::default();
        board.insert("", status);
        board
    }
}

/// Runs a loop per server until `shutdown`. Returns an error only when every server refused the
/// client for good (the first such error).
pub(super) async fn run_all(
    base: Client,
    mut requests: Option<mpsc::Receiver<Request>>,
    targets: &watch::Sender<Option<Target>>,
    shutdown: &CancellationToken,
    board: &StatusBoard,
) -> Result<(), ClientError> {
    let mut base = base;
    let mut loops: HashMap<String, Loop> = HashMap::new();
    let mut order: Vec<String> = base.settings.servers.clone();
    let mut failed: Option<ClientError> = None;
    for server in &order {
        loops.insert(server.clone(), start(&base, server, shutdown, board)?);
    }
    info!(
        servers = order.len(),
        "a session to every server (server_mode all)"
    );
    loop {
        publish_target(&order, &mut loops, targets);
        if loops.is_empty() {
            break;
        }
        // The next event of any loop (its session came or went, or it ended), or a reload.
        let event = {
            let looped = futures::future::select_all(loops.iter_mut().map(|(server, l)| {
                let server = server.clone();
                Box::pin(async move {
                    tokio::select! {
                        biased;
                        r = &mut l.task => (server, Some(Box::new(r))),
                        _ = l.target.changed() => (server, None),
                    }
                })
            }));
            tokio::select! {
                ((server, ended), _, _) = looped => Event::Loop(server, ended),
                Some(request) = async {
                    match requests.as_mut() {
                        Some(r) => r.recv().await,
                        None => std::future::pending().await,
                    }
                } => Event::Reload(Box::new(request)),
            }
        };
        match event {
            Event::Loop(_, None) => {}
            Event::Loop(server, Some(result)) => {
                loops.remove(&server);
                board.remove(&server);
                match *result {
                    Ok(Ok(())) => {}
                    Ok(Err(e)) => {
                        error!(%server, error = %e, "this server refused the client for good; the others go on");
                        failed.get_or_insert(e);
                    }
                    Err(e) => error!(%server, error = %e, "a server's session loop failed"),
                }
            }
            Event::Reload(request) => {
                reload(&mut base, &mut loops, &mut order, *request, shutdown, board).await;
            }
        }
    }
    targets.send_replace(None);
    match (failed, shutdown.is_cancelled()) {
        (Some(e), false) => Err(e),
        _ => Ok(()),
    }
}

/// The visit listeners' target: the session of the first server in the configured order that
/// has one up.
fn publish_target(
    order: &[String],
    loops: &mut HashMap<String, Loop>,
    targets: &watch::Sender<Option<Target>>,
) {
    let up = order.iter().find_map(|s| {
        loops
            .get_mut(s)
            .and_then(|l| l.target.borrow_and_update().clone())
    });
    targets.send_replace(up);
}

/// Takes a reload into every loop: the kept servers' loops take it as one server's client does,
/// added servers get a loop, removed ones end theirs (their sessions drain).
async fn reload(
    base: &mut Client,
    loops: &mut HashMap<String, Loop>,
    order: &mut Vec<String>,
    request: Request,
    shutdown: &CancellationToken,
    board: &StatusBoard,
) {
    let Request { settings, answer } = request;
    if settings.servers.len() < 2 || settings.server_mode != crate::config::ServerMode::All {
        let _ = answer.send(Err(
            "a reload cannot change server_mode or go from several servers to one: restart the client".into(),
        ));
        return;
    }
    let mut report: Option<ClientReloaded> = None;
    let mut failures = Vec::new();
    for server in settings.servers.iter().filter(|s| loops.contains_key(*s)) {
        let (tx, rx) = oneshot::channel();
        let sent = loops[server]
            .reloads
            .send(Request {
                settings: settings.for_server(server),
                answer: tx,
            })
            .await;
        let answered = match sent {
            Ok(()) => rx
                .await
                .unwrap_or_else(|_| Err("the session loop ended".into())),
            Err(_) => Err("the session loop ended".into()),
        };
        match answered {
            Ok(r) => {
                let first = report.get_or_insert_with(|| ClientReloaded {
                    refused: Vec::new(),
                    ..r.clone()
                });
                first
                    .refused
                    .extend(r.refused.into_iter().map(|x| format!("{server}: {x}")));
            }
            Err(e) => failures.push(format!("{server}: {e}")),
        }
    }
    match base.with_settings(settings.clone()) {
        Ok(next) => *base = next,
        Err(e) => failures.push(e.to_string()),
    }
    let mut report = report.unwrap_or_default();
    for server in &settings.servers {
        if !loops.contains_key(server) {
            match start(base, server, shutdown, board) {
                Ok(l) => {
                    info!(%server, "server added by the reload: connecting to it");
                    loops.insert(server.clone(), l);
                    report.servers_added.push(server.clone());
                }
                Err(e) => failures.push(format!("{server}: {e}")),
            }
        }
    }
    let gone: Vec<String> = loops
        .keys()
        .filter(|s| !settings.servers.contains(s))
        .cloned()
        .collect();
    for server in gone {
        info!(%server, "server removed by the reload: its session drains and ends");
        if let Some(l) = loops.get(&server) {
            l.stop.cancel();
        }
        report.servers_removed.push(server);
    }
    order.clone_from(&settings.servers);
    let _ = answer.send(if failures.is_empty() {
        Ok(report)
    } else {
        Err(failures.join("; "))
    });
}
