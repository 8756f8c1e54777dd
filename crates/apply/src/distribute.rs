//! Binaries to the nodes of a phase before it runs: each distinct binary
//! (by sha256) goes into the blob store of every node that needs it, from
//! the control machine compressed on the wire (zstd, or gzip where the
//! node has no zstd) or, once some node holds it, from that node: the
//! control machine's uplink carries each binary a few times, not once per
//! node. A node that holds the binary in place already (the plan's
//! sources: a new node's kubelet is on every other node) hands it on as
//! well, so that adding a node needs little of the uplink. A blob on its
//! way to a node that will hand it on is not sent once more from here to
//! a node that can wait for it. Every blob's sha256 is checked as it
//! enters a store; installing links it into place, or copies it and
//! checks the copy (see
//! [`kubeforge_transport::ops::put_all`]).

use crate::execute::Run;
use crate::{fan_out, ApplyError};
use kubeforge_plan::{Content, PhasePlan, Put};
use kubeforge_transport::blobs::{self, Codec, Inventory};
use kubeforge_transport::Held;
use std::collections::{BTreeMap, BTreeSet};
use std::path::PathBuf;
use std::sync::Arc;

/// Uploads from the control machine at the same time.
const UPLINK_STREAMS: usize = 4;
/// Transfers a node serves at the same time.
const PEER_STREAMS: usize = 2;
/// Peers a node tries for one blob before it comes from the control
/// machine.
const PEER_TRIES: usize = 3;
/// Nodes that hold a binary in place and may hand it on, at most, per
/// binary (each costs a listing of its store, and a server when used).
const SOURCE_NODES: usize = 4;

/// One binary a phase needs somewhere.
struct Need {
    size: u64,
    file: PathBuf,
    /// Nodes that need it and lack it.
    pending: Vec<String>,
    /// Nodes that hold it (and can serve it).
    holders: Vec<String>,
}

/// A transfer in flight: (sha256, target, from a peer).
type Transfer = (String, String, Option<String>);

/// The line the transfers wait in: the phases' names, each (node, sha256)
/// pair's rank, and what every node holds and can do.
struct Line<'a> {
    names: &'a [&'a str],
    rank: &'a BTreeMap<(String, String), Rank>,
    inventories: &'a BTreeMap<String, Inventory>,
    /// node -> the (sha256, path) of the files it holds in place and may
    /// hand on.
    installed: &'a BTreeMap<String, Vec<(String, String)>>,
}

/// What the transfers of one distribution share: each blob compressed once
/// per codec, and the peers' servers, started once per node.
struct Shared<'a> {
    /// node -> the files in place it may hand on ([`Line::installed`]).
    installed: &'a BTreeMap<String, Vec<(String, String)>>,
    /// (sha256, codec) -> the bytes on the wire, made once.
    compressed: Cells<(String, &'static str), Wire>,
    /// node -> its server (of every blob in its store), started once.
    servers: Cells<String, Server>,
}

/// Values made once per key, each on its own: making one (compressing a
/// blob, starting a peer's server) does not hold up the others.
type Cells<K, V> = std::sync::Mutex<BTreeMap<K, Arc<tokio::sync::OnceCell<V>>>>;

/// The cell of `key` in `cells` (a new empty one the first time).
fn cell<K: Ord, V>(cells: &Cells<K, V>, key: K) -> Arc<tokio::sync::OnceCell<V>> {
    let mut m = cells
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner);
    Arc::clone(m.entry(key).or_default())
}

/// A blob compressed for the wire, shared by the uploads of it.
type Wire = Arc<Vec<u8>>;

/// A peer serving its blobs: its port, token and the handle that stops it.
struct Server {
    port: u16,
    token: String,
    held: Box<dyn Held>,
}

/// One blob's local file and size.
struct Blob<'a> {
    file: &'a std::path::Path,
    size: u64,
}

/// What was staged where: node -> blobs, for installing and clearing;
/// `checked`: those that arrived in this run, their sha256 checked on the
/// way into the store (the rest were there already).
#[derive(Debug, Default)]
pub(crate) struct Staged {
    pub held: BTreeMap<String, BTreeSet<String>>,
    pub checked: BTreeSet<(String, String)>,
}

