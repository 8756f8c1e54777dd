//! `kubeforge etcd backup|backups|restore`: etcd snapshots taken to this
//! machine, listed, and restored into every member.

use crate::args::{EtcdCommand, InventoryArgs, ReachArgs};
use crate::common::{init_log, load, prepare, runtime, Term};
use crate::online;
use anyhow::{bail, Context, Result};
use kubeforge_apply::etcd::{check_integrity, SnapshotInfo};
use kubeforge_plan::restore::Snapshot;
use sha2::{Digest, Sha256};
use std::path::{Path, PathBuf};
use std::time::Duration;

pub(crate) fn run(op: EtcdCommand, term: &mut Term) -> Result<()> {
    match op {
        EtcdCommand::Backup {
            inv,
            reach,
            out,
            keep,
        } => backup(&inv, &reach, out, keep, term),
        EtcdCommand::Backups { inv, reach, local } => backups(&inv, &reach, local, term),
        EtcdCommand::Restore {
            inv,
            reach,
            snapshot,
            yes,
            gate_timeout,
        } => restore(&inv, &reach, &snapshot, yes, gate_timeout, term),
    }
}

/// The snapshots' directory of the state directory.
fn backups_dir(state: &Path) -> PathBuf {
    state.join("backups")
}

/// `<file>.json` next to a snapshot.
fn info_path(file: &Path) -> PathBuf {
    let mut p = file.as_os_str().to_owned();
    p.push(".json");
    PathBuf::from(p)
}

fn sha256_file(path: &Path) -> Result<String> {
    use std::io::Read as _;
    let mut f = std::fs::File::open(path).with_context(|| format!("reading {}", path.display()))?;
    let mut h = Sha256::new();
    let mut buf = vec![0u8; 1 << 20];
    loop {
        let n = f
            .read(&mut buf)
            .with_context(|| format!("reading {}", path.display()))?;
        if n == 0 {
            break;
        }
        h.update(&buf[..n]);
    }
    Ok(h.finalize().iter().map(|b| format!("{b:02x}")).collect())
}

fn backup(
    inv: &InventoryArgs,
    reach: &ReachArgs,
    out: Option<PathBuf>,
    keep: usize,
    term: &mut Term,
) -> Result<()> {
    let (loaded, state) = load(inv, term)?;
    let cluster = &loaded.cluster;
    let prepared = prepare(&state, cluster, Vec::new())?;
    init_log(&state)?;
    let opts = kubeforge_apply::Options {
        concurrency: reach.concurrency,
        ..Default::default()
    };
    let taken = runtime()?.block_on(kubeforge_transport::closing_masters(async {
        let t = online::connect_all(cluster, &state, &reach.reach()).await?;
        let taken =
            kubeforge_apply::etcd::backup(&cluster.name, &prepared.rendered, &t, &opts).await?;
        Ok::<_, anyhow::Error>(taken)
    }))??;
    let stamp = taken.info.taken_at.replace([':', '-'], "");
    let file = match &out {
        Some(f) => f.clone(),
        None => unused(&backups_dir(&state), &format!("{}-{stamp}", cluster.name)),
    };
    let info = serde_json::to_vec_pretty(&taken.info)?;
    // The snapshot holds every object of the cluster: 0600, like a key.
    kubeforge_pki::write_files(&[
        (file.clone(), taken.data.as_slice(), 0o600),
        (info_path(&file), info.as_slice(), 0o600),
    ])
    .with_context(|| format!("writing {}", file.display()))?;
    // Read back: what is on disk is what was checked.
    if sha256_file(&file)? != taken.info.sha256 {
        bail!("{} does not read back as written", file.display());
    }
    tracing::info!(file = %file.display(), node = taken.info.node, "etcd snapshot taken");
    term.line(format!(
        "snapshot of cluster \"{}\" from {} (etcd {}, revision {}, {}, members {}) checked and written to {}\n  sha256 {}",
        cluster.name,
        taken.info.node,
        taken.info.etcd_version.as_deref().unwrap_or("?"),
        taken.info.revision.map_or("?".into(), |r| r.to_string()),
        size(taken.info.size),
        taken.info.members.join(", "),
        file.display(),
        taken.info.sha256
    ))?;
    if out.is_none() {
        for gone in prune(&backups_dir(&state), keep)? {
            term.line(format!(
                "  removed {} (keeping the newest {keep})",
                gone.display()
            ))?;
        }
    }
    Ok(())
}

/// `<dir>/<stem>.db`, or `<stem>-2.db`, ... when taken in the same second.
fn unused(dir: &Path, stem: &str) -> PathBuf {
    let mut file = dir.join(format!("{stem}.db"));
    let mut n = 2;
    while file.exists() {
        file = dir.join(format!("{stem}-{n}.db"));
        n += 1;
    }
    file
}

