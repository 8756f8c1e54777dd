//! What the commands share: the terminal, loading the inventory, preparing
//! the PKI and the rendered trees, the bundle, the runtime, the log file.

use crate::args::NodeArgs;
use crate::online;
use anyhow::{Context, Result};
use kubeforge_inventory::{Cluster, Loaded};
use kubeforge_pki::{Action, CaId, Event};
use kubeforge_render::Prepared;
use std::io::Write as _;
use std::path::{Path, PathBuf};

/// Everything the commands print goes through here.
pub(crate) struct Term {
    pub(crate) out: std::io::Stdout,
}

impl Term {
    pub(crate) fn line(&mut self, s: impl AsRef<str>) -> Result<()> {
        writeln!(self.out, "{}", s.as_ref()).context("writing to stdout")
    }
    pub(crate) fn raw(&mut self, s: impl AsRef<str>) -> Result<()> {
        write!(self.out, "{}", s.as_ref()).context("writing to stdout")
    }
    pub(crate) fn warn(&mut self, s: impl AsRef<str>) {
        let _ = writeln!(std::io::stderr(), "{}", s.as_ref());
    }
}

/// Reads and validates the inventory (printing its warnings); returns it
/// with the state directory.
pub(crate) fn load(
    args: &crate::args::InventoryArgs,
    term: &mut Term,
) -> Result<(Loaded, PathBuf)> {
    let loaded = kubeforge_inventory::load(&args.inventory)?;
    for w in &loaded.warnings {
        term.warn(w.to_string());
    }
    let state = match &args.state_dir {
        Some(s) => s.clone(),
        None => default_state_dir(&args.inventory, &loaded.cluster),
    };
    Ok((loaded, state))
}

fn default_state_dir(inventory: &Path, cluster: &Cluster) -> PathBuf {
    let dir = inventory
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    dir.join(".kubeforge").join(&cluster.name)
}

/// A line about what the PKI did (or would do) with a certificate.
pub(crate) fn pki_line(e: &Event, persisted: bool) -> Option<String> {
    let verb = |done: &str, would: &str| {
        if persisted {
            done.to_string()
        } else {
            would.to_string()
        }
    };
    match &e.action {
        Action::Kept => None,
        Action::Created => Some(format!(
            "  {}: {}",
            e.subject,
            verb("created", "would be created")
        )),
        Action::Reissued { why } => Some(format!(
            "  {}: {} ({why})",
            e.subject,
            verb("reissued", "would be reissued")
        )),
        Action::CaRegenerated => Some(format!(
            "  {}: {} as asked with --new-ca",
            e.subject,
            verb("regenerated", "would be regenerated")
        )),
        Action::CaExpiresSoon { .. } => Some(format!("  warning: {e}")),
        Action::CaRotation { what } => Some(format!("  {}: {what}", e.subject)),
    }
}

/// The PKI decided and every node's files rendered; nothing written.
pub(crate) fn prepare(state: &Path, cluster: &Cluster, new_cas: Vec<CaId>) -> Result<Prepared> {
    let opts = kubeforge_pki::Options {
        new_cas,
        ..Default::default()
    };
    Ok(kubeforge_render::prepare(state, cluster, &opts)?)
}

/// The PKI and rendered trees with the bundle's binaries and images:
/// what plan and apply start from.
pub(crate) fn prepare_nodes(
    state: &Path,
    cluster: &Cluster,
    pki: &crate::args::PkiArgs,
    nodes: &NodeArgs,
) -> Result<Prepared> {
    prepare_with_bundle(state, cluster, pki.new_ca.clone(), nodes.bundle.as_deref())
}

fn prepare_with_bundle(
    state: &Path,
    cluster: &Cluster,
    new_cas: Vec<CaId>,
    bundle: Option<&Path>,
) -> Result<Prepared> {
    let mut prepared = prepare(state, cluster, new_cas)?;
    with_bundle_dir(&mut prepared, cluster, bundle, state)?;
    Ok(prepared)
}

