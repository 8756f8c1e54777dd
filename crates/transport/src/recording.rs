//! A transport for tests of the code above it: it runs nothing, records
//! every script it is given (node, name, arguments, size of stdin) in one
//! log shared by all its nodes, and answers from rules the test sets.
//! Without a matching rule a script succeeds with no output, and a held
//! script (the apply lock) answers `locked`.
//!
//! ```
//! use kubeforge_transport::recording::{Recorder, fail};
//! let rec = Recorder::new();
//! rec.answer(Some("cp1"), "readyz", vec![fail(1, "not yet")]);
//! let t = rec.node("cp1");
//! // ... code under test runs scripts through `t` ...
//! assert!(rec.log().is_empty());
//! ```

use crate::{Held, Output, Script, Transport, TransportError};
use async_trait::async_trait;
use std::collections::VecDeque;
use std::sync::{Arc, Mutex, PoisonError};

/// One recorded script (or a marker the test added).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Call {
    pub node: String,
    pub what: String,
    pub args: Vec<String>,
    /// The size of its stdin (never its bytes).
    pub stdin: Option<usize>,
}

impl std::fmt::Display for Call {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}: {}", self.node, self.what)
    }
}

struct Rule {
    node: Option<String>,
    what: String,
    /// Answered in order; the last one again and again.
    answers: VecDeque<Output>,
}

#[derive(Default)]
struct State {
    log: Vec<Call>,
    rules: Vec<Rule>,
    /// Scripts whose name contains the text take this long to answer.
    slow: Vec<(String, std::time::Duration)>,
}

/// The shared log and rules of a set of recording nodes.
#[derive(Clone, Default)]
pub struct Recorder {
    state: Arc<Mutex<State>>,
}

/// A successful answer with this standard output.
pub fn ok(stdout: &str) -> Output {
    Output {
        status: 0,
        stdout: stdout.as_bytes().to_vec(),
        stderr: Vec::new(),
    }
}

/// A failed answer with this status and standard error.
pub fn fail(status: i32, stderr: &str) -> Output {
    Output {
        status,
        stdout: Vec::new(),
        stderr: stderr.as_bytes().to_vec(),
    }
}

impl Recorder {
    pub fn new() -> Recorder {
        Recorder::default()
    }

    fn state(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// A node whose scripts go to this recorder.
    pub fn node(&self, name: &str) -> Arc<dyn Transport> {
        Arc::new(Recording {
            name: name.to_string(),
            recorder: self.clone(),
        })
    }

    /// Scripts on `node` (any node with `None`) whose name contains `what`
    /// get these answers in order, the last one from then on. A later rule
    /// wins over an earlier one.
    pub fn answer(&self, node: Option<&str>, what: &str, answers: Vec<Output>) {
        self.state().rules.push(Rule {
            node: node.map(str::to_string),
            what: what.to_string(),
            answers: answers.into(),
        });
    }

    /// Scripts whose name contains `what` answer only after `delay` (a
    /// slow transfer, say); they are logged when they start.
    pub fn slow(&self, what: &str, delay: std::time::Duration) {
        self.state().slow.push((what.to_string(), delay));
    }

    fn delay(&self, what: &str) -> Option<std::time::Duration> {
        let state = self.state();
        state
            .slow
            .iter()
            .find(|(w, _)| what.contains(w.as_str()))
            .map(|(_, d)| *d)
    }

    /// Puts a marker into the log (a test's progress events, say).
    pub fn mark(&self, node: &str, what: &str) {
        self.state().log.push(Call {
            node: node.to_string(),
            what: what.to_string(),
            args: Vec::new(),
            stdin: None,
        });
    }

    /// Everything recorded so far, in order.
    pub fn log(&self) -> Vec<Call> {
        self.state().log.clone()
    }

    /// The log as `node: what` lines.
    pub fn lines(&self) -> Vec<String> {
        self.log().iter().map(ToString::to_string).collect()
    }

    fn call(&self, node: &str, script: &Script<'_>) -> Output {
        let mut state = self.state();
        state.log.push(Call {
            node: node.to_string(),
            what: script.what.to_string(),
            args: script.args.clone(),
            stdin: script.stdin.as_ref().map(Vec::len),
        });
        let rule =
            state.rules.iter_mut().rev().find(|r| {
                r.node.as_deref().is_none_or(|n| n == node) && script.what.contains(&r.what)
            });
        match rule {
            None => ok(""),
            Some(r) if r.answers.len() > 1 => r.answers.pop_front().unwrap_or_else(|| ok("")),
            Some(r) => r.answers.front().cloned().unwrap_or_else(|| ok("")),
        }
    }
}

impl Recorder {
    /// A round trip of parts ([`crate::ops::PARTS`]): each part recorded
    /// and answered as if it ran alone, until one fails; then its number
    /// on stdout, as the node prints it.
    fn parts(&self, node: &str, script: &Script<'_>) -> Output {
        let mut args = script.args.iter();
        let mut i = 0;
        while let (Some(what), Some(body), Some(n), Some(input)) =
            (args.next(), args.next(), args.next(), args.next())
        {
            i += 1;
            let n = n.parse().unwrap_or(0);
            let mut part = Script::new(what, body).args(args.by_ref().take(n).cloned());
            if input == "1" {
                part = part.stdin(script.stdin.clone().unwrap_or_default());
            }
            let mut out = self.call(node, &part);
            if !out.success() {
                out.stdout.extend_from_slice(format!("\n{i}\n").as_bytes());
                return out;
            }
        }
        ok("")
    }
}

struct Recording {
    name: String,
    recorder: Recorder,
}

struct Nothing;

#[async_trait]
impl Held for Nothing {
    async fn release(self: Box<Self>) {}
}

#[async_trait]
impl Transport for Recording {
    fn node(&self) -> &str {
        &self.name
    }

    async fn run(&self, script: Script<'_>) -> Result<Output, TransportError> {
        if script.body == crate::ops::PARTS {
            return Ok(self.recorder.parts(&self.name, &script));
        }
        let delay = self.recorder.delay(script.what);
        let out = self.recorder.call(&self.name, &script);
        if let Some(d) = delay {
            tokio::time::sleep(d).await;
        }
        Ok(out)
    }

    async fn hold(&self, script: Script<'_>) -> Result<(String, Box<dyn Held>), TransportError> {
        let out = self.recorder.call(&self.name, &script);
        let first = match out.stdout_str().lines().next() {
            Some(l) => l.to_string(),
            None if out.success() => "locked".to_string(),
            None => String::new(),
        };
        Ok((first, Box::new(Nothing)))
    }
}
