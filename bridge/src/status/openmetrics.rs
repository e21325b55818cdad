//! The status in the OpenMetrics text format (which Prometheus scrapes): counters end in
//! `_total`, every family has `# TYPE` and `# HELP`, histograms have cumulative `_bucket`
//! series up to `le="+Inf"` then `_count` and `_sum`, and the exposition ends with `# EOF`.
use super::latency::{Classes, Histogram, LE};
use super::model::Status;
use std::fmt::Write;

/// The Content-Type of this format.
pub(crate) const CONTENT_TYPE: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

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
    /// One labelled histogram: its buckets, count and sum.
    fn histogram(&mut self, name: &str, label: (&str, &str), h: &Histogram) {
        let bucket = format!("{name}_bucket");
        for (le, n) in LE.iter().zip(h.cumulative()) {
            self.sample(&bucket, &[label, ("le", le)], n);
        }
        self.sample(&format!("{name}_count"), &[label], h.count());
        self.sample(&format!("{name}_sum"), &[label], h.sum_seconds());
    }
    /// Responses by status class.
    fn classes(&mut self, name: &str, label: (&str, &str), c: &Classes) {
        for (class, n) in Classes::NAMES.iter().zip(c.0) {
            self.sample(name, &[label, ("class", class)], n);
        }
    }
}

const DURATION_HELP: &str =
    "Time from the request's arrival at the bridge (a direct pool's: the app's start in its worker) to the end of its response.";

/// The whole exposition.
pub(crate) fn render(s: &Status) -> String {
    let mut o = Out(String::with_capacity(4096));
    daemon_and_listeners(&mut o, s);
    pools(&mut o, s);
    instances_and_workers(&mut o, s);
    o.0.push_str("# EOF\n");
    o.0
}

/// The daemon's own families and the listeners'.
fn daemon_and_listeners(o: &mut Out, s: &Status) {
    o.family("fcgibridge_start_time_seconds", "gauge", "Unix time the daemon started.");
    o.sample("fcgibridge_start_time_seconds", &[], s.start_time);
    o.family(
        "fcgibridge_access_log_dropped_lines",
        "counter",
        "Access-log lines dropped because the access log could not keep up.",
    );
    o.sample("fcgibridge_access_log_dropped_lines_total", &[], s.access_log_dropped_lines);
    o.family("fcgibridge_draining", "gauge", "1 during a stop's drain period (ping paths fail), else 0.");
    o.sample("fcgibridge_draining", &[], u8::from(s.draining.is_some()));
    if let Some(d) = &s.draining {
        o.family(
            "fcgibridge_drain_end_time_seconds",
            "gauge",
            "Unix time the drain period ends and the listeners close.",
        );
        o.sample("fcgibridge_drain_end_time_seconds", &[], format!("{:.3}", d.until));
    }

    o.family("fcgibridge_listener_requests", "counter", "Requests decoded on the listener.");
    for l in &s.listeners {
        o.sample("fcgibridge_listener_requests_total", &[("listener", &l.name)], l.accepted_requests);
    }
    o.family("fcgibridge_listener_connections", "gauge", "Web-server connections open now.");
    for l in &s.listeners {
        o.sample("fcgibridge_listener_connections", &[("listener", &l.name)], l.open_connections);
    }
    o.family("fcgibridge_listener_responses", "counter", "Finished requests by status class.");
    for l in &s.listeners {
        o.classes("fcgibridge_listener_responses_total", ("listener", &l.name), &l.responses);
    }
    o.family("fcgibridge_listener_request_duration_seconds", "histogram", DURATION_HELP);
    o.0.push_str("# UNIT fcgibridge_listener_request_duration_seconds seconds\n");
    for l in &s.listeners {
        o.histogram("fcgibridge_listener_request_duration_seconds", ("listener", &l.name), &l.latency);
    }
}