/// [`prepare_nodes`] on a thread of its own while `connecting` runs: at a
/// hundred nodes each takes about half a second, and neither needs the
/// other (the inventory was checked before: a bad one never reaches a
/// node). A failure to prepare is the one reported, whatever connecting
/// found; its connections are then closed unused. With `early` (the
/// files already made, before any node was contacted) only `connecting`
/// runs.
pub(crate) async fn prepare_while<T>(
    early: Option<Prepared>,
    state: &Path,
    cluster: &Cluster,
    pki: &crate::args::PkiArgs,
    nodes: &NodeArgs,
    connecting: impl std::future::Future<Output = Result<T>>,
) -> Result<(Prepared, T)> {
    if let Some(prepared) = early {
        return Ok((prepared, connecting.await?));
    }
    let (state, cluster) = (state.to_path_buf(), cluster.clone());
    let (new_ca, bundle) = (pki.new_ca.clone(), nodes.bundle.clone());
    let preparing = tokio::task::spawn_blocking(move || {
        prepare_with_bundle(&state, &cluster, new_ca, bundle.as_deref())
    });
    let (prepared, connected) = tokio::join!(preparing, connecting);
    let prepared = prepared.context("preparing the PKI and the nodes' files")??;
    Ok((prepared, connected?))
}

/// With a bundle directory, its binaries and images are added to the
/// rendered trees (each checked against the bundle's SHA256SUMS); without
/// one, binaries and images are not managed.
pub(crate) fn with_bundle_dir(
    prepared: &mut Prepared,
    cluster: &Cluster,
    dir: Option<&Path>,
    state: &Path,
) -> Result<()> {
    let Some(dir) = dir else {
        return Ok(());
    };
    // Files checked on an earlier run and unchanged since are not read
    // again.
    let bundle = kubeforge_bundle::load_cached(dir, Some(&state.join("bundle-sums")))?;
    // The wire cache keeps only this bundle's binaries.
    let keep: std::collections::BTreeSet<String> = bundle
        .files
        .values()
        .map(|(_, sha)| sha.clone())
        .chain(bundle.images.iter().map(|i| i.sha256.clone()))
        .collect();
    let wire = wire_cache(state);
    kubeforge_apply::prune_wire_cache(&wire, &keep)
        .with_context(|| format!("pruning {}", wire.display()))?;
    // What `kubeforge bundle` compressed is not compressed again (a cache
    // that cannot be filled costs time, not the command).
    if let Err(e) = kubeforge_apply::seed_wire_cache(&wire, dir, &keep) {
        tracing::warn!(
            "filling {} from {}: {e}; binaries are compressed by this run",
            wire.display(),
            dir.display()
        );
    }
    prepared
        .renderer
        .add_binaries(cluster, &mut prepared.rendered, &bundle.files);
    prepared
        .renderer
        .add_images(cluster, &mut prepared.rendered, &bundle.images)?;
    Ok(())
}

/// Where binaries compressed for the wire are kept between runs.
pub(crate) fn wire_cache(state: &Path) -> PathBuf {
    state.join("wire")
}

pub(crate) fn runtime() -> Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("starting the async runtime")
}

pub(crate) fn reach(n: &NodeArgs) -> online::Reach {
    n.reach.reach()
}

/// Full logs of an apply go to `<state>/kubeforge.log`.
pub(crate) fn init_log(state: &Path) -> Result<()> {
    std::fs::create_dir_all(state).with_context(|| format!("creating {}", state.display()))?;
    let path = state.join("kubeforge.log");
    use std::os::unix::fs::OpenOptionsExt as _;
    // Never through a link planted at the log's name.
    let file = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .mode(0o600)
        .custom_flags(rustix::fs::OFlags::NOFOLLOW.bits() as i32)
        .open(&path)
        .with_context(|| format!("opening {}", path.display()))?;
    LOG_FILE
        .set(std::sync::Mutex::new(file))
        .map_err(|_| anyhow::anyhow!("log file opened twice"))?;
    Ok(())
}

static LOG_FILE: std::sync::OnceLock<std::sync::Mutex<std::fs::File>> = std::sync::OnceLock::new();

/// Writes tracing output to the log file once one is open.
pub(crate) struct LogWriter;

impl std::io::Write for LogWriter {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        match LOG_FILE.get() {
            Some(m) => match m.lock() {
                Ok(mut f) => f.write(buf),
                Err(_) => Ok(buf.len()),
            },
            None => Ok(buf.len()),
        }
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// Who holds the nodes' locks, as another kubeforge that finds them taken
/// reports it: the operation, the cluster, this machine and process.
pub(crate) fn lock_owner(operation: &str, cluster: &str) -> String {
    format!(
        "kubeforge {operation} of cluster {cluster} from {} (pid {})",
        std::env::var("HOSTNAME").unwrap_or_else(|_| "the control machine".into()),
        std::process::id()
    )
}
