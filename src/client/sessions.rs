//! The reconnect loop: connect, serve until the session ends, pause, connect again; and the
//! reloads, taken between sessions (for the next attempt) and in them.

use super::control::Connected;
use super::report::Request;
use super::*;

/// The next reload request, or never when the client takes none.
async fn next_reload(
    requests: &mut Option<tokio::sync::mpsc::Receiver<Request>>,
) -> Option<Request> {
    match requests {
        Some(r) => r.recv().await,
        None => std::future::pending().await,
    }
}

/// A reload while not connected: the next attempt, at once, uses the new settings.
fn take_offline(client: &mut Client, retry: &mut Retry, request: Request) {
    let report = reload::plan(&client.settings, &request.settings);
    let answer = client.with_settings(request.settings).map(|next| {
        *client = next;
        client.check_health();
        *retry = Retry::new(client.settings.reconnect);
        show_connection(client);
        report.log();
        report
    });
    let _ = request.answer.send(answer.map_err(|e| e.to_string()));
}

/// After a reload: `ncx status` names the server, identity and trust now in force.
fn show_connection(client: &Client) {
    let now = initial_status(&client.settings);
    client.set_status(|s| {
        s.server = now.server;
        s.identity = now.identity;
        s.server_verified_by = now.server_verified_by;
    });
}

/// The reconnect loop of [`run`]; publishes each session for the visit listeners in `targets`.
pub(super) async fn run_sessions(
    mut client: Client,
    mut reloads: Option<tokio::sync::mpsc::Receiver<Request>>,
    targets: &tokio::sync::watch::Sender<Option<outbound::Target>>,
    shutdown: &CancellationToken,
) -> Result<(), ClientError> {
    let mut retry = Retry::new(client.settings.reconnect);
    // Sessions that handed over to a newer one and serve their last visitors.
    let mut retiring = Retiring::new(MAX_RETIRING);
    let mut first = true;
    // With server_mode = "failover": which server is tried, and a session to an earlier one
    // that answered again, to move to.
    let mut failover = Failover::new(&client)?;
    let mut next: Option<Connected> = None;
    let result = loop {
        let server = client.settings.server.clone();
        // How long the session was up, if one was.
        let mut lived = None;
        let err = tokio::select! {
            _ = shutdown.cancelled() => break Ok(()),
            Some(request) = next_reload(&mut reloads) => {
                take_offline(&mut client, &mut retry, request);
                failover = Failover::new(&client)?;
                continue;
            }
            r = async {
                match next.take() {
                    Some(connected) => Ok(connected),
                    None => client.connect().await,
                }
            } => match r {
                Ok(mut connected) => {
                    info!(%server, "connected to the server");
                    client.metrics.connected(true);
                    let services = connected.service_lines();
                    client.set_status(|s| {
                        s.connected = true;
                        s.last_error = None;
                        s.services = services;
                    });
                    let state = format!("connected to {server}");
                    if std::mem::take(&mut first) {
                        crate::notify::ready(&state);
                    } else {
                        crate::notify::status(&state);
                    }
                    connected.log_services();
                    let up = Instant::now();
                    targets.send_replace(Some(connected.visit_target()));
                    // `Some(leaving)`: the session retires, and ends at once when leaving.
                    let mut back = std::pin::pin!(failover.back_to_earlier());
                    let served = loop {
                        let served = tokio::select! {
                            s = connected.run_control(shutdown, false, reloads.as_mut()) => s,
                            (earlier, better) = &mut back => {
                                info!(server = %earlier.settings.server, "an earlier server answers again; moving there");
                                connected.announce_new_session(false).await;
                                client = earlier;
                                failover.at_server(&client.settings.server);
                                next = Some(better);
                                break Ok(Some(true));
                            }
                        };
                        let request = match served {
                            Ok(Served::Reload(request)) => request,
                            Ok(Served::Rotate) => break Ok(Some(false)),
                            Ok(Served::Shutdown) => break Ok(None),
                            Err(e) => break Err(e),
                        };
                        match take(&mut client, &mut connected, *request).await {
                            Taken::InSession => {
                                connected.log_services();
                                let services = connected.service_lines();
                                client.set_status(|s| s.services = services);
                            }
                            Taken::NewSession { leaving } => {
                                show_connection(&client);
                                break Ok(Some(leaving));
                            }
                            Taken::Lost(e) => break Err(e),
                        }
                    };
                    targets.send_replace(None);
                    client.metrics.connected(false);
                    lived = Some(up.elapsed());
                    match served {
                        Ok(None) => {
                            connected.close().await;
                            break Ok(());
                        }
                        Ok(Some(leaving)) => {
                            retiring.retire(shutdown, |stop| async move {
                                if leaving {
                                    stop.cancel();
                                }
                                if let Err(e) = connected.run_control(&stop, true, None).await {
                                    debug!(error = %e, "retired session ended");
                                }
                                connected.close().await;
                            }.in_current_span());
                            retry.after_rotation();
                            continue;
                        }
                        Err(e) => {
                            connected.close().await;
                            e
                        }
                    }
                }
                Err(e) => e,
            },
        };
        if err.is_permanent() {
            break Err(err);
        }
        // Failover: the next server at once, and the pause only once every one failed.
        if let Some(other) = failover.after_failure(&client)? {
            warn!(%server, error = %err, next = %other.settings.server, "this server failed; trying the next one");
            client = other;
            if !failover.wrapped() {
                continue;
            }
        }
        let base = if let ClientError::GoneAway {
            code: ErrorCode::SessionReplaced,
            ..
        } = err
        {
            warn!("another client with the same identity took over this client's services; two clients must not share an identity");
            retry.after_replaced()
        } else {
            match lived {
                Some(lived) => retry.after_session(lived),
                None => retry.after_failed_attempt(),
            }
        };
        let pause = jitter(base);
        client.metrics.reconnecting();
        client.set_status(|s| {
            s.connected = false;
            s.last_error = Some(err.to_string());
        });
        warn!(error = %err, retry_in = %crate::human::Human(pause), "not connected; retrying");
        let state = format!("not connected to {server} ({err}); retrying");
        if std::mem::take(&mut first) {
            crate::notify::ready(&state);
        } else {
            crate::notify::status(&state);
        }
        tokio::select! {
            _ = shutdown.cancelled() => break Ok(()),
            _ = tokio::time::sleep(pause) => {}
            Some(request) = next_reload(&mut reloads) => take_offline(&mut client, &mut retry, request),
        }
    };
    if result.is_err() {
        // A permanent refusal ends the client; sessions that retired end with it (drained).
        retiring.finish_all();
    }
    retiring.wait().await;
    result
}

