//! Whether each address family's upstream network carries connections, as
//! the engine learns it from its own upstream connects. A network can have
//! a default route for a family that leads nowhere (IPv6 announced on a
//! link whose uplink has none): without geowall an app's `connect()` there
//! gets no answer and the app goes on with its other addresses (Happy
//! Eyeballs); through geowall the local stack accepts at once, so the app
//! waits on a connection that is reset later. Once connects of a family to
//! [`BROKEN_AFTER`] different addresses got no answer (or an unreachable)
//! with none answered in between, the family is taken as broken for a
//! while: new flows to it are refused at their first packet, as without a
//! route, and the apps use their other addresses at once. One answered
//! connect (accepted or refused by its server) clears it; the hold doubles
//! each time the family is found broken again, up to [`MAX_HOLD_NS`].

use std::net::IpAddr;

/// Connects to this many different addresses of a family, none answered,
/// and none answered in between, take the family as broken.
pub const BROKEN_AFTER: usize = 3;
/// How long a family is first taken as broken.
pub const FIRST_HOLD_NS: u64 = 60_000_000_000;
/// The longest hold.
pub const MAX_HOLD_NS: u64 = 600_000_000_000;

/// One family's record.
#[derive(Debug, Default, Clone, Copy)]
struct Family {
    /// The addresses whose connects went unanswered since the last one
    /// answered (at most [`BROKEN_AFTER`]).
    failed: [Option<IpAddr>; BROKEN_AFTER],
    /// Broken until then.
    until_ns: Option<u64>,
    /// The last hold.
    hold_ns: u64,
}

/// Both families' records. Memory: fixed.
#[derive(Debug, Default, Clone)]
pub struct Paths {
    v4: Family,
    v6: Family,
}

impl Paths {
    fn family(&mut self, ip: IpAddr) -> &mut Family {
        match ip {
            IpAddr::V4(_) => &mut self.v4,
            IpAddr::V6(_) => &mut self.v6,
        }
    }

    /// A connect to `ip` was answered (accepted, or refused by the
    /// server): its family carries connections.
    pub fn answered(&mut self, ip: IpAddr) {
        *self.family(ip) = Family::default();
    }

    /// A connect to `ip` got no answer, or an unreachable, at `now_ns`.
    /// True when this makes its family broken (see the module).
    pub fn unanswered(&mut self, ip: IpAddr, now_ns: u64) -> bool {
        let f = self.family(ip);
        if f.until_ns.is_some_and(|t| now_ns < t) || f.failed.contains(&Some(ip)) {
            return false;
        }
        let Some(slot) = f.failed.iter_mut().find(|s| s.is_none()) else {
            return false;
        };
        *slot = Some(ip);
        if f.failed.iter().any(Option::is_none) {
            return false;
        }
        f.hold_ns = if f.hold_ns == 0 {
            FIRST_HOLD_NS
        } else {
            f.hold_ns.saturating_mul(2).min(MAX_HOLD_NS)
        };
        f.until_ns = Some(now_ns.saturating_add(f.hold_ns));
        f.failed = [None; BROKEN_AFTER];
        true
    }

    /// Whether `ip`'s family is taken as broken at `now_ns`.
    pub fn broken(&self, ip: IpAddr, now_ns: u64) -> bool {
        let f = match ip {
            IpAddr::V4(_) => &self.v4,
            IpAddr::V6(_) => &self.v6,
        };
        f.until_ns.is_some_and(|t| now_ns < t)
    }

    /// Forgets what was learned (the host is on another network).
    pub fn forget(&mut self) {
        *self = Self::default();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const S: u64 = 1_000_000_000;

    fn ip(s: &str) -> IpAddr {
        s.parse().expect("ip")
    }

    #[test]
    fn three_addresses_unanswered_break_a_family_for_a_while() {
        let mut p = Paths::default();
        assert!(!p.unanswered(ip("2001:db8::1"), 0));
        // The same address again is no more evidence.
        assert!(!p.unanswered(ip("2001:db8::1"), S));
        assert!(!p.unanswered(ip("2001:db8::2"), S));
        assert!(!p.broken(ip("2001:db8::9"), S));
        assert!(p.unanswered(ip("2001:db8::3"), 2 * S));
        assert!(p.broken(ip("2001:db8::9"), 2 * S));
        // The other family is not.
        assert!(!p.broken(ip("192.0.2.1"), 2 * S));
        // Over when the hold is.
        assert!(p.broken(ip("2001:db8::9"), 2 * S + FIRST_HOLD_NS - 1));
        assert!(!p.broken(ip("2001:db8::9"), 2 * S + FIRST_HOLD_NS));
    }

    #[test]
    fn an_answer_between_failures_keeps_the_family() {
        let mut p = Paths::default();
        p.unanswered(ip("2001:db8::1"), 0);
        p.unanswered(ip("2001:db8::2"), 0);
        p.answered(ip("2001:db8::5"));
        assert!(!p.unanswered(ip("2001:db8::3"), 0));
        assert!(!p.broken(ip("2001:db8::3"), 0));
        // An answer in the other family is not one in this.
        p.unanswered(ip("2001:db8::4"), 0);
        p.answered(ip("192.0.2.1"));
        assert!(p.unanswered(ip("2001:db8::6"), 0));
    }

    #[test]
    fn the_hold_doubles_each_time_up_to_its_bound_and_an_answer_resets_it() {
        let mut p = Paths::default();
        let mut now = 0;
        let mut holds = Vec::new();
        for _ in 0..6 {
            for i in 1..=3 {
                p.unanswered(ip(&format!("2001:db8::{i}")), now);
            }
            let start = now;
            while p.broken(ip("2001:db8::9"), now) {
                now += S;
            }
            holds.push((now - start) / S);
        }
        assert_eq!(holds, [60, 120, 240, 480, 600, 600]);
        p.answered(ip("2001:db8::7"));
        for i in 1..=3 {
            p.unanswered(ip(&format!("2001:db8::{i}")), now);
        }
        assert!(p.broken(ip("2001:db8::9"), now + FIRST_HOLD_NS - 1));
        assert!(!p.broken(ip("2001:db8::9"), now + FIRST_HOLD_NS));
        p.forget();
        assert!(!p.broken(ip("2001:db8::9"), now));
    }
}
