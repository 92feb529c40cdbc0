//! Throughput history for the dashboard's charts, until the journal gives the real one:
//! every 10 s the console reads the gateway's counters from the metrics registry
//! (`metrics::series`, the values `/metrics` serves) and keeps 24 hours of samples in memory
//! (8,640 small records). History starts when the console starts; the charts say so.

use std::collections::VecDeque;
use std::sync::Mutex;
use std::time::Duration;

pub const INTERVAL: Duration = Duration::from_secs(10);
const KEEP: usize = 24 * 3600 / 10 + 1;

pub use crate::metrics::Series;

/// Sum of every series named `name` whose labels include `want`.
pub fn sum(series: &[Series], name: &str, want: &[(&str, &str)]) -> f64 {
    series
        .iter()
        .filter(|s| s.name == name && want.iter().all(|(k, v)| s.label(k) == Some(v)))
        .map(|s| s.value)
        .sum()
}

/// The counters the charts follow, cumulative since the process started.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct Sample {
    /// Unix seconds.
    pub time: u64,
    pub accepted: f64,
    pub sent: f64,
    pub deferred: f64,
    pub bounced: f64,
    pub rejected: f64,
}

impl Sample {
    pub fn from_series(time: u64, s: &[Series]) -> Sample {
        let d = "passerelle_deliveries_total";
        Sample {
            time,
            accepted: sum(s, "passerelle_messages_accepted_total", &[]),
            sent: sum(s, d, &[("result", "sent")]),
            deferred: sum(s, d, &[("result", "deferred")]),
            bounced: sum(s, d, &[("result", "bounced")]) + sum(s, d, &[("result", "expired")]),
            rejected: sum(s, "passerelle_smtp_rejected_total", &[]),
        }
    }
}

#[derive(Default)]
pub struct Samples {
    ring: Mutex<VecDeque<Sample>>,
}

/// One bucket of a chart: counts in `[start, start + width)`, `None` where there is no data.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Bucket {
    pub start: u64,
    pub accepted: Option<f64>,
    pub sent: Option<f64>,
    pub failed: Option<f64>,
}

impl Samples {
    pub fn push(&self, s: Sample) {
        let mut r = self.ring.lock().unwrap_or_else(|p| p.into_inner());
        if r.len() >= KEEP {
            r.pop_front();
        }
        r.push_back(s);
    }

    pub fn first_time(&self) -> Option<u64> {
        self.ring
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .front()
            .map(|s| s.time)
    }

    /// `n` buckets of `width` seconds ending at `now`.
    pub fn buckets(&self, now: u64, width: u64, n: u64) -> Vec<Bucket> {
        let mut r = self.ring.lock().unwrap_or_else(|p| p.into_inner());
        buckets(r.make_contiguous(), now, width, n)
    }

    /// Samples the registry every [`INTERVAL`], for ever.
    pub async fn run(&self) {
        let mut tick = tokio::time::interval(INTERVAL);
        loop {
            tick.tick().await;
            let series = crate::metrics::series();
            self.push(Sample::from_series(
                crate::util::clock::now_ms() / 1000,
                &series,
            ));
        }
    }
}

/// The counter at the last sample at or before `t`.
fn at(samples: &[Sample], t: u64) -> Option<&Sample> {
    let i = samples.partition_point(|s| s.time <= t);
    i.checked_sub(1).map(|i| &samples[i])
}

/// Pure: the per-bucket increments of sorted cumulative samples. The bucket holding the first
/// sample counts from it (what came before the console started is unknown); buckets before it
/// have no data.
pub fn buckets(samples: &[Sample], now: u64, width: u64, n: u64) -> Vec<Bucket> {
    let start = now.saturating_sub(width * n);
    (0..n)
        .map(|i| {
            let b0 = start + i * width;
            let b1 = b0 + width;
            let first = samples.first().filter(|f| f.time < b1);
            let (a, b) = (at(samples, b0).or(first), at(samples, b1.min(now)));
            let d = |f: fn(&Sample) -> f64| match (a, b) {
                (Some(a), Some(b)) => Some((f(b) - f(a)).max(0.0)),
                _ => None,
            };
            Bucket {
                start: b0,
                accepted: d(|s| s.accepted),
                sent: d(|s| s.sent),
                failed: d(|s| s.bounced + s.deferred),
            }
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sums_the_series_whose_labels_match() {
        let one = |t: &str, r: &str, v: f64| Series {
            name: "passerelle_deliveries_total".into(),
            labels: vec![("transport".into(), t.into()), ("result".into(), r.into())],
            value: v,
        };
        let s = vec![
            one("t", "sent", 3.0),
            one("a", "deferred", 2.0),
            one("u", "sent", 4.0),
        ];
        assert_eq!(
            sum(&s, "passerelle_deliveries_total", &[("result", "sent")]),
            7.0
        );
        assert_eq!(sum(&s, "passerelle_queue_messages", &[]), 0.0);
    }

    #[test]
    fn buckets_are_increments_with_gaps_where_no_data() {
        let mk = |time, accepted| Sample {
            time,
            accepted,
            ..Sample::default()
        };
        let samples = vec![mk(100, 0.0), mk(110, 5.0), mk(120, 5.0), mk(130, 12.0)];
        let b = buckets(&samples, 140, 20, 3);
        assert_eq!(b.len(), 3);
        assert_eq!(b[0].start, 80);
        assert_eq!(b[0].accepted, None, "before the first sample");
        assert_eq!(b[1].accepted, Some(5.0), "100 -> 120");
        assert_eq!(b[2].accepted, Some(7.0), "120 -> 140 (last sample 130)");
        let b = buckets(&samples, 140, 30, 2);
        assert_eq!(
            b[0].accepted,
            Some(5.0),
            "80..110 counts from the first sample, at 100"
        );
        assert_eq!(b[1].accepted, Some(7.0), "110 -> 140");
        let ring = Samples::default();
        for i in 0..(KEEP as u64 + 5) {
            ring.push(mk(i, i as f64));
        }
        assert_eq!(ring.first_time(), Some(5));
    }
}
