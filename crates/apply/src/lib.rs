//! Apply: gather facts read-only, check the hosts, then execute exactly a
//! plan, phase by phase, each change behind a health gate.
//!
//! Every effect goes through [`kubeforge_transport::Transport`]. Nothing
//! here prints: progress is reported through [`Progress`].

mod api;
mod bundle;
mod cluster;
mod execute;
mod facts;
mod gates;
mod preflight;

pub use api::Credentials;
pub use bundle::{load_bundle, Bundle};
pub use execute::{execute, Applied};
pub use facts::gather;
pub use preflight::{preflight, warnings as preflight_warnings};

use kubeforge_transport::{Transport, TransportError};
use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

/// The transports of the nodes, by node name.
pub type Transports = BTreeMap<String, Arc<dyn Transport>>;

#[derive(Debug, Clone)]
pub struct Options {
    /// Nodes worked on at the same time.
    pub concurrency: usize,
    /// How long a health gate waits before it fails.
    pub gate_timeout: Duration,
    /// The largest clock difference allowed between a node and this machine.
    pub max_clock_skew: Duration,
    /// Phases to run (all when empty).
    pub phases: Vec<String>,
}

impl Default for Options {
    fn default() -> Self {
        Options {
            concurrency: 8,
            gate_timeout: Duration::from_secs(120),
            max_clock_skew: Duration::from_secs(30),
            phases: Vec::new(),
        }
    }
}

/// What happens, as it happens. The CLI turns these into progress bars or
/// log lines.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Event {
    pub node: Option<String>,
    pub phase: String,
    pub kind: EventKind,
    pub message: String,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EventKind {
    PhaseStarted,
    Step,
    PhaseDone,
}

pub trait Progress: Send + Sync {
    fn event(&self, event: Event);
}

/// Progress that goes nowhere.
pub struct Quiet;

impl Progress for Quiet {
    fn event(&self, _: Event) {}
}

#[derive(Debug, thiserror::Error)]
pub enum ApplyError {
    #[error(transparent)]
    Transport(#[from] TransportError),
    #[error("pre-flight checks failed; nothing was changed:\n{}", .0.iter().map(|p| format!("  - {p}")).collect::<Vec<_>>().join("\n"))]
    Preflight(Vec<String>),
    #[error("{0}")]
    Gate(Box<GateFailure>),
    #[error("bundle {path}: {detail}")]
    Bundle { path: String, detail: String },
    #[error("{0}")]
    Other(String),
}

/// A health gate that did not pass, with the unit's last journal lines.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GateFailure {
    pub node: String,
    pub gate: String,
    pub unit: String,
    pub secs: u64,
    pub detail: String,
    pub journal: String,
}

impl std::fmt::Display for GateFailure {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{}: {} did not pass within {} s: {}\n--- last journal lines of {} on {} ---\n{}",
            self.node, self.gate, self.secs, self.detail, self.unit, self.node, self.journal
        )
    }
}

/// Runs `f` for every item with at most `limit` at a time; returns the
/// results in the items' order.
pub(crate) async fn bounded<T, R, F, Fut>(items: Vec<T>, limit: usize, f: F) -> Vec<R>
where
    F: Fn(T) -> Fut,
    Fut: std::future::Future<Output = R>,
{
    use futures::StreamExt;
    futures::stream::iter(items)
        .map(f)
        .buffered(limit.max(1))
        .collect()
        .await
}
