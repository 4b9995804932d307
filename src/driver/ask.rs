//! Answers to `ask` rules on their way to a running engine: an [`Asker`]
//! (held by the live page, the control socket, the phone library) sends a
//! user's answer to the engine's loop and waits for the outcome; an
//! answer "always" is then written to the local answers file
//! ([`AnswersFile`]), which the next start reads back.

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, PoisonError};

use serde::{Deserialize, Serialize};
use tokio::sync::{mpsc, oneshot};

use crate::engine::dataplane::{Answer, AnswerError, KeptAnswer, PromptId};

/// Answers waiting for the engine's loop, at most.
const QUEUE: usize = 64;
/// How long an answer may wait for the engine's loop to take it.
const TAKE_WITHIN: std::time::Duration = std::time::Duration::from_secs(5);
/// Largest answers file read.
const FILE_MAX: u64 = 4 * 1024 * 1024;

/// A user's answer for the engine's loop, with where its outcome goes.
#[derive(Debug)]
pub struct AnswerRequest {
    /// The question (from an `asked` event).
    pub prompt: PromptId,
    /// The answer.
    pub answer: Answer,
    /// The outcome: the answer to keep, for [`crate::engine::dataplane::Scope::Always`].
    pub done: oneshot::Sender<Result<Option<KeptAnswer>, AnswerError>>,
}

/// Why an answer was not taken.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AskError {
    /// No such question is waiting.
    NoPrompt(PromptId),
    /// The firewall is not running (any more).
    Stopped,
    /// The engine's loop did not take the answer in time.
    NotTaken,
    /// "always" with no answers file to keep it in.
    NoFile,
    /// The answer was taken, but writing it to the answers file failed.
    Keep(String),
}

impl std::fmt::Display for AskError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            AskError::NoPrompt(id) => AnswerError::NoPrompt(*id).fmt(f),
            AskError::Stopped => f.write_str("the firewall is not running"),
            AskError::NotTaken => write!(
                f,
                "the firewall did not take the answer within {} s",
                TAKE_WITHIN.as_secs()
            ),
            AskError::NoFile => f.write_str(
                "no answers file to keep an answer in (start with --state-dir or --answers); answer once or for the app",
            ),
            AskError::Keep(e) => write!(f, "the answer is in force, but it could not be kept: {e}"),
        }
    }
}

impl std::error::Error for AskError {}

/// Sends answers to a running engine (cheap to clone).
#[derive(Debug, Clone)]
pub struct Asker {
    tx: mpsc::Sender<AnswerRequest>,
    file: Option<Arc<AnswersFile>>,
}

/// An [`Asker`] and the receiving end for [`super::Services::answers`];
/// "always" answers are kept in `file`.
pub fn channel(file: Option<AnswersFile>) -> (Asker, mpsc::Receiver<AnswerRequest>) {
    let (tx, rx) = mpsc::channel(QUEUE);
    (
        Asker {
            tx,
            file: file.map(Arc::new),
        },
        rx,
    )
}

impl Asker {
    /// Answers question `prompt` and waits until the engine took it (and,
    /// for "always", the answers file was written), at most 5 s.
    ///
    /// # Errors
    /// See [`AskError`].
    pub async fn answer(&self, prompt: PromptId, answer: Answer) -> Result<(), AskError> {
        self.check(answer)?;
        let (done, rx) = oneshot::channel();
        let taken = tokio::time::timeout(TAKE_WITHIN, async {
            self.tx
                .send(AnswerRequest {
                    prompt,
                    answer,
                    done,
                })
                .await
                .map_err(|_| AskError::Stopped)?;
            rx.await.map_err(|_| AskError::Stopped)
        })
        .await
        .map_err(|_| AskError::NotTaken)??;
        self.keep(taken)
    }

    /// [`Asker::answer`], from a thread that is not the runtime's (it
    /// waits, polling, at most 5 s).
    ///
    /// # Errors
    /// See [`AskError`].
    pub fn answer_blocking(&self, prompt: PromptId, answer: Answer) -> Result<(), AskError> {
        self.check(answer)?;
        let deadline = std::time::Instant::now() + TAKE_WITHIN;
        let nap = std::time::Duration::from_millis(2);
        let (done, mut rx) = oneshot::channel();
        let mut req = AnswerRequest {
            prompt,
            answer,
            done,
        };
        // Polled, not blocking: a loop that never takes it cannot hold the
        // caller's thread for longer than TAKE_WITHIN.
        loop {
            match self.tx.try_send(req) {
                Ok(()) => break,
                Err(mpsc::error::TrySendError::Closed(_)) => return Err(AskError::Stopped),
                Err(mpsc::error::TrySendError::Full(r)) => req = r,
            }
            if std::time::Instant::now() >= deadline {
                return Err(AskError::NotTaken);
            }
            std::thread::sleep(nap);
        }
        let taken = loop {
            match rx.try_recv() {
                Ok(t) => break t,
                Err(oneshot::error::TryRecvError::Closed) => return Err(AskError::Stopped),
                Err(oneshot::error::TryRecvError::Empty) => {}
            }
            if std::time::Instant::now() >= deadline {
                return Err(AskError::NotTaken);
            }
            std::thread::sleep(nap);
        };
        self.keep(taken)
    }

    /// Where answers "always" are kept, if anywhere.
    pub fn answers_file(&self) -> Option<&Path> {
        self.file.as_deref().map(AnswersFile::path)
    }

    /// Whether the answer can be carried out at all.
    fn check(&self, answer: Answer) -> Result<(), AskError> {
        if answer.scope == crate::engine::dataplane::Scope::Always && self.file.is_none() {
            return Err(AskError::NoFile);
        }
        Ok(())
    }

