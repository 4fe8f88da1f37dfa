//! Prometheus metrics (opt-in with `metrics_listen`): the series of the server and of the client,
//! kept with prometheus-client, and the HTTP endpoint that serves them ([`endpoint`]).
//!
//! Label values come from the configuration (identities) or from what an authenticated client
//! registered (service names). Those are bounded per series family by [`MAX_SERVICE_SERIES`]:
//! past it, new services are counted under `service="(other)"`, so a client that registers
//! ever new names cannot grow the server's memory through its metrics.

pub mod endpoint;

use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::Registry;

/// Distinct (identity, service) pairs a family keeps series for before it counts new ones
/// under `service="(other)"`.
pub const MAX_SERVICE_SERIES: usize = 1024;

/// The label value that stands for every service past [`MAX_SERVICE_SERIES`].
pub const OTHER_SERVICE: &str = "(other)";

type Labels<const N: usize> = [(&'static str, String); N];

/// Round-trip buckets (seconds): 1 ms to about 4 s, doubling, which spans loopback to an
/// intercontinental link with a queue.
fn rtt_histogram() -> Histogram {
    Histogram::new(prometheus_client::metrics::histogram::exponential_buckets(
        0.001, 2.0, 13,
    ))
}

/// The round trip of the control stream's pings, as a histogram; shared by both ends.
#[derive(Clone)]
pub struct Rtt(Histogram);

impl Rtt {
    pub fn observe(&self, rtt: Duration) {
        self.0.observe(rtt.as_secs_f64());
    }
}

/// How a visitor connection ended, as a label: a fixed set, whatever the audit line's words.
pub fn end_label(how: &str) -> &'static str {
    if how == "finished" {
        "finished"
    } else if how.starts_with("refused") {
        "refused"
    } else if how.starts_with("reset") {
        "reset"
    } else if how.contains("timed out") || how.contains("timeout") {
        "timeout"
    } else {
        "other"
    }
}

/// An error code as a label: snake case, from a fixed set.
pub fn code_label(code: ncx_proto::ErrorCode) -> &'static str {
    use ncx_proto::ErrorCode as E;
    match code {
        E::VersionMismatch => "version_mismatch",
        E::UnknownIdentity => "unknown_identity",
        E::BadToken => "bad_token",
        E::ProtocolViolation => "protocol_violation",
        E::LimitReached => "limit_reached",
        E::NotAllowed => "not_allowed",
        E::CertificateRequired => "certificate_required",
        E::CertificateRefused => "certificate_refused",
        E::ShuttingDown => "shutting_down",
        _ => "other",
    }
}

/// The server's series.
pub struct ServerMetrics {
    registry: Registry,
    sessions: Family<Labels<1>, Gauge>,
    visitors_active: Family<Labels<2>, Gauge>,
    visitors: Family<Labels<3>, Counter>,
    bytes: Family<Labels<3>, Counter>,
    auth_failures: Family<Labels<1>, Counter>,
    handshakes: Gauge,
    handshakes_evicted: Counter,
    opens_waiting: Gauge,
    rtt: Histogram,
    udp_dropped: Family<Labels<2>, Counter>,
    /// (identity, service) pairs with series so far, against [`MAX_SERVICE_SERIES`].
    service_series: std::sync::atomic::AtomicUsize,
}

impl Default for ServerMetrics {
    fn default() -> Self {
        let mut registry = Registry::with_prefix("ncx");
        let m = ServerMetrics {
            sessions: Family::default(),
            visitors_active: Family::default(),
            visitors: Family::default(),
            bytes: Family::default(),
            auth_failures: Family::default(),
            handshakes: Gauge::default(),
            handshakes_evicted: Counter::default(),
            opens_waiting: Gauge::default(),
            rtt: rtt_histogram(),
            udp_dropped: Family::default(),
            service_series: std::sync::atomic::AtomicUsize::new(0),
            registry: Registry::default(),
        };
        registry.register(
            "sessions",
            "Authenticated client sessions, by identity",
            m.sessions.clone(),
        );
        registry.register(
            "visitors_active",
            "Visitor connections being served, by identity and service",
            m.visitors_active.clone(),
        );
        registry.register(
            "visitors",
            "Visitor connections that ended, by identity, service and how they ended",
            m.visitors.clone(),
        );
        registry.register(
            "bytes",
            "Bytes moved for visitors, by identity, service and direction (in: from the visitor)",
            m.bytes.clone(),
        );
        registry.register(
            "auth_failures",
            "Failed authentications and refused clients, by reason",
            m.auth_failures.clone(),
        );
        registry.register(
            "handshakes_in_progress",
            "Connections between accept and authentication",
            m.handshakes.clone(),
        );
        registry.register(
            "handshakes_evicted",
            "Pending handshakes dropped to make room for new connections",
            m.handshakes_evicted.clone(),
        );
        registry.register(
            "opens_waiting",
            "Visitors waiting for a substream to their client to open",
            m.opens_waiting.clone(),
        );
        registry.register(
            "session_rtt_seconds",
            "Round trip of the control stream's pings, queueing behind data included",
            m.rtt.clone(),
        );
        registry.register(
            "udp_datagrams_dropped",
            "Datagrams of UDP visitors dropped because their flow's queue was full, by identity and service",
            m.udp_dropped.clone(),
        );
        ServerMetrics { registry, ..m }
    }
}

