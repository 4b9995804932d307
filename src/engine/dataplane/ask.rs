//! Flows held for an answer. A new flow an `ask` rule matches is held
//! (a TCP connection accepted locally with its first bytes kept, a UDP
//! flow's first datagrams kept, echo requests dropped; nothing opened
//! upstream) while a question waits; flows of the same app to the same
//! destination under the same rule share one question. The answer settles
//! the flows held with it: for them alone ("once"), for the app and the
//! rule while geowall runs ("app"), or for the app and the destination in
//! the local answers file, across restarts ("always", kept by the caller
//! from the [`KeptAnswer`] that [`super::Engine::answer`] returns).
//! Unanswered, the rule's default applies at its timeout. Answers are
//! consulted only where a rule asks: a kept "allow" never lifts a block
//! rule.

use std::collections::{BTreeMap, HashMap};

use serde::{Deserialize, Serialize};

use std::collections::VecDeque;

use super::{DatagramKey, EngineCounters, Event, EventKind, FlowId, FlowProto, Output, TcpKey};
use crate::engine::FlowCore;
use crate::policy::{Answered, Ask, Verdict};

/// Questions waiting at once, at most; past it, a new flow an `ask` rule
/// matches gets the rule's default at once ([`Answered::Busy`]).
pub const MAX_PROMPTS: usize = 256;
/// Flows held under one question, at most (past it, like
/// [`MAX_PROMPTS`]).
pub const MAX_FLOWS_PER_PROMPT: usize = 64;
/// "app" answers kept while geowall runs, at most (past it the oldest
/// goes).
pub const MAX_APP_ANSWERS: usize = 4_096;
/// Answers kept in the local answers file, at most.
pub const MAX_KEPT: usize = 4_096;

/// A question's number, as events and [`super::Engine::answer`] name it.
pub type PromptId = u64;

/// A held flow.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Held {
    Tcp(TcpKey),
    Datagram(DatagramKey),
}

/// What a question is about.
#[derive(Debug, Clone)]
pub struct Prompt {
    /// The app that asked to connect (`None` when the platform cannot
    /// tell).
    pub app: Option<String>,
    /// The `ask` rule.
    pub rule: String,
    /// What a person calls the server (its name, else its address).
    pub destination: String,
    /// The first held flow's kind.
    pub proto: FlowProto,
    /// Flows held under it.
    pub flows: usize,
    /// The rule's terms.
    pub ask: Ask,
    /// When the default applies (the engine's clock, ns).
    pub deadline_ns: u64,
    held: Vec<Held>,
}

/// How far a user's answer reaches.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Scope {
    /// The flows held under this question.
    Once,
    /// Every flow of this app that this rule asks about, while geowall
    /// runs.
    App,
    /// This app reaching this destination wherever a rule asks, kept in
    /// the local answers file across restarts.
    Always,
}

impl Scope {
    /// How a verdict settled by this answer says it came.
    pub fn answered(self) -> Answered {
        match self {
            Scope::Once => Answered::Once,
            Scope::App => Answered::App,
            Scope::Always => Answered::Always,
        }
    }

    /// Reads `once`, `app` or `always`.
    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "once" => Some(Scope::Once),
            "app" => Some(Scope::App),
            "always" => Some(Scope::Always),
            _ => None,
        }
    }
}

/// A user's answer to a question.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Answer {
    /// Allow (else block).
    pub allow: bool,
    /// How far it reaches.
    pub scope: Scope,
}

/// An answer kept in the local answers file: this app reaching this
/// destination is allowed or blocked wherever a rule asks.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct KeptAnswer {
    /// The app (absent: flows whose app is not known).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub app: Option<String>,
    /// A server name or an address.
    pub destination: String,
    /// `allow` or `block`.
    pub action: KeptAction,
    /// The rule that asked (for the reader; it does not narrow the answer).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rule: Option<String>,
    /// When it was answered (RFC 3339, for the reader).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub answered: Option<String>,
}

/// What a kept answer says.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum KeptAction {
    /// Allow.
    Allow,
    /// Block.
    Block,
}

/// Why an answer was not taken.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AnswerError {
    /// No such question is waiting (answered already, timed out, or never
    /// asked).
    NoPrompt(PromptId),
}

impl std::fmt::Display for AnswerError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            AnswerError::NoPrompt(id) => write!(
                f,
                "question {id} is not waiting (answered already, timed out, or never asked)"
            ),
        }
    }
}

impl std::error::Error for AnswerError {}

/// Questions settled by one answer or timeout.
#[derive(Debug)]
pub(super) struct Settled {
    pub(super) questions: Vec<(PromptId, Prompt)>,
    pub(super) allow: bool,
    pub(super) how: Answered,
}

