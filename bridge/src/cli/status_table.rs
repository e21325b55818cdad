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

/// Under the pool table: why a `failing` or `rollout-failing` pool's workers cannot start
/// (a line each), then the blank line.
fn end_pool_table(out: &mut String, pools: &[Value]) {
    for p in pools.iter().filter(|p| p.get("start_error").is_some_and(|e| !e.is_null())) {
        let _ =
            writeln!(out, "pool {} ({}): worker failed to start: {}", s(p, "name"), s(p, "state"), s(p, "start_error"));
    }
    out.push('\n');
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
                queue_cell(p),
                format!("{}/{}/{}", n(p, "idle_workers"), n(p, "busy_workers"), n(p, "total_workers")),
                n(p, "max_children_reached").to_string(),
                n(p, "slow_requests").to_string(),
                p.get("responses").map_or(0, |r| n(r, "5xx")).to_string(),
                n(p, "rejected_requests").to_string(),
                n(p, "request_timeouts").to_string(),
                n(p, "worker_exits").to_string(),
                n(p, "worker_crashes").to_string(),
            ]
        })
        .collect();
    table(
        &mut out,
        &[
            "POOL",
            "STATE",
            "REQUESTS",
            "QUEUE/PEAK",
            "IDLE/BUSY/TOTAL",
            "MAX-REACHED",
            "SLOW",
            "5XX",
            "503",
            // request_timeouts: 504s, responses cut off, and a direct WSGI pool's kills (502s)
            "TIMEOUTS",
            "EXITS",
            "CRASHES",
        ],
        &rows,
    );
    end_pool_table(&mut out, pools);
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
    table(&mut out, &["POOL", "PID", "STATE", "REQUESTS", "RSS", "CPU", "CURRENT", "FOR"], &worker_rows(pools));
    out
}

/// A row per worker, and under it a row for each other request it serves.
fn worker_rows(pools: &[Value]) -> Vec<Vec<String>> {
    let mut rows = Vec::new();
    for p in pools {
        for w in p.get("workers").and_then(Value::as_array).map_or(&[][..], Vec::as_slice) {
            let mut row = vec![
                s(p, "name"),
                n(w, "pid").to_string(),
                s(w, "state"),
                n(w, "requests").to_string(),
                crate::status::html::human_bytes(n(w, "rss_bytes")),
                w.get("cpu_seconds").and_then(Value::as_f64).map_or("-".to_owned(), crate::status::html::human_secs),
            ];
            let worker_cells = row.len();
            let mut lines = current_requests(w).into_iter();
            row.extend(lines.next().unwrap_or_else(|| ["-".to_owned(), "-".to_owned()]));
            rows.push(row);
            for line in lines {
                let mut row = vec![String::new(); worker_cells];
                row.extend(line);
                rows.push(row);
            }
        }
    }
    rows
}

/// Rows of one worker's table at most, for the requests it serves (`--json` lists them all).
const CURRENT_SHOWN: usize = 10;

/// A worker's requests in flight as (request, running for) cells, the longest running first;
/// beyond [`CURRENT_SHOWN`], a last line says how many more there are.
fn current_requests(w: &Value) -> Vec<[String; 2]> {
    let mut current: Vec<&Value> =
        w.get("current").and_then(Value::as_array).map(|c| c.iter().collect()).unwrap_or_default();
    let secs = |c: &Value| c.get("duration_seconds").and_then(Value::as_f64).unwrap_or(0.0);
    current.sort_by(|a, b| secs(b).total_cmp(&secs(a)));
    let more = current.len().saturating_sub(CURRENT_SHOWN);
    let mut lines: Vec<[String; 2]> = current
        .iter()
        .take(if more > 0 { CURRENT_SHOWN - 1 } else { CURRENT_SHOWN })
        .map(|c| {
            let abandoned = c.get("abandoned").and_then(Value::as_bool) == Some(true);
            let marker = if abandoned { format!(" {}", crate::status::html::ABANDONED) } else { String::new() };
            [format!("{} {}{marker}", s(c, "method"), s(c, "uri")), crate::status::html::human_secs(secs(c))]
        })
        .collect();
    if more > 0 {
        lines.push([format!("… {} more", more + 1), String::new()]);
    }
    lines
}

