//! `kubeforge status`: the cluster's health in one table (or JSON),
//! gathered read-only; the exit status says healthy (0), degraded (1) or
//! failed (2).

use crate::args::{InventoryArgs, Output};
use crate::common::{load, prepare, runtime, with_bundle_dir, Term};
use crate::online;
use anyhow::{bail, Result};
use kubeforge_apply::status::{Status, StatusRequest, Verdict};
use kubeforge_pki::Action;
use std::io::IsTerminal as _;
use std::path::PathBuf;
use std::time::{Duration, Instant};

/// What `kubeforge status` was asked for.
pub(crate) struct Request {
    pub bundle: Option<PathBuf>,
    pub reach: online::Reach,
    pub max_clock_skew: Duration,
    pub output: Output,
}

pub(crate) fn run(inv: &InventoryArgs, req: &Request, term: &mut Term) -> Result<u8> {
    let started = Instant::now();
    let (loaded, state) = load(inv, term)?;
    let cluster = &loaded.cluster;
    let mut prepared = prepare(&state, cluster, Vec::new())?;
    if prepared
        .reconciled
        .events
        .iter()
        .any(|e| matches!(e.action, Action::Created))
    {
        bail!(
            "{} holds no complete PKI for cluster \"{}\"\n  help: run `kubeforge apply` first (status reads the cluster with the PKI apply created), or pass --state-dir",
            state.display(),
            cluster.name
        );
    }
    with_bundle_dir(&mut prepared, cluster, req.bundle.as_deref(), &state)?;
    let rendered = &prepared.rendered;
    let status = runtime()?.block_on(kubeforge_transport::closing_masters(async {
        let (transports, unreachable) = online::connect_each(cluster, &state, &req.reach).await?;
        let sreq = StatusRequest {
            cluster,
            rendered,
            transports: &transports,
            unreachable: &unreachable,
            state_dir: &state,
            concurrency: req.reach.concurrency,
            max_clock_skew: req.max_clock_skew,
        };
        Ok::<_, anyhow::Error>(kubeforge_apply::status::status(&sreq).await)
    }))??;
    match req.output {
        Output::Json => term.line(serde_json::to_string_pretty(&status)?)?,
        Output::Text => {
            let colour = std::io::stdout().is_terminal() && std::env::var_os("NO_COLOR").is_none();
            term.raw(table(&status, started.elapsed(), colour))?;
        }
    }
    Ok(status.verdict.exit_code())
}

/// How a row looks: fine, worth a look, or failed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum Level {
    Ok,
    Warn,
    Fail,
}

struct Row {
    node: String,
    check: String,
    state: String,
    detail: String,
    level: Level,
}

fn level_of(status: &Status, node: Option<&str>, checks: &[&str]) -> Level {
    status
        .problems
        .iter()
        .filter(|p| p.node.as_deref() == node && checks.contains(&p.check.as_str()))
        .map(|p| match p.level {
            Verdict::Healthy => Level::Ok,
            Verdict::Degraded => Level::Warn,
            Verdict::Failed => Level::Fail,
        })
        .max()
        .unwrap_or(Level::Ok)
}

fn bytes(n: u64) -> String {
    match n {
        n if n >= 1 << 30 => format!("{:.1} GiB", n as f64 / f64::from(1u32 << 30)),
        n if n >= 1 << 20 => format!("{:.1} MiB", n as f64 / f64::from(1u32 << 20)),
        n if n >= 1 << 10 => format!("{:.1} KiB", n as f64 / 1024.0),
        n => format!("{n} B"),
    }
}

fn age(secs: u64) -> String {
    match secs {
        s if s >= 2 * 86_400 => format!("{} days", s / 86_400),
        s if s >= 3600 => format!("{} h", s / 3600),
        s if s >= 60 => format!("{} min", s / 60),
        s => format!("{s} s"),
    }
}