/// The parts of the engine a new flow's question touches, borrowed beside
/// the flow itself.
pub(super) struct Asking<'e> {
    pub(super) asks: &'e mut Asks,
    pub(super) out: &'e mut VecDeque<Output>,
    pub(super) counters: &'e mut EngineCounters,
    /// The engine's flow-deadline bound, lowered to the question's.
    pub(super) wake_ns: &'e mut Option<u64>,
}

impl Asking<'_> {
    /// For new flow `held` (`id`, `proto`, facts `core`) whose verdict
    /// `v` is an unsettled `ask`: holds it under its question (the `asked`
    /// event queued, the deadline filed) and returns true; with the bounds
    /// full, settles `v` and the flow by the rule's default at once
    /// ([`Answered::Busy`], counted) and returns false. Any other verdict:
    /// false, nothing done.
    pub(super) fn hold_or_settle(
        &mut self,
        held: Held,
        id: FlowId,
        proto: FlowProto,
        core: &mut FlowCore,
        v: &mut Verdict<'_>,
        now_ns: u64,
    ) -> bool {
        let Some(a) = v.ask() else {
            return false;
        };
        match self.asks.hold(held, id, proto, core, v, now_ns) {
            Some(ev) => {
                self.counters.asked += 1;
                if let Some(t) = ev.prompt.and_then(|q| self.asks.deadline_of(q)) {
                    *self.wake_ns = Some(self.wake_ns.map_or(t, |w| w.min(t)));
                }
                self.out.push_back(Output::Event(Box::new(ev)));
                true
            }
            None => {
                self.counters.asked_busy += 1;
                *v = v.answer(a.default_allow, Answered::Busy);
                core.answer = Some((a.default_allow, Answered::Busy));
                false
            }
        }
    }
}

/// The questions waiting and the answers given.
#[derive(Debug, Default)]
pub(super) struct Asks {
    waiting: BTreeMap<PromptId, Prompt>,
    /// "app" answers: (app, rule) → allow, with the order they came in.
    app: HashMap<(Option<String>, String), (bool, u64)>,
    app_seq: u64,
    kept: Vec<KeptAnswer>,
    next: PromptId,
}

impl Asks {
    /// Replaces the kept answers (at most [`MAX_KEPT`], the last ones).
    pub(super) fn keep(&mut self, mut kept: Vec<KeptAnswer>) {
        if kept.len() > MAX_KEPT {
            kept.drain(..kept.len() - MAX_KEPT);
        }
        self.kept = kept;
    }

