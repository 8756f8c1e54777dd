//! The cluster's health as an admin checks it every morning, gathered
//! read-only from every node at once (bounded): each unit's state and
//! version, the kubelets' Ready condition, clock skew, etcd's members,
//! leader, size and revision, `/readyz` on every apiserver and through the
//! VIP and which LB node holds it, the soonest certificate expiry per node,
//! and the files that no longer match what kubeforge renders. [`status`]
//! returns data and a verdict; the CLI draws the table.
//!
//! Everything goes through the transport; nothing is changed on a node.
//! Certificates are read as certificates only: from the kubelet's own
//! files (which hold its key too) and from kubeconfigs only the
//! certificate blocks leave the node.

use crate::api::Api;
use crate::gates::HOLDS_ADDRESS;
use crate::{bounded, Credentials, Transports};
use kubeforge_inventory::{Cluster, Role};
use kubeforge_plan::{cert, ApiAction, Facts, NodeFacts};
use kubeforge_render::{Check, NodeTree, Rendered};
use kubeforge_transport::{Script, Transport};
use serde::Serialize;
use serde_json::Value;
use std::collections::BTreeMap;
use std::path::Path;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

/// What [`status`] looks at.
pub struct StatusRequest<'a> {
    pub cluster: &'a Cluster,
    pub rendered: &'a Rendered,
    /// The nodes that could be reached.
    pub transports: &'a Transports,
    /// The nodes that could not, with why.
    pub unreachable: &'a BTreeMap<String, String>,
    /// The state directory: its `backups/` is looked at.
    pub state_dir: &'a Path,
    /// Nodes probed at the same time.
    pub concurrency: usize,
    /// The largest clock difference that is not a problem.
    pub max_clock_skew: Duration,
}

/// Healthy, degraded (something needs a look, the cluster serves) or
/// failed (a node cannot be reached, or the cluster cannot serve).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Verdict {
    Healthy,
    Degraded,
    Failed,
}

impl Verdict {
    /// 0 healthy, 1 degraded, 2 failed.
    pub fn exit_code(self) -> u8 {
        match self {
            Verdict::Healthy => 0,
            Verdict::Degraded => 1,
            Verdict::Failed => 2,
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Verdict::Healthy => "healthy",
            Verdict::Degraded => "degraded",
            Verdict::Failed => "failed",
        }
    }
}

/// One thing wrong: how bad, where, which check (the row of the table),
/// and what.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Problem {
    pub level: Verdict,
    /// The node, or `None` for the cluster as a whole.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub node: Option<String>,
    /// `host`, `clock`, a unit's name, `ready`, `certificates`, `drift`,
    /// `etcd`, `apiserver`, `vip`, `api-via-vip`, `api-objects`.
    pub check: String,
    pub message: String,
}

/// The whole status.
#[derive(Debug, Clone, Serialize)]
pub struct Status {
    pub cluster: String,
    pub verdict: Verdict,
    pub problems: Vec<Problem>,
    pub nodes: Vec<NodeStatus>,
    /// With etcd nodes.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub etcd: Option<EtcdStatus>,
    pub api: ApiStatus,
    /// Addon objects the API holds differently from what kubeforge
    /// renders (`None`: not known).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub api_drift: Option<Vec<String>>,
    /// Why the drift is not known, when it is not.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub drift_error: Option<String>,
    /// The newest entry of `<state>/backups/`, if there is one.
    pub backup: Option<Backup>,
    /// Where backups are looked for.
    pub backups_dir: String,
    /// How long gathering took.
    pub elapsed_secs: f64,
}