impl Staged {
    pub fn has(&self, node: &str, sha: &str) -> bool {
        self.held.get(node).is_some_and(|s| s.contains(sha))
    }

    pub fn checked(&self, node: &str, sha: &str) -> bool {
        self.checked.contains(&(node.to_string(), sha.to_string()))
    }

    fn arrived(&mut self, node: String, sha: String) {
        self.checked.insert((node.clone(), sha.clone()));
        self.held.entry(node).or_default().insert(sha);
    }
}

fn token() -> String {
    let mut b = [0u8; 16];
    let _ = getrandom::fill(&mut b);
    b.iter().map(|x| format!("{x:02x}")).collect()
}

fn port() -> u16 {
    let mut b = [0u8; 2];
    let _ = getrandom::fill(&mut b);
    40000 + u16::from_le_bytes(b) % 20000
}

/// The local file of `put` when it goes through the node's blob store:
/// a binary of the bundle (secrets go straight from here to their node).
pub(crate) fn sent_ahead(put: &Put) -> Option<&std::path::Path> {
    match &put.content {
        Content::File(file) if !put.secret => Some(file),
        _ => None,
    }
}

/// Where a transfer stands in line: its level (see [`level`]), its node's
/// place in its phase, its phase.
type Rank = (usize, usize, usize);

/// The level of phase `i`'s binaries: phases go in plan order, and one
/// that starts beside an earlier phase (`with`) right after that phase,
/// level with the others that start beside it (the controllers' and the
/// kubelets' beside the apiservers').
fn level(phases: &[PhasePlan], i: usize) -> usize {
    let with = phases[i]
        .with
        .as_ref()
        .and_then(|w| phases[..i].iter().position(|x| &x.phase == w));
    match with {
        Some(g) => 2 * g + 1,
        None => 2 * i,
    }
}

/// What each phase still waits for: (node, sha256) pairs, by phase.
struct Waiting {
    phases: Vec<(String, BTreeSet<(String, String)>)>,
    finished: Vec<bool>,
}

impl Waiting {
    /// `node` got `sha`: the phases that waited only for it are done, and
    /// the nodes waiting for their own binaries look again.
    fn arrived(&mut self, run: &Run<'_>, node: &str, sha: &str) {
        let key = (node.to_string(), sha.to_string());
        for (i, (phase, left)) in self.phases.iter_mut().enumerate() {
            left.remove(&key);
            if left.is_empty() && !self.finished[i] {
                self.finished[i] = true;
                run.sent.finish(phase, Ok(()));
            }
        }
        run.sent.arrived();
    }

    /// Every phase not done yet ends with `error` (the first of them) or
    /// as not sent.
    fn fail_rest(&mut self, run: &Run<'_>, mut error: Option<ApplyError>, why: &str) {
        for (i, (phase, _)) in self.phases.iter().enumerate() {
            if self.finished[i] {
                continue;
            }
            self.finished[i] = true;
            let e = error.take().unwrap_or_else(|| {
                ApplyError::Other(format!(
                    "the binaries of phase {phase} were not sent: {why}"
                ))
            });
            run.sent.finish(phase, Err(e));
        }
    }
}

