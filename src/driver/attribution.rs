//! Who owns each new flow, found off the engine's thread: a thread of its
//! own asks the kernel ([`super::procs::Finder`]) while the flow waits,
//! and when the answer is in the engine is told. A TCP connection is
//! accepted at once and judged when its owner is known
//! ([`Engine::await_owner`], [`Engine::owner_found`]), so the app's
//! handshake does not wait on the search; a datagram flow's first packets
//! are held here (bounded) and handed over after the answer
//! ([`Engine::hint_owner`]). The engine never waits, and never reads
//! `/proc`.
//!
//! Bounds: at most [`MAX_WAITING`] flows wait, each held one with at most
//! [`PACKETS_PER_FLOW`] packets; a flow past the first bound goes on at
//! once without an owner, packets past the second are dropped (the app
//! sends again), and no flow waits longer than [`MAX_WAIT`].

use std::collections::HashMap;
use std::time::{Duration, Instant};

use tokio::sync::mpsc;

use super::procs::Finder;
use crate::engine::dataplane::{AppOwner, Engine, OwnerKey};

/// Flows waiting for their owner at most.
pub const MAX_WAITING: usize = 1_024;
/// Packets held per waiting flow at most.
pub const PACKETS_PER_FLOW: usize = 16;
/// The longest a flow waits for its owner before it goes on without one.
pub const MAX_WAIT: Duration = Duration::from_millis(300);

struct Waiting {
    packets: Vec<Vec<u8>>,
    since: Instant,
}

/// What attribution did, for the run's summary.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct AttributionCounters {
    /// Flows whose owner was asked for.
    pub asked: u64,
    /// Of those, flows whose owner was found.
    pub found: u64,
    /// Flows that went on without an owner: too many waiting, or the
    /// answer was late.
    pub unattributed: u64,
    /// Packets dropped while their flow waited (past
    /// [`PACKETS_PER_FLOW`]).
    pub dropped: u64,
}

/// The driver's side of attribution.
pub struct Attribution {
    ask: std::sync::mpsc::SyncSender<(OwnerKey, Instant)>,
    answers: mpsc::UnboundedReceiver<(OwnerKey, AppOwner)>,
    /// Flows whose first packets are held here.
    waiting: HashMap<OwnerKey, Waiting>,
    /// TCP connections the engine accepted while their owner is looked
    /// for, and since when.
    accepted: HashMap<OwnerKey, Instant>,
    /// What it did.
    pub counters: AttributionCounters,
}

impl std::fmt::Debug for Attribution {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Attribution")
            .field("waiting", &self.waiting.len())
            .field("accepted", &self.accepted.len())
            .field("counters", &self.counters)
            .finish_non_exhaustive()
    }
}

impl Attribution {
    /// Starts the thread that finds owners.
    ///
    /// # Errors
    /// The thread could not be started.
    pub fn start() -> std::io::Result<Self> {
        Self::start_in(None)
    }

    /// Starts the thread that finds owners, looking up sockets in the
    /// network namespace `netns` (`/run/netns/NAME`: the apps' namespace,
    /// where the TUN is) instead of this process's; processes are found
    /// through `/proc` as always.
    ///
    /// # Errors
    /// The thread could not be started or could not enter the namespace.
    pub fn start_in(netns: Option<&str>) -> std::io::Result<Self> {
        let (ask, questions) = std::sync::mpsc::sync_channel::<(OwnerKey, Instant)>(MAX_WAITING);
        let (tell, answers) = mpsc::unbounded_channel();
        let ns = match netns {
            Some(n) => Some(std::fs::File::open(format!("/run/netns/{n}")).map_err(|e| {
                std::io::Error::new(e.kind(), format!("finding owners in netns {n}: {e}"))
            })?),
            None => None,
        };
        let (ready, entered) = std::sync::mpsc::channel::<std::io::Result<()>>();
        std::thread::Builder::new()
            .name("geowall-owners".into())
            .spawn(move || {
                // This thread alone moves: its sock_diag socket is then
                // the namespace's.
                if let Some(f) = ns {
                    let r = nix::sched::setns(f, nix::sched::CloneFlags::CLONE_NEWNET)
                        .map_err(|e| std::io::Error::other(format!("entering the namespace: {e}")));
                    let failed = r.is_err();
                    let _ = ready.send(r);
                    if failed {
                        return;
                    }
                } else {
                    let _ = ready.send(Ok(()));
                }
                let mut finder = Finder::new();
                // Ends when the driver drops its side.
                while let Ok((key, asked)) = questions.recv() {
                    let (t, local, remote) = key;
                    // A flow let go already needs no answer; a search
                    // never outlives its flow's wait (so one slow search
                    // cannot make the next ones late).
                    let deadline = asked + MAX_WAIT;
                    let owner = if Instant::now() >= deadline {
                        AppOwner::default()
                    } else {
                        finder.owner_by(t, local, remote, Some(deadline))
                    };
                    if tell.send((key, owner)).is_err() {
                        break;
                    }
                }
            })?;
        entered
            .recv()
            .map_err(|_| std::io::Error::other("the owners' thread ended at once"))??;
        Ok(Self {
            ask,
            answers,
            waiting: HashMap::new(),
            accepted: HashMap::new(),
            counters: AttributionCounters::default(),
        })
    }

