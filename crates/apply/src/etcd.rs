//! Operations on the etcd cluster: a snapshot taken over TLS from a
//! healthy member (the leader when it is healthy) and checked on the
//! control machine, and a restore: a plan (see
//! [`kubeforge_plan::restore`]) executed by the same engine as an apply,
//! under the same locks.

use crate::status::{etcd as member_status, etcd_status, EtcdMember};
use crate::{execute, fan_out, lock_all, transport, Applied, ApplyError, Options, Progress};
use crate::{Credentials, Transports};
use kubeforge_plan::restore::{etcd_restore, Restore, Snapshot};
use kubeforge_plan::Plan;
use kubeforge_render::Rendered;
use kubeforge_transport::Script;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use std::time::Duration;

/// What is known of a snapshot, kept next to it (`<file>.json`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SnapshotInfo {
    pub cluster: String,
    /// RFC 3339, UTC.
    pub taken_at: String,
    /// The member it was taken from.
    pub node: String,
    pub members: Vec<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub etcd_version: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub revision: Option<u64>,
    pub size: u64,
    pub sha256: String,
}

/// A snapshot as taken, in memory.
#[derive(Debug, Clone)]
pub struct Taken {
    pub data: Vec<u8>,
    pub info: SnapshotInfo,
}

/// POSTs to etcd's snapshot stream over TLS (`$1` client URL, `$2` CA,
/// `$3` certificate, `$4` key) and prints it as it comes: one JSON message
/// per chunk, the bytes base64 inside.
const SNAPSHOT: &str = r#"set -eu
curl -sS -N --fail-with-body --max-time 3600 --cacert "$2" --cert "$3" --key "$4" \
  -X POST -d '{}' "$1/v3/maintenance/snapshot"
"#;

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// The snapshot bytes out of the stream of chunks.
fn decode_stream(out: &[u8]) -> Result<Vec<u8>, String> {
    use base64::Engine as _;
    let b64 = base64::engine::general_purpose::STANDARD;
    let mut data = Vec::new();
    for msg in serde_json::Deserializer::from_slice(out).into_iter::<serde_json::Value>() {
        let msg = msg.map_err(|e| format!("the snapshot stream does not parse: {e}"))?;
        if let Some(err) = msg.get("error") {
            return Err(format!("etcd refused the snapshot: {err}"));
        }
        if let Some(blob) = msg
            .pointer("/result/blob")
            .and_then(serde_json::Value::as_str)
        {
            data.extend(
                b64.decode(blob)
                    .map_err(|e| format!("a snapshot chunk is not base64: {e}"))?,
            );
        }
    }
    Ok(data)
}

/// etcd appends the sha256 of the database to a snapshot: checks it, as
/// `etcdutl snapshot status` does, and that the database is a bbolt file
/// (the magic number of its first meta page).
pub fn check_integrity(data: &[u8]) -> Result<(), String> {
    if data.len() < 32 + 4096 {
        return Err(format!(
            "the snapshot has {} bytes: too short to be an etcd database",
            data.len()
        ));
    }
    // A page header of 16 bytes, then the meta page's magic, little-endian.
    if data[16..20] != 0xED0C_DAEDu32.to_le_bytes() {
        return Err(
            "the snapshot is not a bbolt database (no magic number in its first page)".into(),
        );
    }
    let (db, sum) = data.split_at(data.len() - 32);
    if Sha256::digest(db).as_slice() != sum {
        return Err(
            "the snapshot's own sha256 (its last 32 bytes) does not match its contents: it is corrupted or cut short"
                .into(),
        );
    }
    Ok(())
}

/// Every member's view, the leader marked.
pub async fn members(
    rendered: &Rendered,
    transports: &Transports,
    opts: &Options,
) -> Result<Vec<EtcdMember>, ApplyError> {
    let trees: Vec<_> = rendered
        .nodes
        .iter()
        .filter(|t| t.units.iter().any(|u| u.name == "etcd"))
        .collect();
    let found = fan_out(trees, opts.concurrency, |tree| async move {
        let t = transport(transports, &tree.name)?;
        Ok::<_, ApplyError>(member_status(t, tree).await)
    })
    .await?;
    Ok(etcd_status(found.into_iter().flatten().collect()).members)
}