impl Run<'_> {
    /// Puts every binary the phases install into the blob stores of the
    /// nodes that install them, while the phases run: one level after the
    /// other ([`level`]; a level's transfers have the uplink, the peers and
    /// the nodes' CPUs to themselves, so that the apiservers' binaries are
    /// not slowed by the kubelets'), and within a level node by node (the
    /// first nodes get all their binaries first and start while the
    /// others' are on their way). Each phase is told
    /// ([`crate::execute::Sent`]) once its own binaries are in place.
    pub(crate) async fn distribute(&self, phases: &[PhasePlan]) {
        let mut needs: BTreeMap<String, Need> = BTreeMap::new();
        let mut rank: BTreeMap<(String, String), Rank> = BTreeMap::new();
        let mut waiting = Waiting {
            phases: Vec::new(),
            finished: vec![false; phases.len()],
        };
        for (pi, p) in phases.iter().enumerate() {
            let mut left = BTreeSet::new();
            for (ni, w) in p.nodes.iter().enumerate() {
                for put in &w.puts {
                    let Some(file) = sent_ahead(put) else {
                        continue;
                    };
                    let size = match std::fs::metadata(file) {
                        Ok(m) => m.len(),
                        Err(e) => {
                            let e = ApplyError::Other(format!("reading {}: {e}", file.display()));
                            waiting.phases.push((p.phase.clone(), left));
                            return waiting.fail_rest(self, Some(e), "a binary is unreadable");
                        }
                    };
                    let need = needs.entry(put.sha256.clone()).or_insert_with(|| Need {
                        size,
                        file: file.to_path_buf(),
                        pending: Vec::new(),
                        holders: Vec::new(),
                    });
                    if !need.pending.contains(&w.node) {
                        need.pending.push(w.node.clone());
                    }
                    let key = (w.node.clone(), put.sha256.clone());
                    let r = (level(phases, pi), ni, pi);
                    let kept = rank.entry(key.clone()).or_insert(r);
                    *kept = (*kept).min(r);
                    left.insert(key);
                }
            }
            waiting.phases.push((p.phase.clone(), left));
        }
        for (i, (phase, left)) in waiting.phases.iter().enumerate() {
            if left.is_empty() {
                waiting.finished[i] = true;
                self.sent.finish(phase, Ok(()));
            }
        }
        if needs.is_empty() {
            return;
        }
        // Nodes that hold a binary in place, unchanged (the plan's
        // sources): a few per binary may hand it on.
        let mut installed: BTreeMap<String, Vec<(String, String)>> = BTreeMap::new();
        for (sha, need) in &needs {
            let sources = self.sources.get(sha).into_iter().flatten();
            for (node, path) in sources
                .filter(|(n, _)| !need.pending.contains(n))
                .take(SOURCE_NODES)
            {
                let files = installed.entry(node.clone()).or_default();
                files.push((sha.clone(), path.clone()));
            }
        }
        // What every node involved holds and can do.
        let nodes: BTreeSet<String> = needs
            .values()
            .flat_map(|n| n.pending.clone())
            .chain(installed.keys().cloned())
            .collect();
        let inventories = fan_out(
            nodes.into_iter().collect(),
            self.opts.concurrency,
            |n| async move {
                let inv = blobs::inventory(self.t(&n)?, blobs::STORE).await?;
                Ok::<_, ApplyError>((n, inv))
            },
        )
        .await;
        let inventories: BTreeMap<String, Inventory> = match inventories {
            Ok(i) => i.into_iter().collect(),
            Err(e) => return waiting.fail_rest(self, Some(e), "the blob stores were not listed"),
        };
        let mut held = Vec::new();
        for (sha, need) in &mut needs {
            need.pending.retain(|n| {
                let has = inventories.get(n).is_some_and(|i| i.held.contains(sha));
                if has {
                    held.push((n.clone(), sha.clone()));
                }
                !has
            });
        }
        {
            let mut s = self.staged.lock().await;
            for (n, sha) in &held {
                s.held.entry(n.clone()).or_default().insert(sha.clone());
            }
        }
        for (n, sha) in &held {
            waiting.arrived(self, n, sha);
        }
        installed.retain(|n, _| inventories.get(n).is_some_and(|i| i.can_serve));
        for (n, files) in &installed {
            for (sha, _) in files {
                if let Some(need) = needs.get_mut(sha) {
                    need.holders.push(n.clone());
                }
            }
        }
        for (phase, left) in waiting.phases.iter().filter(|(_, l)| !l.is_empty()) {
            let shas: BTreeSet<&String> = left.iter().map(|(_, s)| s).collect();
            self.event(
                phase,
                None,
                crate::EventKind::Step,
                format!("sending {} binaries to {} places", shas.len(), left.len()),
            );
        }
        let names: Vec<&str> = phases.iter().map(|p| p.phase.as_str()).collect();
        let line = Line {
            names: &names,
            rank: &rank,
            inventories: &inventories,
            installed: &installed,
        };
        match self.transfers(&mut needs, &line, &mut waiting).await {
            Ok(()) => waiting.fail_rest(self, None, "an earlier phase failed"),
            Err(e) => waiting.fail_rest(self, Some(e), "an earlier transfer failed"),
        }
    }

    /// Runs every pending transfer in line, peers first, the control
    /// machine when no peer holds the blob or a peer transfer failed.
    async fn transfers(
        &self,
        needs: &mut BTreeMap<String, Need>,
        line: &Line<'_>,
        waiting: &mut Waiting,
    ) -> Result<(), ApplyError> {
        use futures::stream::{FuturesUnordered, StreamExt};
        use std::sync::atomic::Ordering;
        let inventories = line.inventories;
        let shared = Shared {
            installed: line.installed,
            compressed: Default::default(),
            servers: Default::default(),
        };
        let mut busy: BTreeMap<String, usize> = BTreeMap::new();
        let mut uplink = 0;
        // Peer transfers that failed: (sha256, target, peer).
        let mut failed: BTreeSet<(String, String, String)> = BTreeSet::new();
        let mut running = FuturesUnordered::new();
        // Transfers in flight by level.
        let mut levels: BTreeMap<usize, usize> = BTreeMap::new();
        // Blobs on their way to a node that will serve them on: sha256 ->
        // transfers in flight.
        let mut coming: BTreeMap<String, usize> = BTreeMap::new();
        let mut failure = None;
        loop {
            if failure.is_none() && !self.sent.stop.load(Ordering::Relaxed) {
                let mut queue: Vec<(Rank, String, String)> = needs
                    .iter()
                    .flat_map(|(sha, need)| {
                        need.pending.iter().map(|n| {
                            let key = (n.clone(), sha.clone());
                            let r = line.rank.get(&key).copied().unwrap_or((usize::MAX, 0, 0));
                            (r, n.clone(), sha.clone())
                        })
                    })
                    .collect();
                queue.sort();
                // The lowest level with transfers waiting or in flight.
                let now = queue
                    .first()
                    .map(|(r, _, _)| r.0)
                    .into_iter()
                    .chain(levels.iter().filter(|(_, n)| **n > 0).map(|(l, _)| *l))
                    .min();
                for ((level, _, pi), target, sha) in queue {
                    if Some(level) != now {
                        break;
                    }
                    let Some(need) = needs.get_mut(&sha) else {
                        continue;
                    };
                    // From a peer that has not failed this transfer yet,
                    // while fewer than PEER_TRIES have.
                    let tried = failed
                        .iter()
                        .filter(|(s, t, _)| *s == sha && *t == target)
                        .count();
                    let can_fetch =
                        tried < PEER_TRIES && inventories.get(&target).is_some_and(|v| v.can_fetch);
                    let peer = need
                        .holders
                        .iter()
                        .find(|h| {
                            busy.get(*h).copied().unwrap_or(0) < PEER_STREAMS
                                && inventories.get(*h).is_some_and(|v| v.can_serve)
                                && !failed.contains(&(sha.clone(), target.clone(), (*h).clone()))
                        })
                        .filter(|_| can_fetch)
                        .cloned();
                    let transfer: Transfer = match peer {
                        Some(h) => {
                            *busy.entry(h.clone()).or_default() += 1;
                            (sha, target, Some(h))
                        }
                        // A blob already on its way to a node that serves
                        // it comes from there, not once more from here.
                        None if can_fetch && coming.get(&sha).is_some_and(|n| *n > 0) => continue,
                        None if uplink < UPLINK_STREAMS => {
                            uplink += 1;
                            (sha, target, None)
                        }
                        None => continue,
                    };
                    need.pending.retain(|n| *n != transfer.1);
                    if inventories.get(&transfer.1).is_some_and(|v| v.can_serve) {
                        *coming.entry(transfer.0.clone()).or_default() += 1;
                    }
                    let (size, file) = (need.size, need.file.clone());
                    let codec = inventories
                        .get(&transfer.1)
                        .map_or(Codec::None, Inventory::codec);
                    let shared = &shared;
                    let phase = line.names.get(pi).copied().unwrap_or_default();
                    *levels.entry(level).or_default() += 1;
                    running.push(async move {
                        let blob = Blob { file: &file, size };
                        let r = self.transfer(phase, &transfer, blob, codec, shared).await;
                        (level, transfer, r)
                    });
                }
            }
            let Some((level, (sha, target, peer), result)) = running.next().await else {
                break;
            };
            if let Some(n) = levels.get_mut(&level) {
                *n -= 1;
            }
            if inventories.get(&target).is_some_and(|v| v.can_serve) {
                if let Some(n) = coming.get_mut(&sha) {
                    *n -= 1;
                }
            }
            match &peer {
                Some(h) => {
                    if let Some(b) = busy.get_mut(h) {
                        *b -= 1;
                    }
                }
                None => uplink -= 1,
            }
            match (result, peer) {
                (Ok(()), _) => {
                    if let Some(n) = needs.get_mut(&sha) {
                        n.holders.push(target.clone());
                    }
                    self.staged
                        .lock()
                        .await
                        .arrived(target.clone(), sha.clone());
                    waiting.arrived(self, &target, &sha);
                }
                // A peer transfer that failed is done again from another
                // peer, or from here.
                (Err(e), Some(h)) => {
                    tracing::warn!(node = target, "fetching from {h} failed: {e}");
                    failed.insert((sha.clone(), target.clone(), h));
                    if let Some(n) = needs.get_mut(&sha) {
                        n.pending.push(target);
                    }
                }
                (Err(e), None) => {
                    if failure.is_none() {
                        failure = Some(e);
                    }
                }
            }
        }
        let servers = std::mem::take(
            &mut *shared
                .servers
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner),
        );
        for (_, server) in servers {
            if let Some(server) =
                Arc::into_inner(server).and_then(tokio::sync::OnceCell::into_inner)
            {
                server.held.release().await;
            }
        }
        match failure {
            Some(e) => Err(e),
            None => Ok(()),
        }
    }

    /// One blob to one node, from a peer or from here.
    async fn transfer(
        &self,
        phase: &str,
        (sha, target, peer): &Transfer,
        Blob { file, size }: Blob<'_>,
        codec: Codec,
        shared: &Shared<'_>,
    ) -> Result<(), ApplyError> {
        let t = self.t(target)?;
        let short = &sha[..12.min(sha.len())];
        if let Some(h) = peer {
            let address = self.address(h)?;
            let server = cell(&shared.servers, h.clone());
            let server = server
                .get_or_try_init(|| async {
                    let (port, token) = (port(), token());
                    let files = shared.installed.get(h).map_or(&[][..], Vec::as_slice);
                    let held =
                        blobs::serve(self.t(h)?, blobs::STORE, &address, port, &token, files)
                            .await?;
                    Ok::<_, ApplyError>(Server { port, token, held })
                })
                .await?;
            let (port, token) = (server.port, server.token.clone());
            self.step(phase, target, format!("fetch binary {short} from {h}"));
            return Ok(blobs::fetch(t, blobs::STORE, sha, size, &address, port, &token).await?);
        }
        let name = match codec {
            Codec::Zstd => "zstd",
            Codec::Gzip => "gzip",
            Codec::None => "none",
        };
        let cache = self.opts.wire_cache.as_deref();
        let data = cell(&shared.compressed, (sha.clone(), name));
        let data = data
            .get_or_try_init(|| async {
                Ok::<_, ApplyError>(Arc::new(compressed(file, sha, codec, name, cache).await?))
            })
            .await?;
        self.step(
            phase,
            target,
            format!(
                "send binary {short} ({:.1} of {:.1} MB)",
                data.len() as f64 / 1e6,
                size as f64 / 1e6
            ),
        );
        let e = match blobs::receive(t, blobs::STORE, sha, size, codec, data.as_ref().clone()).await
        {
            Ok(()) => return Ok(()),
            Err(e @ kubeforge_transport::TransportError::Failed { .. }) => e,
            Err(e) => return Err(e.into()),
        };
        // A compressed copy kept from before (or made by `kubeforge
        // bundle`) that the node refused (it checks what it decompressed)
        // is dropped, and the binary compressed again and sent once more.
        let Some(kept) = cache
            .filter(|_| codec != Codec::None)
            .map(|dir| kept(dir, sha, name))
            .filter(|k| k.exists())
        else {
            return Err(e.into());
        };
        tracing::warn!(
            node = target,
            "{target} refused binary {short} from {}: {e}; compressing {} again",
            kept.display(),
            file.display()
        );
        let _ = tokio::fs::remove_file(&kept).await;
        let fresh = Arc::new(compress(file, codec).await?);
        shared
            .compressed
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .insert(
                (sha.clone(), name),
                Arc::new(tokio::sync::OnceCell::new_with(Some(Arc::clone(&fresh)))),
            );
        Ok(blobs::receive(t, blobs::STORE, sha, size, codec, fresh.as_ref().clone()).await?)
    }

    /// Clears the blob stores of every node that got blobs.
    pub(crate) async fn clear_blobs(&self, staged: Staged) {
        let items: Vec<(String, Vec<String>)> = staged
            .held
            .into_iter()
            .map(|(n, s)| (n, s.into_iter().collect()))
            .collect();
        let _ = fan_out(items, self.opts.concurrency, |(n, shas)| async move {
            let cache = Some(kubeforge_transport::gather::CACHE);
            blobs::drop(self.t(&n)?, blobs::STORE, &shas, cache).await?;
            Ok::<_, ApplyError>(())
        })
        .await;
    }
}

