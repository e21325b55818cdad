//! `fcgibridge status`: the JSON status document as terminal tables.
use serde_json::Value;
use std::fmt::Write;

fn s(v: &Value, k: &str) -> String {
    match v.get(k) {
        Some(Value::String(t)) => t.clone(),
        Some(Value::Null) | None => "-".to_owned(),
        Some(other) => other.to_string(),
    }
}

fn n(v: &Value, k: &str) -> u64 {
    v.get(k).and_then(Value::as_u64).unwrap_or(0)
}

/// Columns padded to their widest cell.
fn table(out: &mut String, header: &[&str], rows: &[Vec<String>]) {
    let mut w: Vec<usize> = header.iter().map(|h| h.len()).collect();
    for r in rows {
        for (i, c) in r.iter().enumerate() {
            w[i] = w[i].max(c.chars().count());
        }
    }
    let line = |out: &mut String, cells: &[String]| {
        let mut l = String::new();
        for (i, c) in cells.iter().enumerate() {
            let _ = write!(l, "{c:<width$}  ", width = w[i]);
        }
        out.push_str(l.trim_end());
        out.push('\n');
    };
    line(out, &header.iter().map(|h| h.to_string()).collect::<Vec<_>>());
    for r in rows {
        line(out, r);
    }
}

/// The whole report.
pub fn render(v: &Value) -> String {
    let mut out = String::new();
    let uptime = v.get("uptime_seconds").and_then(Value::as_f64).unwrap_or(0.0);
    let _ = writeln!(
        out,
        "fcgibridge {} pid {} up {}",
        s(v, "version"),
        n(v, "pid"),
        crate::status::html::human_secs(uptime)
    );
    if let Some(d) = v.get("draining").filter(|d| !d.is_null()) {
        let left = d.get("remaining_seconds").and_then(Value::as_f64).unwrap_or(0.0);
        let since = d.get("since").and_then(Value::as_f64).unwrap_or(0.0);
        let until = d.get("until").and_then(Value::as_f64).unwrap_or(0.0);
        let _ = writeln!(
            out,
            "DRAINING since {} ago: ping paths answer 503; the listeners close in {}",
            crate::status::html::human_secs((until - since - left).max(0.0)),
            crate::status::html::human_secs(left)
        );
    }
    out.push('\n');
    let empty = Vec::new();
    let listeners = v.get("listeners").and_then(Value::as_array).unwrap_or(&empty);
    let rows: Vec<Vec<String>> = listeners
        .iter()
        .map(|l| {
            vec![
                s(l, "name"),
                s(l, "protocol"),
                s(l, "address"),
                n(l, "accepted_requests").to_string(),
                n(l, "open_connections").to_string(),
            ]
        })
        .collect();
    table(&mut out, &["LISTENER", "PROTOCOL", "ADDRESS", "REQUESTS", "CONNS"], &rows);
    out.push('\n');
    let pools = v.get("pools").and_then(Value::as_array).unwrap_or(&empty);
    let rows: Vec<Vec<String>> = pools
        .iter()
        .map(|p| {
            vec![
                s(p, "name"),
                s(p, "state"),
                n(p, "accepted_requests").to_string(),
                format!("{}/{}", n(p, "queue_length"), n(p, "max_queue_length")),
                format!("{}/{}/{}", n(p, "idle_workers"), n(p, "busy_workers"), n(p, "total_workers")),
                n(p, "max_children_reached").to_string(),
                n(p, "slow_requests").to_string(),
                n(p, "rejected_requests").to_string(),
                n(p, "worker_exits").to_string(),
            ]
        })
        .collect();
    table(
        &mut out,
        &["POOL", "STATE", "REQUESTS", "QUEUE/PEAK", "IDLE/BUSY/TOTAL", "MAX-REACHED", "SLOW", "503", "EXITS"],
        &rows,
    );
    out.push('\n');
    let secs =
        |v: &Value, k: &str| v.get(k).and_then(Value::as_f64).map_or("-".to_owned(), crate::status::html::human_secs);
    let rows: Vec<Vec<String>> = pools
        .iter()
        .filter_map(|p| p.get("instance").map(|i| (p, i)))
        .map(|(p, i)| {
            vec![
                s(i, "template"),
                s(i, "key"),
                secs(i, "age_seconds"),
                secs(i, "idle_seconds"),
                n(p, "total_workers").to_string(),
            ]
        })
        .collect();
    if !rows.is_empty() {
        table(&mut out, &["TEMPLATE", "KEY", "AGE", "IDLE", "WORKERS"], &rows);
        out.push('\n');
    }
    let mut rows = Vec::new();
    for p in pools {
        for w in p.get("workers").and_then(Value::as_array).unwrap_or(&empty) {
            let cur = w.get("current").and_then(Value::as_array).and_then(|c| c.first());
            rows.push(vec![
                s(p, "name"),
                n(w, "pid").to_string(),
                s(w, "state"),
                n(w, "requests").to_string(),
                crate::status::html::human_bytes(n(w, "rss_bytes")),
                w.get("cpu_seconds").and_then(Value::as_f64).map_or("-".to_owned(), crate::status::html::human_secs),
                cur.map_or("-".to_owned(), |c| format!("{} {}", s(c, "method"), s(c, "uri"))),
                cur.and_then(|c| c.get("duration_seconds").and_then(Value::as_f64))
                    .map_or("-".to_owned(), crate::status::html::human_secs),
            ]);
        }
    }
    table(&mut out, &["POOL", "PID", "STATE", "REQUESTS", "RSS", "CPU", "CURRENT", "FOR"], &rows);
    out
}