impl ServerMetrics {
    /// The labels of `service` of `identity`, or the catch-all once the families are full.
    fn service(&self, identity: &str, service: &str) -> (String, String) {
        let labels = [
            ("identity", identity.to_owned()),
            ("service", service.to_owned()),
        ];
        let known = self.visitors_active.get(&labels).is_some();
        if known || self.service_series.load(Ordering::Relaxed) < MAX_SERVICE_SERIES {
            if !known {
                self.service_series.fetch_add(1, Ordering::Relaxed);
            }
            (identity.to_owned(), service.to_owned())
        } else {
            (identity.to_owned(), OTHER_SERVICE.to_owned())
        }
    }

    /// Sets the sessions of `identity` (read from the admission's session slots at a scrape).
    pub fn set_sessions(&self, identity: &str, sessions: usize) {
        self.sessions
            .get_or_create(&[("identity", identity.to_owned())])
            .set(i64::try_from(sessions).unwrap_or(i64::MAX));
    }

    /// Sets the handshakes in progress (read from the handshake slots at a scrape).
    pub fn set_handshakes(&self, handshakes: usize) {
        self.handshakes
            .set(i64::try_from(handshakes).unwrap_or(i64::MAX));
    }

    /// A datagram of a UDP visitor of `service` was dropped (its flow's queue was full).
    pub fn udp_dropped(&self, identity: &str, service: &str) {
        let (identity, service) = self.service(identity, service);
        self.udp_dropped
            .get_or_create(&[("identity", identity), ("service", service)])
            .inc();
    }

    /// A visitor of `service` is being served; the guard counts it until it ends and meters its
    /// bytes.
    pub fn visitor(&self, identity: &str, service: &str) -> VisitorMetrics {
        let (identity, service) = self.service(identity, service);
        let active =
            GaugeGuard::new(self.visitors_active.get_or_create_owned(&[
                ("identity", identity.clone()),
                ("service", service.clone()),
            ]));
        let bytes = |direction: &str| {
            self.bytes.get_or_create_owned(&[
                ("identity", identity.clone()),
                ("service", service.clone()),
                ("direction", direction.to_owned()),
            ])
        };
        VisitorMetrics {
            meter: crate::splice::Meter {
                a_to_b: vec![bytes("in")],
                b_to_a: vec![bytes("out")],
            },
            ended: self.visitors.clone(),
            identity,
            service,
            _active: active,
        }
    }

    /// A client was refused before its session began, with `code`.
    pub fn auth_failure(&self, code: ncx_proto::ErrorCode) {
        self.auth_failures
            .get_or_create(&[("reason", code_label(code).to_owned())])
            .inc();
    }

    pub fn handshake_evicted(&self) {
        self.handshakes_evicted.inc();
    }

    /// A visitor waits for its substream to open; it counts until the guard is dropped.
    pub fn open_waiting(&self) -> GaugeGuard {
        GaugeGuard::new(self.opens_waiting.clone())
    }

    pub fn rtt(&self) -> Rtt {
        Rtt(self.rtt.clone())
    }

    /// The text exposition of every series.
    pub fn render(&self) -> String {
        render(&self.registry)
    }
}

/// One visitor's series: counted as active while alive, its bytes metered as they move.
pub struct VisitorMetrics {
    /// For the splice: bytes from the visitor (side `a`) and to it.
    pub meter: crate::splice::Meter,
    ended: Family<Labels<3>, Counter>,
    identity: String,
    service: String,
    _active: GaugeGuard,
}

