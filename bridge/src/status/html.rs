//! The status as an HTML page that reloads itself every few seconds (no script needed):
//! per pool a card with the numbers that matter now, the counters that moved recently
//! (highlighted) and charts of the last 15 minutes (`chart.rs`, from `history.rs`), then
//! the tables of listeners, pools and workers. Nothing is loaded from the network.
use super::model::{History, PoolHistory, PoolStatus, Status};
use std::fmt::Write;

/// Seconds between reloads of the page.
pub(crate) const REFRESH_SECS: u32 = 2;

/// Text for HTML content and attribute values.
pub(crate) fn esc(s: &str) -> String {
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
pub(crate) fn human_bytes(n: u64) -> String {
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

/// A whole number of seconds (the age of a worker, known to the second) as "26s", "2m05s".
fn human_age(secs: u64) -> String {
    if secs < 60 {
        format!("{secs}s")
    } else {
        human_secs(secs as f64)
    }
}

/// A duration in seconds as "1.234s", "2m05s", "3h02m".
pub(crate) fn human_secs(s: f64) -> String {
    if s < 60.0 {
        format!("{s:.3}s")
    } else if s < 3600.0 {
        format!("{}m{:02}s", (s / 60.0) as u64, (s % 60.0) as u64)
    } else {
        format!("{}h{:02}m", (s / 3600.0) as u64, ((s % 3600.0) / 60.0) as u64)
    }
}

const STYLE: &str = "*{box-sizing:border-box}\
body{font:14px/1.45 system-ui,-apple-system,'Segoe UI',sans-serif;margin:0;color:#1d2433;background:#f3f5f9}\
header{background:#1f2a44;color:#fff;padding:10px 16px}header h1{font-size:18px;margin:0}header p{margin:2px 0 0;color:#c5cee0;font-size:13px}\
main{padding:12px;max-width:1500px;margin:0 auto}h2{font-size:16px;margin:18px 0 8px}\
.card{background:#fff;border-radius:10px;box-shadow:0 1px 3px rgba(20,30,60,.1);padding:12px 14px;margin:0 0 14px}\
.card h2{margin:0 0 8px;display:flex;gap:8px;align-items:baseline;flex-wrap:wrap}\
.badge{font-size:12px;font-weight:500;padding:1px 8px;border-radius:10px;background:#e3f1e6;color:#1e6b34}.badge.warn{background:#fde2e1;color:#a40000}\
.tiles{display:grid;grid-template-columns:repeat(auto-fill,minmax(128px,1fr));gap:8px;margin:0 0 12px}\
.tile{border:1px solid #e1e6ef;border-radius:8px;padding:5px 9px;min-width:0}.tile .k{font-size:12px;color:#5b6478}\
.tile .v{font-size:19px;font-weight:600;font-variant-numeric:tabular-nums;white-space:nowrap;overflow:hidden;text-overflow:ellipsis}.tile .d{font-size:12px;color:#5b6478}\
.tile.moved{background:#fde8e7;border-color:#e0605a}.tile.moved .v,.tile.moved .d{color:#a11a14;font-weight:600}\
.tile.recent{background:#fff5dc;border-color:#ebbd4e}.tile.recent .d{color:#7a5600}\
.charts{display:grid;grid-template-columns:repeat(auto-fill,minmax(300px,1fr));gap:10px 16px}\
@media (min-width:1000px){.charts{grid-template-columns:repeat(3,1fr)}}\
figure{margin:0;min-width:0;display:flex;flex-direction:column}figure svg{margin-top:auto}figcaption{font-size:13px;color:#3a4356;display:flex;flex-wrap:wrap;gap:2px 10px}figcaption b{color:#1d2433}\
.sw{display:inline-block;width:10px;height:10px;border-radius:2px;margin-right:3px;vertical-align:-1px}\
svg.chart{width:100%;height:auto;display:block}svg .grid{stroke:#e6e9f0;stroke-width:1}\
svg text{font:11px system-ui,sans-serif;fill:#6b7385}svg .yl,svg .xl.end{text-anchor:end}svg .xl{text-anchor:middle}svg .xl.start{text-anchor:start}svg .wait{text-anchor:middle;fill:#8a93a6}\
svg .line{fill:none;stroke-width:1.8;stroke-linejoin:round;stroke-linecap:round}svg .area{opacity:.18;stroke:none}\
.scroll{overflow-x:auto;-webkit-overflow-scrolling:touch}\
table{border-collapse:collapse;margin:.3em 0 1em;background:#fff}th,td{border:1px solid #d8dde7;padding:3px 8px;text-align:left;white-space:nowrap}\
th{background:#e8eef6;font-weight:600}td.n{text-align:right;font-variant-numeric:tabular-nums}\
td.moved{background:#fde8e7;color:#a11a14;font-weight:600}td.recent{background:#fff5dc}\
.busy{background:#fff3c4}.meta{color:#555}.warn{color:#a40000;font-weight:600}\
@media (max-width:600px){main{padding:8px}.card{padding:10px}.tiles{grid-template-columns:repeat(auto-fill,minmax(100px,1fr));gap:6px}\
.tile{padding:4px 7px}.tile .v{font-size:17px}.tile .d,.tile .k{font-size:11px}}";

/// Series colours, chosen to stay apart for the common forms of colour blindness.
const BLUE: &str = "#2f6fde";
const GREEN: &str = "#1b9e5a";
const AMBER: &str = "#e69f00";
const RED: &str = "#d1342f";
const PURPLE: &str = "#7b52c7";
const ORANGE: &str = "#e07b00";
const SKY: &str = "#7fb3ea";
const SLATE: &str = "#7a8599";
const BLACK: &str = "#222831";

/// "moved" when the counter moved in the last minute, "recent" when within the charts'
/// window: the class that makes a cell or tile stand out.
fn moved_class(last_minute: u64, window: u64) -> &'static str {
    if last_minute > 0 {
        "moved"
    } else if window > 0 {
        "recent"
    } else {
        ""
    }
}

fn moved_note(last_minute: u64, window: u64, window_min: u64) -> String {
    if last_minute > 0 {
        format!("+{last_minute} last min")
    } else if window > 0 {
        format!("+{window} in {window_min} min")
    } else {
        format!("none in {window_min} min")
    }
}

/// The worker exits tile and cell: planned exits (recycling, a reload, scale-down) make
/// them "recent" at most, so a deploy does not look like a crash; a crash in the last
/// minute makes them stand out. `exits` and `crashes`: (last minute, window).
fn exits_class(exits: (u64, u64), crashes: (u64, u64)) -> &'static str {
    if crashes.0 > 0 {
        "moved"
    } else if exits.1 > 0 {
        "recent"
    } else {
        ""
    }
}