/// What became of a reload the client took while connected.
pub(super) enum Taken {
    /// Applied in the session, which goes on.
    InSession,
    /// The settings in force changed so that a new session is needed. `leaving`: it goes to
    /// another server, so the old session ends (drain deadline) instead of waiting for a takeover.
    NewSession { leaving: bool },
    /// The session failed while taking it; the next one uses the new settings.
    Lost(ClientError),
}

/// Takes `request` into `client` and its `connected` session: in place when only services
/// changed, else by asking for a new session. Answers the request.
pub(super) async fn take(
    client: &mut Client,
    connected: &mut Connected,
    request: Request,
) -> Taken {
    let Request { settings, answer } = request;
    let mut report = reload::plan(&client.settings, &settings);
    match client.with_settings(settings.clone()) {
        Ok(next) => {
            *client = next;
            client.check_health();
        }
        Err(e) => {
            let _ = answer.send(Err(e.to_string()));
            return Taken::InSession;
        }
    }
    let services_changed =
        !(report.added.is_empty() && report.removed.is_empty() && report.changed.is_empty());
    let withdraws = connected.version >= ncx_proto::WITHDRAW_VERSION;
    if report.new_session.is_empty() && (withdraws || !services_changed) {
        let taken = match connected.apply(&report, &settings).await {
            Ok(refused) => {
                report.refused = refused;
                Taken::InSession
            }
            Err(e) => Taken::Lost(e),
        };
        report.log();
        let _ = answer.send(Ok(report));
        return taken;
    }
    if report.new_session.is_empty() {
        report
            .new_session
            .push("services (the server cannot withdraw one: protocol version 1)");
    }
    let leaving = report.new_session.contains(&"server");
    connected.announce_new_session(!leaving).await;
    report.log();
    let _ = answer.send(Ok(report));
    Taken::NewSession { leaving }
}

/// `server_mode = "failover"` with several servers: one session at a time, to the servers in
/// order. A failure moves on to the next server at once (the reconnect pause comes once every one
/// has failed); while the session is with a later server, the earlier ones are tried now and then,
/// and the first that answers takes over.
struct Failover {
    /// The client of the first server, which the others are made from.
    base: Option<Client>,
    servers: Vec<String>,
    at: usize,
    /// Whether the last move went round to the first server again.
    wrapped: bool,
}

impl Failover {
    fn new(client: &Client) -> Result<Self, ClientError> {
        let s = &client.settings;
        let on = s.server_mode == crate::config::ServerMode::Failover && s.servers.len() > 1;
        Ok(Failover {
            base: on.then(|| client.clone()),
            at: s.servers.iter().position(|x| *x == s.server).unwrap_or(0),
            servers: s.servers.clone(),
            wrapped: false,
        })
    }

    /// The session is now with `server`.
    fn at_server(&mut self, server: &str) {
        if let Some(i) = self.servers.iter().position(|s| s == server) {
            self.at = i;
        }
    }

    /// The client of the next server after a failure, or `None` without failover.
    fn after_failure(&mut self, _current: &Client) -> Result<Option<Client>, ClientError> {
        let Some(base) = &self.base else {
            return Ok(None);
        };
        self.at = (self.at + 1) % self.servers.len();
        self.wrapped = self.at == 0;
        Ok(Some(base.with_settings(
            base.settings.for_server(&self.servers[self.at]),
        )?))
    }

    fn wrapped(&self) -> bool {
        self.wrapped
    }

    /// Completes with a session to an earlier server than the current one, once one answers:
    /// tried after the reconnect pause, which doubles up to its maximum. Never completes on the
    /// first server or without failover.
    fn back_to_earlier(&self) -> impl std::future::Future<Output = (Client, Connected)> + 'static {
        let earlier: Vec<Client> = match &self.base {
            Some(base) if self.at > 0 => self.servers[..self.at]
                .iter()
                .filter_map(|s| base.with_settings(base.settings.for_server(s)).ok())
                .collect(),
            _ => Vec::new(),
        };
        let backoff = self.base.as_ref().map(|b| b.settings.reconnect);
        async move {
            let Some(backoff) = backoff.filter(|_| !earlier.is_empty()) else {
                return std::future::pending().await;
            };
            let mut pause = backoff.initial;
            loop {
                tokio::time::sleep(jitter(pause)).await;
                for client in &earlier {
                    match client.connect().await {
                        Ok(connected) => return (client.clone(), connected),
                        Err(e) => {
                            debug!(server = %client.settings.server, error = %e, "an earlier server still fails")
                        }
                    }
                }
                pause = (pause * 2).min(backoff.max);
            }
        }
    }
}