/// A pool's QUEUE/PEAK: a direct pool's requests wait in its workers' socket, unseen by
/// the bridge.
fn queue_cell(p: &Value) -> String {
    if p.get("direct").and_then(Value::as_bool) == Some(true) {
        return "direct".to_owned();
    }
    format!("{}/{}", n(p, "queue_length"), n(p, "max_queue_length"))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn doc(current: usize) -> Value {
        let current: Vec<Value> = (0..current)
            .map(|i| serde_json::json!({"method": "GET", "uri": format!("/slow?n={i}"), "duration_seconds": i as f64}))
            .collect();
        serde_json::json!({
            "version": "x", "pid": 1, "listeners": [],
            "pools": [{"name": "app", "state": "running", "responses": {"5xx": 7}, "rejected_requests": 3,
                       "request_timeouts": 2, "worker_exits": 9, "worker_crashes": 1,
                       "workers": [{"pid": 4242, "state": "busy", "current": current}]}]
        })
    }

    #[test]
    fn every_request_of_a_worker_has_a_row_longest_first() {
        let out = render(&doc(3));
        let rows: Vec<&str> = out.lines().skip_while(|l| !l.contains("CURRENT")).skip(1).collect();
        assert_eq!(rows.len(), 3, "{out}");
        assert!(rows[0].starts_with("app") && rows[0].contains("4242") && rows[0].contains("GET /slow?n=2"), "{out}");
        assert!(rows[1].trim_start().starts_with("GET /slow?n=1") && rows[2].contains("GET /slow?n=0"), "{out}");
    }

    #[test]
    fn an_abandoned_request_is_marked() {
        let mut v = doc(2);
        v["pools"][0]["workers"][0]["current"][1]["abandoned"] = Value::Bool(true);
        v["pools"][0]["workers"][0]["current"][0]["abandoned"] = Value::Bool(false);
        let out = render(&v);
        let rows: Vec<&str> = out.lines().skip_while(|l| !l.contains("CURRENT")).skip(1).collect();
        assert!(rows[0].contains("GET /slow?n=1 (abandoned)  "), "{out}");
        assert!(rows[1].contains("GET /slow?n=0  ") && !rows[1].contains("abandoned"), "{out}");
    }

    #[test]
    fn a_busy_asgi_worker_shows_its_longest_requests_and_a_count() {
        let out = render(&doc(50));
        assert!(out.contains("GET /slow?n=49") && !out.contains("GET /slow?n=40 "), "{out}");
        assert!(out.contains("… 41 more"), "{out}");
    }

    #[test]
    fn the_pool_table_counts_failures() {
        let out = render(&doc(0));
        let header = out.lines().find(|l| l.starts_with("POOL  ")).unwrap_or_default();
        let cells: Vec<&str> = header.split_whitespace().collect();
        let row: Vec<&str> =
            out.lines().find(|l| l.starts_with("app  ")).unwrap_or_default().split_whitespace().collect();
        let at = |name: &str| cells.iter().position(|c| *c == name).and_then(|i| row.get(i).copied());
        assert_eq!(
            (at("5XX"), at("503"), at("TIMEOUTS"), at("EXITS"), at("CRASHES")),
            (Some("7"), Some("3"), Some("2"), Some("9"), Some("1")),
            "{out}"
        );
        assert_eq!(at("QUEUE/PEAK"), Some("0/0"), "{out}");
    }

    #[test]
    fn a_direct_pool_has_no_queue_of_the_bridge() {
        let mut v = doc(0);
        v["pools"][0]["direct"] = Value::Bool(true);
        let out = render(&v);
        let header: Vec<&str> =
            out.lines().find(|l| l.starts_with("POOL  ")).unwrap_or_default().split_whitespace().collect();
        let row: Vec<&str> =
            out.lines().find(|l| l.starts_with("app  ")).unwrap_or_default().split_whitespace().collect();
        let at = header.iter().position(|c| *c == "QUEUE/PEAK").and_then(|i| row.get(i).copied());
        assert_eq!(at, Some("direct"), "{out}");
    }
}