#[derive(Debug, Clone, Serialize)]
pub struct NodeStatus {
    pub name: String,
    pub address: String,
    pub roles: Vec<String>,
    pub reachable: bool,
    /// Why it could not be reached or read.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    pub units: Vec<UnitStatus>,
    /// The node's Ready condition in the API (kubelet nodes).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub ready: Option<NodeReady>,
    /// The node's clock minus this machine's, in seconds.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub clock_skew_secs: Option<f64>,
    /// The certificate that expires first of those read on the node.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub soonest_certificate: Option<CertExpiry>,
    /// How many certificates were read.
    pub certificates: usize,
    /// Certificate files that could not be parsed, with why.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub unreadable_certificates: Vec<String>,
    /// Files that differ from what kubeforge renders (`None`: not known).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub drift: Option<Vec<String>>,
    /// `/readyz` of the node's own apiserver (control-plane nodes).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub apiserver: Option<Endpoint>,
    /// Whether the node holds the VIP (LB nodes).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub holds_vip: Option<bool>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct UnitStatus {
    pub name: String,
    /// As `systemctl is-active` says: active, failed, inactive, activating, ...
    pub state: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub version: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct NodeReady {
    /// `True`, `False`, `Unknown`, `not registered`, or `unknown` when the
    /// API could not be asked.
    pub status: String,
    #[serde(skip_serializing_if = "String::is_empty")]
    pub reason: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct CertExpiry {
    pub path: String,
    pub subject: String,
    pub not_after: String,
    /// Whole days left (negative: expired).
    pub days_left: i64,
}

#[derive(Debug, Clone, Serialize)]
pub struct EtcdStatus {
    pub members: Vec<EtcdMember>,
    /// The leader's member name, as the healthy members report it.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub leader: Option<String>,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct EtcdMember {
    pub node: String,
    pub healthy: bool,
    #[serde(skip_serializing_if = "String::is_empty")]
    pub detail: String,
    pub leader: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub db_size: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub revision: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub version: Option<String>,
    #[serde(skip)]
    member_id: String,
    #[serde(skip)]
    leader_id: String,
    #[serde(skip)]
    names: BTreeMap<String, String>,
}

impl EtcdMember {
    /// The member names it reports.
    pub fn member_names(&self) -> Vec<String> {
        self.names.values().cloned().collect()
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Endpoint {
    pub url: String,
    pub ready: bool,
    #[serde(skip_serializing_if = "String::is_empty")]
    pub detail: String,
}

#[derive(Debug, Clone, Default, Serialize)]
pub struct ApiStatus {
    /// The API through the VIP, asked from a control-plane node.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub vip: Option<VipStatus>,
}

#[derive(Debug, Clone, Serialize)]
pub struct VipStatus {
    pub address: String,
    /// The LB nodes that hold it (exactly one when all is well).
    pub holders: Vec<String>,
    /// `/readyz` through it (`None`: no control-plane node could ask).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub readyz: Option<Endpoint>,
}

#[derive(Debug, Clone, Serialize)]
pub struct Backup {
    pub path: String,
    pub age_secs: u64,
}

/// The node's clock, as seconds since the epoch.
const CLOCK: &str = "date +%s.%N";

/// Per unit: `NAME<TAB>STATE<TAB>VERSION LINE`; the version from the
/// unit's own binary (`--version`, nginx `-v`), where it has one.
const UNITS: &str = r#"for u in "$@"; do
  state=$(systemctl is-active "$u" 2>/dev/null) || true
  exe=$(systemctl show -p ExecStart --value "$u" 2>/dev/null | sed -n 's/^{ path=\([^ ;]*\).*/\1/p' | head -n 1)
  v=
  case "${exe##*/}" in
    nginx) v=$(timeout 10 "$exe" -v 2>&1 | head -n 1) ;;
    etcd|etcdctl|kube-apiserver|kube-controller-manager|kube-scheduler|kubelet|kube-proxy|containerd|keepalived)
      v=$(timeout 10 "$exe" --version 2>&1 | head -n 1) ;;
  esac
  printf '%s\t%s\t%s\n' "$u" "${state:-unknown}" "$v"
done
"#;

/// etcd's own view over TLS with the healthcheck client certificate:
/// `$1` client URL, `$2` CA, `$3` certificate, `$4` key. Prints
/// `health|status|members BASE64-ANSWER`.
const ETCD: &str = r#"url=$1 ca=$2 cert=$3 key=$4
q() { curl -sS --max-time 5 --cacert "$ca" --cert "$cert" --key "$key" "$@" 2>&1; }
printf 'health %s\n' "$(q "$url/health" | base64 -w0)"
printf 'status %s\n' "$(q -X POST -d '{}' "$url/v3/maintenance/status" | base64 -w0)"
printf 'members %s\n' "$(q -X POST -d '{}' "$url/v3/cluster/member/list" | base64 -w0)"
"#;

/// `$1` URL, `$2` CA: what `/readyz` answers (the body, or curl's error).
const READYZ: &str = r#"curl -sS --max-time 5 --cacert "$2" "$1" 2>&1 || true"#;

fn now_secs() -> f64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs_f64())
        .unwrap_or_default()
}

/// A version number out of a `--version` line: "etcd Version: 3.5.16",
/// "Kubernetes v1.31.4", "nginx version: nginx/1.22.1".
fn version_of(line: &str) -> Option<String> {
    line.split(|c: char| c.is_whitespace() || c == '/' || c == ',')
        .find(|tok| {
            let t = tok.strip_prefix('v').unwrap_or(tok);
            t.chars().next().is_some_and(|c| c.is_ascii_digit()) && t.contains('.')
        })
        .map(str::to_string)
}

/// The first lines of a text, on one line, at most `max` characters.
fn short(text: &str, max: usize) -> String {
    let one: String = text
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty())
        .collect::<Vec<_>>()
        .join("; ");
    if one.chars().count() <= max {
        one
    } else {
        let mut s: String = one.chars().take(max.saturating_sub(3)).collect();
        s.push_str("...");
        s
    }
}

/// What one node's probes found.
#[derive(Default)]
struct Probed {
    error: Option<String>,
    units: Vec<UnitStatus>,
    skew: Option<f64>,
    certs: Vec<CertExpiry>,
    unreadable: Vec<String>,
    etcd: Option<EtcdMember>,
    apiserver: Option<Endpoint>,
    holds_vip: Option<bool>,
    via_vip: Option<Endpoint>,
}

