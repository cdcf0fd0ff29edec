//! A run's report as one self-contained HTML page: the checker's verdict and counts, plots
//! drawn as inline SVG (messages per second, live nodes and devices, the latency and failover
//! histograms), the registry's notice times, the last assignments, sampled messages and the
//! log, and the whole [`Report`] as JSON inside it. No script, no stylesheet, no font is
//! fetched: the file opens the same offline, years later, from a mail attachment.
//!
//! Served by the panel (`GET /api/report.html`) and written by `lab up --report PATH`.

use std::fmt::Write as _;

use protocol::lab::{Histogram, Level, Report, StepKind};

const GREEN: &str = "#1a7f37";
const AMBER: &str = "#b7791f";
const RED: &str = "#c62828";
const BLUE: &str = "#1f6feb";
const GREY: &str = "#8b949e";

fn level_colour(level: Level) -> &'static str {
    match level {
        Level::Ok => GREEN,
        Level::Warn => AMBER,
        Level::Bad => RED,
    }
}

/// Escapes text for HTML element content and attribute values.
pub fn escape(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
    out
}

/// The JSON of the report, safe inside a `<script type="application/json">` element.
fn embedded_json(report: &Report) -> String {
    serde_json::to_string(report)
        .unwrap_or_else(|_| "{}".into())
        .replace("</", "<\\/")
        .replace("<!--", "<\\!--")
}

/// `2026-12-07 09:46:05 UTC` for microseconds since the Unix epoch.
fn utc(at_us: i64) -> String {
    let secs = at_us.div_euclid(1_000_000);
    let (days, rest) = (secs.div_euclid(86_400), secs.rem_euclid(86_400));
    // Civil date from days since 1970-01-01 (Howard Hinnant's algorithm).
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!(
        "{year:04}-{month:02}-{day:02} {:02}:{:02}:{:02} UTC",
        rest / 3600,
        rest % 3600 / 60,
        rest % 60
    )
}

fn secs(at_us: i64, started_us: i64) -> f64 {
    (at_us - started_us) as f64 / 1e6
}

/// A plotted line: its label, its colour, its points.
type Series<'a> = (&'a str, &'a str, Vec<(f64, f64)>);

