//! The queue page's decisions: which messages a filter keeps, each message's status, and the
//! domain x age table (Postfix's `qshape`). Pure, unit-tested; the page only renders them.

use crate::queue::QueueItem;

/// The queue page's filters, as its form sends them (empty: no filter).
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Deserialize, serde::Serialize)]
#[serde(default)]
pub struct QueueFilter {
    pub establishment: String,
    /// Part of the envelope sender.
    pub sender: String,
    /// Part of one recipient's address.
    pub recipient: String,
    /// A recipient domain, its subdomains included.
    pub domain: String,
    /// new, deferred or held.
    pub status: String,
    /// At least this old ("5m", "1h", "1d").
    pub age: String,
}

pub const STATUSES: [&str; 3] = ["new", "deferred", "held"];
pub const AGES: [&str; 6] = ["5m", "30m", "1h", "4h", "1d", "3d"];

impl QueueFilter {
    pub fn is_empty(&self) -> bool {
        *self == QueueFilter::default()
    }

    /// The filter as a query string, for links that keep it.
    pub fn query(&self) -> String {
        serde_urlencoded::to_string(self).unwrap_or_default()
    }

    /// Problems with the values (an unknown status or age), shown above the table.
    pub fn problems(&self) -> Vec<String> {
        let mut p = Vec::new();
        if !self.status.is_empty() && !STATUSES.contains(&self.status.as_str()) {
            p.push(format!(
                "status {:?}: one of {}",
                self.status,
                STATUSES.join(", ")
            ));
        }
        if !self.age.is_empty() && crate::config::parse_duration(&self.age).is_err() {
            p.push(format!("age {:?}: a duration such as 5m, 1h, 1d", self.age));
        }
        p
    }

    /// Whether `item` passes; `owners` are the establishments it belongs to.
    pub fn keeps(&self, item: &QueueItem, owners: &[String], now: u64) -> bool {
        let has =
            |hay: &str, needle: &str| hay.to_lowercase().contains(&needle.trim().to_lowercase());
        if !self.establishment.is_empty() && !owners.contains(&self.establishment) {
            return false;
        }
        if !self.sender.trim().is_empty() && !has(&item.sender, &self.sender) {
            return false;
        }
        if !self.recipient.trim().is_empty()
            && !item
                .recipients
                .iter()
                .any(|r| has(&r.address, &self.recipient))
        {
            return false;
        }
        let domain = self.domain.trim().trim_start_matches('@').to_lowercase();
        if !domain.is_empty()
            && !item.recipients.iter().any(|r| {
                let d = crate::delivery::domain_of(&r.address);
                d == domain || d.ends_with(&format!(".{domain}"))
            })
        {
            return false;
        }
        if !self.status.is_empty() && status(item) != self.status {
            return false;
        }
        if let Ok(min) = crate::config::parse_duration(&self.age) {
            if !self.age.is_empty() && age(item, now) < min.as_secs() {
                return false;
            }
        }
        true
    }
}

/// held, deferred (tried, or postponed while its destination rests after a failure, and
/// waiting) or new (not tried yet).
pub fn status(item: &QueueItem) -> &'static str {
    if item.held {
        "held"
    } else if item.attempts > 0 || item.recipients.iter().any(|r| r.last_error.is_some()) {
        "deferred"
    } else {
        "new"
    }
}

/// Seconds since the message was received.
pub fn age(item: &QueueItem, now: u64) -> u64 {
    now.saturating_sub(item.received)
}

/// "42s", "5m", "3h", "2d".
pub fn fmt_age(secs: u64) -> String {
    match secs {
        s if s < 120 => format!("{s}s"),
        s if s < 7200 => format!("{}m", s / 60),
        s if s < 172_800 => format!("{}h", s / 3600),
        s => format!("{}d", s / 86400),
    }
}

/// qshape's columns: upper bounds in minutes, doubling; the last is open.
pub const SHAPE_BOUNDS: [u64; 9] = [5, 10, 20, 40, 80, 160, 320, 640, 1280];

