//! The command line's side of subscriptions (`--subscribe`,
//! `--subscribe-world`, `--subscribe-list`): the rounds themselves are
//! [`geowall::driver::subscribe`]'s.

use std::sync::Arc;

use geowall::policy::Policy;

pub(crate) use geowall::driver::subscribe::{
    Follow, RULES_FILE as FILE, Round, Status, Subscription, UpdateEvent, fetch_first, follow,
    list_file, parse_interval as duration, refuse_blocked_server,
};

/// Reloads the rules as the instance was started and returns them; with
/// `true`, the running rules bundle may be compiled again (list bundles
/// changed), else only a newer one is taken.
pub(crate) type Reload = Arc<dyn Fn(bool) -> anyhow::Result<Policy> + Send + Sync>;

/// Says what a round did on standard error.
pub(crate) fn report(sub: &Subscription, round: Round<'_>) {
    match round {
        Round::Installed { sequence, what } => eprintln!(
            "geowall: subscription {}: installed sequence {sequence} ({what})",
            sub.url()
        ),
        Round::Failed(e) => eprintln!("geowall: subscription: {e}"),
    }
}