/// The exits tile's note: how many went, and how many of those were planned.
fn exits_note(exits: (u64, u64), crashes: (u64, u64), window_min: u64) -> String {
    let note = moved_note(exits.0, exits.1, window_min);
    // The span the note speaks of.
    let (went, crashed) = if exits.0 > 0 { (exits.0, crashes.0) } else { (exits.1, crashes.1) };
    match went {
        0 => note,
        _ if crashed == 0 => format!("{note}, planned"),
        _ if crashed >= went => format!("{note}, crashed"),
        _ => format!("{note}, {} planned", went - crashed),
    }
}

/// What each worker process of a pool serves at once: "4 threads", "100 in flight" (ASGI).
fn per_process(threads: Option<u32>, concurrency: Option<u32>) -> String {
    match (threads, concurrency) {
        (Some(t), None) => format!("{t} threads"),
        (None, Some(c)) => format!("{c} in flight"),
        (Some(t), Some(c)) => format!("{t} threads or {c} in flight"),
        (None, None) => "?".to_owned(),
    }
}

fn seconds(v: Option<f64>) -> String {
    v.map_or_else(|| "–".to_owned(), |v| super::chart::format(super::chart::Unit::Seconds, v))
}

/// The page head and the daemon line.
fn head(o: &mut String, s: &Status) {
    let _ = write!(
        o,
        "<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">\
<meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">\
<meta http-equiv=\"refresh\" content=\"{REFRESH_SECS}\"><title>fcgibridge status</title><style>{STYLE}</style></head><body>\n\
<header><h1>fcgibridge {}</h1><p>pid {} · up {} · {} reloads · refreshes every {REFRESH_SECS}s</p></header>\n<main>\n",
        esc(&s.version),
        s.pid,
        human_secs(s.uptime_seconds),
        s.reloads
    );
    if let Some(d) = &s.draining {
        let _ = writeln!(
            o,
            "<p class=\"draining warn\" data-since=\"{:.3}\" data-until=\"{:.3}\">Draining since {} ago: ping paths answer 503, \
requests are still served; the listeners close in {}.</p>",
            d.since,
            d.until,
            human_secs((d.until - d.since - d.remaining_seconds).max(0.0)),
            human_secs(d.remaining_seconds)
        );
    }
}

