//! The cluster operations of a plan ([`ClusterOp`]): draining (or, for a
//! node that cannot be reached, cordoning) a node and deleting its Node
//! object through a control-plane node's API, and
//! removing an etcd member through a healthy member's client API, each
//! after a check that the cluster keeps its quorum without it.

use crate::api::Request;
use crate::drain::{drain, DrainOptions};
use crate::execute::{Applied, Run};
use crate::{transport, ApplyError, Transports};
use kubeforge_plan::{ClusterOp, EtcdTls, Plan};
use kubeforge_transport::Script;
use serde_json::Value;
use std::time::Duration;

/// Through a member's own client URL: `$1` CA, `$2` certificate, `$3`
/// key, `$4` what (`list`: the member list, then `/health` of each URL
/// after $4; `add`: the peer URL `$5`; `remove`: member `$5`, an ID;
/// `status`: the status of the member at client URL `$5`; `handover`: the
/// member at client URL `$5`, the leader, hands its leadership to member
/// `$6`). Prints `members|health URL|added|removed|status|moved
/// BASE64-ANSWER` lines.
const ETCD_OP: &str = r#"set -u
ca=$1 cert=$2 key=$3 what=$4
shift 4
q() { curl -sS --max-time 5 --cacert "$ca" --cert "$cert" --key "$key" "$@" 2>&1; }
case "$what" in
list)
  printf 'members %s\n' "$(q -X POST -d '{}' https://127.0.0.1:2379/v3/cluster/member/list | base64 -w0)"
  for u in "$@"; do printf 'health %s %s\n' "$u" "$(q "$u/health" | base64 -w0)"; done
  ;;
add)
  printf 'added %s\n' "$(q -X POST -d "{\"peerURLs\":[\"$1\"]}" https://127.0.0.1:2379/v3/cluster/member/add | base64 -w0)"
  ;;
remove)
  printf 'removed %s\n' "$(q -X POST -d "{\"ID\":\"$1\"}" https://127.0.0.1:2379/v3/cluster/member/remove | base64 -w0)"
  ;;
status)
  printf 'status %s\n' "$(q -X POST -d '{}' "$1/v3/maintenance/status" | base64 -w0)"
  ;;
handover)
  printf 'moved %s\n' "$(q --max-time 20 -X POST -d "{\"targetID\":\"$2\"}" "$1/v3/maintenance/transfer-leadership" | base64 -w0)"
  ;;
esac
"#;

/// A member as the member list gives it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Member {
    pub id: String,
    pub name: String,
    pub peer_urls: Vec<String>,
    pub client_urls: Vec<String>,
}

/// The members of a `member/list` answer (IDs are uint64, as strings or
/// numbers).
pub fn members_of(v: &Value) -> Vec<Member> {
    let urls = |m: &Value, key: &str| -> Vec<String> {
        m.get(key)
            .and_then(Value::as_array)
            .map(|a| {
                a.iter()
                    .filter_map(Value::as_str)
                    .map(str::to_string)
                    .collect()
            })
            .unwrap_or_default()
    };
    v.get("members")
        .and_then(Value::as_array)
        .map(|ms| {
            ms.iter()
                .map(|m| Member {
                    id: id_at(m, "/ID").unwrap_or_default(),
                    name: m
                        .get("name")
                        .and_then(Value::as_str)
                        .unwrap_or_default()
                        .to_string(),
                    peer_urls: urls(m, "peerURLs"),
                    client_urls: urls(m, "clientURLs"),
                })
                .collect()
        })
        .unwrap_or_default()
}

/// Whether an answer of etcd's gateway is a result (not `{"code",
/// "message"}` or `{"error"}`).
fn answered(v: &Value) -> bool {
    v.get("header").is_some() && !failed(v)
}

/// Whether an answer of etcd's gateway is an error (`{"code", "message"}`
/// or `{"error"}`).
fn failed(v: &Value) -> bool {
    v.get("code").is_some() || v.get("error").is_some()
}

/// The smallest majority of `n` members.
pub fn quorum(n: usize) -> usize {
    n / 2 + 1
}

