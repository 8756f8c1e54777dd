//! Progress of an apply: on a terminal, one line per phase and a bounded
//! number of node lines under the running phase (the nodes that did
//! something last), each cut to the terminal's width; elsewhere plain
//! lines, one per event.

use indicatif::{MultiProgress, ProgressBar, ProgressDrawTarget, ProgressStyle};
use kubeforge_apply::{Event, EventKind, Progress};
use std::collections::BTreeSet;
use std::io::IsTerminal;
use std::sync::Mutex;
use std::time::Duration;

/// Node lines shown under the running phase at most (indicatif also
/// never draws more lines than the terminal has).
pub const NODE_LINES: usize = 8;

/// Progress bars on a terminal; plain lines otherwise.
pub struct Bars {
    multi: Option<MultiProgress>,
    /// How many node lines the running phase shows at most.
    node_lines: usize,
    /// Whether bars animate on their own (off in tests).
    tick: bool,
    phase: Mutex<Option<Phase>>,
}

/// The running phase's lines.
struct Phase {
    name: String,
    header: ProgressBar,
    /// What the phase started with ("12 nodes").
    what: String,
    /// The visible node lines, the least recently active first.
    nodes: Vec<(String, ProgressBar)>,
    /// Every node that reported in this phase.
    seen: BTreeSet<String>,
}

fn style(template: &str) -> ProgressStyle {
    ProgressStyle::with_template(template).unwrap_or_else(|_| ProgressStyle::default_spinner())
}

/// A running line: a spinner, a fixed-width prefix (cut when longer) and
/// the message in the rest of the width (cut too).
fn running() -> ProgressStyle {
    style("{spinner} {prefix:24!} {wide_msg}")
}

fn finished() -> ProgressStyle {
    style("  {prefix:24!} {wide_msg}")
}

impl Bars {
    /// Bars on stderr when it is a terminal, plain lines otherwise.
    pub fn new() -> Bars {
        if !std::io::stderr().is_terminal() {
            return Bars {
                multi: None,
                node_lines: 0,
                tick: false,
                phase: Mutex::new(None),
            };
        }
        Bars::with_target(ProgressDrawTarget::stderr(), NODE_LINES, true)
    }

    /// Bars drawn to `target`, with at most `node_lines` node lines under
    /// the running phase; `tick` animates the spinners.
    pub fn with_target(target: ProgressDrawTarget, node_lines: usize, tick: bool) -> Bars {
        Bars {
            multi: Some(MultiProgress::with_draw_target(target)),
            node_lines: node_lines.max(1),
            tick,
            phase: Mutex::new(None),
        }
    }

    fn plain(&self, line: String) {
        use std::io::Write as _;
        let _ = writeln!(std::io::stderr(), "{line}");
    }

    fn plain_event(&self, e: &Event) {
        match (e.kind, &e.node) {
            (EventKind::PhaseStarted, _) => {
                self.plain(format!("== phase {} ({})", e.phase, e.message))
            }
            (EventKind::PhaseDone, _) => self.plain(format!("== phase {} done", e.phase)),
            (EventKind::Step, Some(n)) => {
                self.plain(format!("   [{}] {n}: {}", e.phase, e.message))
            }
            (EventKind::Step, None) => self.plain(format!("   [{}] {}", e.phase, e.message)),
            (EventKind::Warning, _) => self.plain(format!("warning: {}", e.message)),
        }
    }

    fn new_bar(&self, multi: &MultiProgress, after: Option<&ProgressBar>) -> ProgressBar {
        let bar = match after {
            Some(a) => multi.insert_after(a, ProgressBar::new_spinner()),
            None => multi.add(ProgressBar::new_spinner()),
        };
        bar.set_style(running());
        if self.tick {
            bar.enable_steady_tick(Duration::from_millis(120));
        }
        bar
    }

    /// Ends the running phase: its node lines go, its line stays.
    fn finish(phase: Phase, multi: &MultiProgress) {
        for (_, b) in phase.nodes {
            b.finish_and_clear();
            multi.remove(&b);
        }
        phase.header.set_style(finished());
        let what = if phase.what.is_empty() {
            format!("{} nodes", phase.seen.len())
        } else {
            phase.what
        };
        phase.header.finish_with_message(format!("done ({what})"));
    }