/// The snapshots of a directory, newest first, with what is known of them.
fn listed(dir: &Path) -> Result<Vec<(PathBuf, Option<SnapshotInfo>)>> {
    let mut found = Vec::new();
    let Ok(entries) = std::fs::read_dir(dir) else {
        return Ok(found);
    };
    for e in entries {
        let path = e?.path();
        if path.extension().is_some_and(|x| x == "db") {
            let info = std::fs::read(info_path(&path))
                .ok()
                .and_then(|b| serde_json::from_slice(&b).ok());
            found.push((path, info));
        }
    }
    // Newest first: by modification time, then name.
    let mtime = |p: &Path| std::fs::metadata(p).and_then(|m| m.modified()).ok();
    found.sort_by_cached_key(|(p, _)| std::cmp::Reverse((mtime(p), p.clone())));
    Ok(found)
}

/// Keeps the newest `keep` snapshots of the directory; returns those
/// removed.
fn prune(dir: &Path, keep: usize) -> Result<Vec<PathBuf>> {
    let mut removed = Vec::new();
    for (path, _) in listed(dir)?.into_iter().skip(keep.max(1)) {
        std::fs::remove_file(&path).with_context(|| format!("removing {}", path.display()))?;
        let _ = std::fs::remove_file(info_path(&path));
        removed.push(path);
    }
    Ok(removed)
}