    fn keep(&self, outcome: Result<Option<KeptAnswer>, AnswerError>) -> Result<(), AskError> {
        match outcome {
            Err(AnswerError::NoPrompt(id)) => Err(AskError::NoPrompt(id)),
            Ok(None) => Ok(()),
            Ok(Some(k)) => match &self.file {
                Some(f) => f.keep(k).map_err(AskError::Keep),
                None => Err(AskError::NoFile),
            },
        }
    }
}

/// The local answers file: the "always" answers, kept across restarts
/// (TOML, `[[answer]]` tables: `app`, `destination`, `action`, and for the
/// reader `rule` and `answered`). Written whole to a temporary file and
/// renamed, so it is never half written.
#[derive(Debug)]
pub struct AnswersFile {
    path: PathBuf,
    /// One writer at a time.
    lock: Mutex<()>,
}

#[derive(Debug, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct Doc {
    #[serde(default)]
    answer: Vec<KeptAnswer>,
}

impl AnswersFile {
    /// The answers file at `path` (it need not exist yet).
    pub fn new(path: PathBuf) -> Self {
        Self {
            path,
            lock: Mutex::new(()),
        }
    }

    /// Where it is.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The answers kept, oldest first; none when the file does not exist.
    ///
    /// # Errors
    /// The file cannot be read, is too large, or does not parse (the error
    /// names the file, line and column).
    pub fn load(&self) -> Result<Vec<KeptAnswer>, String> {
        let shown = self.path.display();
        let text = match std::fs::metadata(&self.path) {
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
            Err(e) => return Err(format!("cannot read {shown}: {e}")),
            Ok(m) if m.len() > FILE_MAX => {
                return Err(format!(
                    "{shown}: {} bytes, more than an answers file holds ({FILE_MAX})",
                    m.len()
                ));
            }
            Ok(_) => std::fs::read_to_string(&self.path)
                .map_err(|e| format!("cannot read {shown}: {e}"))?,
        };
        let doc: Doc = toml::from_str(&text).map_err(|e| {
            crate::intel::catalog::SourceError::from_toml(&self.path, &text, &e).to_string()
        })?;
        for (i, a) in doc.answer.iter().enumerate() {
            if a.destination.trim().is_empty() {
                return Err(format!("{shown}: answer {} has no destination", i + 1));
            }
        }
        Ok(doc.answer)
    }

    /// Adds `k` (stamped with the time now), replacing an earlier answer
    /// for the same app and destination; at most
    /// [`crate::engine::dataplane::ask::MAX_KEPT`] are kept, the oldest
    /// dropped first.
    ///
    /// # Errors
    /// The file cannot be read back or written.
    pub fn keep(&self, mut k: KeptAnswer) -> Result<(), String> {
        let _one = self.lock.lock().unwrap_or_else(PoisonError::into_inner);
        let mut all = self.load()?;
        all.retain(|o| !(o.app == k.app && o.destination == k.destination));
        k.answered = Some(crate::timefmt::rfc3339(
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| d.as_secs()),
        ));
        all.push(k);
        let max = crate::engine::dataplane::ask::MAX_KEPT;
        if all.len() > max {
            all.drain(..all.len() - max);
        }
        let body = toml::to_string(&Doc { answer: all }).map_err(|e| e.to_string())?;
        let text = format!(
            "# geowall's kept answers to ask rules: each settles, without asking,\n# the questions of its app about its destination. Read at start.\n\n{body}"
        );
        let shown = self.path.display();
        if let Some(dir) = self.path.parent().filter(|d| !d.as_os_str().is_empty()) {
            std::fs::create_dir_all(dir)
                .map_err(|e| format!("cannot create {}: {e}", dir.display()))?;
        }
        let tmp = self.path.with_extension("toml.new");
        std::fs::write(&tmp, text).map_err(|e| format!("cannot write {}: {e}", tmp.display()))?;
        std::fs::rename(&tmp, &self.path).map_err(|e| format!("cannot replace {shown}: {e}"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::engine::dataplane::KeptAction;

    fn kept(app: &str, dest: &str, action: KeptAction) -> KeptAnswer {
        KeptAnswer {
            app: Some(app.into()),
            destination: dest.into(),
            action,
            rule: Some("r".into()),
            answered: None,
        }
    }

    #[test]
    fn the_answers_file_keeps_the_latest_answer_per_app_and_destination() {
        let dir = tempfile::tempdir().expect("tempdir");
        let f = AnswersFile::new(dir.path().join("sub/answers.toml"));
        assert_eq!(f.load(), Ok(Vec::new()), "no file: no answers");
        f.keep(kept("/usr/bin/a", "example.org", KeptAction::Allow))
            .expect("keeps");
        f.keep(kept("/usr/bin/b", "example.org", KeptAction::Block))
            .expect("keeps");
        f.keep(kept("/usr/bin/a", "example.org", KeptAction::Block))
            .expect("keeps");
        let all = f.load().expect("reads back");
        assert_eq!(all.len(), 2);
        assert_eq!(
            (all[1].app.as_deref(), all[1].action),
            (Some("/usr/bin/a"), KeptAction::Block)
        );
        assert!(all[1].answered.as_deref().is_some_and(|t| t.ends_with('Z')));
        assert!(!dir.path().join("sub/answers.toml.new").exists());
        // A damaged file is an error naming where, not an empty list.
        std::fs::write(f.path(), "[[answer]]\napp = \"x\"\naction = \"maybe\"\n").expect("write");
        let e = f.load().expect_err("damaged");
        assert!(e.contains("answers.toml:3"), "{e}");
        assert!(f.keep(kept("/usr/bin/a", "x", KeptAction::Allow)).is_err());
    }
}