    fn start(&self, multi: &MultiProgress, slot: &mut Option<Phase>, e: &Event) {
        if let Some(old) = slot.take() {
            Bars::finish(old, multi);
        }
        let header = self.new_bar(multi, None);
        header.set_prefix(format!("phase {}", e.phase));
        header.set_message(e.message.clone());
        *slot = Some(Phase {
            name: e.phase.clone(),
            header,
            what: e.message.clone(),
            nodes: Vec::new(),
            seen: BTreeSet::new(),
        });
    }

    /// A node's step: its line (the least recently active one is taken
    /// over when every line is in use), and the phase line's count.
    fn step(&self, multi: &MultiProgress, p: &mut Phase, node: &str, message: String) {
        p.seen.insert(node.to_string());
        let idx = match p.nodes.iter().position(|(n, _)| n == node) {
            Some(i) => i,
            None if p.nodes.len() < self.node_lines => {
                let after = p.nodes.last().map(|(_, b)| b).unwrap_or(&p.header);
                let bar = self.new_bar(multi, Some(after));
                p.nodes.push((node.to_string(), bar));
                p.nodes.len() - 1
            }
            None => {
                p.nodes[0].0 = node.to_string();
                0
            }
        };
        let (name, bar) = p.nodes.remove(idx);
        bar.set_prefix(format!("  {name}"));
        bar.set_message(message);
        p.nodes.push((name, bar));
        let shown = if p.seen.len() > p.nodes.len() {
            format!(", the latest {} shown", p.nodes.len())
        } else {
            String::new()
        };
        let what = if p.what.is_empty() {
            String::new()
        } else {
            format!("{}: ", p.what)
        };
        p.header
            .set_message(format!("{what}{} begun{shown}", p.seen.len()));
    }

    /// The node lines the running phase shows.
    #[cfg(test)]
    fn visible(&self) -> usize {
        self.phase
            .lock()
            .map(|p| p.as_ref().map_or(0, |p| p.nodes.len()))
            .unwrap_or(0)
    }
}

impl Progress for Bars {
    fn event(&self, e: Event) {
        let Some(multi) = &self.multi else {
            self.plain_event(&e);
            return;
        };
        let Ok(mut slot) = self.phase.lock() else {
            return;
        };
        match (e.kind, e.node.as_deref()) {
            (EventKind::Warning, _) => {
                let _ = multi.println(format!("warning: {}", e.message));
            }
            (EventKind::PhaseStarted, _) => self.start(multi, &mut slot, &e),
            (EventKind::Step, node) => {
                if slot.as_ref().is_none_or(|p| p.name != e.phase) {
                    let started = Event {
                        kind: EventKind::PhaseStarted,
                        node: None,
                        message: String::new(),
                        phase: e.phase.clone(),
                    };
                    self.start(multi, &mut slot, &started);
                }
                let Some(p) = slot.as_mut() else { return };
                match node {
                    Some(n) => self.step(multi, p, n, e.message),
                    None => p.header.set_message(e.message),
                }
            }
            (EventKind::PhaseDone, _) => {
                if let Some(p) = slot.take() {
                    Bars::finish(p, multi);
                }
            }
        }
    }
}