/// One polyline per series over shared axes.
fn line_plot(title: &str, series: &[Series<'_>], y_label: &str) -> String {
    const W: f64 = 720.0;
    const H: f64 = 200.0;
    const L: f64 = 48.0;
    const B: f64 = 24.0;
    let xs = series.iter().flat_map(|s| s.2.iter().map(|p| p.0));
    let x_max = xs.fold(1.0_f64, f64::max);
    let y_max = series
        .iter()
        .flat_map(|s| s.2.iter().map(|p| p.1))
        .fold(1.0_f64, f64::max)
        * 1.1;
    let px = |x: f64| L + x / x_max * (W - L - 8.0);
    let py = |y: f64| (H - B) - y / y_max * (H - B - 8.0);
    let mut svg = format!(
        "<figure><figcaption>{}</figcaption><svg viewBox=\"0 0 {W} {H}\" width=\"{W}\" \
         height=\"{H}\" role=\"img\" aria-label=\"{}\">",
        escape(title),
        escape(title)
    );
    let _ = write!(
        svg,
        "<line x1=\"{L}\" y1=\"{}\" x2=\"{}\" y2=\"{}\" stroke=\"{GREY}\"/>\
         <line x1=\"{L}\" y1=\"8\" x2=\"{L}\" y2=\"{}\" stroke=\"{GREY}\"/>\
         <text x=\"4\" y=\"14\" font-size=\"11\">{:.0}</text>\
         <text x=\"4\" y=\"{}\" font-size=\"11\">0</text>\
         <text x=\"{}\" y=\"{}\" font-size=\"11\" text-anchor=\"end\">{:.0} s</text>\
         <text x=\"{}\" y=\"14\" font-size=\"11\">{}</text>",
        H - B,
        W - 8.0,
        H - B,
        H - B,
        y_max,
        H - B,
        W - 8.0,
        H - 6.0,
        x_max,
        L + 6.0,
        escape(y_label)
    );
    for (i, (label, colour, points)) in series.iter().enumerate() {
        if points.is_empty() {
            continue;
        }
        let path: Vec<String> = points
            .iter()
            .map(|&(x, y)| format!("{:.1},{:.1}", px(x), py(y)))
            .collect();
        let _ = write!(
            svg,
            "<polyline fill=\"none\" stroke=\"{colour}\" stroke-width=\"1.5\" points=\"{}\"/>\
             <text x=\"{}\" y=\"14\" font-size=\"11\" fill=\"{colour}\">{}</text>",
            path.join(" "),
            W - 8.0 - 110.0 * (series.len() - i) as f64 + 20.0,
            escape(label)
        );
    }
    svg.push_str("</svg></figure>");
    svg
}

/// Bars of a histogram's buckets.
fn histogram_plot(title: &str, h: &Histogram, colour: &str) -> String {
    const W: f64 = 720.0;
    const H: f64 = 160.0;
    const B: f64 = 28.0;
    let mut svg = format!(
        "<figure><figcaption>{} — {} values, p50 {:.1} ms, p99 {:.1} ms, max {:.1} ms\
         </figcaption><svg viewBox=\"0 0 {W} {H}\" width=\"{W}\" height=\"{H}\" role=\"img\" \
         aria-label=\"{}\">",
        escape(title),
        h.count,
        h.p50_ms,
        h.p99_ms,
        h.max_ms,
        escape(title)
    );
    let n = h.buckets.len().max(1) as f64;
    let top = h.buckets.iter().map(|b| b.1).max().unwrap_or(1).max(1) as f64;
    let width = (W - 16.0) / n;
    for (i, (bound, count)) in h.buckets.iter().enumerate() {
        let height = *count as f64 / top * (H - B - 10.0);
        let x = 8.0 + i as f64 * width;
        let _ = write!(
            svg,
            "<rect x=\"{x:.1}\" y=\"{:.1}\" width=\"{:.1}\" height=\"{height:.1}\" \
             fill=\"{colour}\"><title>≤ {bound} ms: {count}</title></rect>",
            H - B - height,
            (width - 2.0).max(1.0)
        );
        if h.buckets.len() <= 24 || i % 2 == 0 {
            let _ = write!(
                svg,
                "<text x=\"{:.1}\" y=\"{}\" font-size=\"10\" text-anchor=\"middle\">{}</text>",
                x + width / 2.0,
                H - 12.0,
                short_ms(*bound)
            );
        }
    }
    svg.push_str("</svg></figure>");
    svg
}

fn short_ms(ms: f64) -> String {
    if !ms.is_finite() || ms >= 60_000.0 {
        "more".into()
    } else if ms >= 1000.0 {
        format!("{:.0}s", ms / 1000.0)
    } else {
        format!("{ms:.0}")
    }
}

fn step_name(kind: StepKind) -> &'static str {
    match kind {
        StepKind::Sent => "sent",
        StepKind::Persisted => "persisted",
        StepKind::Acked => "acked",
        StepKind::Published => "published",
        StepKind::Received => "received",
        StepKind::Returned => "returned",
        StepKind::Delivered => "delivered",
        StepKind::GapFilled => "gap filled",
        StepKind::Replayed => "replayed",
        StepKind::Recovered => "recovered",
        StepKind::AckSeen => "ack seen",
        StepKind::Shown => "shown",
    }
}