/// Whether removing the member `gone` from `members` (each with its
/// health) keeps the cluster able to commit the removal and serve after
/// it; `Err` says why not.
pub fn may_remove(members: &[(Member, bool)], gone: &str) -> Result<(), String> {
    let n = members.len();
    let healthy = members.iter().filter(|(_, h)| *h).count();
    let stay: Vec<&(Member, bool)> = members.iter().filter(|(m, _)| m.id != gone).collect();
    let stay_healthy = stay.iter().filter(|(_, h)| *h).count();
    let sick: Vec<&str> = members
        .iter()
        .filter(|(_, h)| !h)
        .map(|(m, _)| m.name.as_str())
        .collect();
    if stay.is_empty() {
        return Err("it is the only member".into());
    }
    if healthy < quorum(n) {
        return Err(format!(
            "only {healthy} of {n} members are healthy (unhealthy: {}): the cluster cannot commit the removal",
            sick.join(", ")
        ));
    }
    if stay_healthy < quorum(stay.len()) {
        return Err(format!(
            "the {} members left would have {stay_healthy} healthy, fewer than their quorum of {} (unhealthy: {}): quorum would be lost",
            stay.len(),
            quorum(stay.len()),
            sick.join(", ")
        ));
    }
    Ok(())
}

fn lines(out: &str) -> Vec<(String, String)> {
    use base64::Engine as _;
    let b64 = base64::engine::general_purpose::STANDARD;
    out.lines()
        .filter_map(|l| {
            let (head, body) = l.rsplit_once(' ')?;
            let body = b64.decode(body.trim()).unwrap_or_default();
            Some((
                head.to_string(),
                String::from_utf8_lossy(&body).into_owned(),
            ))
        })
        .collect()
}

/// The body of the line headed `head` in [`ETCD_OP`]'s output (empty
/// when there is none).
fn answer_of(out: &str, head: &str) -> String {
    lines(out)
        .into_iter()
        .find(|(h, _)| h == head)
        .map(|(_, b)| b)
        .unwrap_or_default()
}

/// [`ETCD_OP`] doing `verb` with `rest`, over the etcd TLS files `tls`.
fn etcd_op<'a>(
    what: &'a str,
    tls: &EtcdTls,
    verb: &str,
    rest: Vec<String>,
    secs: u64,
) -> Script<'a> {
    let mut args = vec![
        tls.ca.clone(),
        tls.cert.clone(),
        tls.key.clone(),
        verb.into(),
    ];
    args.extend(rest);
    Script::new(what, ETCD_OP)
        .args(args)
        .timeout(Duration::from_secs(secs))
}

/// The member list through the first member of `via` that gives one,
/// with every member's health as that member sees it.
async fn listed(
    transports: &Transports,
    via: &[String],
    tls: &EtcdTls,
) -> Result<(String, Vec<(Member, bool)>), ApplyError> {
    let mut tried = Vec::new();
    for node in via {
        let Ok(t) = transport(transports, node) else {
            continue;
        };
        let out = t
            .run(etcd_op("etcd: member list", tls, "list", Vec::new(), 30))
            .await;
        let list = match out {
            Ok(o) => Some(answer_of(&o.stdout_str(), "members")).filter(|b| !b.is_empty()),
            Err(e) => {
                tried.push(format!("{node}: {e}"));
                continue;
            }
        };
        let Some(members) = list
            .as_deref()
            .and_then(|b| serde_json::from_str::<Value>(b).ok())
            .map(|v| members_of(&v))
            .filter(|m| !m.is_empty())
        else {
            tried.push(format!(
                "{node}: no member list ({})",
                list.unwrap_or_default().trim()
            ));
            continue;
        };
        let urls: Vec<String> = members
            .iter()
            .filter_map(|m| m.client_urls.first().cloned())
            .collect();
        let out = t
            .run(etcd_op("etcd: member health", tls, "list", urls, 60))
            .await?;
        let health = lines(&out.stdout_str());
        let judged = members
            .into_iter()
            .map(|m| {
                let ok = m.client_urls.first().is_some_and(|u| {
                    health.iter().any(|(h, b)| {
                        h == &format!("health {u}")
                            && serde_json::from_str::<Value>(b)
                                .ok()
                                .and_then(|v| v.get("health").cloned())
                                .is_some_and(|x| x == "true" || x == true)
                    })
                });
                (m, ok)
            })
            .collect();
        return Ok((node.clone(), judged));
    }
    Err(ApplyError::Other(format!(
        "no etcd member answered with a member list:\n  {}\n  help: `kubeforge status` shows the members' health",
        tried.join("\n  ")
    )))
}