/// A figure: caption (label, legend, latest values) and the chart.
fn figure(o: &mut String, c: &super::chart::Chart<'_>) {
    o.push_str("<figure><figcaption><b>");
    o.push_str(&esc(c.label));
    o.push_str("</b>");
    for s in &c.series {
        let last = s.values.last().copied().flatten();
        let v = last.map_or_else(|| "–".to_owned(), |v| super::chart::format(c.unit, v));
        let _ = write!(o, "<span><i class=\"sw\" style=\"background:{}\"></i>{} {v}</span>", s.color, esc(s.name));
    }
    o.push_str("</figcaption>");
    o.push_str(&super::chart::svg(c));
    o.push_str("</figure>\n");
}

/// The x axis of a pool's charts: the charts' window once the history is that long, and
/// from its first sample (at least a minute) before, so a young daemon's charts are not a
/// sliver at the right edge.
fn shown_window(h: &PoolHistory, now: f64, interval: f64, window: f64) -> f64 {
    h.time.first().map_or(window, |first| (now - first + interval).clamp(60.0, window))
}

/// The six charts of one pool (five for a `direct` pool, which the bridge queues nothing for).
fn charts(o: &mut String, h: &PoolHistory, direct: bool, now: f64, interval: f64, window: f64) {
    use super::chart::{Chart, Series, Style, Unit};
    let some = |v: &[f64]| v.iter().map(|&x| Some(x)).collect::<Vec<_>>();
    let count = |v: &[usize]| v.iter().map(|&x| Some(x as f64)).collect::<Vec<_>>();
    let events = |v: &[u64]| v.iter().map(|&x| Some(x as f64)).collect::<Vec<_>>();
    let total: Vec<Option<f64>> =
        h.busy_workers.iter().zip(&h.idle_workers).map(|(b, i)| Some((b + i) as f64)).collect();
    let window = shown_window(h, now, interval, window);
    let base = |class, label, unit, series| Chart { class, label, unit, times: &h.time, interval, now, window, series };
    let line = |name, color, values| Series { name, color, values, style: Style::Line };
    let area = |name, color, values| Series { name, color, values, style: Style::Area };
    let bars = |name, color, values| Series { name, color, values, style: Style::Bars };
    o.push_str("<div class=\"charts\">\n");
    figure(o, &base("rps", "Requests/s", Unit::Rate, vec![area("served", BLUE, some(&h.requests_per_second))]));
    let latency = vec![
        line("p99", RED, h.p99_seconds.clone()),
        line("p95", AMBER, h.p95_seconds.clone()),
        line("p50", GREEN, h.p50_seconds.clone()),
    ];
    figure(o, &base("latency", "Latency", Unit::Seconds, latency));
    if !direct {
        figure(o, &base("queue", "Queue", Unit::Count, vec![area("waiting", PURPLE, count(&h.queue_length))]));
    }
    let workers = vec![area("total", SKY, total), area("busy", ORANGE, count(&h.busy_workers))];
    figure(o, &base("workers", "Workers", Unit::Count, workers));
    figure(o, &base("errors", "5xx/s", Unit::Rate, vec![area("5xx", RED, some(&h.server_errors_per_second))]));
    let counted = vec![
        bars("503", AMBER, events(&h.rejected_requests)),
        bars("timeouts", RED, events(&h.request_timeouts)),
        bars("exits", SLATE, events(&h.worker_exits)),
        bars("crashes", BLACK, events(&h.worker_crashes)),
    ];
    let events_label = format!("Events per {} s", interval.round());
    figure(o, &base("events", &events_label, Unit::Count, counted));
    o.push_str("</div>\n");
}