/// Where the wire cache `dir` keeps the binary `sha` compressed with the
/// codec `name`.
fn kept(dir: &std::path::Path, sha: &str, name: &str) -> PathBuf {
    dir.join(format!("{sha}.{name}"))
}

/// The temporary name [`kept`] is written under by this process (renamed
/// into place when whole; [`prune_wire_cache`] removes leftovers).
fn unfinished(dir: &std::path::Path, sha: &str, name: &str) -> PathBuf {
    dir.join(format!(".{sha}.{name}.{}", std::process::id()))
}

/// `file` (whose sha256 is `sha`) compressed with `codec`, from `cache`
/// when an earlier run left it there (`SHA.NAME`), else compressed and
/// kept there (written to a temporary file, then renamed).
async fn compressed(
    file: &std::path::Path,
    sha: &str,
    codec: Codec,
    name: &str,
    cache: Option<&std::path::Path>,
) -> Result<Vec<u8>, ApplyError> {
    let Some(dir) = cache.filter(|_| codec != Codec::None) else {
        return compress(file, codec).await;
    };
    let kept = kept(dir, sha, name);
    if let Ok(data) = tokio::fs::read(&kept).await {
        return Ok(data);
    }
    let data = compress(file, codec).await?;
    // A cache that cannot be written costs the next run time, not this
    // one its binaries.
    let write = async {
        tokio::fs::create_dir_all(dir).await?;
        let tmp = unfinished(dir, sha, name);
        tokio::fs::write(&tmp, &data).await?;
        tokio::fs::rename(&tmp, &kept).await
    };
    if let Err(e) = write.await {
        tracing::warn!("keeping {} for the next run: {e}", kept.display());
    }
    Ok(data)
}