impl VisitorMetrics {
    /// The visitor ended as the audit line says (`how`).
    pub fn ended(self, how: &str) {
        self.ended
            .get_or_create(&[
                ("identity", self.identity),
                ("service", self.service),
                ("end", end_label(how).to_owned()),
            ])
            .inc();
    }
}

/// The client's series.
pub struct ClientMetrics {
    registry: Registry,
    connected: Gauge,
    reconnects: Counter,
    rtt: Histogram,
    ready: AtomicBool,
}

impl Default for ClientMetrics {
    fn default() -> Self {
        let mut registry = Registry::with_prefix("ncx_client");
        let connected = Gauge::default();
        let reconnects = Counter::default();
        let rtt = rtt_histogram();
        registry.register(
            "connected",
            "Sessions up, one per server (1 while the session to a single server is up)",
            connected.clone(),
        );
        registry.register(
            "reconnects",
            "Sessions lost or attempts failed, each followed by a new attempt",
            reconnects.clone(),
        );
        registry.register(
            "session_rtt_seconds",
            "Round trip of the control stream's pings, queueing behind data included",
            rtt.clone(),
        );
        ClientMetrics {
            registry,
            connected,
            reconnects,
            rtt,
            ready: AtomicBool::new(false),
        }
    }
}

impl ClientMetrics {
    /// A session is up (`true`) or lost (`false`); `/ready` answers 200 only while one is up.
    ///
    /// With several servers each session counts: every `true` is followed by one `false`.
    pub fn connected(&self, up: bool) {
        let now = if up {
            self.connected.inc() + 1
        } else {
            self.connected.dec() - 1
        };
        self.ready.store(now > 0, Ordering::Relaxed);
    }

    /// The client will try again after a loss or a failed attempt.
    pub fn reconnecting(&self) {
        self.reconnects.inc();
    }

    pub fn rtt(&self) -> Rtt {
        Rtt(self.rtt.clone())
    }

    pub fn is_ready(&self) -> bool {
        self.ready.load(Ordering::Relaxed)
    }

    pub fn render(&self) -> String {
        render(&self.registry)
    }
}

fn render(registry: &Registry) -> String {
    let mut out = String::new();
    prometheus_client::encoding::text::encode(&mut out, registry)
        .expect("writing into a String cannot fail");
    out
}

/// A gauge raised while the guard lives.
pub struct GaugeGuard(Gauge);

impl GaugeGuard {
    fn new(gauge: Gauge) -> Self {
        gauge.inc();
        GaugeGuard(gauge)
    }
}

impl Drop for GaugeGuard {
    fn drop(&mut self) {
        self.0.dec();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_end_of_a_visitor_is_one_of_a_few_labels() {
        for (how, label) in [
            ("finished", "finished"),
            ("reset: the visitor reset the connection", "reset"),
            ("refused by the client: nope\n", "refused"),
            ("the local service did not answer: timed out", "timeout"),
            ("something new", "other"),
        ] {
            assert_eq!(end_label(how), label, "{how}");
        }
    }

    #[test]
    fn services_past_the_cap_share_one_series() {
        let m = ServerMetrics::default();
        let held: Vec<_> = (0..MAX_SERVICE_SERIES)
            .map(|i| m.visitor("a", &format!("s{i}")))
            .collect();
        // A known service keeps its own series; a new one goes to "(other)".
        m.visitor("a", "s0").ended("finished");
        m.visitor("a", "one-too-many").ended("finished");
        m.visitor("b", "another").ended("finished");
        drop(held);
        let text = m.render();
        assert!(
            text.contains("ncx_visitors_total{identity=\"a\",service=\"s0\",end=\"finished\"} 1")
        );
        assert!(text
            .contains("ncx_visitors_total{identity=\"a\",service=\"(other)\",end=\"finished\"} 1"));
        assert!(text
            .contains("ncx_visitors_total{identity=\"b\",service=\"(other)\",end=\"finished\"} 1"));
        assert!(!text.contains("one-too-many"));
        assert_eq!(
            text.lines()
                .filter(|l| l.starts_with("ncx_visitors_active{"))
                .count(),
            MAX_SERVICE_SERIES + 2,
            "one series per service and one catch-all per identity"
        );
    }
}
