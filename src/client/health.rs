//! Health checks of the services that have one (`health_check`): each is checked on its own
//! schedule, whatever the sessions do, and every session tells its server when one changes
//! (`ServiceHealth`, protocol version 3), so an unhealthy service gets no visitors (in a group,
//! they go to the other members) until it answers again.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use ncx_proto::Name;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

use crate::config::{HealthCheck, HealthProbe, ServiceSpec};
use crate::tasks::TaskGroup;

/// Most bytes of an HTTP health check's answer read to find its status line.
const MAX_HEAD: usize = 8 * 1024;

/// One service's health: whether it answers, and why not.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct Health {
    pub healthy: bool,
    pub reason: String,
}

/// The health of every checked service by name; a service without a check is not in it (healthy).
pub(super) type HealthMap = Arc<HashMap<Name, Health>>;

/// Runs the checks and publishes their results.
pub(super) struct HealthMonitor {
    state: watch::Sender<HealthMap>,
    /// The check each service runs now, and the token that stops it.
    running: Mutex<HashMap<Name, (ServiceSpec, CancellationToken)>>,
    tasks: TaskGroup,
}

impl HealthMonitor {
    /// A monitor whose checks stop with `parent`.
    pub fn new(parent: &CancellationToken) -> Arc<Self> {
        Arc::new(HealthMonitor {
            state: watch::Sender::new(Arc::default()),
            running: Mutex::default(),
            tasks: TaskGroup::child_of(parent),
        })
    }

    /// What the sessions follow.
    pub fn subscribe(&self) -> watch::Receiver<HealthMap> {
        self.state.subscribe()
    }

    /// Checks `services` from now on: starts the checks of new or changed services, stops those
    /// of services gone or without a check any more (which then count as healthy).
    pub fn set(&self, services: &[ServiceSpec]) {
        let mut running = self.running.lock().unwrap_or_else(|e| e.into_inner());
        let wanted: HashMap<&Name, &ServiceSpec> = services
            .iter()
            .filter(|s| s.health.is_some())
            .map(|s| (&s.name, s))
            .collect();
        running.retain(|name, (spec, stop)| {
            let keep = wanted
                .get(name)
                .is_some_and(|w| w.health == spec.health && w.local == spec.local);
            if !keep {
                stop.cancel();
                self.state.send_if_modified(|m| {
                    let gone = m.contains_key(name);
                    if gone {
                        Arc::make_mut(m).remove(name);
                    }
                    gone
                });
            }
            keep
        });
        for (name, spec) in wanted {
            if running.contains_key(name) {
                continue;
            }
            let stop = self.tasks.token().child_token();
            let check = spec.health.clone().expect("filtered on a check");
            self.tasks.spawn(watch_one(
                name.clone(),
                spec.local.clone(),
                check,
                self.state.clone(),
                stop.clone(),
            ));
            running.insert(name.clone(), (spec.clone(), stop));
        }
    }

    /// Stops every check and waits for them.
    pub async fn stop(&self) {
        self.tasks.stop().await;
    }
}

/// Checks one service until `stop`: `failures` failed checks in a row make it unhealthy, one
/// passed check healthy again; each change is published (and logged).
async fn watch_one(
    name: Name,
    local: String,
    check: HealthCheck,
    state: watch::Sender<HealthMap>,
    stop: CancellationToken,
) {
    let mut failed = 0u32;
    let mut healthy = true;
    loop {
        let result = match tokio::time::timeout(check.timeout, probe(&local, &check.probe)).await {
            Ok(r) => r,
            Err(_) => Err(format!("no answer within {:?}", check.timeout)),
        };
        let now = match result {
            Ok(()) => {
                failed = 0;
                Some(Health {
                    healthy: true,
                    reason: String::new(),
                })
                .filter(|_| !healthy)
            }
            Err(reason) => {
                failed = failed.saturating_add(1);
                (healthy && failed >= check.failures).then_some(Health {
                    healthy: false,
                    reason,
                })
            }
        };
        if let Some(health) = now {
            healthy = health.healthy;
            if healthy {
                info!(service = %name, "health check passes again; the service takes visitors");
            } else {
                warn!(service = %name, reason = %health.reason, failed, "health check failing; the service takes no visitors until it passes");
            }
            state.send_modify(|m| {
                Arc::make_mut(m).insert(name.clone(), health);
            });
        }
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = tokio::time::sleep(check.interval) => {}
        }
    }
}