/// One tile: a label, a big value, a note; `class` makes it stand out.
fn tile(o: &mut String, name: &str, key: &str, value: &str, note: &str, class: &str) {
    let _ = write!(
        o,
        "<div class=\"tile {class}\" data-counter=\"{name}\"><div class=\"k\">{key}</div><div class=\"v\">{value}</div><div class=\"d\">{note}</div></div>"
    );
}

/// The bridge's queue of a pool; a `direct` pool's requests wait where the bridge does not
/// see them (the listening socket's backlog, the web server's kept connections), and its
/// processes even out what waits on those by moving connections.
fn queue_tile(o: &mut String, p: &PoolStatus) {
    if p.direct {
        let note = format!("direct: in the workers' socket · {} connections moved", p.moved_connections.unwrap_or(0));
        tile(o, "queue", "queue", "–", &note, "");
        return;
    }
    let class = if p.queue_length > 0 { "recent" } else { "" };
    let note = format!("size {} · max {}", p.queue_size, p.max_queue_length);
    tile(o, "queue", "queue", &p.queue_length.to_string(), &note, class);
}

/// A pool's card: its state, the numbers that matter now, the counters that moved, charts.
fn pool_card(o: &mut String, p: &PoolStatus, h: Option<&PoolHistory>, now: f64, interval: f64, window: f64) {
    let warn = if matches!(p.state, "failing" | "rollout-failing") { " warn" } else { "" };
    let _ = write!(o, "<section class=\"card pool-card\" data-pool=\"{0}\"><h2>{0} <span class=\"badge{warn}\">{1}</span></h2>\n<div class=\"tiles\">", esc(&p.name), esc(p.state));
    let rps = h.and_then(|h| h.requests_per_second.last().copied());
    let lm = &p.latency_seconds.last_minute;
    tile(
        o,
        "rate",
        "requests/s",
        &rps.map_or_else(|| "–".to_owned(), |v| super::chart::format(super::chart::Unit::Rate, v)),
        &format!("{} in all", p.accepted_requests),
        "",
    );
    tile(o, "p95", "p95 last min", &seconds(lm.p95), &format!("p50 {} · p99 {}", seconds(lm.p50), seconds(lm.p99)), "");
    queue_tile(o, p);
    tile(
        o,
        "workers",
        "busy / idle",
        &format!("{} / {}", p.busy_workers, p.idle_workers),
        &format!("{} processes × {}", p.total_workers, per_process(p.threads, p.concurrency)),
        "",
    );
    let shown = h.map_or(window, |h| shown_window(h, now, interval, window));
    let window_min = (shown / 60.0).round().max(1.0) as u64;
    let moved = h.map(|h| h.moved).unwrap_or_default();
    let lmv = &p.last_minute;
    let counters = [
        ("server_errors", "5xx", p.responses.server_errors(), lmv.server_errors, moved.server_errors),
        ("rejected_requests", "503 rejected", p.rejected_requests, lmv.rejected_requests, moved.rejected_requests),
        ("request_timeouts", "request timeouts", p.request_timeouts, lmv.request_timeouts, moved.request_timeouts),
        ("worker_exits", "worker exits", p.worker_exits, lmv.worker_exits, moved.worker_exits),
        ("worker_crashes", "crashes", p.worker_crashes, lmv.worker_crashes, moved.worker_crashes),
    ];
    for (name, key, total, last, win) in counters {
        let win = win.max(last);
        if name == "worker_exits" {
            let crashes = (lmv.worker_crashes, moved.worker_crashes.max(lmv.worker_crashes));
            let note = exits_note((last, win), crashes, window_min);
            tile(o, name, key, &total.to_string(), &note, exits_class((last, win), crashes));
            continue;
        }
        tile(o, name, key, &total.to_string(), &moved_note(last, win, window_min), moved_class(last, win));
    }
    o.push_str("</div>\n");
    match h {
        Some(h) => charts(o, h, p.direct, now, interval, window),
        None => charts(o, &PoolHistory::default(), p.direct, now, interval, window),
    }
    o.push_str("</section>\n");
}