/// Tells the node's etcd to join a running cluster when it first starts
/// (its data directory empty): a runtime drop-in, gone at the next boot.
const JOIN: &str = r#"set -eu
mkdir -p /run/kubeforge /run/systemd/system/etcd.service.d
printf 'ETCD_INITIAL_CLUSTER_STATE=existing\n' > /run/kubeforge/etcd-join.env
printf '[Service]\nEnvironmentFile=/run/kubeforge/etcd-join.env\n' > /run/systemd/system/etcd.service.d/kubeforge-join.conf
systemctl daemon-reload
"#;

/// Whether adding the member with `peer_url` to `members` keeps the
/// cluster able to commit it and serve until it has started: every
/// member healthy (one added earlier and not started yet aside).
pub fn may_add(members: &[(Member, bool)], peer_url: &str) -> Result<(), String> {
    let others: Vec<&(Member, bool)> = members
        .iter()
        .filter(|(m, _)| !m.peer_urls.iter().any(|u| u == peer_url))
        .collect();
    let sick: Vec<&str> = others
        .iter()
        .filter(|(_, h)| !h)
        .map(|(m, _)| m.name.as_str())
        .collect();
    if !sick.is_empty() {
        return Err(format!(
            "not every member is healthy (unhealthy: {})",
            sick.join(", ")
        ));
    }
    let n = others.len() + 1;
    if others.len() < quorum(n) {
        return Err(format!(
            "{} healthy members are fewer than the quorum of {n} members",
            others.len()
        ));
    }
    Ok(())
}

/// The member named `member` (or with `peer_url`), if it is in the list.
fn find<'a>(list: &'a [(Member, bool)], member: &str, peer_url: &str) -> Option<&'a Member> {
    list.iter()
        .map(|(m, _)| m)
        .find(|m| m.name == member || m.peer_urls.iter().any(|u| u == peer_url))
}

/// Checks, before anything is touched, that every etcd member the plan
/// removes can go without losing the quorum.
pub async fn precheck(plan: &Plan, transports: &Transports) -> Result<(), ApplyError> {
    for op in plan.phases.iter().flat_map(|p| &p.ops) {
        if let ClusterOp::EtcdAdd {
            member,
            peer_url,
            via,
            tls,
        } = op
        {
            let (_, list) = listed(transports, via, tls).await?;
            may_add(&list, peer_url).map_err(|why| {
                ApplyError::Other(format!(
                    "adding etcd member {member} is refused: {why}; nothing was changed\n  help: bring the unhealthy members back (`kubeforge status`), then apply again"
                ))
            })?;
        }
        if let ClusterOp::EtcdRemove {
            member,
            peer_url,
            via,
            tls,
        } = op
        {
            let (_, list) = listed(transports, via, tls).await?;
            if let Some(m) = find(&list, member, peer_url) {
                may_remove(&list, &m.id).map_err(|why| {
                    ApplyError::Other(format!(
                        "removing etcd member {member} is refused: {why}; nothing was changed\n  help: bring the unhealthy members back (`kubeforge status`), then apply again"
                    ))
                })?;
            }
        }
    }
    Ok(())
}

/// Executes a reset plan ([`kubeforge_plan::remove::reset`]) under the
/// apply lock of every node it names.
pub async fn reset(
    plan: &Plan,
    transports: &Transports,
    opts: &crate::Options,
    owner: &str,
    progress: &dyn crate::Progress,
) -> Result<Applied, ApplyError> {
    let locks = crate::lock_all(transports, owner).await?;
    let result = crate::execute(plan, None, transports, opts, progress).await;
    for l in locks {
        l.release().await;
    }
    result
}