/// One check: a TCP connect to the service, or an HTTP GET whose status is 2xx or 3xx.
async fn probe(local: &str, probe: &HealthProbe) -> Result<(), String> {
    match probe {
        HealthProbe::Tcp => TcpStream::connect(local)
            .await
            .map(drop)
            .map_err(|e| format!("connecting to {local}: {e}")),
        HealthProbe::Http { addr, host, path } => {
            let mut tcp = TcpStream::connect(addr.as_str())
                .await
                .map_err(|e| format!("connecting to {addr}: {e}"))?;
            let request = format!(
                "GET {path} HTTP/1.1\r\nHost: {host}\r\nUser-Agent: ncx-health-check\r\nConnection: close\r\n\r\n"
            );
            tcp.write_all(request.as_bytes())
                .await
                .map_err(|e| format!("sending to {addr}: {e}"))?;
            let mut head = Vec::with_capacity(1024);
            let mut buf = [0u8; 1024];
            loop {
                let n = tcp
                    .read(&mut buf)
                    .await
                    .map_err(|e| format!("reading from {addr}: {e}"))?;
                if n == 0 {
                    return Err(format!("{addr} closed before answering"));
                }
                head.extend_from_slice(&buf[..n]);
                let mut headers = [httparse::EMPTY_HEADER; 64];
                let mut response = httparse::Response::new(&mut headers);
                match response.parse(&head) {
                    Ok(httparse::Status::Complete(_)) => {
                        let code = response.code.unwrap_or(0);
                        return if (200..400).contains(&code) {
                            Ok(())
                        } else {
                            Err(format!("GET http://{host}{path}: status {code}"))
                        };
                    }
                    Ok(httparse::Status::Partial) if head.len() < MAX_HEAD => continue,
                    Ok(httparse::Status::Partial) => {
                        return Err(format!("{addr}: no HTTP answer within {MAX_HEAD} bytes"))
                    }
                    Err(e) => return Err(format!("{addr}: not an HTTP answer ({e})")),
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;
    use tokio::net::TcpListener;

    fn http(addr: std::net::SocketAddr) -> HealthProbe {
        HealthProbe::Http {
            addr: addr.to_string(),
            host: addr.to_string(),
            path: "/health".into(),
        }
    }

    /// Answers one HTTP request with `status`.
    async fn answer(listener: &TcpListener, status: &str) -> String {
        let (mut s, _) = listener.accept().await.unwrap();
        let mut req = vec![0u8; 1024];
        let n = s.read(&mut req).await.unwrap();
        s.write_all(format!("HTTP/1.1 {status}\r\nContent-Length: 0\r\n\r\n").as_bytes())
            .await
            .unwrap();
        String::from_utf8_lossy(&req[..n]).into_owned()
    }

    #[tokio::test]
    async fn http_checks_pass_on_2xx_and_3xx_and_fail_on_the_rest() {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        for (status, ok) in [("200 OK", true), ("302 Found", true), ("503 Busy", false)] {
            let check = http(addr);
            let (got, req) = tokio::join!(probe("unused:1", &check), answer(&listener, status));
            assert_eq!(got.is_ok(), ok, "{status}: {got:?}");
            assert!(req.starts_with("GET /health HTTP/1.1\r\n"), "{req}");
        }
        drop(listener);
        let check = http(addr);
        let refused = probe("unused:1", &check).await.unwrap_err();
        assert!(refused.contains("connecting to"), "{refused}");
    }

    #[tokio::test(start_paused = true)]
    async fn a_service_turns_unhealthy_after_its_failures_and_healthy_after_one_pass() {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap().to_string();
        drop(listener);
        let state = watch::Sender::new(HealthMap::default());
        let mut rx = state.subscribe();
        let stop = CancellationToken::new();
        let check = HealthCheck {
            probe: HealthProbe::Tcp,
            interval: Duration::from_secs(5),
            timeout: Duration::from_secs(1),
            failures: 2,
        };
        let name = Name::new("web").unwrap();
        let task = tokio::spawn(watch_one(
            name.clone(),
            addr.clone(),
            check,
            state.clone(),
            stop.clone(),
        ));
        rx.changed().await.unwrap();
        let h = rx.borrow_and_update().get(&name).cloned().unwrap();
        assert!(!h.healthy && h.reason.contains("connecting to"), "{h:?}");
        // The port answers again: the next check says so.
        let _back = TcpListener::bind(&addr).await.unwrap();
        rx.changed().await.unwrap();
        assert!(rx.borrow().get(&name).unwrap().healthy);
        stop.cancel();
        task.await.unwrap();
    }
}