/// The whole page: a card with charts per pool, then the tables.
pub(crate) fn render(s: &Status, history: &History) -> String {
    let mut o = String::with_capacity(16384 + 24576 * s.pools.len());
    head(&mut o, s);
    let now = crate::supervise::stats::unix_now();
    for p in &s.pools {
        let h = history.pools.iter().find(|h| h.name == p.name);
        pool_card(&mut o, p, h, now, history.interval_seconds, history.window_seconds);
    }
    listener_table(&mut o, s);
    pool_table(&mut o, s, history);
    instance_table(&mut o, s);
    worker_tables(&mut o, s);
    o.push_str("</main></body></html>\n");
    o
}

fn listener_table(o: &mut String, s: &Status) {
    o.push_str("<h2>Listeners</h2><div class=\"scroll\"><table id=\"listeners\"><tr><th>listener</th><th>protocol</th><th>address</th><th>requests</th>\
<th>open connections</th><th>p50 / p95 / p99 last min</th><th>5xx</th></tr>\n");
    for l in &s.listeners {
        let lm = &l.latency_seconds.last_minute;
        let _ = writeln!(
            o,
            "<tr data-listener=\"{}\"><td>{}</td><td>{}</td><td>{}</td><td class=\"n\">{}</td><td class=\"n\">{}</td><td class=\"n\">{} / {} / {}</td><td class=\"n\">{}</td></tr>",
            esc(&l.name),
            esc(&l.name),
            esc(&l.protocol),
            esc(&l.address),
            l.accepted_requests,
            l.open_connections,
            seconds(lm.p50),
            seconds(lm.p95),
            seconds(lm.p99),
            l.responses.server_errors()
        );
    }
    o.push_str("</table></div>\n");
}

/// The pools table's "queue now / max / size" cell.
fn queue_cell(p: &PoolStatus) -> String {
    if p.direct {
        return "direct".to_owned();
    }
    format!("{} / {} / {}", p.queue_length, p.max_queue_length, p.queue_size)
}