/// Lists the node-local snapshots (`[etcd] backup_schedule`).
const NODE_SNAPSHOTS: &str = r#"d="$1"
[ -d "$d" ] || exit 0
for f in "$d"/*.db; do
  [ -f "$f" ] && printf '%s %s %s\n' "$(stat -c %Y "$f")" "$(stat -c %s "$f")" "$f"
done
exit 0
"#;

/// Bytes as a short size.
fn size(bytes: u64) -> String {
    match bytes {
        b if b >= 1_000_000 => format!("{:.1} MB", b as f64 / 1e6),
        b if b >= 1_000 => format!("{:.0} kB", b as f64 / 1e3),
        b => format!("{b} B"),
    }
}

/// Rows padded to their columns' widths.
fn table(rows: &[[String; 5]]) -> String {
    let mut width = [0usize; 5];
    for r in rows {
        for (w, cell) in width.iter_mut().zip(r) {
            *w = (*w).max(cell.chars().count());
        }
    }
    let mut out = String::new();
    for r in rows {
        let line: Vec<String> = r
            .iter()
            .zip(width)
            .map(|(cell, w)| format!("{cell:<w$}"))
            .collect();
        out.push_str(line.join("  ").trim_end());
        out.push('\n');
    }
    out
}

fn backups(inv: &InventoryArgs, reach: &ReachArgs, local: bool, term: &mut Term) -> Result<()> {
    let (loaded, state) = load(inv, term)?;
    let cluster = &loaded.cluster;
    let mut rows = vec![["WHERE", "SNAPSHOT", "SIZE", "REVISION", "TAKEN"].map(String::from)];
    for (path, info) in listed(&backups_dir(&state))? {
        let name = path
            .file_name()
            .unwrap_or_default()
            .to_string_lossy()
            .into_owned();
        rows.push(match &info {
            Some(i) => [
                "here".into(),
                name,
                size(i.size),
                i.revision.map_or("?".into(), |r| r.to_string()),
                i.taken_at.clone(),
            ],
            None => [
                "here".into(),
                name,
                "?".into(),
                "?".into(),
                "(no .json)".into(),
            ],
        });
    }
    if !local {
        let etcd_nodes: Vec<String> = cluster
            .nodes_with(kubeforge_inventory::Role::Etcd)
            .map(|n| n.name.clone())
            .collect();
        let found = runtime()?.block_on(kubeforge_transport::closing_masters(async {
            let t = online::connect_all(cluster, &state, &reach.reach()).await?;
            let mut found = Vec::new();
            for n in &etcd_nodes {
                let Some(tr) = t.get(n) else { continue };
                let script = kubeforge_transport::Script::new(
                    "list the node's etcd snapshots",
                    NODE_SNAPSHOTS,
                )
                .args([kubeforge_render::NODE_BACKUP_DIR]);
                found.push((n.clone(), tr.run_ok(script).await?.stdout_str()));
            }
            Ok::<_, anyhow::Error>(found)
        }))??;
        for (node, listing) in found {
            for line in listing.lines() {
                let mut p = line.splitn(3, ' ');
                if let (Some(mtime), Some(bytes), Some(path)) = (p.next(), p.next(), p.next()) {
                    rows.push([
                        node.clone(),
                        path.to_string(),
                        size(bytes.parse().unwrap_or(0)),
                        "-".into(),
                        kubeforge_apply::etcd::rfc3339(mtime.parse().unwrap_or(0)),
                    ]);
                }
            }
        }
    }
    term.raw(table(&rows))
}

fn restore(
    inv: &InventoryArgs,
    reach: &ReachArgs,
    file: &Path,
    yes: bool,
    gate_timeout: u64,
    term: &mut Term,
) -> Result<()> {
    let (loaded, state) = load(inv, term)?;
    let cluster = &loaded.cluster;
    // The snapshot must be the one recorded, and whole.
    let info: SnapshotInfo = serde_json::from_slice(
        &std::fs::read(info_path(file)).with_context(|| {
            format!(
                "reading {}\n  help: a snapshot is restored with the .json `kubeforge etcd backup` writes next to it",
                info_path(file).display()
            )
        })?,
    )
    .with_context(|| format!("{} does not parse", info_path(file).display()))?;
    let sha256 = sha256_file(file)?;
    if sha256 != info.sha256 {
        bail!(
            "{} has sha256 {sha256}, but {} records {}: refusing a changed or corrupted snapshot",
            file.display(),
            info_path(file).display(),
            info.sha256
        );
    }
    let data = std::fs::read(file).with_context(|| format!("reading {}", file.display()))?;
    check_integrity(&data).map_err(|e| anyhow::anyhow!("{}: {e}", file.display()))?;
    drop(data);
    if info.cluster != cluster.name {
        bail!(
            "{} is a snapshot of cluster \"{}\", not of \"{}\"",
            file.display(),
            info.cluster,
            cluster.name
        );
    }
    let prepared = prepare(&state, cluster, Vec::new())?;
    let stamp = time::OffsetDateTime::now_utc().unix_timestamp().to_string();
    let snapshot = Snapshot {
        file: file.to_path_buf(),
        sha256,
    };
    let plan =
        kubeforge_apply::etcd::restore_plan(&cluster.name, &prepared.rendered, &snapshot, &stamp)?;
    term.raw(kubeforge_plan::work_to_text(
        &format!(
            "Restore of cluster \"{}\" from {} (taken {} from {}, revision {}):",
            cluster.name,
            file.display(),
            info.taken_at,
            info.node,
            info.revision.map_or("?".into(), |r| r.to_string())
        ),
        &plan,
    ))?;
    if !yes {
        return term.line("\nNothing done: run again with --yes to restore.");
    }
    init_log(&state)?;
    let opts = kubeforge_apply::Options {
        concurrency: reach.concurrency,
        gate_timeout: Duration::from_secs(gate_timeout),
        ..Default::default()
    };
    let owner = crate::common::lock_owner("etcd restore", &cluster.name);
    let started = std::time::Instant::now();
    let applied = runtime()?.block_on(kubeforge_transport::closing_masters(async {
        let t = online::connect_all(cluster, &state, &reach.reach()).await?;
        let bars = crate::progress::Bars::new();
        kubeforge_apply::etcd::restore(&plan, &prepared.rendered, &t, &opts, &owner, &bars)
            .await
            .map_err(online::explain)
    }))??;
    term.line(format!(
        "\nRestored: {} units stopped, {} files written, {} units started, {} restarted in {:.1} s. The data directories before the restore are kept as {}.before-restore-{stamp}.",
        applied.stopped.len(),
        applied.files_written,
        applied.started.len(),
        applied.restarted.len(),
        started.elapsed().as_secs_f64(),
        prepared.rendered.etcd.as_ref().map_or("the data directory".to_string(), |e| e.data_dir.clone()),
    ))
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn sizes_and_tables() {
        assert_eq!(size(512), "512 B");
        assert_eq!(size(24_576), "25 kB");
        assert_eq!(size(3_500_000), "3.5 MB");
        let rows = [
            ["A", "long cell", "x", "", ""].map(String::from),
            ["bb", "c", "y", "", ""].map(String::from),
        ];
        assert_eq!(table(&rows), "A   long cell  x\nbb  c          y\n");
    }

    #[test]
    fn names_in_one_second_and_pruning_keeps_the_newest() {
        let dir = tempfile::tempdir().unwrap();
        let first = unused(dir.path(), "lab-20261130T060158Z");
        std::fs::write(&first, b"1").unwrap();
        std::fs::write(info_path(&first), b"{}").unwrap();
        let second = unused(dir.path(), "lab-20261130T060158Z");
        assert_eq!(second, dir.path().join("lab-20261130T060158Z-2.db"));
        // Older by its time, though its name sorts later.
        let old = dir.path().join("zz-old.db");
        std::fs::write(&old, b"0").unwrap();
        let f = std::fs::File::options().write(true).open(&old).unwrap();
        f.set_modified(std::time::SystemTime::UNIX_EPOCH).unwrap();
        std::thread::sleep(Duration::from_millis(20));
        std::fs::write(&second, b"2").unwrap();
        let order: Vec<PathBuf> = listed(dir.path())
            .unwrap()
            .into_iter()
            .map(|x| x.0)
            .collect();
        assert_eq!(order, [second.clone(), first.clone(), old.clone()]);
        assert_eq!(prune(dir.path(), 2).unwrap(), std::slice::from_ref(&old));
        assert!(!old.exists() && first.exists() && second.exists());
        assert_eq!(prune(dir.path(), 1).unwrap(), std::slice::from_ref(&first));
        assert!(!info_path(&first).exists());
    }
}
