//! Prometheus metrics. One `Metrics` per application (tests run several in one process), built
//! at start; every family is registered here so `/metrics` lists them all from the first
//! scrape. Names start with `waghl_`; labels never carry a location id (unbounded cardinality).

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct HttpLabels {
    pub method: String,
    /// The matched route template (`/api/v1/locations/{id}`), never the raw path.
    pub route: String,
    pub status: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RouteLabels {
    pub route: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ReasonLabels {
    pub reason: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct GhlLabels {
    pub operation: String,
    /// ok | unauthorized | rate_limited | unavailable | rejected
    pub outcome: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct OutcomeLabels {
    pub outcome: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct StateLabels {
    pub state: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct InboundLabels {
    pub kind: String,
    /// pending | skipped
    pub outcome: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RelayLabels {
    /// inbound | outbound
    pub direction: String,
    /// relayed | skipped | dead | sent | failed
    pub outcome: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct TaskLabels {
    /// session | inbound_relay | outbound_send | outbound_report
    pub task: String,
}

type HistogramFamily<L> = Family<L, Histogram, fn() -> Histogram>;

fn latency_histogram() -> Histogram {
    // 1 ms … ~33 s
    Histogram::new(exponential_buckets(0.001, 2.0, 16))
}

pub struct Metrics {
    registry: Registry,
    pub http_requests: Family<HttpLabels, Counter>,
    pub http_latency: HistogramFamily<RouteLabels>,
    pub ghl_requests: Family<GhlLabels, Counter>,
    pub ghl_token_refreshes: Family<OutcomeLabels, Counter>,
    pub webhook_rejections: Family<ReasonLabels, Counter>,
    pub sessions: Family<StateLabels, Gauge>,
    /// Sessions whose lease this instance holds and runs.
    pub sessions_owned: Gauge,
    /// Sessions this instance took over from another instance (stopped, dead or rebalancing).
    pub lease_takeovers: Counter,
    pub session_transitions: Family<StateLabels, Counter>,
    pub restarts: Counter,
    pub health_failures: Counter,
    pub pairing_attempts: Counter,
    pub pairings: Counter,
    pub inbound_received: Family<InboundLabels, Counter>,
    pub relayed: Family<RelayLabels, Counter>,
    pub inbound_queue: Gauge,
    pub outbound_queue: Gauge,
    /// Inbound: WhatsApp event stored → GHL accepted.
    pub relay_latency: Histogram,
    /// Outbound: webhook received → WhatsApp accepted the send.
    pub send_latency: Histogram,
    pub task_panics: Family<TaskLabels, Counter>,
    /// Uncertain inbound posts looked up in GHL: `found` (settled without posting) or
    /// `not_found` (posted).
    pub inbound_reconciled: Family<OutcomeLabels, Counter>,
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    pub fn new() -> Self {
        let mut registry = Registry::default();
        let http_requests = Family::<HttpLabels, Counter>::default();
        registry.register(
            "waghl_http_requests",
            "HTTP requests answered, by method, route and status",
            http_requests.clone(),
        );
        let http_latency = HistogramFamily::<RouteLabels>::new_with_constructor(latency_histogram);
        registry.register(
            "waghl_http_request_duration_seconds",
            "Time to answer an HTTP request, by route",
            http_latency.clone(),
        );
        let ghl_requests = Family::<GhlLabels, Counter>::default();
        registry.register(
            "waghl_ghl_requests",
            "Calls to GHL's API (each attempt), by operation and outcome",
            ghl_requests.clone(),
        );
        let ghl_token_refreshes = Family::<OutcomeLabels, Counter>::default();
        registry.register(
            "waghl_ghl_token_refreshes",
            "GHL token renewals, by outcome (ok, unavailable, refused, failed)",
            ghl_token_refreshes.clone(),
        );
        let webhook_rejections = Family::<ReasonLabels, Counter>::default();
        registry.register(
            "waghl_webhook_rejections",
            "Webhooks refused with 401, by reason",
            webhook_rejections.clone(),
        );
        let sessions = Family::<StateLabels, Gauge>::default();
        registry.register("waghl_sessions", "WhatsApp sessions by state", sessions.clone());
        let sessions_owned = Gauge::default();
        registry.register(
            "waghl_sessions_owned",
            "WhatsApp sessions this instance runs (holds the lease of)",
            sessions_owned.clone(),
        );
        let lease_takeovers = Counter::default();
        registry.register(
            "waghl_lease_takeovers",
            "Sessions this instance took over from another instance that stopped, died or handed them over",
            lease_takeovers.clone(),
        );
        let session_transitions = Family::<StateLabels, Counter>::default();
        registry.register(
            "waghl_session_transitions",
            "Session state transitions, by the state entered",
            session_transitions.clone(),
        );
        let restarts = Counter::default();
        registry.register(
            "waghl_session_restarts",
            "WhatsApp clients restarted after they ended or failed a health check",
            restarts.clone(),
        );
        let health_failures = Counter::default();
        registry.register(
            "waghl_session_health_check_failures",
            "Health checks that found a client dead while it claimed to run",
            health_failures.clone(),
        );
        let pairing_attempts = Counter::default();
        registry.register("waghl_pairing_attempts", "Pairings started", pairing_attempts.clone());
        let pairings = Counter::default();
        registry.register("waghl_pairings", "Phones linked successfully", pairings.clone());
        let inbound_received = Family::<InboundLabels, Counter>::default();
        registry.register(
            "waghl_inbound_received",
            "WhatsApp messages stored in the inbox, by kind and whether they will be relayed",
            inbound_received.clone(),
        );
        let relayed = Family::<RelayLabels, Counter>::default();
        registry.register(
            "waghl_messages",
            "Messages finished by the relay, by direction and outcome",
            relayed.clone(),
        );
        let inbound_queue = Gauge::default();
        registry.register(
            "waghl_inbound_queue_depth",
            "Inbound messages waiting for GHL",
            inbound_queue.clone(),
        );
        let outbound_queue = Gauge::default();
        registry.register(
            "waghl_outbound_queue_depth",
            "Outbound messages waiting for WhatsApp",
            outbound_queue.clone(),
        );
        let relay_latency = latency_histogram();
        registry.register(
            "waghl_inbound_relay_seconds",
            "Time from a WhatsApp message being stored to GHL accepting it",
            relay_latency.clone(),
        );
        let send_latency = latency_histogram();
        registry.register(
            "waghl_outbound_send_seconds",
            "Time from GHL's webhook to WhatsApp accepting the send",
            send_latency.clone(),
        );
        let task_panics = Family::<TaskLabels, Counter>::default();
        registry.register(
            "waghl_task_panics",
            "Panics caught in a session runner or a relay task (then restarted or retried), by task",
            task_panics.clone(),
        );
        let inbound_reconciled = Family::<OutcomeLabels, Counter>::default();
        registry.register(
            "waghl_inbound_reconciled",
            "Inbound messages whose earlier post had no known outcome, looked up in GHL before posting: \
             found (not posted again) or not_found (posted)",
            inbound_reconciled.clone(),
        );
        Self {
            task_panics,
            inbound_reconciled,
            relayed,
            inbound_queue,
            outbound_queue,
            relay_latency,
            send_latency,
            registry,
            http_requests,
            http_latency,
            ghl_requests,
            ghl_token_refreshes,
            webhook_rejections,
            sessions,
            sessions_owned,
            lease_takeovers,
            session_transitions,
            restarts,
            health_failures,
            pairing_attempts,
            pairings,
            inbound_received,
        }
    }

    pub fn count_token_refresh(&self, outcome: &str) {
        self.ghl_token_refreshes
            .get_or_create(&OutcomeLabels {
                outcome: outcome.into(),
            })
            .inc();
    }

    pub fn count_transition(&self, state: &str) {
        self.session_transitions
            .get_or_create(&StateLabels { state: state.into() })
            .inc();
    }

    pub fn set_sessions(&self, state: &str, count: i64) {
        self.sessions
            .get_or_create(&StateLabels { state: state.into() })
            .set(count);
    }

    pub fn count_inbound(&self, kind: &str, start: crate::store::InboxStart) {
        let outcome = match start {
            crate::store::InboxStart::Pending => "pending",
            crate::store::InboxStart::Skipped(_) => "skipped",
        };
        self.inbound_received
            .get_or_create(&InboundLabels {
                kind: kind.into(),
                outcome: outcome.into(),
            })
            .inc();
    }

    pub fn count_panic(&self, task: &str) {
        self.task_panics.get_or_create(&TaskLabels { task: task.into() }).inc();
    }

    pub fn count_reconciled(&self, outcome: &str) {
        self.inbound_reconciled
            .get_or_create(&OutcomeLabels {
                outcome: outcome.into(),
            })
            .inc();
    }

    pub fn count_relay(&self, direction: &str, outcome: &str) {
        self.count_relays(direction, outcome, 1);
    }

    pub fn count_relays(&self, direction: &str, outcome: &str, count: u64) {
        self.relayed
            .get_or_create(&RelayLabels {
                direction: direction.into(),
                outcome: outcome.into(),
            })
            .inc_by(count);
    }

    /// The Prometheus text exposition of every metric.
    pub fn render(&self) -> String {
        let mut out = String::new();
        prometheus_client::encoding::text::encode(&mut out, &self.registry).expect("writing to a String cannot fail");
        out
    }
}
