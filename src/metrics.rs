//! Process-wide counters, gauges and latency histograms, rendered by the admin endpoint in the
//! OpenMetrics text format (which Prometheus scrapes).
//!
//! The registry and its text encoding are `prometheus-client`'s. Each series is registered at
//! its first use under the name and help text given at the call site, so a module adds a
//! metric with one call and no central list to keep in step.

use prometheus_client::encoding::text::encode;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::Registry;
use std::collections::HashMap;
use std::sync::atomic::AtomicU64;
use std::sync::{Mutex, OnceLock, RwLock};
use std::time::Duration;

/// Latency buckets in seconds.
const BUCKETS: [f64; 12] = [
    0.0005, 0.001, 0.002, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1.0, 5.0, 30.0,
];

type Labels = Vec<(String, String)>;
type FloatGauge = Gauge<f64, AtomicU64>;
type HistogramFamily = Family<Labels, Histogram, fn() -> Histogram>;

/// Series with labels are families; those without are plain metrics (`name value`).
#[derive(Default)]
struct Families {
    counters: HashMap<&'static str, Family<Labels, Counter>>,
    gauges: HashMap<&'static str, Family<Labels, FloatGauge>>,
    histograms: HashMap<&'static str, HistogramFamily>,
    plain_counters: HashMap<&'static str, Counter>,
    plain_gauges: HashMap<&'static str, FloatGauge>,
    plain_histograms: HashMap<&'static str, Histogram>,
    /// The label sets of each family, as first seen (escaped, as keyed) and as given: a
    /// prometheus-client family cannot be walked, and the console reads the values back.
    label_sets: HashMap<&'static str, Vec<(Labels, Labels)>>,
}

struct Metrics {
    registry: Mutex<Registry>,
    families: RwLock<Families>,
}

fn metrics() -> &'static Metrics {
    static M: OnceLock<Metrics> = OnceLock::new();
    M.get_or_init(|| Metrics {
        registry: Mutex::new(Registry::default()),
        families: RwLock::new(Families::default()),
    })
}

/// prometheus-client 0.24 writes label values as given: the text format's escapes
/// (backslash, double quote, newline) are made here.
fn labels(l: &[(&str, &str)]) -> Labels {
    l.iter()
        .map(|(k, v)| {
            let v = if v.contains(['\\', '"', '\n']) {
                v.replace('\\', "\\\\")
                    .replace('"', "\\\"")
                    .replace('\n', "\\n")
            } else {
                v.to_string()
            };
            (k.to_string(), v)
        })
        .collect()
}

fn new_histogram() -> Histogram {
    Histogram::new(BUCKETS)
}

/// The family `name` from `map`, registered with `help` at its first use.
fn family<F: Clone + prometheus_client::registry::Metric>(
    name: &'static str,
    help: &'static str,
    select: impl Fn(&Families) -> Option<F>,
    insert: impl FnOnce(&mut Families) -> F,
) -> F {
    let m = metrics();
    if let Some(f) = select(&m.families.read().unwrap_or_else(|p| p.into_inner())) {
        return f;
    }
    let mut fams = m.families.write().unwrap_or_else(|p| p.into_inner());
    if let Some(f) = select(&fams) {
        return f;
    }
    let f = insert(&mut fams);
    // OpenMetrics adds `_total` to counters itself.
    let shown = name.strip_suffix("_total").unwrap_or(name);
    m.registry
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .register(shown, help, f.clone());
    f
}

/// `f` on the series `l` of `fam`, noting the label set when this call creates it (the
/// family has no public walk). An existing series costs one lookup, as before.
fn on_series<M, C>(
    name: &'static str,
    fam: &Family<Labels, M, C>,
    l: &[(&str, &str)],
    f: impl FnOnce(&M),
) where
    C: prometheus_client::metrics::family::MetricConstructor<M>,
{
    let key = labels(l);
    if let Some(m) = fam.get(&key) {
        return f(&m);
    }
    f(&fam.get_or_create(&key));
    let raw: Labels = l
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
    let mut fams = metrics()
        .families
        .write()
        .unwrap_or_else(|p| p.into_inner());
    let sets = fams.label_sets.entry(name).or_default();
    if !sets.iter().any(|(k, _)| *k == key) {
        sets.push((key, raw));
    }
}

/// Adds one to a counter.
pub fn inc(name: &'static str, help: &'static str, l: &[(&str, &str)]) {
    if l.is_empty() {
        family(
            name,
            help,
            |fs| fs.plain_counters.get(name).cloned(),
            |fs| fs.plain_counters.entry(name).or_default().clone(),
        )
        .inc();
        return;
    }
    let fam = family(
        name,
        help,
        |fs| fs.counters.get(name).cloned(),
        |fs| fs.counters.entry(name).or_default().clone(),
    );
    on_series(name, &fam, l, |c| {
        c.inc();
    });
}

/// Adds `n` to a counter (counts kept elsewhere and published in steps, e.g. the journal's).
pub fn add(name: &'static str, help: &'static str, l: &[(&str, &str)], n: u64) {
    if l.is_empty() {
        family(
            name,
            help,
            |fs| fs.plain_counters.get(name).cloned(),
            |fs| fs.plain_counters.entry(name).or_default().clone(),
        )
        .inc_by(n);
        return;
    }
    let fam = family(
        name,
        help,
        |fs| fs.counters.get(name).cloned(),
        |fs| fs.counters.entry(name).or_default().clone(),
    );
    on_series(name, &fam, l, |c| {
        c.inc_by(n);
    });
}