async fn run_text(t: &dyn Transport, script: Script<'_>) -> Result<String, String> {
    match t.run(script).await {
        Ok(o) if o.success() => Ok(o.stdout_str()),
        Ok(o) => Err(short(&format!("{}{}", o.stdout_str(), o.stderr_str()), 200)),
        Err(e) => Err(e.to_string()),
    }
}

async fn clock(t: &dyn Transport) -> Result<f64, String> {
    let before = now_secs();
    let out = run_text(
        t,
        Script::new("status: clock", CLOCK).timeout(Duration::from_secs(15)),
    )
    .await?;
    let after = now_secs();
    let node: f64 = out
        .trim()
        .parse()
        .map_err(|_| format!("unexpected clock answer {:?}", short(&out, 60)))?;
    Ok(node - (before + after) / 2.0)
}

async fn units(t: &dyn Transport, tree: &NodeTree) -> Result<Vec<UnitStatus>, String> {
    let names: Vec<String> = tree.units.iter().map(|u| u.name.clone()).collect();
    let out = run_text(
        t,
        Script::new("status: units and versions", UNITS)
            .args(names.clone())
            .timeout(Duration::from_secs(60)),
    )
    .await?;
    let mut found: BTreeMap<String, UnitStatus> = BTreeMap::new();
    for line in out.lines() {
        let mut parts = line.splitn(3, '\t');
        let (Some(name), Some(state)) = (parts.next(), parts.next()) else {
            continue;
        };
        found.insert(
            name.to_string(),
            UnitStatus {
                name: name.to_string(),
                state: state.trim().to_string(),
                version: parts.next().and_then(version_of),
            },
        );
    }
    Ok(names
        .iter()
        .map(|n| {
            found.remove(n).unwrap_or_else(|| UnitStatus {
                name: n.clone(),
                state: "unknown".into(),
                version: None,
            })
        })
        .collect())
}

/// Parses the `== PATH` sections of [`crate::certs::CERTS`].
fn parse_certs(out: &str, now: f64) -> (Vec<CertExpiry>, Vec<String>) {
    let mut certs = Vec::new();
    let mut bad = Vec::new();
    for (path, body) in crate::certs::sections(out) {
        match cert::parse_pem(body.as_bytes()) {
            Ok(list) => {
                for c in list {
                    certs.push(CertExpiry {
                        path: path.clone(),
                        subject: c.common_name().to_string(),
                        not_after: cert::rfc3339(c.not_after),
                        days_left: ((c.not_after as f64 - now) / 86_400.0).floor() as i64,
                    });
                }
            }
            Err(e) => bad.push(format!("{path}: {e}")),
        }
    }
    (certs, bad)
}

async fn certificates(
    t: &dyn Transport,
    tree: &NodeTree,
) -> Result<(Vec<CertExpiry>, Vec<String>), String> {
    let out = run_text(
        t,
        Script::new("status: certificates", crate::certs::CERTS)
            .args(crate::certs::certificate_args(tree))
            .timeout(Duration::from_secs(60)),
    )
    .await?;
    Ok(parse_certs(&out, now_secs()))
}

fn json_of(b64: &str) -> Result<Value, String> {
    use base64::Engine as _;
    let bytes = base64::engine::general_purpose::STANDARD
        .decode(b64.trim())
        .unwrap_or_default();
    let text = String::from_utf8_lossy(&bytes);
    serde_json::from_str(&text).map_err(|_| short(&text, 160))
}

/// A number etcd's JSON gateway gives as a string (uint64) or a number.
fn number(v: Option<&Value>) -> Option<u64> {
    match v? {
        Value::String(s) => s.parse().ok(),
        Value::Number(n) => n.as_u64(),
        _ => None,
    }
}

fn text(v: Option<&Value>) -> String {
    match v {
        Some(Value::String(s)) => s.clone(),
        Some(Value::Number(n)) => n.to_string(),
        _ => String::new(),
    }
}

/// Parses [`ETCD`]'s answer.
fn parse_etcd(node: &str, out: &str) -> EtcdMember {
    let mut m = EtcdMember {
        node: node.to_string(),
        ..Default::default()
    };
    for line in out.lines() {
        let (what, b64) = line.split_once(' ').unwrap_or((line, ""));
        match (what, json_of(b64)) {
            ("health", Ok(v)) => {
                m.healthy = text(v.get("health")) == "true";
                if !m.healthy {
                    m.detail = format!(
                        "health {}: {}",
                        text(v.get("health")),
                        text(v.get("reason"))
                    );
                }
            }
            ("health", Err(e)) => m.detail = e,
            ("status", Ok(v)) => {
                m.db_size = number(v.get("dbSize"));
                m.revision = number(v.pointer("/header/revision"));
                m.member_id = text(v.pointer("/header/member_id"));
                m.leader_id = text(v.get("leader"));
                m.version = v.get("version").and_then(Value::as_str).map(str::to_string);
            }
            ("members", Ok(v)) => {
                for member in v
                    .get("members")
                    .and_then(Value::as_array)
                    .into_iter()
                    .flatten()
                {
                    m.names
                        .insert(text(member.get("ID")), text(member.get("name")));
                }
            }
            _ => {}
        }
    }
    m
}

