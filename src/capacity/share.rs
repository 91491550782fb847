//! One capacity limit shared by the live processes of a run (`run --join`):
//! each process's share, decided from what the others publish in their
//! membership rows. Pure logic; the membership heartbeat reads the rows,
//! calls [`next`] and publishes the result.
//!
//! The rule keeps the sum of the shares within the limit while processes
//! join, leave and change demand, without a coordinator:
//!
//! - every process publishes its share and whether it wants capacity (it
//!   holds segments to scan); its target is the limit split evenly among the
//!   live processes that want some (zero when it wants none: a process with
//!   nothing left to scan gives its share up);
//! - a share above its target comes down at once (applied before it is
//!   published, so the published share is never below what is used);
//! - a share below its target grows only into the headroom the published
//!   shares leave (limit minus their sum), split among the processes below
//!   their targets, and is published before it is used. A process that
//!   joins therefore starts at zero and gets capacity only once the others,
//!   having seen its membership, have given some up. A process that opens a
//!   run (nobody else is a member) starts at the whole limit.

/// What another live process publishes.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Peer {
    /// Its share, units per second.
    pub share: f64,
    /// Whether it wants capacity (holds segments to scan).
    pub wants: bool,
}

/// This process's next share of `limit` (and its target), given its current
/// `share`, whether it `wants` capacity, and what the other live processes
/// publish.
pub fn next(limit: f64, share: f64, wants: bool, peers: &[Peer]) -> (f64, f64) {
    let wanting = peers.iter().filter(|p| p.wants).count() + usize::from(wants);
    let even = if wanting == 0 {
        0.0
    } else {
        limit / wanting as f64
    };
    let target = if wants { even } else { 0.0 };
    if share >= target {
        return (target, target);
    }
    let published: f64 = peers.iter().map(|p| p.share).sum::<f64>() + share;
    let headroom = (limit - published).max(0.0);
    let below = 1 + peers.iter().filter(|p| p.wants && p.share < even).count();
    let grown = (share + headroom / below as f64).min(target);
    (grown, target)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn peer(share: f64, wants: bool) -> Peer {
        Peer { share, wants }
    }

    /// Runs every process's step in turn (each seeing the others' last
    /// published shares) and checks the sum never exceeds the limit.
    fn rounds(limit: f64, shares: &mut [f64], wants: &[bool], n: usize) {
        for _ in 0..n {
            for i in 0..shares.len() {
                let peers: Vec<Peer> = (0..shares.len())
                    .filter(|j| *j != i)
                    .map(|j| peer(shares[j], wants[j]))
                    .collect();
                shares[i] = next(limit, shares[i], wants[i], &peers).0;
                let sum: f64 = shares.iter().sum();
                assert!(sum <= limit * (1.0 + 1e-9), "{shares:?}");
            }
        }
    }

    #[test]
    fn a_process_alone_takes_the_limit_and_a_joiner_starts_at_zero() {
        assert_eq!(next(300.0, 0.0, true, &[]), (300.0, 300.0));
        // The joiner sees the first one at the whole limit: no headroom yet.
        assert_eq!(next(300.0, 0.0, true, &[peer(300.0, true)]), (0.0, 150.0));
        // The first one sees the joiner and comes down at once.
        assert_eq!(next(300.0, 300.0, true, &[peer(0.0, true)]), (150.0, 150.0));
        // Then the joiner grows into what was given up.
        assert_eq!(next(300.0, 0.0, true, &[peer(150.0, true)]), (150.0, 150.0));
    }

    #[test]
    fn shares_converge_to_an_even_split_within_the_limit_whatever_the_order() {
        let mut shares = [300.0, 0.0, 0.0];
        rounds(300.0, &mut shares, &[true, true, true], 4);
        for s in shares {
            assert!((s - 100.0).abs() < 1e-6, "{shares:?}");
        }
        // Two join at once while the first has everything: never over the limit.
        let mut shares = [0.0, 0.0, 300.0];
        rounds(300.0, &mut shares, &[true, true, true], 4);
        for s in shares {
            assert!((s - 100.0).abs() < 1e-6, "{shares:?}");
        }
    }

    #[test]
    fn a_process_with_nothing_left_gives_its_share_to_the_others() {
        let mut shares = [100.0, 100.0, 100.0];
        rounds(300.0, &mut shares, &[true, false, true], 3);
        assert_eq!(shares[1], 0.0);
        assert!((shares[0] - 150.0).abs() < 1e-6, "{shares:?}");
        assert!((shares[2] - 150.0).abs() < 1e-6, "{shares:?}");
    }
}