/// Removes from the wire cache `dir` every binary whose sha256 is not in
/// `keep` (the bundle's binaries now), and leftovers of interrupted
/// writes.
pub fn prune_wire_cache(
    dir: &std::path::Path,
    keep: &std::collections::BTreeSet<String>,
) -> std::io::Result<()> {
    let entries = match std::fs::read_dir(dir) {
        Ok(e) => e,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
        Err(e) => return Err(e),
    };
    for e in entries {
        let e = e?;
        let name = e.file_name().to_string_lossy().into_owned();
        let sha = name.split('.').next().unwrap_or_default();
        if !keep.contains(sha) {
            std::fs::remove_file(e.path())?;
        }
    }
    Ok(())
}

/// Puts into the wire cache `dir` each binary of `shas` that the bundle in
/// `bundle` holds compressed ([`kubeforge_bundle::wire`]) and `dir` lacks:
/// a hard link, or a copy when the bundle is on another file system.
/// Returns how many it added.
pub fn seed_wire_cache(
    dir: &std::path::Path,
    bundle: &std::path::Path,
    shas: &BTreeSet<String>,
) -> std::io::Result<usize> {
    let mut added = 0;
    for sha in shas {
        let from = kubeforge_bundle::wire::wire_file(bundle, sha);
        let kept = kept(dir, sha, "zstd");
        if kept.exists() || !from.is_file() {
            continue;
        }
        std::fs::create_dir_all(dir)?;
        if std::fs::hard_link(&from, &kept).is_err() {
            let tmp = unfinished(dir, sha, "zstd");
            std::fs::copy(&from, &tmp)?;
            std::fs::rename(&tmp, &kept)?;
        }
        added += 1;
    }
    Ok(added)
}