pub(crate) async fn etcd(t: &dyn Transport, tree: &NodeTree) -> Option<EtcdMember> {
    let gate = tree
        .units
        .iter()
        .filter_map(|u| u.gate.as_ref())
        .find(|g| g.check == Check::EtcdMembers && g.args.len() >= 4)?;
    let script = Script::new("status: etcd", ETCD)
        .args(gate.args[..4].to_vec())
        .timeout(Duration::from_secs(30));
    Some(match run_text(t, script).await {
        Ok(out) => parse_etcd(&tree.name, &out),
        Err(e) => EtcdMember {
            node: tree.name.clone(),
            detail: e,
            ..Default::default()
        },
    })
}

async fn readyz(t: &dyn Transport, what: &str, url: &str, ca: &str) -> Endpoint {
    let script = Script::new(what, READYZ)
        .args([url, ca])
        .timeout(Duration::from_secs(20));
    let (ready, detail) = match run_text(t, script).await {
        Ok(body) if body.trim() == "ok" => (true, String::new()),
        Ok(body) => {
            let failing: Vec<&str> = body.lines().filter(|l| l.starts_with("[-]")).collect();
            let detail = if failing.is_empty() {
                short(&body, 160)
            } else {
                short(&failing.join("\n"), 160)
            };
            (
                false,
                if detail.is_empty() {
                    "no answer".into()
                } else {
                    detail
                },
            )
        }
        Err(e) => (false, e),
    };
    Endpoint {
        url: url.to_string(),
        ready,
        detail,
    }
}

/// The node's own apiserver's `/readyz`, from its unit's gate.
async fn apiserver(t: &dyn Transport, tree: &NodeTree) -> Option<Endpoint> {
    let gate = tree
        .units
        .iter()
        .find(|u| u.name == "kube-apiserver")
        .and_then(|u| u.gate.as_ref())
        .filter(|g| g.check == Check::HttpsOk && g.args.len() >= 2)?;
    Some(readyz(t, "status: apiserver readyz", &gate.args[0], &gate.args[1]).await)
}

async fn holds(t: &dyn Transport, address: &str) -> Option<bool> {
    let script = Script::new("status: holds the VIP", HOLDS_ADDRESS)
        .args([address])
        .timeout(Duration::from_secs(15));
    run_text(t, script).await.ok().map(|o| o.trim() == "yes")
}

/// Every probe of one node.
async fn probe(
    req: &StatusRequest<'_>,
    tree: &NodeTree,
    t: &dyn Transport,
    vip_checker: bool,
) -> Probed {
    let vip = req.rendered.vip.as_ref();
    let lb = vip.filter(|v| v.holders.contains(&tree.name));
    let via = vip
        .and_then(|v| v.ready.as_ref())
        .filter(|(_, g)| vip_checker && g.args.len() >= 2);
    // The clock first and alone: its round trip bounds the skew's error.
    // Then the rest at once (a handful of sessions on the node's one SSH
    // connection).
    let clock = clock(t).await;
    let (units, certs, etcd, apiserver, holds_vip, via_vip) = tokio::join!(
        units(t, tree),
        certificates(t, tree),
        etcd(t, tree),
        apiserver(t, tree),
        async {
            match lb {
                Some(v) => holds(t, &v.address).await,
                None => None,
            }
        },
        async {
            match via {
                Some((_, g)) => {
                    Some(readyz(t, "status: readyz through the VIP", &g.args[0], &g.args[1]).await)
                }
                None => None,
            }
        },
    );
    let mut p = Probed {
        etcd,
        apiserver,
        holds_vip,
        via_vip,
        ..Default::default()
    };
    let mut errors = Vec::new();
    match clock {
        Ok(s) => p.skew = Some(s),
        Err(e) => errors.push(format!("clock: {e}")),
    }
    match units {
        Ok(u) => p.units = u,
        Err(e) => errors.push(format!("units: {e}")),
    }
    match certs {
        Ok((c, bad)) => {
            p.certs = c;
            p.unreadable = bad;
        }
        Err(e) => errors.push(format!("certificates: {e}")),
    }
    if !errors.is_empty() {
        p.error = Some(errors.join("; "));
    }
    p
}

/// The rendered trees of the reachable nodes; the addon node kept only
/// when `api` (its API objects are read).
fn reachable(req: &StatusRequest<'_>, api: bool) -> Rendered {
    let mut rendered = req.rendered.clone();
    rendered
        .nodes
        .retain(|n| req.transports.contains_key(&n.name));
    if !api
        || rendered
            .addon_node
            .as_ref()
            .is_some_and(|n| !req.transports.contains_key(n))
    {
        rendered.addon_node = None;
    }
    rendered
}