impl Drop for Bars {
    fn drop(&mut self) {
        if let (Some(multi), Ok(slot)) = (&self.multi, self.phase.get_mut()) {
            if let Some(p) = slot.take() {
                Bars::finish(p, multi);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use indicatif::TermLike;
    use std::sync::{Arc, Mutex};

    const WIDTH: usize = 80;

    /// An 80x24 terminal in memory, as indicatif drives one: it writes
    /// each line and pads it with spaces to the width, relying on the
    /// terminal to wrap. Records the widest line indicatif wrote and the
    /// most rows in use at once.
    #[derive(Debug, Default)]
    struct Screen {
        rows: Vec<Vec<char>>,
        row: usize,
        col: usize,
        widest: usize,
        most_rows: usize,
    }

    impl Screen {
        fn put(&mut self, c: char) {
            if self.col == WIDTH {
                self.row += 1;
                self.col = 0;
            }
            while self.rows.len() <= self.row {
                self.rows.push(Vec::new());
            }
            let r = &mut self.rows[self.row];
            while r.len() <= self.col {
                r.push(' ');
            }
            r[self.col] = c;
            self.col += 1;
        }
        fn used(&self) -> usize {
            self.rows
                .iter()
                .filter(|r| r.iter().any(|c| *c != ' '))
                .count()
        }
        fn text(&self) -> String {
            self.rows
                .iter()
                .map(|r| r.iter().collect::<String>().trim_end().to_string())
                .collect::<Vec<_>>()
                .join("\n")
        }
    }

    #[derive(Debug, Clone, Default)]
    struct Term(Arc<Mutex<Screen>>);

    impl Term {
        fn with<R>(&self, f: impl FnOnce(&mut Screen) -> R) -> R {
            let mut s = self.0.lock().unwrap_or_else(|e| e.into_inner());
            f(&mut s)
        }
        fn write(&self, text: &str, newline: bool) {
            self.with(|s| {
                if text.chars().any(|c| c != ' ' && c != '\r') {
                    s.widest = s.widest.max(text.chars().count());
                }
                for c in text.chars() {
                    if c == '\r' {
                        s.col = 0;
                    } else {
                        s.put(c);
                    }
                }
                if newline {
                    s.row += 1;
                    s.col = 0;
                }
                s.most_rows = s.most_rows.max(s.used());
            });
        }
    }

    impl TermLike for Term {
        fn width(&self) -> u16 {
            WIDTH as u16
        }
        fn height(&self) -> u16 {
            24
        }
        fn move_cursor_up(&self, n: usize) -> std::io::Result<()> {
            self.with(|s| s.row = s.row.saturating_sub(n));
            Ok(())
        }
        fn move_cursor_down(&self, n: usize) -> std::io::Result<()> {
            self.with(|s| s.row += n);
            Ok(())
        }
        fn move_cursor_right(&self, n: usize) -> std::io::Result<()> {
            self.with(|s| s.col = (s.col + n).min(WIDTH));
            Ok(())
        }
        fn move_cursor_left(&self, n: usize) -> std::io::Result<()> {
            self.with(|s| s.col = s.col.saturating_sub(n));
            Ok(())
        }
        fn write_line(&self, s: &str) -> std::io::Result<()> {
            self.write(s, true);
            Ok(())
        }
        fn write_str(&self, s: &str) -> std::io::Result<()> {
            self.write(s, false);
            Ok(())
        }
        fn clear_line(&self) -> std::io::Result<()> {
            self.with(|s| {
                if let Some(r) = s.rows.get_mut(s.row) {
                    r.clear();
                }
                s.col = 0;
            });
            Ok(())
        }
        fn flush(&self) -> std::io::Result<()> {
            Ok(())
        }
    }

    fn event(phase: &str, node: Option<&str>, kind: EventKind, message: &str) -> Event {
        Event {
            node: node.map(str::to_string),
            phase: phase.to_string(),
            kind,
            message: message.to_string(),
        }
    }

    #[test]
    fn fifty_nodes_fit_an_80_column_terminal() {
        let term = Term::default();
        let target = ProgressDrawTarget::term_like_with_hz(Box::new(term.clone()), 100);
        let bars = Bars::with_target(target, NODE_LINES, false);
        let nodes: Vec<String> = (1..=50)
            .map(|i| format!("worker-{i:02}-with-a-rather-long-name.dc1.example.internal"))
            .collect();
        for phase in ["etcd", "apiserver", "node"] {
            bars.event(event(phase, None, EventKind::PhaseStarted, "50 nodes"));
            for round in ["write /etc/kubernetes/kubelet-config.yaml", "waiting for the kubelet's /healthz to answer, which can take a while on a slow node"] {
                for n in &nodes {
                    bars.event(event(phase, Some(n), EventKind::Step, round));
                    std::thread::sleep(Duration::from_millis(1));
                }
            }
            assert_eq!(bars.visible(), NODE_LINES);
            std::thread::sleep(Duration::from_millis(30));
            bars.event(event(
                phase,
                Some(&nodes[0]),
                EventKind::Step,
                "restart kubelet",
            ));
            std::thread::sleep(Duration::from_millis(30));
            bars.event(event(phase, None, EventKind::PhaseDone, ""));
        }
        drop(bars);
        let (widest, most, text) = term.with(|s| (s.widest, s.most_rows, s.text()));
        assert!(widest <= 80, "a line of {widest} columns:\n{text}");
        // 3 phase lines and at most NODE_LINES node lines under the
        // running one.
        assert!(most <= 3 + NODE_LINES, "{most} lines at once:\n{text}");
        assert!(text.contains("phase node"), "{text}");
        assert!(text.contains("done (50 nodes)"), "{text}");
    }
}
