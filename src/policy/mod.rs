//! Policy: the rule language, lists, and compiled policies evaluated on a
//! flow's facts.
//!
//! A [`Policy`] is compiled once from TOML ([`rules`]) and is immutable;
//! [`Policy::evaluate`] gives a [`Verdict`] naming the deciding rule and the
//! jurisdiction layer that made it match. [`PolicyHandle`] swaps policies
//! atomically while traffic is evaluated.

pub mod app;
pub mod bundle;
pub mod diff;
pub mod eval;
pub mod lists;
pub mod rules;

pub use eval::{Answered, Facts, LayerMatch, PolicyHandle, RuleTrace, Verdict};
pub use rules::{
    ASK_TIMEOUT_DEFAULT, ASK_TIMEOUT_MAX, Action, Ask, BlockMode, DnsBlockAnswer, DnsEmptyAnswer,
    DnsFilter, DnsSettings, Endpoint, Policy, Rule, Traffic, Transport,
};

#[cfg(test)]
mod tests;