/// Every row of the table: per node, then the cluster's.
fn rows(s: &Status) -> Vec<Row> {
    let mut rows = Vec::new();
    for n in &s.nodes {
        let node = Some(n.name.as_str());
        let mut push = |check: &str, keys: &[&str], state: String, detail: String| {
            rows.push(Row {
                node: n.name.clone(),
                check: check.to_string(),
                state,
                detail,
                level: level_of(s, node, keys),
            });
        };
        let mut host = format!("{}; {}", n.address, n.roles.join(", "));
        if let Some(skew) = n.clock_skew_secs {
            host.push_str(&format!("; clock {skew:+.2} s"));
        }
        if let Some(e) = &n.error {
            // The first line; the problems below the table say the rest.
            host.push_str(&format!("; {}", e.lines().next().unwrap_or_default()));
        }
        let reach = if n.reachable {
            "reachable"
        } else {
            "unreachable"
        };
        push("host", &["host", "clock"], reach.into(), host);
        if !n.reachable {
            continue;
        }
        for u in &n.units {
            push(
                &u.name,
                &[u.name.as_str()],
                u.state.clone(),
                u.version.clone().unwrap_or_default(),
            );
        }
        if let Some(r) = &n.ready {
            push("node Ready", &["ready"], r.status.clone(), r.reason.clone());
        }
        if let Some(m) = s
            .etcd
            .as_ref()
            .and_then(|e| e.members.iter().find(|m| m.node == n.name))
        {
            let mut d = Vec::new();
            if m.leader {
                d.push("leader".to_string());
            }
            if let Some(r) = m.revision {
                d.push(format!("revision {r}"));
            }
            if let Some(b) = m.db_size {
                d.push(format!("db {}", bytes(b)));
            }
            if !m.detail.is_empty() {
                d.push(m.detail.clone());
            }
            let state = if m.healthy { "healthy" } else { "unhealthy" };
            push("etcd member", &["etcd"], state.into(), d.join("; "));
        }
        if let Some(e) = &n.apiserver {
            let state = if e.ready { "ready" } else { "not ready" };
            let detail = if e.ready {
                e.url.clone()
            } else {
                format!("{}: {}", e.url, e.detail)
            };
            push("apiserver", &["apiserver"], state.into(), detail);
        }
        if let Some(h) = n.holds_vip {
            let state = if h { "holds VIP" } else { "standby" };
            push("VIP", &[], state.into(), String::new());
        }
        let (state, detail) = match &n.soonest_certificate {
            None if n.certificates == 0 => ("none read".to_string(), String::new()),
            None => ("ok".to_string(), String::new()),
            Some(c) => (
                if c.days_left < 0 {
                    "expired".to_string()
                } else {
                    format!("{} days", c.days_left)
                },
                format!(
                    "soonest {} ({}), until {}; {} read",
                    c.path, c.subject, c.not_after, n.certificates
                ),
            ),
        };
        push("certificates", &["certificates"], state, detail);
        let (state, detail) = match &n.drift {
            None => ("unknown".to_string(), String::new()),
            Some(d) if d.is_empty() => ("none".to_string(), String::new()),
            Some(d) if d.len() == 1 => ("1 file".to_string(), d.join(", ")),
            Some(d) => (format!("{} files", d.len()), d.join(", ")),
        };
        push("drift", &["drift"], state, detail);
    }
    let mut push = |check: &str, keys: &[&str], state: String, detail: String| {
        rows.push(Row {
            node: "cluster".into(),
            check: check.to_string(),
            state,
            detail,
            level: level_of(s, None, keys),
        });
    };
    if let Some(e) = &s.etcd {
        let healthy = e.members.iter().filter(|m| m.healthy).count();
        let leader = match &e.leader {
            Some(l) => format!("leader {l}"),
            None => "no leader".into(),
        };
        push(
            "etcd",
            &["etcd"],
            format!("{healthy}/{} healthy", e.members.len()),
            leader,
        );
    }
    let cps: Vec<_> = s
        .nodes
        .iter()
        .filter_map(|n| n.apiserver.as_ref())
        .collect();
    if !cps.is_empty() {
        let ready = cps.iter().filter(|e| e.ready).count();
        push(
            "apiservers",
            &["apiserver"],
            format!("{ready}/{} ready", cps.len()),
            String::new(),
        );
    }
    if let Some(v) = &s.api.vip {
        let state = match v.holders.as_slice() {
            [] => "held by none".to_string(),
            h => format!("held by {}", h.join(", ")),
        };
        push("VIP", &["vip"], state, v.address.clone());
        let (state, detail) = match &v.readyz {
            None => ("unknown".to_string(), String::new()),
            Some(e) if e.ready => ("ready".to_string(), e.url.clone()),
            Some(e) => ("not ready".to_string(), format!("{}: {}", e.url, e.detail)),
        };
        push("API via VIP", &["api-via-vip"], state, detail);
    }
    let (state, detail) = match &s.api_drift {
        None => ("unknown".to_string(), String::new()),
        Some(a) if a.is_empty() => ("in sync".to_string(), String::new()),
        Some(a) => (format!("{} differ", a.len()), a.join(", ")),
    };
    push("API objects", &["api-objects"], state, detail);
    if let Some(e) = &s.drift_error {
        push("drift", &["drift"], "unknown".into(), e.clone());
    }
    let (state, detail) = match &s.backup {
        None => ("none".to_string(), format!("nothing in {}", s.backups_dir)),
        Some(b) => (format!("{} old", age(b.age_secs)), b.path.clone()),
    };
    push("newest backup", &[], state, detail);
    rows
}