/// Adds `d` (may be negative) to a gauge.
pub fn gauge_add(name: &'static str, help: &'static str, l: &[(&str, &str)], d: f64) {
    with_gauge(name, help, l, |g| {
        g.inc_by(d);
    });
}

pub fn gauge_set(name: &'static str, help: &'static str, l: &[(&str, &str)], v: f64) {
    with_gauge(name, help, l, |g| {
        g.set(v);
    });
}

fn with_gauge(name: &'static str, help: &'static str, l: &[(&str, &str)], f: impl Fn(&FloatGauge)) {
    if l.is_empty() {
        return f(&family(
            name,
            help,
            |fs| fs.plain_gauges.get(name).cloned(),
            |fs| fs.plain_gauges.entry(name).or_default().clone(),
        ));
    }
    let fam = family(
        name,
        help,
        |fs| fs.gauges.get(name).cloned(),
        |fs| fs.gauges.entry(name).or_default().clone(),
    );
    on_series(name, &fam, l, f);
}

pub fn observe(name: &'static str, help: &'static str, l: &[(&str, &str)], d: Duration) {
    let secs = d.as_secs_f64();
    if l.is_empty() {
        family(
            name,
            help,
            |fs| fs.plain_histograms.get(name).cloned(),
            |fs| {
                fs.plain_histograms
                    .entry(name)
                    .or_insert_with(new_histogram)
                    .clone()
            },
        )
        .observe(secs);
        return;
    }
    let f = family(
        name,
        help,
        |fs| fs.histograms.get(name).cloned(),
        |fs| {
            fs.histograms
                .entry(name)
                .or_insert_with(|| Family::new_with_constructor(new_histogram as fn() -> Histogram))
                .clone()
        },
    );
    on_series(name, &f, l, |h| h.observe(secs));
}

/// The content type of [`render`].
pub const CONTENT_TYPE: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

/// Every series in the OpenMetrics text format.
pub fn render() -> String {
    let mut out = String::with_capacity(8192);
    let registry = metrics().registry.lock().unwrap_or_else(|p| p.into_inner());
    if let Err(e) = encode(&mut out, &registry) {
        tracing::error!(error = %e, "metrics encoding failed");
    }
    out
}

/// One series as the console reads it: the name, the labels as given, the value.
#[derive(Debug, Clone, PartialEq)]
pub struct Series {
    pub name: String,
    pub labels: Vec<(String, String)>,
    pub value: f64,
}

impl Series {
    pub fn label(&self, k: &str) -> Option<&str> {
        self.labels
            .iter()
            .find(|(n, _)| n == k)
            .map(|(_, v)| v.as_str())
    }
}

/// Every counter and gauge with its current value, read from the registry (the console's
/// dashboard and charts). Histograms are left out: nothing there reads them.
pub fn series() -> Vec<Series> {
    let fams = metrics().families.read().unwrap_or_else(|p| p.into_inner());
    let one = |name: &str, labels: Labels, value: f64| Series {
        name: name.to_string(),
        labels,
        value,
    };
    let mut out = Vec::new();
    for (name, c) in &fams.plain_counters {
        out.push(one(name, Vec::new(), c.get() as f64));
    }
    for (name, g) in &fams.plain_gauges {
        out.push(one(name, Vec::new(), g.get()));
    }
    let sets = |name: &str| fams.label_sets.get(name).into_iter().flatten();
    for (name, fam) in &fams.counters {
        for (key, raw) in sets(name) {
            if let Some(c) = fam.get(key) {
                out.push(one(name, raw.clone(), c.get() as f64));
            }
        }
    }
    for (name, fam) in &fams.gauges {
        for (key, raw) in sets(name) {
            if let Some(g) = fam.get(key) {
                out.push(one(name, raw.clone(), g.get()));
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_openmetrics_text() {
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
        gauge_add("test_gauge", "a gauge", &[], -1.0);
        observe(
            "test_seconds",
            "latency",
            &[("l", "x")],
            Duration::from_millis(3),
        );
        inc("test_escaped_total", "x", &[("r", "say \"hi\"\\")]);
        let t = render();
        assert!(
            t.contains("# TYPE test counter\ntest_total{listener=\"etab\",reason=\"relay\"} 2"),
            "{t}"
        );
        assert!(t.contains("\ntest_gauge 2.0\n"), "{t}");
        assert!(
            t.contains("test_seconds_bucket{le=\"0.005\",l=\"x\"} 1"),
            "{t}"
        );
        assert!(
            t.contains("test_seconds_bucket{le=\"0.002\",l=\"x\"} 0"),
            "{t}"
        );
        assert!(t.contains("test_seconds_count{l=\"x\"} 1"), "{t}");
        assert!(t.contains("r=\"say \\\"hi\\\"\\\\\""), "{t}");
        assert!(t.ends_with("# EOF\n"));
    }

    #[test]
    fn series_are_read_back_from_the_registry() {
        inc("read_back_total", "x", &[("r", "say \"hi\"")]);
        add("read_back_total", "x", &[("r", "say \"hi\"")], 2);
        inc("read_back_total", "x", &[("r", "other")]);
        gauge_set("read_back_gauge", "g", &[], 7.5);
        let all = series();
        let get = |name: &str, r: Option<&str>| {
            all.iter()
                .find(|s| s.name == name && s.label("r") == r)
                .map(|s| s.value)
        };
        assert_eq!(get("read_back_total", Some("say \"hi\"")), Some(3.0));
        assert_eq!(get("read_back_total", Some("other")), Some(1.0));
        assert_eq!(get("read_back_gauge", None), Some(7.5));
    }
}
