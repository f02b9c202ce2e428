//! Prometheus metrics: requests by route and status, a latency histogram, instances provisioned.
//! Every label value comes from a fixed set (route templates, known methods, status codes), so
//! no client can grow the metrics by what it sends.

use axum::extract::{MatchedPath, Request, State};
use axum::middleware::Next;
use axum::response::Response;
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::Registry;
use std::sync::atomic::AtomicU64;
use std::sync::Arc;
use std::time::Instant;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RequestLabels {
    route: String,
    method: &'static str,
    status: u16,
}

/// The method as a label: the methods this API answers, and `other` for anything else.
fn method_label(method: &axum::http::Method) -> &'static str {
    use axum::http::Method;
    match *method {
        Method::GET => "GET",
        Method::PUT => "PUT",
        Method::POST => "POST",
        Method::DELETE => "DELETE",
        Method::HEAD => "HEAD",
        Method::OPTIONS => "OPTIONS",
        Method::PATCH => "PATCH",
        _ => "other",
    }
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RouteLabels {
    route: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct StateLabels {
    state: &'static str,
}

pub struct Metrics {
    registry: Registry,
    requests: Family<RequestLabels, Counter>,
    latency: Family<RouteLabels, Histogram>,
    instances: Gauge<u64, AtomicU64>,
    by_state: Family<StateLabels, Gauge<u64, AtomicU64>>,
    restarts: Gauge<u64, AtomicU64>,
    evicted_for_memory: Gauge<u64, AtomicU64>,
    refused_for_memory: Gauge<u64, AtomicU64>,
    /// Each wake of a hibernated (or never started) instance, first call to ready.
    pub wakes: Histogram,
}

impl Metrics {
    /// `audit_failures` is the audit writer's own counter, shown here.
    pub fn new(audit_failures: Counter) -> Self {
        let mut registry = Registry::with_prefix("selfcloud");
        let requests = Family::<RequestLabels, Counter>::default();
        let latency = Family::<RouteLabels, Histogram>::new_with_constructor(|| {
            Histogram::new([0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5])
        });
        let instances = Gauge::<u64, AtomicU64>::default();
        registry.register("http_requests", "HTTP requests answered, by route, method and status", requests.clone());
        registry.register("http_request_duration_seconds", "Time to answer a request, by route", latency.clone());
        registry.register("instances_provisioned", "Instances provisioned on this node", instances.clone());
        registry.register("audit_write_failures", "Audit batches that could not be written", audit_failures);
        let by_state = Family::<StateLabels, Gauge<u64, AtomicU64>>::default();
        let restarts = Gauge::<u64, AtomicU64>::default();
        let wakes = Histogram::new([0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5]);
        registry.register("instances", "Instances by state: running, hibernated, crashed", by_state.clone());
        registry.register("instance_restarts", "Instance restarts after a crash, since start", restarts.clone());
        registry.register("instance_wake_seconds", "Time to wake an instance, first call to ready", wakes.clone());
        let (evicted_for_memory, refused_for_memory) = (Gauge::default(), Gauge::default());
        registry.register(
            "instance_memory_evictions",
            "Instances hibernated to make room in the instance memory budget, since start",
            evicted_for_memory.clone(),
        );
        registry.register(
            "instance_memory_refusals",
            "Wakes refused (503) because every awake instance was in use and the memory budget full, since start",
            refused_for_memory.clone(),
        );
        Metrics {
            registry,
            requests,
            latency,
            instances,
            by_state,
            restarts,
            evicted_for_memory,
            refused_for_memory,
            wakes,
        }
    }

    pub fn render(&self, instances_provisioned: u64, runtime: &selfcloud_control::RuntimeSummary) -> String {
        self.instances.set(instances_provisioned);
        for (state, n) in &runtime.by_state {
            self.by_state.get_or_create(&StateLabels { state: state.as_str() }).set(*n);
        }
        self.restarts.set(runtime.restarts);
        self.evicted_for_memory.set(runtime.evicted_for_memory);
        self.refused_for_memory.set(runtime.refused_for_memory);
        let mut out = String::new();
        prometheus_client::encoding::text::encode(&mut out, &self.registry).expect("writing to a String cannot fail");
        out
    }
}

/// Middleware: counts and times every request under its route template (never the raw path,
/// which would put record keys into labels).
pub async fn track(State(m): State<Arc<Metrics>>, req: Request, next: Next) -> Response {
    let route = req.extensions().get::<MatchedPath>().map_or("unmatched", |m| m.as_str()).to_owned();
    let method = method_label(req.method());
    let start = Instant::now();
    let resp = next.run(req).await;
    m.latency.get_or_create(&RouteLabels { route: route.clone() }).observe(start.elapsed().as_secs_f64());
    m.requests.get_or_create(&RequestLabels { route, method, status: resp.status().as_u16() }).inc();
    resp
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn odd_methods_share_one_label() {
        let odd: Vec<_> =
            ["FOO", "BAR", "X-1"].iter().map(|m| axum::http::Method::from_bytes(m.as_bytes()).unwrap()).collect();
        assert!(odd.iter().all(|m| method_label(m) == "other"));
        assert_eq!(method_label(&axum::http::Method::PUT), "PUT");
        let metrics = Metrics::new(Counter::default());
        for m in &odd {
            let labels = RequestLabels { route: "unmatched".into(), method: method_label(m), status: 404 };
            metrics.requests.get_or_create(&labels).inc();
        }
        assert_eq!(metrics.render(0, &Default::default()).matches("method=\"").count(), 1);
    }
}