/// The facts `kubeforge plan` gathers, of every reachable node, without
/// the API.
async fn file_facts(req: &StatusRequest<'_>) -> Result<BTreeMap<String, NodeFacts>, String> {
    let rendered = reachable(req, false);
    match crate::gather(req.transports, &rendered, req.concurrency, false).await {
        Ok(g) => match g.facts {
            Facts::Gathered(map) => Ok(map),
            Facts::Offline => Ok(BTreeMap::new()),
        },
        Err(e) => Err(e.to_string()),
    }
}

/// The addon objects as the API of `addon` holds them (asked only when
/// its apiserver is ready), within a minute.
async fn api_facts(req: &StatusRequest<'_>, addon: &str) -> Result<NodeFacts, String> {
    let mut rendered = reachable(req, true);
    rendered.nodes.retain(|n| n.name == addon);
    let gathered = tokio::time::timeout(
        Duration::from_secs(60),
        crate::gather(req.transports, &rendered, 1, false),
    )
    .await
    .map_err(|_| format!("{addon}: reading the addon objects took more than 60 s"))?
    .map_err(|e| e.to_string())?;
    match gathered.facts {
        Facts::Gathered(mut map) => map
            .remove(addon)
            .ok_or_else(|| format!("{addon}: no facts")),
        Facts::Offline => Err(format!("{addon}: no facts")),
    }
}

/// What differs from the rendered files, per reachable node, and the
/// addon objects the API holds differently (`None`: not known): planned
/// exactly as `kubeforge plan` does.
type Drift = (BTreeMap<String, Vec<String>>, Option<Vec<String>>);

fn drift_of(
    req: &StatusRequest<'_>,
    mut facts: BTreeMap<String, NodeFacts>,
    api: Option<NodeFacts>,
) -> Result<Drift, String> {
    let mut rendered = reachable(req, api.is_some());
    let api_known = api
        .as_ref()
        .is_some_and(|a| matches!(a.api, Some(kubeforge_plan::ApiFacts::Objects(_))));
    if let (Some(a), Some(addon)) = (api, rendered.addon_node.clone()) {
        match facts.get_mut(&addon) {
            Some(f) => {
                f.api = a.api;
                f.csrs = a.csrs;
            }
            None => rendered.addon_node = None,
        }
    }
    // The drift only: a plan the version skew policy would refuse still
    // says which files differ.
    let opts = kubeforge_plan::Options {
        refuse_skew: false,
        ..Default::default()
    };
    let plan =
        kubeforge_plan::plan_with(&req.cluster.name, &rendered, &Facts::Gathered(facts), &opts)
            .map_err(|e| e.to_string())?;
    let mut files = BTreeMap::new();
    let mut objects = Vec::new();
    for n in &plan.nodes {
        files.insert(
            n.node.clone(),
            // The record of what kubeforge placed is not a rendered file.
            n.changes
                .iter()
                .filter(|c| c.path != kubeforge_plan::MANIFEST_PATH)
                .map(|c| c.path.clone())
                .collect(),
        );
        objects.extend(
            n.api
                .iter()
                .filter(|c| c.action != ApiAction::Apply)
                .map(|c| c.object.clone()),
        );
    }
    Ok((files, api_known.then_some(objects)))
}

/// The newest entry of `<state>/backups/` and its age.
fn newest_backup(dir: &Path) -> Option<Backup> {
    let now = SystemTime::now();
    std::fs::read_dir(dir)
        .ok()?
        .filter_map(Result::ok)
        .filter_map(|e| {
            let modified = e.metadata().ok()?.modified().ok()?;
            Some((modified, e.path()))
        })
        .max_by_key(|(m, _)| *m)
        .map(|(m, p)| Backup {
            path: p.display().to_string(),
            age_secs: now.duration_since(m).map(|d| d.as_secs()).unwrap_or(0),
        })
}

/// The Ready condition of every kubelet node, from the API of a
/// control-plane node whose apiserver is ready.
async fn readiness(
    req: &StatusRequest<'_>,
    ready_cps: &[String],
) -> Result<BTreeMap<String, NodeReady>, String> {
    let via = req
        .rendered
        .addon_node
        .iter()
        .chain(ready_cps)
        .find(|n| ready_cps.contains(n))
        .ok_or("no apiserver answers /readyz")?;
    let t = req
        .transports
        .get(via)
        .ok_or_else(|| format!("{via}: not connected"))?;
    let creds = Credentials::from_rendered(req.rendered).map_err(|e| e.to_string())?;
    let api = Api {
        t: t.as_ref(),
        creds: &creds,
        port: req.rendered.api_port,
    };
    let list = api
        .get("status: list nodes", "/api/v1/nodes")
        .await
        .map_err(|e| e.to_string())?;
    if !list.ok() {
        return Err(format!("{via}: listing nodes: {}", list.message()));
    }
    let list = list.json().unwrap_or_default();
    let items = list
        .get("items")
        .and_then(Value::as_array)
        .cloned()
        .unwrap_or_default();
    let mut out = BTreeMap::new();
    for (name, _) in req.rendered.kubelet_nodes() {
        let node = items
            .iter()
            .find(|n| n.pointer("/metadata/name").and_then(Value::as_str) == Some(name));
        let ready = match node {
            None => NodeReady {
                status: "not registered".into(),
                reason: String::new(),
            },
            Some(n) => {
                let cond = n
                    .pointer("/status/conditions")
                    .and_then(Value::as_array)
                    .and_then(|c| {
                        c.iter()
                            .find(|c| c.get("type").and_then(Value::as_str) == Some("Ready"))
                    });
                match cond {
                    None => NodeReady {
                        status: "Unknown".into(),
                        reason: "no Ready condition yet".into(),
                    },
                    Some(c) => {
                        let status = text(c.get("status"));
                        let reason = if status == "True" {
                            String::new()
                        } else {
                            short(
                                &format!("{}: {}", text(c.get("reason")), text(c.get("message"))),
                                160,
                            )
                        };
                        NodeReady { status, reason }
                    }
                }
            }
        };
        out.insert(name.to_string(), ready);
    }
    Ok(out)
}

