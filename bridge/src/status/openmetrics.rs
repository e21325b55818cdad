//! The status in the OpenMetrics text format (which Prometheus scrapes): counters end in
//! `_total`, every family has `# TYPE` and `# HELP`, and the exposition ends with `# EOF`.
use super::model::Status;
use std::fmt::Write;

/// The Content-Type of this format.
pub const CONTENT_TYPE: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

/// Label values escape backslash, double quote and newline.
fn esc(v: &str) -> String {
    v.replace('\\', "\\\\").replace('"', "\\\"").replace('\n', "\\n")
}

struct Out(String);

impl Out {
    fn family(&mut self, name: &str, kind: &str, help: &str) {
        let _ = writeln!(self.0, "# TYPE {name} {kind}\n# HELP {name} {help}");
    }
    fn sample(&mut self, name: &str, labels: &[(&str, &str)], value: impl std::fmt::Display) {
        self.0.push_str(name);
        if !labels.is_empty() {
            self.0.push('{');
            for (i, (k, v)) in labels.iter().enumerate() {
                if i > 0 {
                    self.0.push(',');
                }
                let _ = write!(self.0, "{k}=\"{}\"", esc(v));
            }
            self.0.push('}');
        }
        let _ = writeln!(self.0, " {value}");
    }
}

/// The whole exposition.
pub fn render(s: &Status) -> String {
    let mut o = Out(String::with_capacity(4096));
    o.family("fcgibridge_start_time_seconds", "gauge", "Unix time the daemon started.");
    o.sample("fcgibridge_start_time_seconds", &[], s.start_time);

    o.family("fcgibridge_listener_requests", "counter", "Requests decoded on the listener.");
    for l in &s.listeners {
        o.sample("fcgibridge_listener_requests_total", &[("listener", &l.name)], l.accepted_requests);
    }
    o.family("fcgibridge_listener_connections", "gauge", "Web-server connections open now.");
    for l in &s.listeners {
        o.sample("fcgibridge_listener_connections", &[("listener", &l.name)], l.open_connections);
    }

    type PoolField = fn(&super::model::PoolStatus) -> u64;
    let counters: [(&str, &str, PoolField); 5] = [
        ("fcgibridge_pool_requests", "Requests routed to the pool.", |p| p.accepted_requests),
        ("fcgibridge_pool_max_children_reached", "Requests that found every worker thread busy and queued.", |p| {
            p.max_children_reached
        }),
        ("fcgibridge_pool_slow_requests", "Requests that ran longer than slowlog-timeout.", |p| p.slow_requests),
        ("fcgibridge_pool_rejected_requests", "Requests answered 503 (queue full or queue-timeout).", |p| {
            p.rejected_requests
        }),
        ("fcgibridge_pool_worker_exits", "Worker processes that exited.", |p| p.worker_exits),
    ];
    for (name, help, f) in counters {
        o.family(name, "counter", help);
        for p in &s.pools {
            o.sample(&format!("{name}_total"), &[("pool", &p.name)], f(p));
        }
    }
    let gauges: [(&str, &str, PoolField); 4] = [
        ("fcgibridge_pool_queue_length", "Requests waiting for a worker now.", |p| p.queue_length as u64),
        ("fcgibridge_pool_max_queue_length", "Most requests ever waiting at once.", |p| p.max_queue_length as u64),
        ("fcgibridge_pool_active_requests", "Requests being served now.", |p| p.active_requests as u64),
        ("fcgibridge_pool_idle_slots", "Free worker threads now.", |p| p.idle_slots as u64),
    ];
    for (name, help, f) in gauges {
        o.family(name, "gauge", help);
        for p in &s.pools {
            o.sample(name, &[("pool", &p.name)], f(p));
        }
    }
    o.family("fcgibridge_pool_workers", "gauge", "Worker processes by state.");
    for p in &s.pools {
        o.sample("fcgibridge_pool_workers", &[("pool", &p.name), ("state", "idle")], p.idle_workers);
        o.sample("fcgibridge_pool_workers", &[("pool", &p.name), ("state", "busy")], p.busy_workers);
    }

    o.family("fcgibridge_worker_requests", "counter", "Requests the worker process finished.");
    for p in &s.pools {
        for w in &p.workers {
            o.sample("fcgibridge_worker_requests_total", &[("pool", &p.name), ("pid", &w.pid.to_string())], w.requests);
        }
    }
    o.family("fcgibridge_worker_rss_bytes", "gauge", "Resident memory of the worker process.");
    for p in &s.pools {
        for w in &p.workers {
            o.sample("fcgibridge_worker_rss_bytes", &[("pool", &p.name), ("pid", &w.pid.to_string())], w.rss_bytes);
        }
    }
    o.family("fcgibridge_worker_cpu_seconds", "counter", "CPU time (user + system) the worker process has used.");
    for p in &s.pools {
        for w in &p.workers {
            o.sample("fcgibridge_worker_cpu_seconds_total", &[("pool", &p.name), ("pid", &w.pid.to_string())], w.cpu_seconds);
        }
    }
    o.0.push_str("# EOF\n");
    o.0
}