/// The pools' counters, histograms and gauges.
fn pools(o: &mut Out, s: &Status) {
    type PoolField = fn(&super::model::PoolStatus) -> u64;
    let counters: [(&str, &str, PoolField); 11] = [
        ("fcgibridge_pool_requests", "Requests routed to the pool.", |p| p.accepted_requests),
        ("fcgibridge_pool_max_children_reached", "Requests that found every worker thread busy and queued.", |p| {
            p.max_children_reached
        }),
        ("fcgibridge_pool_slow_requests", "Requests that ran longer than slowlog-timeout.", |p| p.slow_requests),
        ("fcgibridge_pool_rejected_requests", "Requests answered 503 (queue full, queue-timeout or no worker).", |p| {
            p.rejected_requests
        }),
        (
            "fcgibridge_pool_request_timeouts",
            "Requests ended by request-timeout (a 504, a response cut off, or a direct worker killed).",
            |p| p.request_timeouts,
        ),
        ("fcgibridge_pool_worker_exits", "Worker processes that exited (any reason).", |p| p.worker_exits),
        ("fcgibridge_pool_worker_crashes", "Worker processes that exited unasked or failed to start.", |p| {
            p.worker_crashes
        }),
        ("fcgibridge_pool_spawns", "Worker processes started.", |p| p.spawns),
        ("fcgibridge_pool_piped_requests", "Requests piped behind a worker connection's current request.", |p| {
            p.piped_requests
        }),
        ("fcgibridge_pool_withdrawn_requests", "Piped requests taken back before the worker started them.", |p| {
            p.withdrawn_requests
        }),
        ("fcgibridge_pool_moved_connections", "Kept connections a direct pool's processes moved between them.", |p| {
            p.moved_connections.unwrap_or(0)
        }),
    ];
    for (name, help, f) in counters {
        o.family(name, "counter", help);
        for p in &s.pools {
            o.sample(&format!("{name}_total"), &[("pool", &p.name)], f(p));
        }
    }
    o.family(
        "fcgibridge_pool_responses",
        "counter",
        "Finished requests by status class (the bridge's own 502/503/504 included).",
    );
    for p in &s.pools {
        o.classes("fcgibridge_pool_responses_total", ("pool", &p.name), &p.responses);
    }
    o.family("fcgibridge_pool_request_duration_seconds", "histogram", DURATION_HELP);
    o.0.push_str("# UNIT fcgibridge_pool_request_duration_seconds seconds\n");
    for p in &s.pools {
        o.histogram("fcgibridge_pool_request_duration_seconds", ("pool", &p.name), &p.latency);
    }
    let gauges: [(&str, &str, PoolField); 5] = [
        ("fcgibridge_pool_queue_length", "Requests waiting for a worker now.", |p| p.queue_length as u64),
        ("fcgibridge_pool_queue_size", "queue-size: beyond it requests get 503 at once.", |p| p.queue_size as u64),
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
        o.sample("fcgibridge_pool_workers", &[("pool", &p.name), ("state", "starting")], p.starting_workers);
        o.sample("fcgibridge_pool_workers", &[("pool", &p.name), ("state", "draining")], p.draining_workers);
    }
}

/// Template instances (labelled with their template and key) and worker processes.
fn instances_and_workers(o: &mut Out, s: &Status) {
    o.family(
        "fcgibridge_instance_idle_seconds",
        "gauge",
        "Seconds the template instance has had no request running or waiting (0 while one does).",
    );
    for p in &s.pools {
        if let Some(i) = &p.instance {
            let labels = [("pool", p.name.as_str()), ("template", i.template.as_str()), ("key", i.key.as_str())];
            o.sample("fcgibridge_instance_idle_seconds", &labels, i.idle_seconds);
        }
    }
    o.family("fcgibridge_instance_age_seconds", "gauge", "Seconds since the template instance was made.");
    for p in &s.pools {
        if let Some(i) = &p.instance {
            let labels = [("pool", p.name.as_str()), ("template", i.template.as_str()), ("key", i.key.as_str())];
            o.sample("fcgibridge_instance_age_seconds", &labels, i.age_seconds);
        }
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
            o.sample(
                "fcgibridge_worker_cpu_seconds_total",
                &[("pool", &p.name), ("pid", &w.pid.to_string())],
                w.cpu_seconds,
            );
        }
    }
}