    /// A packet from the app: held if its flow waits for its owner (or
    /// starts one that will), otherwise handed to the engine.
    pub fn offer(&mut self, engine: &mut Engine, packet: &[u8], now_ns: u64) {
        let key = match engine.starts_flow(packet) {
            Some(k) => k,
            None => return engine.handle_tun(packet, now_ns),
        };
        if let Some(w) = self.waiting.get_mut(&key) {
            if w.packets.len() < PACKETS_PER_FLOW {
                w.packets.push(packet.to_vec());
            } else {
                self.counters.dropped += 1;
            }
            return;
        }
        if self.waiting.len() + self.accepted.len() >= MAX_WAITING
            || self.ask.try_send((key, Instant::now())).is_err()
        {
            self.counters.unattributed += 1;
            return engine.handle_tun(packet, now_ns);
        }
        self.counters.asked += 1;
        if engine.await_owner(key) {
            // Accepted at once; judged when the owner is known.
            self.accepted.insert(key, Instant::now());
            return engine.handle_tun(packet, now_ns);
        }
        self.waiting.insert(
            key,
            Waiting {
                packets: vec![packet.to_vec()],
                since: Instant::now(),
            },
        );
    }

    /// Waits for the next answer (forever when none is awaited).
    pub async fn answer(&mut self) -> Option<(OwnerKey, AppOwner)> {
        if self.waiting.is_empty() && self.accepted.is_empty() {
            // Answers to flows already let go are read with the next ones.
            std::future::pending::<()>().await;
        }
        self.answers.recv().await
    }

    /// The owner of `key` is known: the engine is told, and gets the
    /// flow's packets if they were held.
    pub fn answered(&mut self, engine: &mut Engine, key: OwnerKey, owner: AppOwner, now_ns: u64) {
        let found = owner.app.is_some() || owner.uid.is_some();
        if self.accepted.remove(&key).is_some() {
            self.counters.found += u64::from(found);
            return engine.owner_found(key, owner, now_ns);
        }
        let Some(w) = self.waiting.remove(&key) else {
            // Late: the flow went on without it.
            return;
        };
        self.counters.found += u64::from(found);
        engine.hint_owner(key, owner);
        for p in w.packets {
            engine.handle_tun(&p, now_ns);
        }
    }

    /// Lets flows that waited [`MAX_WAIT`] go on without an owner.
    pub fn expire(&mut self, engine: &mut Engine, now_ns: u64) {
        let late: Vec<OwnerKey> = self
            .waiting
            .iter()
            .filter(|(_, w)| w.since.elapsed() >= MAX_WAIT)
            .map(|(k, _)| *k)
            .collect();
        for k in late {
            if let Some(w) = self.waiting.remove(&k) {
                self.counters.unattributed += 1;
                for p in w.packets {
                    engine.handle_tun(&p, now_ns);
                }
            }
        }
        let late: Vec<OwnerKey> = self
            .accepted
            .iter()
            .filter(|(_, since)| since.elapsed() >= MAX_WAIT)
            .map(|(k, _)| *k)
            .collect();
        for k in late {
            self.accepted.remove(&k);
            self.counters.unattributed += 1;
            engine.owner_found(k, AppOwner::default(), now_ns);
        }
    }

    /// When the oldest waiting flow's time is up, if any waits.
    pub fn deadline(&self) -> Option<Instant> {
        let held = self.waiting.values().map(|w| w.since);
        let accepted = self.accepted.values().copied();
        held.chain(accepted).map(|t| t + MAX_WAIT).min()
    }
}
