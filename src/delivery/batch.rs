//! Batching: the recipients of one attempt grouped by route and, in the trust space, by the
//! operator DN they share, so that one connection serves every domain that declares it.

use super::*;
use crate::config::{NextHop, TlsPolicy};
use crate::message::{Envelope, Failure, FailureKind, Outcome, Recipient, TlsRefusal};
use crate::pki::dn::Dn;
use std::sync::Arc;

/// Recipients of one pinned domain (or, unpinned, all recipients of one destination) inside
/// a [`Batch`].
pub(super) struct Part<'a> {
    /// The recipients' domain when the DN pin depends on it (mutual TLS), else empty.
    pub(super) domain: String,
    /// The DNs the whitelist declares for `domain` (empty when unpinned).
    pub(super) declared: Arc<[Dn]>,
    /// Rest periods stay per (transport, destination, pinned domain), as `revive` expects.
    pub(super) dead_key: String,
    pub(super) rcpts: Rcpts<'a>,
}

/// Recipients that go in one transaction on one connection: one destination, or in the trust
/// space several domains reached by the same route whose declared DNs have one in common.
pub(super) struct Batch<'a> {
    pub(super) transport: String,
    /// The next hop (relay) or recipient domain (mx) whose hops are resolved at delivery
    /// when `hops` is empty.
    pub(super) destination: String,
    /// Connections are cached and limited per key: `transport|destination|` unpinned,
    /// `transport|route|pinned` pinned (the route is the next hop or the MX host names), so
    /// one operator's connections serve all the domains that declare its DN.
    pub(super) key: String,
    pub(super) pinned: bool,
    /// Next hops when batching had to resolve them (MX of pinned domains).
    pub(super) hops: Option<Vec<Hop>>,
    pub(super) parts: Vec<Part<'a>>,
}

impl Batch<'_> {
    pub(super) fn rcpts(&self) -> impl Iterator<Item = &(usize, &Recipient)> {
        self.parts.iter().flat_map(|p| p.rcpts.iter())
    }

    pub(super) fn declared(&self) -> Vec<&[Dn]> {
        self.parts.iter().map(|p| &p.declared[..]).collect()
    }
}

pub(super) type Rcpts<'a> = Vec<(usize, &'a Recipient)>;
/// Pinned parts of one (transport, route), with the route's hops.
pub(super) type RouteGroup<'a> = (String, String, Option<Vec<Hop>>, Vec<Part<'a>>);

/// What one batch came to.
pub(super) enum BatchResult {
    Done(Attempt),
    /// A batch of several domains met a peer DN declared for none of them: each domain is
    /// tried alone, so that each gets the refusal that names it.
    Split,
}