pub fn shape_columns() -> Vec<String> {
    let mut c: Vec<String> = SHAPE_BOUNDS.iter().map(|m| format!("{m}m")).collect();
    c.push(format!("{}m+", SHAPE_BOUNDS[SHAPE_BOUNDS.len() - 1]));
    c
}

/// One row of the domain x age table: pending recipients of a domain by age.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ShapeRow {
    pub domain: String,
    pub total: u64,
    pub by_age: Vec<u64>,
}

/// The domain x age table of pending recipients, busiest domains first; beyond `max_rows`
/// domains the rest are summed in one "other domains" row. The first row is the total.
pub fn qshape(items: &[&QueueItem], now: u64, max_rows: usize) -> Vec<ShapeRow> {
    use std::collections::HashMap;
    let cols = SHAPE_BOUNDS.len() + 1;
    let mut by_domain: HashMap<String, Vec<u64>> = HashMap::new();
    for it in items {
        let minutes = age(it, now) / 60;
        let col = SHAPE_BOUNDS
            .iter()
            .position(|b| minutes < *b)
            .unwrap_or(cols - 1);
        for r in it.recipients.iter().filter(|r| r.status == "pending") {
            let d = crate::delivery::domain_of(&r.address);
            by_domain.entry(d).or_insert_with(|| vec![0; cols])[col] += 1;
        }
    }
    let mut rows: Vec<ShapeRow> = by_domain
        .into_iter()
        .map(|(domain, by_age)| ShapeRow {
            domain,
            total: by_age.iter().sum(),
            by_age,
        })
        .collect();
    rows.sort_by(|a, b| b.total.cmp(&a.total).then_with(|| a.domain.cmp(&b.domain)));
    let mut total = ShapeRow {
        domain: "TOTAL".into(),
        total: 0,
        by_age: vec![0; cols],
    };
    for r in &rows {
        total.total += r.total;
        for (t, v) in total.by_age.iter_mut().zip(&r.by_age) {
            *t += v;
        }
    }
    if rows.len() > max_rows {
        let rest = rows.split_off(max_rows);
        let mut other = ShapeRow {
            domain: format!("({} other domains)", rest.len()),
            total: 0,
            by_age: vec![0; cols],
        };
        for r in rest {
            other.total += r.total;
            for (t, v) in other.by_age.iter_mut().zip(&r.by_age) {
                *t += v;
            }
        }
        rows.push(other);
    }
    rows.insert(0, total);
    rows
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::queue::QueueRcpt;

    fn item(
        id: &str,
        sender: &str,
        rcpts: &[(&str, &str)],
        age_s: u64,
        attempts: u32,
        held: bool,
    ) -> QueueItem {
        QueueItem {
            id: id.into(),
            received: NOW - age_s,
            establishment: None,
            sender: sender.into(),
            size: 10,
            held,
            attempts,
            next_attempt: 0,
            recipients: rcpts
                .iter()
                .map(|(a, s)| QueueRcpt {
                    address: a.to_string(),
                    status: s.to_string(),
                    last_error: None,
                    transport: String::new(),
                })
                .collect(),
        }
    }

    const NOW: u64 = 1_000_000;

    #[test]
    fn filters_by_each_field() {
        let a = item(
            "A",
            "Dr.X@chu-a.mssante.fr",
            &[("y@op.mssante.fr", "pending")],
            30,
            0,
            false,
        );
        let b = item(
            "B",
            "z@chu-b.mssante.fr",
            &[("w@svc.op.mssante.fr", "pending")],
            7200,
            3,
            false,
        );
        let c = item("C", "", &[("q@other.fr", "pending")], 90_000, 1, true);
        let keep = |f: &QueueFilter, it: &QueueItem, owners: &[&str]| {
            let owners: Vec<String> = owners.iter().map(|s| s.to_string()).collect();
            f.keeps(it, &owners, NOW)
        };
        let f = QueueFilter::default();
        assert!(f.is_empty());
        assert!(keep(&f, &a, &[]) && keep(&f, &b, &[]) && keep(&f, &c, &[]));
        let f = QueueFilter {
            sender: "dr.x".into(),
            ..Default::default()
        };
        assert!(keep(&f, &a, &[]) && !keep(&f, &b, &[]));
        let f = QueueFilter {
            domain: "op.mssante.fr".into(),
            ..Default::default()
        };
        assert!(keep(&f, &a, &[]) && keep(&f, &b, &[]) && !keep(&f, &c, &[]));
        let f = QueueFilter {
            domain: "@svc.op.mssante.fr".into(),
            ..Default::default()
        };
        assert!(!keep(&f, &a, &[]) && keep(&f, &b, &[]));
        let f = QueueFilter {
            recipient: "Q@".into(),
            ..Default::default()
        };
        assert!(keep(&f, &c, &[]) && !keep(&f, &a, &[]));
        let f = QueueFilter {
            status: "deferred".into(),
            ..Default::default()
        };
        assert!(
            keep(&f, &b, &[]) && !keep(&f, &a, &[]) && !keep(&f, &c, &[]),
            "held is not deferred"
        );
        assert_eq!(
            (status(&a), status(&b), status(&c)),
            ("new", "deferred", "held")
        );
        let mut postponed = a.clone();
        postponed.recipients[0].last_error = Some("destination resting".into());
        assert_eq!(
            status(&postponed),
            "deferred",
            "not attempted, but waiting after a failure"
        );
        let f = QueueFilter {
            age: "1h".into(),
            ..Default::default()
        };
        assert!(!keep(&f, &a, &[]) && keep(&f, &b, &[]) && keep(&f, &c, &[]));
        let f = QueueFilter {
            establishment: "chu-a".into(),
            ..Default::default()
        };
        assert!(keep(&f, &a, &["chu-a"]) && !keep(&f, &b, &["chu-b"]) && !keep(&f, &c, &[]));
        let f = QueueFilter {
            status: "stuck".into(),
            age: "soon".into(),
            ..Default::default()
        };
        assert_eq!(f.problems().len(), 2);
        assert!(QueueFilter {
            age: "1h".into(),
            ..Default::default()
        }
        .query()
        .contains("age=1h"));
    }

    #[test]
    fn qshape_counts_pending_recipients_by_domain_and_age() {
        let items = [
            item(
                "A",
                "s",
                &[
                    ("a@x.fr", "pending"),
                    ("b@x.fr", "pending"),
                    ("c@y.fr", "delivered"),
                ],
                60,
                0,
                false,
            ),
            item("B", "s", &[("a@y.fr", "pending")], 15 * 60, 1, false),
            item("C", "s", &[("a@x.fr", "pending")], 2000 * 60, 9, false),
            item("D", "s", &[("a@z.fr", "pending")], 60, 0, false),
        ];
        let refs: Vec<&QueueItem> = items.iter().collect();
        let s = qshape(&refs, NOW, 10);
        assert_eq!(shape_columns().len(), 10);
        assert_eq!(s[0].domain, "TOTAL");
        assert_eq!(s[0].total, 5);
        assert_eq!(s[1].domain, "x.fr");
        assert_eq!(s[1].by_age, vec![2, 0, 0, 0, 0, 0, 0, 0, 0, 1]);
        assert_eq!(s[2].domain, "y.fr");
        assert_eq!(s[2].by_age[2], 1, "15 minutes: the 10-20m column");
        let s = qshape(&refs, NOW, 1);
        assert_eq!(s.len(), 3);
        assert_eq!(s[2].domain, "(2 other domains)");
        assert_eq!(s[2].total, 2);
        assert_eq!(fmt_age(59), "59s");
        assert_eq!(fmt_age(3600), "60m");
        assert_eq!(fmt_age(3 * 86400), "3d");
    }
}