fn paint(text: &str, level: Level, colour: bool) -> String {
    if !colour {
        return text.to_string();
    }
    let code = match level {
        Level::Ok => "32",
        Level::Warn => "33",
        Level::Fail => "1;31",
    };
    format!("\x1b[{code}m{text}\x1b[0m")
}

/// The table, the problems and the verdict, as text.
fn table(s: &Status, elapsed: Duration, colour: bool) -> String {
    let rows = rows(s);
    let w = |f: &dyn Fn(&Row) -> usize, head: &str| {
        rows.iter().map(f).max().unwrap_or(0).max(head.len())
    };
    let wn = w(&|r| r.node.chars().count(), "NODE");
    let wc = w(&|r| r.check.chars().count(), "CHECK");
    let ws = w(&|r| r.state.chars().count(), "STATE");
    let mut out = String::new();
    let verdict = match s.verdict {
        Verdict::Healthy => Level::Ok,
        Verdict::Degraded => Level::Warn,
        Verdict::Failed => Level::Fail,
    };
    let problems = match s.problems.len() {
        1 => "1 problem".to_string(),
        n => format!("{n} problems"),
    };
    out.push_str(&format!(
        "cluster \"{}\": {} ({} nodes, {problems}, checked in {:.1} s)\n\n",
        s.cluster,
        paint(s.verdict.as_str(), verdict, colour),
        s.nodes.len(),
        elapsed.as_secs_f64()
    ));
    out.push_str(&format!(
        "{:<wn$}  {:<wc$}  {:<ws$}  DETAIL\n",
        "NODE", "CHECK", "STATE"
    ));
    for r in &rows {
        let state = format!("{:<ws$}", r.state);
        let line = format!(
            "{:<wn$}  {:<wc$}  {}  {}",
            r.node,
            r.check,
            paint(&state, r.level, colour),
            r.detail.replace('\n', " ")
        );
        out.push_str(line.trim_end());
        out.push('\n');
    }
    if !s.problems.is_empty() {
        out.push_str("\nproblems:\n");
        for p in &s.problems {
            let mark = match p.level {
                Verdict::Failed => paint("failed", Level::Fail, colour),
                _ => paint("degraded", Level::Warn, colour),
            };
            let message = p.message.replace('\n', "\n    ");
            out.push_str(&format!("  {mark}: {message}\n"));
        }
    }
    out
}