/// The etcd ID at `pointer` in an answer (uint64, as a string or a
/// number).
fn id_at(v: &Value, pointer: &str) -> Option<String> {
    match v.pointer(pointer)? {
        Value::String(s) => Some(s.clone()),
        Value::Number(n) => Some(n.to_string()),
        _ => None,
    }
}

/// Whether the status answer `status` is of the leader.
fn leads(status: &str) -> bool {
    let Ok(v) = serde_json::from_str::<Value>(status) else {
        return false;
    };
    matches!(
        (id_at(&v, "/header/member_id"), id_at(&v, "/leader")),
        (Some(me), Some(leader)) if me == leader && me != "0"
    )
}

impl Run<'_> {
    /// Moves etcd's leadership off `gone` when it leads, to the first
    /// healthy member that stays: a removed leader leaves the others
    /// without one until they elect another (an election timeout and
    /// more), and meanwhile every linearizable read waits or fails, the
    /// API servers' etcd readiness checks among them. A member that does
    /// not answer its status is not the leader of a cluster that just
    /// answered its health. Leadership that could not be moved is a
    /// warning: the removal is still safe, the members elect a leader.
    async fn hand_over(
        &self,
        phase: &str,
        through: &str,
        list: &[(Member, bool)],
        gone: &Member,
        tls: &EtcdTls,
    ) -> Result<Option<String>, ApplyError> {
        let (Some(url), Some((to, _))) = (
            gone.client_urls.first(),
            list.iter().find(|(m, healthy)| *healthy && m.id != gone.id),
        ) else {
            return Ok(None);
        };
        let t = self.t(through)?;
        let out = t
            .run(etcd_op(
                "etcd: member status",
                tls,
                "status",
                vec![url.clone()],
                30,
            ))
            .await?;
        if !leads(&answer_of(&out.stdout_str(), "status")) {
            return Ok(None);
        }
        self.step(
            phase,
            through,
            format!(
                "etcd leadership moves from {} to {} before the removal",
                gone.name, to.name
            ),
        );
        let out = t
            .run(etcd_op(
                "etcd: move leader",
                tls,
                "handover",
                vec![url.clone(), to.id.clone()],
                40,
            ))
            .await?;
        let answer = answer_of(&out.stdout_str(), "moved");
        // A transfer answers `{}` (no header); an error `{"code", ...}`.
        let moved = serde_json::from_str::<Value>(&answer)
            .ok()
            .is_some_and(|v| v.is_object() && !failed(&v));
        Ok((!moved).then(|| {
            format!(
                "{through}: etcd leadership did not move from {} to {} ({}); the members elect a new leader after the removal, reads wait meanwhile",
                gone.name,
                to.name,
                answer.trim()
            )
        }))
    }

    /// One cluster operation of a phase.
    pub(crate) async fn op(&self, phase: &str, op: &ClusterOp) -> Result<Applied, ApplyError> {
        let mut done = Applied::default();
        match op {
            ClusterOp::Drain {
                node,
                via,
                port,
                timeout_secs,
            } => {
                self.step(phase, via, format!("drain {node}"));
                let opts = DrainOptions {
                    timeout: Duration::from_secs(*timeout_secs),
                    poll_interval: self.opts.poll_interval,
                };
                let d = drain(&self.api(via, *port)?, node, &opts).await?;
                self.step(
                    phase,
                    via,
                    if d.absent {
                        format!("{node} is not registered with the API: nothing to drain")
                    } else {
                        format!(
                            "{node} drained: {} pods evicted, {} left (DaemonSet or static)",
                            d.evicted.len(),
                            d.left.len()
                        )
                    },
                );
                done.warnings.extend(d.warnings);
            }
            ClusterOp::Cordon { node, via, port } => {
                self.step(
                    phase,
                    via,
                    format!("cordon {node} (unreachable: no evictions)"),
                );
                let cordoned = crate::drain::cordon(&self.api(via, *port)?, node).await?;
                if !cordoned {
                    self.step(
                        phase,
                        via,
                        format!("{node} is not registered with the API: nothing to cordon"),
                    );
                }
            }
            ClusterOp::DeleteNode { node, via, port } => {
                self.step(phase, via, format!("delete Node {node}"));
                let api = self.api(via, *port)?;
                let r = api
                    .send(
                        "delete the Node object",
                        &[Request {
                            method: "DELETE",
                            path: format!("/api/v1/nodes/{node}"),
                            body: None,
                        }],
                    )
                    .await?;
                if let Some(r) = r.first().filter(|r| !r.ok() && r.code != 404) {
                    return Err(ApplyError::Other(format!(
                        "{via}: deleting Node {node}: {}\n  help: `kubectl delete node {node}`",
                        r.message()
                    )));
                }
            }
            ClusterOp::EtcdAdd {
                member,
                peer_url,
                via,
                tls,
            } => {
                let (through, list) = listed(self.transports, via, tls).await?;
                may_add(&list, peer_url).map_err(|why| {
                    ApplyError::Other(format!(
                        "adding etcd member {member} is refused: {why}\n  help: bring the unhealthy members back (`kubeforge status`), then apply again"
                    ))
                })?;
                if find(&list, member, peer_url).is_some() {
                    self.step(
                        phase,
                        &through,
                        format!("{member} is an etcd member already (added, not started)"),
                    );
                } else {
                    self.step(
                        phase,
                        &through,
                        format!("etcd member add {member} ({peer_url})"),
                    );
                    let out = self
                        .t(&through)?
                        .run(etcd_op(
                            "etcd: member add",
                            tls,
                            "add",
                            vec![peer_url.clone()],
                            30,
                        ))
                        .await?;
                    let answer = answer_of(&out.stdout_str(), "added");
                    let v: Option<Value> = serde_json::from_str(&answer).ok();
                    let added = v
                        .as_ref()
                        .and_then(|v| v.pointer("/member/peerURLs"))
                        .and_then(Value::as_array)
                        .is_some_and(|a| a.iter().any(|u| u == peer_url.as_str()));
                    if !added {
                        return Err(ApplyError::Other(format!(
                            "{through}: etcd member add {member}: {}\n  help: `kubeforge status` shows the members",
                            answer.trim()
                        )));
                    }
                }
                self.step(
                    phase,
                    member,
                    "etcd joins the running cluster (ETCD_INITIAL_CLUSTER_STATE=existing)".into(),
                );
                self.t(member)?
                    .run_ok(Script::new("etcd: join the running cluster", JOIN))
                    .await?;
            }
            ClusterOp::EtcdRemove {
                member,
                peer_url,
                via,
                tls,
            } => {
                let (through, list) = listed(self.transports, via, tls).await?;
                let Some(m) = find(&list, member, peer_url).cloned() else {
                    self.step(
                        phase,
                        &through,
                        format!("{member} is not an etcd member: nothing to remove"),
                    );
                    return Ok(done);
                };
                may_remove(&list, &m.id).map_err(|why| {
                    ApplyError::Other(format!(
                        "removing etcd member {member} is refused: {why}\n  help: bring the unhealthy members back (`kubeforge status`), then apply again"
                    ))
                })?;
                if let Some(w) = self.hand_over(phase, &through, &list, &m, tls).await? {
                    done.warnings.push(w);
                }
                self.step(
                    phase,
                    &through,
                    format!("etcd member remove {member} ({})", m.id),
                );
                let t = self.t(&through)?;
                let out = t
                    .run(etcd_op(
                        "etcd: member remove",
                        tls,
                        "remove",
                        vec![m.id.clone()],
                        30,
                    ))
                    .await?;
                let answer = answer_of(&out.stdout_str(), "removed");
                let v: Option<Value> = serde_json::from_str(&answer).ok();
                let left = v.as_ref().map(members_of).unwrap_or_default();
                // An error is `{"code": N, "message": ...}`; a removal
                // answers with the members left.
                if !v.as_ref().is_some_and(answered) || left.iter().any(|x| x.id == m.id) {
                    return Err(ApplyError::Other(format!(
                        "{through}: etcd member remove {member}: {}\n  help: `kubeforge status` shows the members",
                        answer.trim()
                    )));
                }
            }
        }
        Ok(done)
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn m(id: &str) -> Member {
        Member {
            id: id.into(),
            name: format!("n{id}"),
            peer_urls: vec![],
            client_urls: vec![],
        }
    }

    #[test]
    fn the_leader_is_the_member_whose_status_names_it() {
        assert!(leads(
            r#"{"header":{"member_id":"3","raft_term":"4"},"leader":"3"}"#
        ));
        assert!(leads(r#"{"header":{"member_id":3},"leader":3}"#));
        assert!(!leads(r#"{"header":{"member_id":"3"},"leader":"1"}"#));
        // No leader known (an election), an error, no answer at all.
        assert!(!leads(r#"{"header":{"member_id":"0"},"leader":"0"}"#));
        assert!(!leads(r#"{"code":14,"message":"unavailable"}"#));
        assert!(!leads(""));
    }

    #[test]
    fn quorum_decides_a_removal() {
        let all = |h: [bool; 3]| vec![(m("1"), h[0]), (m("2"), h[1]), (m("3"), h[2])];
        assert!(may_remove(&all([true, true, true]), "3").is_ok());
        // The one going is the sick one: the two left are healthy.
        assert!(may_remove(&all([true, true, false]), "3").is_ok());
        // One of those that stay is sick: two members with one healthy.
        let e = may_remove(&all([true, false, true]), "3").unwrap_err();
        assert!(e.contains("quorum would be lost"), "{e}");
        let e = may_remove(&all([true, false, false]), "3").unwrap_err();
        assert!(e.contains("cannot commit"), "{e}");
        assert!(may_remove(&[(m("1"), true)], "1").is_err());
        assert!(may_remove(&[(m("1"), true), (m("2"), true)], "2").is_ok());
        assert!(may_remove(&[(m("1"), true), (m("2"), false)], "2").is_err());
    }

    #[test]
    fn an_add_wants_every_member_healthy() {
        let with = |h: [bool; 2]| {
            let mut a = m("1");
            a.peer_urls = vec!["https://a:2380".into()];
            let mut b = m("2");
            b.peer_urls = vec!["https://b:2380".into()];
            vec![(a, h[0]), (b, h[1])]
        };
        assert!(may_add(&with([true, true]), "https://c:2380").is_ok());
        let e = may_add(&with([true, false]), "https://c:2380").unwrap_err();
        assert!(e.contains("unhealthy: n2"), "{e}");
        // Added earlier, never started: it does not count against the add.
        assert!(may_add(&with([true, false]), "https://b:2380").is_err());
        let mut l = with([true, true]);
        l.push((
            Member {
                id: "3".into(),
                name: String::new(),
                peer_urls: vec!["https://c:2380".into()],
                client_urls: vec![],
            },
            false,
        ));
        assert!(may_add(&l, "https://c:2380").is_ok());
    }

    #[test]
    fn errors_of_the_gateway_are_not_results() {
        let err = serde_json::json!({"code": 2, "message": "etcdserver: re-configuration failed due to not enough started members"});
        assert!(!answered(&err));
        let ok = serde_json::json!({"header": {"raft_term": "2"}, "members": []});
        assert!(answered(&ok));
    }

    #[test]
    fn member_ids_as_strings_or_numbers() {
        let v = serde_json::json!({"members": [
            {"ID": "12", "name": "cp1", "peerURLs": ["https://10.0.0.1:2380"], "clientURLs": ["https://10.0.0.1:2379"]},
            {"ID": 13, "name": "", "peerURLs": ["https://10.0.0.2:2380"]}
        ]});
        let ms = members_of(&v);
        assert_eq!(ms[0].id, "12");
        assert_eq!(ms[1].id, "13");
        assert_eq!(ms[1].client_urls, Vec::<String>::new());
    }
}
