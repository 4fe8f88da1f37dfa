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
    let result = loop {
        let server = client.settings.server.clone();
        // How long the session was up, if one was.
        let mut lived = None;
        let err = tokio::select! {
            _ = shutdown.cancelled() => break Ok(()),
            Some(request) = next_reload(&mut reloads) => {
                take_offline(&mut client, &mut retry, request);
                continue;
            }
            r = client.connect() => match r {
                Ok(mut connected) => {
                    info!("connected to the server");
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
                    let served = loop {
                        let served = connected.run_control(shutdown, false, reloads.as_mut()).await;
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
        Ok(next) => *client = next,
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