/// Gathers the status of every node and of the cluster, and judges it.
pub async fn status(req: &StatusRequest<'_>) -> Status {
    let started = Instant::now();
    let vip_checker = req.rendered.vip.as_ref().and_then(|v| {
        let first = v.ready.as_ref().map(|(n, _)| n.clone());
        first
            .into_iter()
            .chain(
                req.cluster
                    .nodes_with(Role::ControlPlane)
                    .map(|n| n.name.clone()),
            )
            .find(|n| req.transports.contains_key(n))
    });
    let trees: Vec<&NodeTree> = req.rendered.nodes.iter().collect();
    let probes = bounded(trees, req.concurrency, |tree| {
        let checker = vip_checker.as_deref() == Some(tree.name.as_str());
        async move {
            match req.transports.get(&tree.name) {
                Some(t) => Some(probe(req, tree, t.as_ref(), checker).await),
                None => None,
            }
        }
    });
    let (probes, files) = tokio::join!(probes, file_facts(req));
    let ready_cps: Vec<String> = req
        .rendered
        .nodes
        .iter()
        .zip(&probes)
        .filter(|(_, p)| {
            p.as_ref()
                .and_then(|p| p.apiserver.as_ref())
                .is_some_and(|e| e.ready)
        })
        .map(|(t, _)| t.name.clone())
        .collect();
    // The API only where its apiserver answers /readyz: a cluster whose
    // API is down is read as quickly as a healthy one.
    let addon = req
        .rendered
        .addon_node
        .clone()
        .filter(|n| ready_cps.contains(n) && !req.rendered.addons.is_empty());
    let (readiness, api) = tokio::join!(readiness(req, &ready_cps), async {
        match &addon {
            Some(a) => Some(api_facts(req, a).await),
            None => None,
        }
    });
    let (api, api_error) = match api {
        Some(Ok(f)) => (Some(f), None),
        Some(Err(e)) => (None, Some(format!("addon objects: {e}"))),
        None => (None, None),
    };
    let (file_drift, api_drift, drift_error) = match files.and_then(|f| drift_of(req, f, api)) {
        Ok((f, a)) => (Some(f), a, api_error),
        Err(e) => (None, None, Some(e)),
    };
    let mut nodes = Vec::new();
    let mut members = Vec::new();
    let mut holders = Vec::new();
    let mut via_vip = None;
    for (tree, p) in req.rendered.nodes.iter().zip(probes) {
        let kubelet = tree.units.iter().any(|u| u.registers);
        let ready = kubelet.then(|| match &readiness {
            Ok(map) => map.get(&tree.name).cloned().unwrap_or(NodeReady {
                status: "unknown".into(),
                reason: String::new(),
            }),
            Err(e) => NodeReady {
                status: "unknown".into(),
                reason: e.clone(),
            },
        });
        let mut n = NodeStatus {
            name: tree.name.clone(),
            address: tree.address.clone(),
            roles: tree.roles.iter().map(|r| r.as_str().to_string()).collect(),
            reachable: p.is_some(),
            error: req.unreachable.get(&tree.name).cloned(),
            units: Vec::new(),
            ready: None,
            clock_skew_secs: None,
            soonest_certificate: None,
            certificates: 0,
            unreadable_certificates: Vec::new(),
            drift: file_drift.as_ref().and_then(|d| d.get(&tree.name).cloned()),
            apiserver: None,
            holds_vip: None,
        };
        if n.error.is_none() && p.is_none() {
            n.error = Some("not connected".into());
        }
        if let Some(p) = p {
            n.error = p.error;
            n.units = p.units;
            n.ready = ready;
            n.clock_skew_secs = p.skew;
            n.certificates = p.certs.len();
            n.soonest_certificate = p.certs.into_iter().min_by_key(|c| c.days_left);
            n.unreadable_certificates = p.unreadable;
            n.apiserver = p.apiserver;
            n.holds_vip = p.holds_vip;
            if p.holds_vip == Some(true) {
                holders.push(tree.name.clone());
            }
            if let Some(m) = p.etcd {
                members.push(m);
            }
            if p.via_vip.is_some() {
                via_vip = p.via_vip;
            }
        } else if tree.roles.contains(&Role::Etcd) {
            members.push(EtcdMember {
                node: tree.name.clone(),
                detail: "node unreachable".into(),
                ..Default::default()
            });
        }
        nodes.push(n);
    }
    let etcd = (!members.is_empty()).then(|| etcd_status(members));
    let api = ApiStatus {
        vip: req.rendered.vip.as_ref().map(|v| VipStatus {
            address: v.address.clone(),
            holders,
            readyz: via_vip,
        }),
    };
    let state_backups = req.state_dir.join("backups");
    let mut status = Status {
        cluster: req.cluster.name.clone(),
        verdict: Verdict::Healthy,
        problems: Vec::new(),
        nodes,
        etcd,
        api,
        api_drift,
        drift_error,
        backup: newest_backup(&state_backups),
        backups_dir: state_backups.display().to_string(),
        elapsed_secs: 0.0,
    };
    status.problems = judge(
        &status,
        i64::from(req.cluster.pki.renew_before_days),
        req.max_clock_skew,
    );
    status.verdict = status
        .problems
        .iter()
        .map(|p| p.level)
        .max()
        .unwrap_or(Verdict::Healthy);
    status.elapsed_secs = started.elapsed().as_secs_f64();
    status
}