/// Takes a snapshot from the leader (or, when it is not healthy, another
/// healthy member) and checks it.
pub async fn backup(
    cluster: &str,
    rendered: &Rendered,
    transports: &Transports,
    opts: &Options,
) -> Result<Taken, ApplyError> {
    let etcd = rendered
        .etcd
        .as_ref()
        .ok_or_else(|| ApplyError::Other("the inventory names no etcd member".into()))?;
    let members = members(rendered, transports, opts).await?;
    let from = members
        .iter()
        .filter(|m| m.healthy)
        .max_by_key(|m| m.leader)
        .ok_or_else(|| {
            let why: Vec<String> = members
                .iter()
                .map(|m| format!("{}: {}", m.node, m.detail))
                .collect();
            ApplyError::Other(format!(
                "no etcd member is healthy; nothing to take a snapshot from:\n  {}",
                why.join("\n  ")
            ))
        })?;
    let t = transport(transports, &from.node)?;
    let out = t
        .run_ok(
            Script::new("take an etcd snapshot", SNAPSHOT)
                .args([
                    "https://127.0.0.1:2379".to_string(),
                    etcd.ca.clone(),
                    etcd.cert.clone(),
                    etcd.key.clone(),
                ])
                .timeout(Duration::from_secs(3600)),
        )
        .await?;
    let data =
        decode_stream(&out.stdout).map_err(|e| ApplyError::Other(format!("{}: {e}", from.node)))?;
    check_integrity(&data).map_err(|e| ApplyError::Other(format!("{}: {e}", from.node)))?;
    let mut names = from.member_names();
    names.sort();
    let info = SnapshotInfo {
        cluster: cluster.to_string(),
        taken_at: rfc3339(time::OffsetDateTime::now_utc().unix_timestamp()),
        node: from.node.clone(),
        members: names,
        etcd_version: from.version.clone(),
        revision: from.revision,
        size: data.len() as u64,
        sha256: hex(&Sha256::digest(&data)),
    };
    Ok(Taken { data, info })
}

/// The restore plan for a snapshot file (checked by the caller), with a
/// new cluster token.
pub fn restore_plan(
    cluster: &str,
    rendered: &Rendered,
    snapshot: &Snapshot,
    stamp: &str,
) -> Result<Plan, ApplyError> {
    let mut t = [0u8; 8];
    let _ = getrandom::fill(&mut t);
    let token = format!("{cluster}-restored-{}", hex(&t));
    Ok(etcd_restore(
        cluster,
        rendered,
        &Restore {
            snapshot,
            token: &token,
            stamp,
        },
    )?)
}

/// Executes a restore plan under the nodes' apply locks.
pub async fn restore(
    plan: &Plan,
    rendered: &Rendered,
    transports: &Transports,
    opts: &Options,
    owner: &str,
    progress: &dyn Progress,
) -> Result<Applied, ApplyError> {
    let locks = lock_all(transports, owner).await?;
    let creds = Credentials::from_rendered(rendered);
    let result = match creds {
        Ok(c) => execute(plan, Some(&c), transports, opts, progress).await,
        Err(e) => Err(e),
    };
    for l in locks {
        l.release().await;
    }
    result
}

/// A Unix time as RFC 3339 in UTC, whole seconds.
pub fn rfc3339(unix: i64) -> String {
    time::OffsetDateTime::from_unix_timestamp(unix)
        .ok()
        .and_then(|t| {
            t.format(&time::format_description::well_known::Rfc3339)
                .ok()
        })
        .unwrap_or_else(|| unix.to_string())
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    /// A database-shaped buffer: bbolt's magic in its first meta page, and
    /// the sha256 etcd appends.
    fn snapshot() -> Vec<u8> {
        let mut db = vec![7u8; 8192];
        db[16..20].copy_from_slice(&0xED0C_DAEDu32.to_le_bytes());
        let sum = Sha256::digest(&db);
        db.extend_from_slice(&sum);
        db
    }

    #[test]
    fn integrity_of_a_snapshot() {
        let good = snapshot();
        check_integrity(&good).unwrap();
        let mut flipped = good.clone();
        flipped[5000] ^= 1;
        assert!(check_integrity(&flipped)
            .unwrap_err()
            .contains("corrupted or cut short"));
        assert!(check_integrity(&good[..good.len() - 1])
            .unwrap_err()
            .contains("does not match"));
        let mut no_magic = vec![0u8; 8192];
        let sum = Sha256::digest(&no_magic);
        no_magic.extend_from_slice(&sum);
        assert!(check_integrity(&no_magic)
            .unwrap_err()
            .contains("not a bbolt database"));
        assert!(check_integrity(&[0u8; 100])
            .unwrap_err()
            .contains("too short"));
    }

    #[test]
    fn the_stream_of_chunks() {
        let out = br#"{"result":{"remaining_bytes":"3","blob":"YWJj"}}
{"result":{"blob":"ZGVm"}}"#;
        assert_eq!(decode_stream(out).unwrap(), b"abcdef");
        let refused = br#"{"error":{"grpc_code":7,"message":"permission denied"}}"#;
        assert!(decode_stream(refused)
            .unwrap_err()
            .contains("etcd refused the snapshot"));
        assert!(decode_stream(br#"{"result":{"blob":"***"}}"#)
            .unwrap_err()
            .contains("not base64"));
    }
}