fn pool_table(o: &mut String, s: &Status, history: &History) {
    o.push_str("<h2>Pools</h2><div class=\"scroll\"><table id=\"pools\"><tr><th>pool</th><th>requests</th><th>queue now / max / size</th>\
<th>state</th><th>idle / busy / total workers</th><th>idle threads</th><th>max children reached</th><th>slow</th><th>5xx</th><th>503</th><th>timeouts</th>\
<th>spawns</th><th>worker exits</th><th>crashes</th></tr>\n");
    for p in &s.pools {
        let moved = history.pools.iter().find(|h| h.name == p.name).map(|h| h.moved).unwrap_or_default();
        let lm = &p.last_minute;
        let cell = |total: u64, last: u64, win: u64| {
            format!("<td class=\"n {}\">{total}</td>", moved_class(last, win.max(last)))
        };
        let crashes = (lm.worker_crashes, moved.worker_crashes.max(lm.worker_crashes));
        let exits = (lm.worker_exits, moved.worker_exits.max(lm.worker_exits));
        let exits = format!("<td class=\"n {}\">{}</td>", exits_class(exits, crashes), p.worker_exits);
        let _ = writeln!(
            o,
            "<tr class=\"pool\" data-pool=\"{0}\"><td>{0}</td><td class=\"n\">{1}</td><td class=\"n{2}\">{3}</td>\
<td class=\"{4}\">{5}</td><td class=\"n\">{6} / {7} / {8}</td><td class=\"n\">{9}</td><td class=\"n\">{10}</td><td class=\"n\">{11}</td>\
{12}{13}{14}<td class=\"n\">{15}</td>{16}{17}</tr>",
            esc(&p.name),
            p.accepted_requests,
            if p.queue_length > 0 { " warn" } else { "" },
            queue_cell(p),
            if matches!(p.state, "failing" | "rollout-failing") { "warn" } else { "" },
            esc(p.state),
            p.idle_workers,
            p.busy_workers,
            p.total_workers,
            p.idle_slots,
            p.max_children_reached,
            p.slow_requests,
            cell(p.responses.server_errors(), lm.server_errors, moved.server_errors),
            cell(p.rejected_requests, lm.rejected_requests, moved.rejected_requests),
            cell(p.request_timeouts, lm.request_timeouts, moved.request_timeouts),
            p.spawns,
            exits,
            cell(p.worker_crashes, lm.worker_crashes, moved.worker_crashes),
        );
    }
    o.push_str("</table></div>\n");
}

/// The instances of pool templates (docs/dynamic-pools.md), when there are any.
fn instance_table(o: &mut String, s: &Status) {
    let live: Vec<_> = s.pools.iter().filter_map(|p| p.instance.as_ref().map(|i| (p, i))).collect();
    if live.is_empty() {
        return;
    }
    o.push_str(
        "<h2>Template instances</h2><div class=\"scroll\"><table id=\"instances\"><tr><th>template</th>\
<th>key</th><th>pool</th><th>age</th><th>idle</th><th>workers</th></tr>\n",
    );
    for (p, i) in live {
        let _ = writeln!(
            o,
            "<tr><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td></tr>",
            esc(&i.template),
            esc(&i.key),
            esc(&p.name),
            human_secs(i.age_seconds),
            human_secs(i.idle_seconds),
            p.total_workers
        );
    }
    o.push_str("</table></div>\n");
}

fn worker_tables(o: &mut String, s: &Status) {
    for p in &s.pools {
        let _ = writeln!(
            o,
            "<h2>Workers of {0}</h2><div class=\"scroll\"><table class=\"workers\" data-pool=\"{0}\"><tr><th>pid</th><th>state</th><th>requests</th>\
<th>RSS</th><th>CPU</th><th>started</th><th>current request</th><th>running for</th><th>retiring</th><th>last restart</th></tr>",
            esc(&p.name)
        );
        for w in &p.workers {
            let (req, dur) = current_cells(&w.current);
            let _ = writeln!(
                o,
                "<tr class=\"{}\"><td class=\"n\">{}</td><td>{}</td><td class=\"n\">{}</td><td class=\"n\">{}</td><td class=\"n\">{}</td><td>{} ago</td>\
<td>{req}</td><td class=\"n\">{dur}</td><td>{}</td><td>{}</td></tr>",
                w.state,
                w.pid,
                w.state,
                w.requests,
                human_bytes(w.rss_bytes),
                human_secs(w.cpu_seconds),
                human_age((crate::supervise::stats::unix_now() as u64).saturating_sub(w.spawn_time)),
                esc(w.retiring_reason.as_deref().unwrap_or("-")),
                esc(w.last_restart_reason.as_deref().unwrap_or("-"))
            );
        }
        o.push_str("</table></div>\n");
    }
}

/// Requests a worker's row lists at most (the JSON has them all).
const CURRENT_SHOWN: usize = 10;

/// Beside a request in flight whose client went away and that its worker did not end
/// within abort-grace (`abandoned` in the JSON): the page and `fcgibridge status`/`top`
/// write it the same way.
pub(crate) const ABANDONED: &str = "(abandoned)";

