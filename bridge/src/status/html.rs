//! The status as an HTML page that reloads itself every few seconds (no script needed).
use super::model::Status;
use std::fmt::Write;

/// Seconds between reloads of the page.
pub const REFRESH_SECS: u32 = 2;

fn esc(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '&' => out.push_str("&amp;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
    out
}

/// Bytes as KiB/MiB/GiB with one decimal.
pub fn human_bytes(n: u64) -> String {
    let units = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut v = n as f64;
    let mut i = 0;
    while v >= 1024.0 && i + 1 < units.len() {
        v /= 1024.0;
        i += 1;
    }
    if i == 0 {
        format!("{n} B")
    } else {
        format!("{v:.1} {}", units[i])
    }
}

/// A duration in seconds as "1.234s", "2m05s", "3h02m".
pub fn human_secs(s: f64) -> String {
    if s < 60.0 {
        format!("{s:.3}s")
    } else if s < 3600.0 {
        format!("{}m{:02}s", (s / 60.0) as u64, (s % 60.0) as u64)
    } else {
        format!("{}h{:02}m", (s / 3600.0) as u64, ((s % 3600.0) / 60.0) as u64)
    }
}

const STYLE: &str = "body{font:14px system-ui,sans-serif;margin:1.5em;color:#222;background:#fff}\
h1{font-size:20px;margin:0 0 .3em}h2{font-size:17px;margin:1.4em 0 .4em}\
table{border-collapse:collapse;margin:.3em 0 1em}th,td{border:1px solid #ccc;padding:3px 8px;text-align:left}\
th{background:#e8eef6}td.n{text-align:right;font-variant-numeric:tabular-nums}\
.busy{background:#fff3c4}.meta{color:#555}.warn{color:#a40000;font-weight:600}";

/// The whole page.
pub fn render(s: &Status) -> String {
    let mut o = String::with_capacity(8192);
    let _ = write!(
        o,
        "<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">\
<meta http-equiv=\"refresh\" content=\"{REFRESH_SECS}\"><title>fcgibridge status</title><style>{STYLE}</style></head><body>\n\
<h1>fcgibridge {}</h1><p class=\"meta\">pid {} · up {} · refreshes every {REFRESH_SECS}s</p>\n",
        esc(&s.version),
        s.pid,
        human_secs(s.uptime_seconds)
    );
    o.push_str("<h2>Listeners</h2><table id=\"listeners\"><tr><th>listener</th><th>protocol</th><th>address</th><th>requests</th><th>open connections</th></tr>\n");
    for l in &s.listeners {
        let _ = writeln!(
            o,
            "<tr><td>{}</td><td>{}</td><td>{}</td><td class=\"n\">{}</td><td class=\"n\">{}</td></tr>",
            esc(&l.name),
            esc(&l.protocol),
            esc(&l.address),
            l.accepted_requests,
            l.open_connections
        );
    }
    o.push_str("</table>\n<h2>Pools</h2><table id=\"pools\"><tr><th>pool</th><th>requests</th><th>queue now / max / size</th>\
<th>state</th><th>idle / busy / total workers</th><th>idle threads</th><th>max children reached</th><th>slow</th><th>503</th><th>504</th>\
<th>spawns</th><th>worker exits</th></tr>\n");
    for p in &s.pools {
        let _ = writeln!(
            o,
            "<tr class=\"pool\" data-pool=\"{0}\"><td>{0}</td><td class=\"n\">{1}</td><td class=\"n{2}\">{3} / {4} / {5}</td>\
<td class=\"{14}\">{15}</td><td class=\"n\">{6} / {7} / {8}</td><td class=\"n\">{9}</td><td class=\"n\">{10}</td><td class=\"n\">{11}</td>\
<td class=\"n\">{12}</td><td class=\"n\">{16}</td><td class=\"n\">{17}</td><td class=\"n\">{13}</td></tr>",
            esc(&p.name),
            p.accepted_requests,
            if p.queue_length > 0 { " warn" } else { "" },
            p.queue_length,
            p.max_queue_length,
            p.queue_size,
            p.idle_workers,
            p.busy_workers,
            p.total_workers,
            p.idle_slots,
            p.max_children_reached,
            p.slow_requests,
            p.rejected_requests,
            p.worker_exits,
            if p.state == "failing" { "warn" } else { "" },
            esc(p.state),
            p.request_timeouts,
            p.spawns
        );
    }
    o.push_str("</table>\n");
    for p in &s.pools {
        let _ = writeln!(
            o,
            "<h2>Workers of {0}</h2><table class=\"workers\" data-pool=\"{0}\"><tr><th>pid</th><th>state</th><th>requests</th>\
<th>RSS</th><th>CPU</th><th>started</th><th>current request</th><th>running for</th><th>retiring</th><th>last restart</th></tr>",
            esc(&p.name)
        );
        for w in &p.workers {
            let (req, dur) = match w.current.first() {
                Some(c) => (format!("{} {}", esc(&c.method), esc(&c.uri)), human_secs(c.duration_seconds)),
                None => ("-".to_owned(), "-".to_owned()),
            };
            let more = if w.current.len() > 1 { format!(" (+{} more)", w.current.len() - 1) } else { String::new() };
            let _ = writeln!(
                o,
                "<tr class=\"{}\"><td class=\"n\">{}</td><td>{}</td><td class=\"n\">{}</td><td class=\"n\">{}</td><td class=\"n\">{}</td><td>{} ago</td>\
<td>{req}{more}</td><td class=\"n\">{dur}</td><td>{}</td><td>{}</td></tr>",
                w.state,
                w.pid,
                w.state,
                w.requests,
                human_bytes(w.rss_bytes),
                human_secs(w.cpu_seconds),
                human_secs(super::track::unix_now().saturating_sub(w.spawn_time) as f64),
                esc(w.retiring_reason.as_deref().unwrap_or("-")),
                esc(w.last_restart_reason.as_deref().unwrap_or("-"))
            );
        }
        o.push_str("</table>\n");
    }
    o.push_str("</body></html>\n");
    o
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn escapes_markup() {
        assert_eq!(esc("<a href='x'>&</a>"), "&lt;a href=&#39;x&#39;&gt;&amp;&lt;/a&gt;");
        assert_eq!(human_bytes(3 * 1024 * 1024), "3.0 MiB");
        assert_eq!(human_secs(125.0), "2m05s");
    }
}
