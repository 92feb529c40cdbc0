//! Process-wide counters, gauges and latency histograms, rendered in the Prometheus text
//! format by the admin endpoint.
//!
//! Hand-written: the `prometheus` crate would bring a registry, protobuf and macros for a
//! dozen series; a mutex-protected map is enough at a few updates per message.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::sync::{Mutex, OnceLock};
use std::time::Duration;

/// Latency buckets in seconds.
const BUCKETS: [f64; 12] = [
    0.0005, 0.001, 0.002, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1.0, 5.0, 30.0,
];

#[derive(Default)]
struct Histogram {
    counts: [u64; BUCKETS.len()],
    sum: f64,
    count: u64,
}

#[derive(Default)]
struct Registry {
    counters: BTreeMap<(&'static str, String), f64>,
    gauges: BTreeMap<(&'static str, String), f64>,
    histograms: BTreeMap<(&'static str, String), Histogram>,
    help: BTreeMap<&'static str, (&'static str, &'static str)>,
}

fn registry() -> &'static Mutex<Registry> {
    static R: OnceLock<Mutex<Registry>> = OnceLock::new();
    R.get_or_init(|| Mutex::new(Registry::default()))
}

fn labels(l: &[(&str, &str)]) -> String {
    if l.is_empty() {
        return String::new();
    }
    // Called several times per message: one allocation, escaping only when needed.
    let mut out =
        String::with_capacity(l.iter().map(|(k, v)| k.len() + v.len() + 4).sum::<usize>() + 2);
    out.push('{');
    for (i, (k, v)) in l.iter().enumerate() {
        if i > 0 {
            out.push(',');
        }
        out.push_str(k);
        out.push_str("=\"");
        if v.contains(['\\', '"', '\n']) {
            for c in v.chars() {
                match c {
                    '\\' => out.push_str("\\\\"),
                    '"' => out.push_str("\\\""),
                    '\n' => out.push(' '),
                    c => out.push(c),
                }
            }
        } else {
            out.push_str(v);
        }
        out.push('"');
    }
    out.push('}');
    out
}

fn with<R>(f: impl FnOnce(&mut Registry) -> R) -> R {
    let mut r = registry().lock().unwrap_or_else(|p| p.into_inner());
    f(&mut r)
}

/// Adds one to a counter.
pub fn inc(name: &'static str, help: &'static str, l: &[(&str, &str)]) {
    with(|r| {
        r.help.entry(name).or_insert((help, "counter"));
        *r.counters.entry((name, labels(l))).or_default() += 1.0;
    });
}

/// Adds `v` to a counter (counts kept elsewhere and published in steps, e.g. the journal's).
pub fn add(name: &'static str, help: &'static str, l: &[(&str, &str)], v: f64) {
    with(|r| {
        r.help.entry(name).or_insert((help, "counter"));
        *r.counters.entry((name, labels(l))).or_default() += v;
    });
}

/// Adds `d` (may be negative) to a gauge.
pub fn gauge_add(name: &'static str, help: &'static str, l: &[(&str, &str)], d: f64) {
    with(|r| {
        r.help.entry(name).or_insert((help, "gauge"));
        *r.gauges.entry((name, labels(l))).or_default() += d;
    });
}

pub fn gauge_set(name: &'static str, help: &'static str, l: &[(&str, &str)], v: f64) {
    with(|r| {
        r.help.entry(name).or_insert((help, "gauge"));
        r.gauges.insert((name, labels(l)), v);
    });
}

pub fn observe(name: &'static str, help: &'static str, l: &[(&str, &str)], d: Duration) {
    let s = d.as_secs_f64();
    with(|r| {
        r.help.entry(name).or_insert((help, "histogram"));
        let h = r.histograms.entry((name, labels(l))).or_default();
        for (i, b) in BUCKETS.iter().enumerate() {
            if s <= *b {
                h.counts[i] += 1;
            }
        }
        h.sum += s;
        h.count += 1;
    });
}

/// The whole registry in the Prometheus text exposition format (version 0.0.4).
pub fn render() -> String {
    with(|r| {
        let mut out = String::with_capacity(4096);
        let mut last = "";
        let mut head = |out: &mut String, name: &'static str| {
            if name != last {
                if let Some((help, kind)) = r.help.get(name) {
                    let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} {kind}");
                }
                last = name;
            }
        };
        for ((name, l), v) in &r.counters {
            head(&mut out, name);
            let _ = writeln!(out, "{name}{l} {v}");
        }
        for ((name, l), v) in &r.gauges {
            head(&mut out, name);
            let _ = writeln!(out, "{name}{l} {v}");
        }
        for ((name, l), h) in &r.histograms {
            head(&mut out, name);
            let inner = l.trim_start_matches('{').trim_end_matches('}');
            let sep = if inner.is_empty() { "" } else { "," };
            for (i, b) in BUCKETS.iter().enumerate() {
                let _ = writeln!(
                    out,
                    "{name}_bucket{{{inner}{sep}le=\"{b}\"}} {}",
                    h.counts[i]
                );
            }
            let _ = writeln!(out, "{name}_bucket{{{inner}{sep}le=\"+Inf\"}} {}", h.count);
            let _ = writeln!(out, "{name}_sum{l} {}", h.sum);
            let _ = writeln!(out, "{name}_count{l} {}", h.count);
        }
        out
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_prometheus_text() {
        inc(
            "test_total",
            "a test counter",
            &[("listener", "etab"), ("reason", "relay")],
        );
        inc(
            "test_total",
            "a test counter",
            &[("listener", "etab"), ("reason", "relay")],
        );
        gauge_set("test_gauge", "a gauge", &[], 3.0);
        observe(
            "test_seconds",
            "latency",
            &[("l", "x")],
            Duration::from_millis(3),
        );
        let t = render();
        assert!(t.contains(
            "# TYPE test_total counter\ntest_total{listener=\"etab\",reason=\"relay\"} 2"
        ));
        assert!(t.contains("test_gauge 3"));
        assert!(t.contains("test_seconds_bucket{l=\"x\",le=\"0.005\"} 1"));
        assert!(t.contains("test_seconds_bucket{l=\"x\",le=\"0.002\"} 0"));
        assert!(t.contains("test_seconds_count{l=\"x\"} 1"));
    }

    #[test]
    fn label_values_are_escaped() {
        assert_eq!(labels(&[]), "");
        assert_eq!(labels(&[("a", "x"), ("b", "y")]), "{a=\"x\",b=\"y\"}");
        assert_eq!(
            labels(&[("r", "say \"hi\"\\\nbye")]),
            "{r=\"say \\\"hi\\\"\\\\ bye\"}"
        );
    }
}
