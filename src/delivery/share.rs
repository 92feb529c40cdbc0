//! Connection sharing in the trust space: when a connection opened for one recipient domain
//! may carry mail for another.
//!
//! The ANS whitelist declares, per domain, the operator certificate DNs allowed to receive its
//! mail; a few operators serve most domains (2025-02-28: one DN for 2,742 of 4,944 domains).
//! A connection to an operator's MX whose *verified* peer DN is declared for domain D is as good
//! for D as one opened for D: same host, same certificate, same pin. Sharing it, and putting
//! the recipients of such domains in one transaction, saves a mutual-TLS handshake per domain.
//! The pin itself is unchanged: every domain is checked against the DN the connection has
//! proven, before any of its recipients is sent (see [`split_by_pin`]).

use crate::pki::dn::Dn;

/// Whether a connection whose verified peer DN is `conn_dn` may carry mail for a domain that
/// declares `declared`. No verified DN (plain or unauthenticated TLS) never carries pinned mail.
pub fn may_carry(conn_dn: Option<&Dn>, declared: &[Dn]) -> bool {
    conn_dn.is_some_and(|dn| declared.contains(dn))
}

/// Groups pinned domains reached through the same route (transport and MX hosts) into
/// batches, each of which one peer certificate can serve as a whole: the domains of a batch
/// have at least one declared DN in common. `declared[i]` is the DN list of domain i; returns
/// batches of indexes, in first-seen order. A domain with no declared DN is alone.
pub fn batch_by_common_dn(declared: &[&[Dn]]) -> Vec<Vec<usize>> {
    // (indexes, the DNs every domain of the batch declares)
    let mut batches: Vec<(Vec<usize>, Vec<Dn>)> = Vec::new();
    for (i, dns) in declared.iter().enumerate() {
        let joined = batches.iter_mut().find_map(|(members, common)| {
            let narrowed: Vec<Dn> = common.iter().filter(|d| dns.contains(d)).cloned().collect();
            (!narrowed.is_empty()).then(|| {
                members.push(i);
                *common = narrowed;
            })
        });
        if joined.is_none() {
            batches.push((vec![i], dns.to_vec()));
        }
    }
    batches.into_iter().map(|(m, _)| m).collect()
}

/// The DNs a connection for a batch must present one of before anything more is said to it:
/// every DN declared by some domain of the batch. Each domain is then held to its own list by
/// [`split_by_pin`].
pub fn union_of(declared: &[&[Dn]]) -> Vec<Dn> {
    let mut all: Vec<Dn> = Vec::new();
    for d in declared.iter().flat_map(|l| l.iter()) {
        if !all.contains(d) {
            all.push(d.clone());
        }
    }
    all
}

/// Splits the domains of a batch (their declared DN lists) into those the connection may
/// carry and those it may not, by the connection's verified DN: (carried, refused) indexes.
pub fn split_by_pin(conn_dn: Option<&Dn>, declared: &[&[Dn]]) -> (Vec<usize>, Vec<usize>) {
    (0..declared.len()).partition(|&i| may_carry(conn_dn, declared[i]))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn dn(s: &str) -> Dn {
        Dn::parse_rfc4514(s).expect("test DN")
    }

    #[test]
    fn shared_when_declared_never_when_not() {
        let op = dn("CN=mx.operateur.test,OU=999999999900001,O=OPERATEUR,C=FR");
        let other = dn("CN=mx.autre.test,OU=999999999900002,O=AUTRE,C=FR");
        // The connection was opened for a.fr; b.fr declares the same DN, c.fr another one.
        let a = [op.clone()];
        let b = [other.clone(), op.clone()];
        let c = [other.clone()];
        assert!(may_carry(Some(&op), &a));
        assert!(
            may_carry(Some(&op), &b),
            "b.fr declares the connection's DN"
        );
        assert!(
            !may_carry(Some(&op), &c),
            "c.fr does not declare it: never shared"
        );
        assert!(
            !may_carry(None, &a),
            "an unverified connection carries no pinned mail"
        );
        assert!(
            !may_carry(Some(&op), &[]),
            "an undeclared domain is never carried"
        );
        // The DN comparison is the whitelist's (case and spacing insensitive), not textual.
        let spelled = dn("cn=MX.OPERATEUR.TEST, ou=999999999900001,o=operateur,c=fr");
        assert!(may_carry(Some(&spelled), &a));
        // Same CN, another organisation: not the declared DN.
        let lookalike = dn("CN=mx.operateur.test,OU=999999999900001,O=USURPATEUR,C=FR");
        assert!(!may_carry(Some(&lookalike), &a));
        let (carried, refused) = split_by_pin(Some(&op), &[&a, &b, &c]);
        assert_eq!((carried, refused), (vec![0, 1], vec![2]));
        let (carried, refused) = split_by_pin(Some(&other), &[&a, &b, &c]);
        assert_eq!((carried, refused), (vec![1, 2], vec![0]));
    }

    #[test]
    fn batches_need_a_common_dn() {
        let op = dn("CN=op,O=OP,C=FR");
        let x = dn("CN=x,O=X,C=FR");
        let y = dn("CN=y,O=Y,C=FR");
        let a = [op.clone()];
        let b = [op.clone(), x.clone()];
        let c = [x.clone()];
        let d = [y.clone()];
        let e: [Dn; 0] = [];
        let f = [op.clone()];
        // a, b and f share `op`; c shares `x` with b but not with a, so it starts its own batch;
        // d declares a DN nobody else does; e declares none.
        let batches = batch_by_common_dn(&[&a, &b, &c, &d, &e, &f]);
        assert_eq!(batches, vec![vec![0, 1, 5], vec![2], vec![3], vec![4]]);
        // Every batch has a DN all its members declare.
        let all: [&[Dn]; 6] = [&a, &b, &c, &d, &e, &f];
        for batch in batches.iter().filter(|b| b.len() > 1) {
            let first = all[batch[0]];
            assert!(first
                .iter()
                .any(|dn| batch.iter().all(|&i| all[i].contains(dn))));
        }
        assert_eq!(union_of(&[&a, &b, &c]), vec![op, x]);
    }
}