/// What an abandoned request's marker says when pointed at.
const ABANDONED_TITLE: &str =
    "the web server aborted it and the worker did not end it within abort-grace: the worker is being replaced";

/// A worker's requests in flight, the longest running first, one per line: the "current
/// request" and "running for" cells.
fn current_cells(current: &[super::model::CurrentRequest]) -> (String, String) {
    if current.is_empty() {
        return ("-".to_owned(), "-".to_owned());
    }
    let mut longest: Vec<_> = current.iter().collect();
    longest.sort_by(|a, b| b.duration_seconds.total_cmp(&a.duration_seconds));
    let more = longest.len().saturating_sub(CURRENT_SHOWN);
    let shown = if more > 0 { CURRENT_SHOWN - 1 } else { CURRENT_SHOWN };
    let (mut req, mut dur) = (Vec::new(), Vec::new());
    for c in longest.iter().take(shown) {
        let marker = if c.abandoned {
            format!(" <span class=\"warn abandoned\" title=\"{ABANDONED_TITLE}\">{ABANDONED}</span>")
        } else {
            String::new()
        };
        req.push(format!("{} {}{marker}", esc(&c.method), esc(&c.uri)));
        dur.push(human_secs(c.duration_seconds));
    }
    if more > 0 {
        req.push(format!("… {} more", more + 1));
    }
    (req.join("<br>"), dur.join("<br>"))
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

    #[test]
    fn planned_worker_exits_do_not_look_like_crashes() {
        // A deploy: 8 workers replaced in the last minute, no crash.
        assert_eq!(exits_class((8, 8), (0, 0)), "recent");
        assert_eq!(exits_note((8, 8), (0, 0), 15), "+8 last min, planned");
        // One of three crashed.
        assert_eq!(exits_class((3, 3), (1, 1)), "moved");
        assert_eq!(exits_note((3, 3), (1, 1), 15), "+3 last min, 2 planned");
        assert_eq!(exits_note((0, 2), (0, 2), 15), "+2 in 15 min, crashed");
        assert_eq!((exits_class((0, 0), (0, 0)), exits_note((0, 0), (0, 0), 15).as_str()), ("", "none in 15 min"));
    }

    #[test]
    fn an_asgi_pool_counts_requests_in_flight_not_threads() {
        assert_eq!(per_process(Some(4), None), "4 threads");
        assert_eq!(per_process(None, Some(50)), "50 in flight");
        assert_eq!(per_process(Some(4), Some(100)), "4 threads or 100 in flight");
    }

    #[test]
    fn every_request_of_a_worker_is_listed_longest_first() {
        use super::super::model::CurrentRequest;
        let req = |uri: &str, secs| CurrentRequest {
            request_id: 1,
            method: "GET".to_owned(),
            uri: uri.to_owned(),
            duration_seconds: secs,
            abandoned: false,
        };
        let (r, d) = current_cells(&[req("/a", 1.0), req("/b<", 3.0), req("/c", 2.0)]);
        assert_eq!(r, "GET /b&lt;<br>GET /c<br>GET /a");
        assert_eq!(d, "3.000s<br>2.000s<br>1.000s");
        let many: Vec<_> = (0..12).map(|i| req("/x", f64::from(i))).collect();
        assert!(current_cells(&many).0.ends_with("<br>… 3 more"));
    }

    #[test]
    fn an_abandoned_request_is_marked() {
        use super::super::model::CurrentRequest;
        let req = |uri: &str, abandoned| CurrentRequest {
            request_id: 1,
            method: "GET".to_owned(),
            uri: uri.to_owned(),
            duration_seconds: 1.0,
            abandoned,
        };
        let (r, _) = current_cells(&[req("/left", true), req("/served", false)]);
        let (left, served) = r.split_once("<br>").unwrap_or_default();
        assert!(left.starts_with("GET /left <span class=\"warn abandoned\" title=\"the web server aborted it"), "{r}");
        assert!(left.ends_with(">(abandoned)</span>"), "{r}");
        assert_eq!(served, "GET /served");
    }
}