/// A local file compressed for the wire, off the async threads.
async fn compress(file: &std::path::Path, codec: Codec) -> Result<Vec<u8>, ApplyError> {
    let path = file.to_path_buf();
    let err = |e: std::io::Error| ApplyError::Other(format!("compressing {}: {e}", path.display()));
    let data = tokio::fs::read(file).await.map_err(err)?;
    tokio::task::spawn_blocking(move || -> std::io::Result<Vec<u8>> {
        use std::io::Write as _;
        match codec {
            Codec::Zstd => kubeforge_bundle::wire::zstd(&data),
            Codec::Gzip => {
                let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
                e.write_all(&data)?;
                e.finish()
            }
            Codec::None => Ok(data),
        }
    })
    .await
    .map_err(|e| ApplyError::Other(format!("compressing: {e}")))?
    .map_err(|e| ApplyError::Other(format!("compressing {}: {e}", file.display())))
}

#[cfg(test)]
mod wire_cache_tests {
    use super::*;

    /// A binary is compressed once and taken from the cache afterwards;
    /// pruning keeps only the binaries named.
    #[tokio::test]
    async fn compressed_once_then_kept_then_pruned() {
        let dir = tempfile::tempdir().expect("tempdir");
        let file = dir.path().join("kubelet");
        std::fs::write(&file, b"binary ".repeat(1000)).expect("file");
        let cache = dir.path().join("wire");
        let z = compressed(&file, "aa", Codec::Zstd, "zstd", Some(&cache))
            .await
            .expect("compressed");
        assert_eq!(
            zstd::decode_all(&z[..]).expect("zstd"),
            b"binary ".repeat(1000)
        );
        let kept = cache.join("aa.zstd");
        assert_eq!(std::fs::read(&kept).expect("kept"), z);
        // The next run reads what was kept.
        std::fs::write(&kept, b"kept").expect("kept");
        let again = compressed(&file, "aa", Codec::Zstd, "zstd", Some(&cache))
            .await
            .expect("compressed");
        assert_eq!(again, b"kept");
        std::fs::write(cache.join("bb.gzip"), b"old").expect("old");
        std::fs::write(cache.join(".cc.zstd.7"), b"cut short").expect("leftover");
        let keep = ["aa".to_string()].into_iter().collect();
        prune_wire_cache(&cache, &keep).expect("pruned");
        let mut left: Vec<String> = std::fs::read_dir(&cache)
            .expect("cache")
            .map(|e| e.expect("entry").file_name().to_string_lossy().into_owned())
            .collect();
        left.sort();
        assert_eq!(left, ["aa.zstd"]);
        prune_wire_cache(&dir.path().join("none"), &keep).expect("no cache yet");
    }

    /// The wire cache takes what `kubeforge bundle` compressed, once, and
    /// only for the binaries asked.
    #[test]
    fn seeded_from_the_bundle() {
        let dir = tempfile::tempdir().expect("tempdir");
        let bundle = dir.path().join("bundle");
        for sha in ["aa", "bb"] {
            let f = kubeforge_bundle::wire::wire_file(&bundle, sha);
            std::fs::create_dir_all(f.parent().expect("parent")).expect("wire dir");
            std::fs::write(&f, sha).expect("wire file");
        }
        let cache = dir.path().join("state/wire");
        let shas = ["aa".to_string(), "cc".to_string()].into_iter().collect();
        assert_eq!(seed_wire_cache(&cache, &bundle, &shas).expect("seeded"), 1);
        assert_eq!(std::fs::read(cache.join("aa.zstd")).expect("aa"), b"aa");
        assert!(!cache.join("bb.zstd").exists() && !cache.join("cc.zstd").exists());
        assert_eq!(seed_wire_cache(&cache, &bundle, &shas).expect("again"), 0);
    }
}