impl Agent {
    /// Sorts the recipients into batches. Unpinned: one batch per (transport, destination).
    /// Pinned (mutual TLS): one part per recipient domain, the route of each (next hop, or MX
    /// hosts resolved now), then domains of one route batched when a DN is declared for all
    /// of them. Recipients decided on the way (no transport, resting, undeclared domain, DNS
    /// failure) get their attempt in `out`.
    pub(super) async fn batches<'a>(
        &self,
        cfg: &DeliveryConfig,
        env: &'a Envelope,
        pending: &[usize],
        out: &mut Vec<Attempt>,
    ) -> Vec<Batch<'a>> {
        // (transport, destination, pinned domain) -> recipients, in first-seen order.
        let mut groups: Vec<(String, String, String, Rcpts<'a>)> = Vec::new();
        for &i in pending {
            let Some(r) = env.recipients.get(i) else {
                continue;
            };
            let Some(t) = cfg.transports.get(&r.transport) else {
                out.push(Attempt::local(
                    &r.transport,
                    vec![(
                        i,
                        Outcome::Deferred(Failure::new(
                            FailureKind::Local,
                            format!("transport {:?} is not configured", r.transport),
                        )),
                    )],
                ));
                continue;
            };
            let rcpt_domain = domain_of(&r.address);
            let destination = match &t.hop {
                NextHop::Relay(hp) => hp.to_string(),
                NextHop::Mx { .. } => rcpt_domain.clone(),
            };
            let domain = if t.tls == TlsPolicy::Mutual {
                rcpt_domain
            } else {
                String::new()
            };
            match groups
                .iter_mut()
                .find(|g| g.0 == r.transport && g.1 == destination && g.2 == domain)
            {
                Some(g) => g.3.push((i, r)),
                None => groups.push((r.transport.clone(), destination, domain, vec![(i, r)])),
            }
        }

        let mut batches = Vec::new();
        let mut pinned = Vec::new();
        for (transport, destination, domain, rcpts) in groups {
            // Unpinned: the destination is in the key; pinned, the route replaces it below.
            let dead_key = format!("{transport}|{destination}|{domain}");
            let decided = |o: Outcome| rcpts.iter().map(|(i, _)| (*i, o.clone())).collect();
            if domain.is_empty() {
                batches.push(Batch {
                    transport,
                    destination,
                    key: dead_key.clone(),
                    pinned: false,
                    hops: None,
                    parts: vec![Part {
                        domain,
                        declared: Arc::from(Vec::new()),
                        dead_key,
                        rcpts,
                    }],
                });
                continue;
            }
            if let Some((until_ms, failure)) = self.resting(&dead_key) {
                out.push(Attempt::local(
                    &transport,
                    decided(Outcome::Postponed { until_ms, failure }),
                ));
                continue;
            }
            let declared: Arc<[Dn]> = cfg.pins.declared_dns(&domain).into();
            if declared.is_empty() {
                let f = Failure::new(
                    FailureKind::Tls(TlsRefusal::DomainNotDeclared),
                    format!(
                        "{domain} is not declared in the MSSante whitelist: no operator certificate to expect, not sending"
                    ),
                );
                out.push(Attempt::local(&transport, decided(Outcome::Deferred(f))));
                continue;
            }
            pinned.push(Part {
                domain,
                declared,
                dead_key,
                rcpts,
            });
        }

        // The route of each pinned part, resolved together.
        let routes = futures::future::join_all(pinned.iter().map(|p| {
            let t = &p.rcpts[0].1.transport;
            async move {
                match cfg.transports.get(t).map(|t| &t.hop) {
                    Some(NextHop::Relay(hp)) => Ok((hp.to_string(), None)),
                    Some(NextHop::Mx { port }) => cfg
                        .resolver
                        .mx_hops(&p.domain, *port)
                        .await
                        .map(|hops| (route_of(&hops), Some(hops))),
                    None => Err(ResolveError::Temporary("transport vanished".into())),
                }
            }
        }))
        .await;
        // (transport, route) -> parts and their hops.
        let mut by_route: Vec<RouteGroup<'a>> = Vec::new();
        for (part, route) in pinned.into_iter().zip(routes) {
            let transport = part.rcpts[0].1.transport.clone();
            let decided = |o: Outcome| part.rcpts.iter().map(|(i, _)| (*i, o.clone())).collect();
            let (route, hops) = match route {
                Ok(r) => r,
                Err(ResolveError::Permanent(e)) => {
                    let f = Failure::new(FailureKind::Dns, e);
                    out.push(Attempt::local(&transport, decided(Outcome::Failed(f))));
                    continue;
                }
                Err(ResolveError::Temporary(e)) => {
                    let f = Failure::new(FailureKind::Dns, e);
                    out.push(Attempt::local(&transport, decided(Outcome::Deferred(f))));
                    continue;
                }
            };
            match by_route
                .iter_mut()
                .find(|g| g.0 == transport && g.1 == route)
            {
                Some(g) => g.3.push(part),
                None => by_route.push((transport, route, hops, vec![part])),
            }
        }
        for (transport, route, hops, parts) in by_route {
            let declared: Vec<&[Dn]> = parts.iter().map(|p| &p.declared[..]).collect();
            let plan = share::batch_by_common_dn(&declared);
            let mut slots: Vec<Option<Part>> = parts.into_iter().map(Some).collect();
            for members in plan {
                let parts: Vec<Part> = members.iter().filter_map(|&i| slots[i].take()).collect();
                batches.push(Batch {
                    transport: transport.clone(),
                    destination: parts.first().map(|p| p.domain.clone()).unwrap_or_default(),
                    key: format!("{transport}|{route}|pinned"),
                    pinned: true,
                    hops: hops.clone(),
                    parts,
                });
            }
        }
        batches
    }
}