/// The report as one HTML page.
pub fn html(report: &Report) -> String {
    let c = &report.checker;
    let t0 = report.started_us;
    let mut page = String::with_capacity(64 * 1024);
    let _ = write!(
        page,
        "<!doctype html><html lang=\"en\"><head><meta charset=\"utf-8\">\
         <title>Lab report {run}</title><style>\
         body{{font:14px/1.45 system-ui,sans-serif;margin:24px auto;max-width:780px;color:#1f2328}}\
         h1{{font-size:22px}}h2{{font-size:17px;margin-top:28px;border-bottom:1px solid #d0d7de}}\
         table{{border-collapse:collapse;font-size:13px}}td,th{{padding:2px 8px;text-align:left;\
         border-bottom:1px solid #eee}}.verdict{{padding:8px 12px;color:#fff;border-radius:6px}}\
         figure{{margin:12px 0}}figcaption{{font-weight:600}}code{{font-size:12px}}\
         </style></head><body><h1>Lab report <code>{run}</code></h1>",
        run = escape(&report.run)
    );
    let b = &report.cluster.backends;
    let _ = write!(
        page,
        "<p>From {} for {:.0} s. Controller {}; registry {}, bus {} ({} routing), store {}; \
         lease {} ms.</p><p class=\"verdict\" id=\"verdict\" style=\"background:{}\">{}</p>",
        utc(report.started_us),
        secs(report.made_us, t0),
        escape(&report.cluster.controller),
        escape(&b.registry),
        escape(&b.bus),
        escape(&b.routing),
        escape(&b.store),
        report.cluster.lease_ms,
        level_colour(c.verdict),
        escape(&c.headline)
    );
    page.push_str("<h2>Checker</h2><table id=\"checker\">");
    let msgs_per_op = c.msgs_per_op.map_or("—".to_owned(), |m| {
        format!("{m:.2} (over {})", c.ops_sampled)
    });
    for (name, value) in [
        ("sent", c.sent.to_string()),
        ("acknowledged", c.acked.to_string()),
        ("refused", c.refused.to_string()),
        ("deliveries expected", c.expected.to_string()),
        ("delivered", c.delivered.to_string()),
        ("pending", c.pending.to_string()),
        (
            &format!("stale (> {} ms)", c.stale_after_ms) as &str,
            c.stale.to_string(),
        ),
        ("lost", c.lost.to_string()),
        ("duplicates", c.duplicates.to_string()),
        ("out of order", c.out_of_order.to_string()),
        ("bus envelopes per message (msgs-per-op)", msgs_per_op),
    ] {
        let _ = write!(page, "<tr><th>{}</th><td>{}</td></tr>", escape(name), value);
    }
    page.push_str("</table>");
    if !c.violations.is_empty() {
        page.push_str("<h3>Broken guarantees</h3><ul id=\"violations\">");
        for v in &c.violations {
            let _ = write!(page, "<li>{}</li>", escape(&v.text));
        }
        page.push_str("</ul>");
    }

    page.push_str("<h2>Plots</h2>");
    let sent: Vec<(f64, f64)> = report
        .series
        .iter()
        .map(|p| (secs(p.at_us, t0), p.sent as f64))
        .collect();
    let delivered: Vec<(f64, f64)> = report
        .series
        .iter()
        .map(|p| (secs(p.at_us, t0), p.delivered as f64))
        .collect();
    page.push_str(&line_plot(
        "Messages per second",
        &[("sent", BLUE, sent), ("delivered", GREEN, delivered)],
        "per s",
    ));
    let nodes: Vec<(f64, f64)> = report
        .series
        .iter()
        .map(|p| (secs(p.at_us, t0), f64::from(p.nodes)))
        .collect();
    let devices: Vec<(f64, f64)> = report
        .series
        .iter()
        .map(|p| (secs(p.at_us, t0), f64::from(p.live_devices)))
        .collect();
    page.push_str(&line_plot(
        "Live devices and nodes",
        &[("devices", BLUE, devices), ("nodes", AMBER, nodes)],
        "count",
    ));
    page.push_str(&histogram_plot(
        "Delivery latency (send → shown on another device)",
        &c.latency,
        BLUE,
    ));
    page.push_str(&histogram_plot(
        "Failover (node lost → live on another)",
        &c.failover,
        AMBER,
    ));
    page.push_str("<h2>Registry notice times</h2><table id=\"notices\"><tr><th>node</th><th>cause</th><th>at</th><th>noticed after</th></tr>");
    for n in &report.presence.notices {
        let _ = write!(
            page,
            "<tr><td>{}</td><td>{}</td><td>{:.1} s</td><td>{}</td></tr>",
            escape(&n.node),
            escape(&n.cause),
            secs(n.at_us, t0),
            n.noticed_after_ms
                .map_or("not yet".to_owned(), |ms| format!("{ms} ms"))
        );
    }
    page.push_str("</table>");
    page.push_str("<h2>Failovers</h2><table id=\"failovers\"><tr><th>device</th><th>from</th><th>to</th><th>took</th></tr>");
    for f in c.failovers.iter().take(50) {
        let _ = write!(
            page,
            "<tr><td>{}</td><td>{}</td><td>{}</td><td>{} ms</td></tr>",
            escape(f.device.as_str()),
            escape(f.from.as_deref().unwrap_or("?")),
            escape(f.to.as_deref().unwrap_or("?")),
            f.ms
        );
    }
    page.push_str("</table>");
    page.push_str("<h2>Least-connections answers (last 20)</h2><ul id=\"assignments\">");
    for a in report.assignments.iter().rev().take(20) {
        let others: Vec<String> = a
            .others
            .iter()
            .map(|o| format!("{}: {}", o.node, o.connections + o.reserved))
            .collect();
        let _ = write!(
            page,
            "<li>{}: {} + {} reserved, chosen over {}</li>",
            escape(&a.chosen.node.to_string()),
            a.chosen.connections,
            a.chosen.reserved,
            escape(&others.join(", "))
        );
    }
    page.push_str("</ul><h2>Sampled messages (last 10)</h2>");
    for m in report.messages.iter().take(10) {
        let start = m.steps.first().map_or(0, |s| s.at_us);
        let _ = write!(
            page,
            "<details><summary><code>{}</code> seq {} in <code>{}</code> ({} steps)</summary><table>",
            m.id,
            m.seq,
            m.conv,
            m.steps.len()
        );
        for s in &m.steps {
            let _ = write!(
                page,
                "<tr><td>+{} µs</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td></tr>",
                s.at_us - start,
                step_name(s.what),
                escape(s.node.as_deref().unwrap_or("")),
                escape(s.device.as_ref().map_or("", |d| d.as_str())),
                escape(&s.peers.join(", "))
            );
        }
        page.push_str("</table></details>");
    }
    page.push_str("<h2>Log</h2><table id=\"log\">");
    for l in &report.log {
        let _ = write!(
            page,
            "<tr><td>{:.1} s</td><td style=\"color:{}\">{}</td></tr>",
            secs(l.at_us, t0),
            level_colour(l.level),
            escape(&l.text)
        );
    }
    page.push_str("</table>");
    if !report.lessons.is_empty() {
        page.push_str("<h2>Lessons</h2>");
        for l in &report.lessons {
            let _ = write!(
                page,
                "<h3 style=\"color:{}\">{}</h3><ul>",
                if l.passed { GREEN } else { RED },
                escape(&l.name)
            );
            for line in &l.lines {
                let _ = write!(page, "<li>{}</li>", escape(line));
            }
            page.push_str("</ul>");
        }
    }
    let _ = writeln!(
        page,
        "<script type=\"application/json\" id=\"report\">{}</script></body></html>",
        embedded_json(report)
    );
    page
}