/// The leader as the healthy members name it.
pub(crate) fn etcd_status(mut members: Vec<EtcdMember>) -> EtcdStatus {
    let mut names = BTreeMap::new();
    let mut votes: BTreeMap<String, usize> = BTreeMap::new();
    for m in &members {
        names.extend(m.names.clone());
        if m.healthy && !m.leader_id.is_empty() && m.leader_id != "0" {
            *votes.entry(m.leader_id.clone()).or_default() += 1;
        }
    }
    let leader_id = votes.into_iter().max_by_key(|(_, n)| *n).map(|(id, _)| id);
    let mut leader = None;
    for m in &mut members {
        if leader_id.as_deref().is_some_and(|id| id == m.member_id) {
            m.leader = true;
            leader = Some(m.node.clone());
        }
    }
    if leader.is_none() {
        leader = leader_id.map(|id| names.get(&id).cloned().unwrap_or(id));
    }
    EtcdStatus { members, leader }
}

/// Every problem the status shows, each with its level: failed when a
/// node cannot be reached or the cluster cannot serve (no apiserver
/// ready, the API not answering through the VIP or no LB node holding
/// it, etcd without quorum or leader, an expired certificate); degraded
/// for everything else that is not as it should be.
pub fn judge(s: &Status, renew_before_days: i64, max_skew: Duration) -> Vec<Problem> {
    let mut out = Vec::new();
    let mut add = |level, node: Option<&str>, check: &str, message: String| {
        out.push(Problem {
            level,
            node: node.map(str::to_string),
            check: check.to_string(),
            message,
        });
    };
    use Verdict::{Degraded, Failed};
    for n in &s.nodes {
        let node = Some(n.name.as_str());
        if !n.reachable {
            let why = n.error.as_deref().unwrap_or("not connected");
            add(
                Failed,
                node,
                "host",
                format!("{}: unreachable: {why}", n.name),
            );
            continue;
        }
        if let Some(e) = &n.error {
            add(
                Degraded,
                node,
                "host",
                format!("{}: could not read everything: {e}", n.name),
            );
        }
        for u in n.units.iter().filter(|u| u.state != "active") {
            add(
                Degraded,
                node,
                &u.name,
                format!("{}: {} is {}", n.name, u.name, u.state),
            );
        }
        if let Some(r) = n
            .ready
            .as_ref()
            .filter(|r| r.status != "True" && r.status != "unknown")
        {
            let reason = if r.reason.is_empty() {
                String::new()
            } else {
                format!(" ({})", r.reason)
            };
            add(
                Degraded,
                node,
                "ready",
                format!("{}: not Ready in the API: {}{reason}", n.name, r.status),
            );
        }
        if let Some(skew) = n
            .clock_skew_secs
            .filter(|s| s.abs() > max_skew.as_secs_f64())
        {
            add(
                Degraded,
                node,
                "clock",
                format!(
                    "{}: clock differs from this machine's by {skew:+.1} s (more than {} s)",
                    n.name,
                    max_skew.as_secs()
                ),
            );
        }
        if let Some(c) = &n.soonest_certificate {
            if c.days_left < 0 {
                add(
                    Failed,
                    node,
                    "certificates",
                    format!(
                        "{}: {} ({}) expired on {}",
                        n.name, c.path, c.subject, c.not_after
                    ),
                );
            } else if c.days_left < renew_before_days {
                add(
                    Degraded,
                    node,
                    "certificates",
                    format!(
                        "{}: {} ({}) expires in {} days, within renew_before_days ({renew_before_days}); `kubeforge apply` renews it",
                        n.name, c.path, c.subject, c.days_left
                    ),
                );
            }
        }
        for bad in &n.unreadable_certificates {
            add(
                Degraded,
                node,
                "certificates",
                format!("{}: unreadable certificate {bad}", n.name),
            );
        }
        if let Some(d) = n.drift.as_ref().filter(|d| !d.is_empty()) {
            add(
                Degraded,
                node,
                "drift",
                format!(
                    "{}: {} from what kubeforge renders ({}); `kubeforge plan` shows how",
                    n.name,
                    if d.len() == 1 {
                        "1 file differs".to_string()
                    } else {
                        format!("{} files differ", d.len())
                    },
                    d.join(", ")
                ),
            );
        }
        if let Some(e) = n.apiserver.as_ref().filter(|e| !e.ready) {
            add(
                Degraded,
                node,
                "apiserver",
                format!("{}: kube-apiserver is not ready: {}", n.name, e.detail),
            );
        }
    }
    let cps: Vec<&NodeStatus> = s
        .nodes
        .iter()
        .filter(|n| n.roles.iter().any(|r| r == "control-plane"))
        .collect();
    if !cps.is_empty()
        && !cps
            .iter()
            .any(|n| n.apiserver.as_ref().is_some_and(|e| e.ready))
    {
        add(
            Failed,
            None,
            "apiserver",
            "no kube-apiserver answers /readyz".into(),
        );
    }
    if let Some(e) = &s.etcd {
        let healthy = e.members.iter().filter(|m| m.healthy).count();
        let total = e.members.len();
        for m in e.members.iter().filter(|m| !m.healthy) {
            add(
                Degraded,
                Some(&m.node),
                "etcd",
                format!("{}: etcd member is not healthy: {}", m.node, m.detail),
            );
        }
        if healthy * 2 <= total {
            add(
                Failed,
                None,
                "etcd",
                format!("etcd has lost quorum: {healthy} of {total} members healthy"),
            );
        } else if e.leader.is_none() {
            add(Failed, None, "etcd", "etcd has no leader".into());
        }
    }
    if let Some(v) = &s.api.vip {
        match v.holders.len() {
            0 => add(
                Failed,
                None,
                "vip",
                format!("no LB node holds the VIP {}", v.address),
            ),
            1 => {}
            _ => add(
                Degraded,
                None,
                "vip",
                format!(
                    "several LB nodes hold the VIP {}: {}",
                    v.address,
                    v.holders.join(", ")
                ),
            ),
        }
        match &v.readyz {
            Some(e) if !e.ready => add(
                Failed,
                None,
                "api-via-vip",
                format!("the API does not answer {}: {}", e.url, e.detail),
            ),
            Some(_) => {}
            None => add(
                Failed,
                None,
                "api-via-vip",
                "no control-plane node could ask the API through the VIP".into(),
            ),
        }
    }
    if let Some(a) = s.api_drift.as_ref().filter(|a| !a.is_empty()) {
        add(
            Degraded,
            None,
            "api-objects",
            format!(
                "{} addon objects differ from what kubeforge renders: {}",
                a.len(),
                a.join(", ")
            ),
        );
    }
    if let Some(e) = &s.drift_error {
        add(Degraded, None, "drift", format!("drift not known: {e}"));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn versions_from_version_lines() {
        for (line, want) in [
            ("etcd Version: 3.5.16", Some("3.5.16")),
            ("Kubernetes v1.28.4", Some("v1.28.4")),
            (
                "Kubernetes v1.31.4-kubeforge-standin",
                Some("v1.31.4-kubeforge-standin"),
            ),
            (
                "containerd github.com/containerd/containerd 1.6.20~ds1 1.6.20~ds1-1+b1",
                Some("1.6.20~ds1"),
            ),
            ("nginx version: nginx/1.22.1", Some("1.22.1")),
            ("Keepalived v2.2.7 (01/16,2022)", Some("v2.2.7")),
            ("", None),
            ("command not found", None),
        ] {
            assert_eq!(version_of(line).as_deref(), want, "{line}");
        }
    }

    #[test]
    fn etcd_answers_parse() {
        use base64::Engine as _;
        let b = |s: &str| base64::engine::general_purpose::STANDARD.encode(s);
        let out = format!(
            "health {}\nstatus {}\nmembers {}\n",
            b(r#"{"health":"true","reason":""}"#),
            b(
                r#"{"header":{"cluster_id":"1","member_id":"11","revision":"42","raft_term":"2"},"version":"3.5.16","dbSize":"20480","leader":"11"}"#
            ),
            b(r#"{"members":[{"ID":"11","name":"cp1"},{"ID":"12","name":"cp2"}]}"#),
        );
        let m = parse_etcd("cp1", &out);
        assert!(m.healthy);
        assert_eq!(m.db_size, Some(20480));
        assert_eq!(m.revision, Some(42));
        assert_eq!(m.version.as_deref(), Some("3.5.16"));
        let e = etcd_status(vec![m]);
        assert_eq!(e.leader.as_deref(), Some("cp1"));
        assert!(e.members[0].leader);

        let down = parse_etcd(
            "cp2",
            &format!("health {}\n", b("curl: (7) Failed to connect")),
        );
        assert!(!down.healthy);
        assert!(down.detail.contains("Failed to connect"), "{}", down.detail);
    }
}