    /// The verdict with an `ask` settled by an answer given before (for
    /// this flow, for its app and the rule, or kept for its app and one of
    /// its server's names or its address); any other verdict unchanged.
    pub(super) fn resolve<'p>(&self, v: Verdict<'p>, core: &FlowCore) -> Verdict<'p> {
        if v.ask().is_none() {
            return v;
        }
        if let Some((allow, how)) = core.answer {
            return v.answer(allow, how);
        }
        let rule = v.rule.map_or("", |(_, r)| r.name.as_str());
        if !self.app.is_empty()
            && let Some(&(allow, _)) = self.app.get(&(core.ctx.app.clone(), rule.to_owned()))
        {
            return v.answer(allow, Answered::App);
        }
        let address = core.server.ip().to_string();
        let names = core
            .sniffer
            .server_name
            .iter()
            .chain(core.ctx.names.iter())
            .map(String::as_str)
            .chain(std::iter::once(address.as_str()));
        for n in names {
            // The latest answer for a destination wins.
            if let Some(k) = self.kept.iter().rev().find(|k| {
                k.app == core.ctx.app && k.destination.eq_ignore_ascii_case(n.trim_end_matches('.'))
            }) {
                return v.answer(k.action == KeptAction::Allow, Answered::Always);
            }
        }
        v
    }

    /// Holds `held`, flow `id` (whose facts are `core`), under the
    /// question `v` (an unsettled `ask`) raises, joining a waiting question
    /// about the same app, rule and destination. Returns the `asked` event,
    /// or `None` when the bounds are full (then the rule's default applies
    /// at once, [`Answered::Busy`]).
    pub(super) fn hold(
        &mut self,
        held: Held,
        id: FlowId,
        proto: FlowProto,
        core: &FlowCore,
        v: &Verdict<'_>,
        now_ns: u64,
    ) -> Option<Event> {
        let ask = v.ask()?;
        let rule = v.rule.map_or_else(String::new, |(_, r)| r.name.clone());
        let destination = core.destination();
        let joined = self
            .waiting
            .iter_mut()
            .find(|(_, q)| q.app == core.ctx.app && q.rule == rule && q.destination == destination);
        let question = match joined {
            Some((&qid, q)) => {
                if q.held.len() >= MAX_FLOWS_PER_PROMPT {
                    return None;
                }
                q.held.push(held);
                q.flows += 1;
                qid
            }
            None => {
                if self.waiting.len() >= MAX_PROMPTS {
                    return None;
                }
                self.next += 1;
                self.waiting.insert(
                    self.next,
                    Prompt {
                        app: core.ctx.app.clone(),
                        rule,
                        destination,
                        proto,
                        flows: 1,
                        ask,
                        deadline_ns: now_ns + u64::from(ask.timeout_s) * 1_000_000_000,
                        held: vec![held],
                    },
                );
                self.next
            }
        };
        let mut ev = Event::of_flow(EventKind::Asked, id, proto, core, Some(v));
        ev.prompt = Some(question);
        ev.detail = Some(format!(
            "held until answered; unanswered after {} s: {}",
            ask.timeout_s,
            if ask.default_allow { "allow" } else { "block" }
        ));
        Some(ev)
    }

    /// Takes the user's `reply` to question `id`: the questions it settles
    /// (for "app", every waiting one of the app under the rule; for
    /// "always", every waiting one of the app to the destination), and the
    /// answer to keep for "always".
    pub(super) fn answer(
        &mut self,
        id: PromptId,
        reply: Answer,
    ) -> Result<(Settled, Option<KeptAnswer>), AnswerError> {
        let q = self.waiting.remove(&id).ok_or(AnswerError::NoPrompt(id))?;
        let same = |o: &Prompt| match reply.scope {
            Scope::Once => false,
            Scope::App => o.app == q.app && o.rule == q.rule,
            Scope::Always => o.app == q.app && o.destination == q.destination,
        };
        let others: Vec<PromptId> = self
            .waiting
            .iter()
            .filter(|(_, o)| same(o))
            .map(|(&i, _)| i)
            .collect();
        let kept = match reply.scope {
            Scope::Once => None,
            Scope::App => {
                if self.app.len() >= MAX_APP_ANSWERS
                    && let Some(oldest) = self
                        .app
                        .iter()
                        .min_by_key(|(_, (_, seq))| *seq)
                        .map(|(k, _)| k.clone())
                {
                    self.app.remove(&oldest);
                }
                self.app_seq += 1;
                self.app
                    .insert((q.app.clone(), q.rule.clone()), (reply.allow, self.app_seq));
                None
            }
            Scope::Always => {
                let k = KeptAnswer {
                    app: q.app.clone(),
                    destination: q.destination.clone(),
                    action: if reply.allow {
                        KeptAction::Allow
                    } else {
                        KeptAction::Block
                    },
                    rule: Some(q.rule.clone()),
                    answered: None,
                };
                self.kept
                    .retain(|o| !(o.app == k.app && o.destination == k.destination));
                if self.kept.len() >= MAX_KEPT {
                    self.kept.remove(0);
                }
                self.kept.push(k.clone());
                Some(k)
            }
        };
        let mut questions = vec![(id, q)];
        questions.extend(
            others
                .into_iter()
                .filter_map(|i| self.waiting.remove(&i).map(|q| (i, q))),
        );
        Ok((
            Settled {
                questions,
                allow: reply.allow,
                how: reply.scope.answered(),
            },
            kept,
        ))
    }

    /// The questions whose time is up, each settled by its rule's default.
    pub(super) fn expire(&mut self, now_ns: u64) -> Vec<Settled> {
        let due: Vec<PromptId> = self
            .waiting
            .iter()
            .filter(|(_, q)| q.deadline_ns <= now_ns)
            .map(|(&i, _)| i)
            .collect();
        due.into_iter()
            .filter_map(|i| self.waiting.remove(&i).map(|q| (i, q)))
            .map(|(i, q)| Settled {
                allow: q.ask.default_allow,
                how: Answered::Timeout,
                questions: vec![(i, q)],
            })
            .collect()
    }

    /// When question `id` gets its default, if it is waiting.
    pub(super) fn deadline_of(&self, id: PromptId) -> Option<u64> {
        self.waiting.get(&id).map(|q| q.deadline_ns)
    }

    /// The earliest deadline of a waiting question.
    pub(super) fn deadline(&self) -> Option<u64> {
        self.waiting.values().map(|q| q.deadline_ns).min()
    }

    /// The questions waiting, oldest first.
    pub(super) fn waiting(&self) -> impl Iterator<Item = (PromptId, &Prompt)> {
        self.waiting.iter().map(|(&i, q)| (i, q))
    }
}

impl Prompt {
    /// The question `id` as JSON: `prompt`, `app`, `rule`, `destination`,
    /// `proto`, `flows`, `default`, `timeout_s`.
    pub fn to_json(&self, id: PromptId) -> serde_json::Value {
        serde_json::json!({
            "prompt": id,
            "app": self.app,
            "rule": self.rule,
            "destination": self.destination,
            "proto": self.proto,
            "flows": self.flows,
            "default": if self.ask.default_allow { "allow" } else { "block" },
            "timeout_s": self.ask.timeout_s,
        })
    }

    /// The flows held under it.
    pub(super) fn held(&self) -> &[Held] {
        &self.held
    }
}