#[cfg(test)]
mod tests {
    use super::*;
    use protocol::lab::{CheckerView, LogEntry, SeriesPoint};

    #[test]
    fn dates_read_as_utc() {
        assert_eq!(utc(0), "1970-01-01 00:00:00 UTC");
        assert_eq!(utc(1_796_636_765_000_000), "2026-12-07 09:46:05 UTC");
    }

    #[test]
    fn the_page_carries_its_data_and_escapes_it() {
        let report = Report {
            run: "lab_1".into(),
            started_us: 1_000_000,
            made_us: 11_000_000,
            checker: CheckerView {
                verdict: Level::Bad,
                headline: "m1 lost on <d2>".into(),
                latency: Histogram {
                    count: 3,
                    p50_ms: 2.0,
                    p99_ms: 9.0,
                    max_ms: 9.0,
                    buckets: vec![(1.0, 1), (5.0, 1), (10.0, 1)],
                },
                ..CheckerView::default()
            },
            series: (1..=10)
                .map(|s| SeriesPoint {
                    at_us: 1_000_000 + s * 1_000_000,
                    sent: 5,
                    delivered: 10,
                    nodes: 3,
                    live_devices: 20,
                    verdict: Level::Ok,
                })
                .collect(),
            log: vec![LogEntry {
                at_us: 2_000_000,
                level: Level::Ok,
                text: "n2 killed </script>".into(),
            }],
            ..Report::default()
        };
        let page = html(&report);
        assert!(page.contains("m1 lost on &lt;d2&gt;"), "{page}");
        assert!(page.contains(RED));
        assert!(page.contains("<polyline"));
        assert!(page.contains("p50 2.0 ms, p99 9.0 ms"));
        // The only closing script tag is the JSON's own.
        assert_eq!(page.matches("</script>").count(), 1);
        let start = page.find("id=\"report\">").map(|i| i + 12).unwrap_or(0);
        let end = page.rfind("</script>").unwrap_or(0);
        let back: Report = serde_json::from_str(&page[start..end]).expect("embedded json");
        assert_eq!(back, report);
    }
}
