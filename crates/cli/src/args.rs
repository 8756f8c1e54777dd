//! The command line: what each command takes (clap).

use clap::{Args, Parser, Subcommand, ValueEnum};
use kubeforge_pki::CaId;
use std::path::PathBuf;

/// Installs Kubernetes "the binary way": from a TOML inventory, kubeforge
/// generates the whole PKI, renders systemd units and configs for etcd,
/// the control plane, the nodes and an nginx + keepalived VIP, and shows
/// exactly what it would change on every node.
#[derive(Parser, Debug)]
#[command(name = "kubeforge", version, max_term_width = 100)]
pub(crate) struct Cli {
    /// More log output on stderr (-v info, -vv debug).
    #[arg(short, long, global = true, action = clap::ArgAction::Count)]
    pub(crate) verbose: u8,
    #[command(subcommand)]
    pub(crate) command: Command,
}

#[derive(Subcommand, Debug)]
pub(crate) enum Command {
    /// Write a commented skeleton inventory to DIR/inventory.toml.
    Init {
        /// A highly available layout: 3 control-plane + etcd nodes, 2 LB
        /// nodes holding a keepalived VIP, 2 workers.
        #[arg(long)]
        ha: bool,
        /// Overwrite an existing DIR/inventory.toml.
        #[arg(long)]
        force: bool,
        /// Directory to write into (created if missing).
        dir: PathBuf,
    },
    /// Check an inventory and print every problem with file:line:column.
    Validate(InventoryArgs),
    /// Issue or reuse the PKI and write every node's files below --out.
    Render {
        #[command(flatten)]
        inv: InventoryArgs,
        #[command(flatten)]
        pki: PkiArgs,
        /// Output directory: OUT/<node>/<path on the node>, OUT/admin.conf,
        /// OUT/manifest.json.
        #[arg(long, short)]
        out: PathBuf,
    },
    /// Show what an apply would change on every node (facts are gathered
    /// read-only over SSH).
    Plan {
        #[command(flatten)]
        inv: InventoryArgs,
        #[command(flatten)]
        pki: PkiArgs,
        #[command(flatten)]
        nodes: NodeArgs,
        /// Plan without contacting the nodes, as if every node were bare.
        #[arg(long)]
        offline: bool,
        #[command(flatten)]
        prune: PruneArgs,
        /// Output format.
        #[arg(long, value_enum, default_value_t = Output::Text)]
        output: Output,
    },
    /// Make the nodes match the inventory: gather facts, check the hosts,
    /// lock them, then execute exactly the plan, phase by phase, behind
    /// health gates. A converged cluster is left untouched.
    Apply {
        #[command(flatten)]
        inv: InventoryArgs,
        #[command(flatten)]
        pki: PkiArgs,
        #[command(flatten)]
        nodes: NodeArgs,
        /// Seconds a health gate waits before the apply stops.
        #[arg(long, default_value_t = 120, value_name = "SECS")]
        gate_timeout: u64,
        /// Largest clock difference allowed between a node and this machine.
        #[arg(long, default_value_t = 30, value_name = "SECS")]
        max_clock_skew: u64,
        #[command(flatten)]
        prune: PruneArgs,
        /// Output format of the result (progress goes to stderr either way).
        #[arg(long, value_enum, default_value_t = Output::Text)]
        output: Output,
    },
    /// Print the admin kubeconfig (pointing at the VIP), or write it.
    Kubeconfig {
        #[command(flatten)]
        inv: InventoryArgs,
        /// Write it to this file (mode 0600) instead of printing it.
        #[arg(long, short)]
        out: Option<PathBuf>,
    },
    /// Check every certificate: those of the state directory and, unless
    /// --local, those on the nodes (read in one round trip per node: the
    /// files kubeforge placed, compared with the state directory's copy,
    /// the kubeconfigs' client certificates, the kubelet's own ones), each
    /// with its expiry, residual time, CA and a CHECK: ok, renew soon
    /// (within [pki] renew_before_days), expired, not signed by the
    /// current CA, SAN mismatch, differs from the state directory,
    /// missing. `certs renew` reissues certificates and rotates CAs.
    #[command(args_conflicts_with_subcommands = true, subcommand_negates_reqs = true)]
    Certs(CertsArgs),
    /// Show the cluster's health in one table, read-only: every node
    /// reachable, each unit's state and version, kubelets Ready in the
    /// API, clock skew, etcd members (health, leader, DB size, revision)
    /// and the newest backup, /readyz on every apiserver and through the
    /// VIP and which LB node holds it, the soonest certificate expiry per
    /// node, and files that differ from what kubeforge renders.
    ///
    /// Exit status: 0 healthy, 1 degraded (something needs a look; the
    /// cluster serves), 2 failed (a node cannot be reached, or the API,
    /// etcd or the VIP cannot serve, or a certificate has expired).
    #[command(verbatim_doc_comment)]
    Status {
        #[command(flatten)]
        inv: InventoryArgs,
        /// Also compare the binaries on the nodes with this bundle's.
        #[arg(long, value_name = "DIR")]
        bundle: Option<PathBuf>,
        #[command(flatten)]
        reach: ReachArgs,
        /// Largest clock difference between a node and this machine that
        /// is not a problem.
        #[arg(long, default_value_t = 30, value_name = "SECS")]
        max_clock_skew: u64,
        /// Output format.
        #[arg(long, value_enum, default_value_t = Output::Text)]
        output: Output,
    },
    /// Take nodes down from their records in the state directory (all of
    /// them, or those named): kubeforge's units stopped and disabled, the
    /// files and binaries it placed removed and, unless --keep-data, the
    /// data of etcd, the kubelet, containerd and kubeforge itself
    /// (/var/lib/etcd, /var/lib/kubelet, /var/lib/containerd,
    /// /var/lib/kubeforge). The cluster is not asked first: to take one
    /// node out of a running cluster, remove it from the inventory and run
    /// `apply --prune`. Without --yes the plan is shown and nothing is
    /// done (exit 0).
    Reset {
        #[command(flatten)]
        inv: InventoryArgs,
        #[command(flatten)]
        reach: ReachArgs,
        /// Only this node (repeatable); default: every node with a record.
        #[arg(long = "node", value_name = "NAME")]
        nodes: Vec<String>,
        /// Keep the data directories (etcd, kubelet, containerd, kubeforge).
        #[arg(long)]
        keep_data: bool,
        /// Do it.
        #[arg(long)]
        yes: bool,
    },
    /// etcd snapshots: take one, list them, restore one.
    Etcd {
        #[command(subcommand)]
        op: EtcdCommand,
    },
    /// Print a shell completion script for kubeforge.
    ///
    ///     kubeforge completions bash > /etc/bash_completion.d/kubeforge
    ///     kubeforge completions zsh > "${fpath[1]}/_kubeforge"
    ///     kubeforge completions fish > ~/.config/fish/completions/kubeforge.fish
    #[command(verbatim_doc_comment)]
    Completions {
        /// The shell.
        #[arg(value_enum)]
        shell: Shell,
    },
    /// Print the man page (roff), or write kubeforge.1 and one page per
    /// command (kubeforge-plan.1, ...) into a directory.
    ///
    ///     kubeforge man | man -l -
    ///     kubeforge man --out /usr/local/share/man/man1
    #[command(verbatim_doc_comment)]
    Man {
        /// Write the pages into this directory (created if missing).
        #[arg(long, short, value_name = "DIR")]
        out: Option<PathBuf>,
    },
    /// Build a bundle directory (binaries + SHA256SUMS) for `apply --bundle`.
    ///
    /// Download mode (--version): fetches kube-apiserver,
    /// kube-controller-manager, kube-scheduler, kubelet, kube-proxy and
    /// kubectl from the official release bucket
    /// (BASE/vVERSION/bin/linux/ARCH/NAME) and checks each against its
    /// published NAME.sha256; with --etcd-version also etcd, etcdctl and
    /// etcdutl from the etcd release tarball, checked against its
    /// SHA256SUMS. Proxies are
    /// taken from HTTPS_PROXY / HTTP_PROXY / NO_PROXY.
    ///
    ///     kubeforge bundle --version 1.31.4 --out ./bundle --etcd-version 3.5.16
    ///
    /// Local-files mode (--from / --file / --image, air-gapped): copies
    /// every regular file of a directory (or the given files) into the
    /// bundle. When a file's directory holds a SHA256SUMS, the file must be
    /// listed there and match it.
    ///
    ///     kubeforge bundle --from ./downloads --out ./bundle
    ///
    /// Container images for nodes without a registry: --image FILE
    /// (repeatable) adds an image archive (OCI image layout or
    /// docker-archive tar, as `ctr images export`, `docker save` or `skopeo
    /// copy ... oci-archive:` write it, named NAME.tar) as images/NAME.tar;
    /// --from DIR also takes every file of DIR/images/. The image names are
    /// read from each archive, and an archive that names no image is
    /// refused. apply copies the archives to every node that runs a
    /// kubelet and imports them into containerd.
    ///
    ///     kubeforge bundle --from ./downloads --image ./pause.tar --out ./bundle
    ///
    /// A file that does not match its sha256 is refused. Nothing is written
    /// to --out (which must not exist, or be empty) until every file is
    /// checked: the bundle is built next to it and renamed into place, with
    /// SHA256SUMS written last.
    ///
    /// Beside the files, .kubeforge/ keeps each one compressed for the wire
    /// (zstd) and their sums, so that the first apply with the bundle
    /// neither reads nor compresses it again.
    #[command(
        verbatim_doc_comment,
        about = "Build a bundle directory (binaries + SHA256SUMS) for `apply --bundle`"
    )]
    Bundle(BundleArgs),
}

/// What `kubeforge bundle` takes.
#[derive(Args, Debug)]
#[command(group(clap::ArgGroup::new("source").required(true).multiple(true).args(["kubernetes", "from", "files", "images"])))]
pub(crate) struct BundleArgs {
    /// Download mode: the Kubernetes release, such as 1.31.4.
    #[arg(
        long = "version",
        value_name = "VERSION",
        conflicts_with_all = ["from", "files", "images"]
    )]
    pub(crate) kubernetes: Option<String>,
    /// The bundle directory to create (must not exist, or be empty).
    #[arg(long, short)]
    pub(crate) out: PathBuf,
    /// Download mode: the nodes' architecture.
    #[arg(long, value_enum, default_value_t = BundleArch::Amd64, conflicts_with_all = ["from", "files", "images"])]
    pub(crate) arch: BundleArch,
    /// Download mode: the Kubernetes release bucket.
    #[arg(long, value_name = "URL", default_value = kubeforge_bundle::DEFAULT_BASE_URL, conflicts_with_all = ["from", "files", "images"])]
    pub(crate) base_url: String,
    /// Download mode: also etcd, etcdctl and etcdutl of this etcd release, such
    /// as 3.5.16.
    #[arg(long, value_name = "VERSION", requires = "kubernetes")]
    pub(crate) etcd_version: Option<String>,
    /// Download mode: where the etcd releases are
    /// (URL/vVERSION/etcd-vVERSION-linux-ARCH.tar.gz and URL/vVERSION/SHA256SUMS).
    #[arg(long, value_name = "URL", default_value = kubeforge_bundle::DEFAULT_ETCD_BASE_URL, conflicts_with_all = ["from", "files", "images"])]
    pub(crate) etcd_base_url: String,
    /// Local-files mode: every regular file of this directory, and of
    /// its images/ as image archives.
    #[arg(long, value_name = "LOCALDIR")]
    pub(crate) from: Option<PathBuf>,
    /// Local-files mode: this file (repeatable).
    #[arg(long = "file", value_name = "PATH")]
    pub(crate) files: Vec<PathBuf>,
    /// Local-files mode: this container image archive, as
    /// images/NAME.tar (repeatable).
    #[arg(long = "image", value_name = "FILE")]
    pub(crate) images: Vec<PathBuf>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub(crate) enum Shell {
    Bash,
    Zsh,
    Fish,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub(crate) enum BundleArch {
    Amd64,
    Arm64,
}

#[derive(Subcommand, Debug)]
pub(crate) enum EtcdCommand {
    /// Take a snapshot over TLS from a healthy member (the leader when it
    /// is healthy), check it and keep it on this machine:
    /// <state>/backups/<cluster>-<time>.db (or --out FILE) with its sha256
    /// and what it holds in <file>.json; the newest --keep are kept.
    Backup {
        #[command(flatten)]
        inv: InventoryArgs,
        #[command(flatten)]
        reach: ReachArgs,
        /// Write the snapshot here instead (and FILE.json next to it).
        #[arg(long, short, value_name = "FILE")]
        out: Option<PathBuf>,
        /// How many snapshots <state>/backups keeps.
        #[arg(long, default_value_t = 10, value_name = "N")]
        keep: usize,
    },
    /// List the snapshots of <state>/backups, newest first, and those the
    /// etcd nodes take themselves ([etcd] backup_schedule).
    Backups {
        #[command(flatten)]
        inv: InventoryArgs,
        #[command(flatten)]
        reach: ReachArgs,
        /// Only this machine's snapshots (no node is contacted).
        #[arg(long)]
        local: bool,
    },
    /// Restore a snapshot into every member: shows the plan, and with
    /// --yes stops every apiserver and controller and every member, moves
    /// each data directory aside (never deletes it), restores the snapshot
    /// with the inventory's members and a new cluster token, starts etcd,
    /// then the apiservers one at a time, the controllers, and restarts
    /// the kubelets and kube-proxies. A snapshot whose sha256 is not the one recorded next
    /// to it is refused.
    Restore {
        #[command(flatten)]
        inv: InventoryArgs,
        #[command(flatten)]
        reach: ReachArgs,
        /// The snapshot (with its <file>.json, as `etcd backup` writes it).
        #[arg(long, value_name = "FILE")]
        snapshot: PathBuf,
        /// Do it; without, only the plan is shown.
        #[arg(long)]
        yes: bool,
        /// Seconds a health gate waits before the restore stops.
        #[arg(long, default_value_t = 120, value_name = "SECS")]
        gate_timeout: u64,
    },
}

/// What `kubeforge certs` takes.
#[derive(Args, Debug)]
pub(crate) struct CertsArgs {
    #[command(subcommand)]
    pub(crate) op: Option<CertsCommand>,
    #[command(flatten)]
    pub(crate) inv: Option<InventoryArgs>,
    #[command(flatten)]
    pub(crate) reach: ReachArgs,
    /// Only the state directory's certificates (no node is contacted).
    #[arg(long)]
    pub(crate) local: bool,
    /// Output format.
    #[arg(long, value_enum, default_value_t = Output::Text)]
    pub(crate) output: Output,
}

#[derive(Subcommand, Debug)]
pub(crate) enum CertsCommand {
    /// Reissue leaf certificates (never a CA) in the state directory and
    /// roll exactly the units that use them: their files rewritten
    /// atomically, etcd members one at a time, each apiserver out of the
    /// load balancers while it restarts, the other units behind their
    /// health gates, the kubeconfigs that embed a certificate rewritten.
    /// Without --yes the plan is shown and nothing changes (not even the
    /// state directory).
    ///
    /// With --new-ca CA: one step of a rotation of that CA without
    /// downtime, the next of three (recorded in the state directory; a step
    /// that did not reach every node runs again, none is skipped): 1. a new
    /// CA, trusted beside the old one in every bundle; 2. every certificate
    /// of the CA reissued from the new one; 3. the old CA dropped from the
    /// bundles. The service-account signing key is no CA and stays.
    ///
    ///     kubeforge certs renew -i inventory.toml --all --yes
    ///     kubeforge certs renew -i inventory.toml apiserver etcd-server/cp1
    ///     kubeforge certs renew -i inventory.toml --new-ca kubernetes --yes
    #[command(verbatim_doc_comment)]
    Renew {
        #[command(flatten)]
        inv: InventoryArgs,
        #[command(flatten)]
        reach: ReachArgs,
        /// Certificates to reissue: a catalog name (every node's, for
        /// per-node ones: etcd-server, kubelet-client, ...) or NAME/NODE.
        #[arg(value_name = "NAME", conflicts_with_all = ["all", "new_ca"])]
        names: Vec<String>,
        /// Every leaf certificate.
        #[arg(long, conflicts_with = "new_ca")]
        all: bool,
        /// Rotate this CA (kubernetes, etcd, front-proxy): run the next
        /// step of its rotation.
        #[arg(long, value_name = "CA", value_parser = parse_ca)]
        new_ca: Option<CaId>,
        /// With --new-ca: the step you expect to run (1, 2 or 3); refused
        /// when it is not the next one.
        #[arg(long, value_name = "N", requires = "new_ca", value_parser = clap::value_parser!(u8).range(1..=3))]
        step: Option<u8>,
        /// Do it; without, only the plan is shown.
        #[arg(long)]
        yes: bool,
        /// Seconds a health gate waits before the renewal stops.
        #[arg(long, default_value_t = 120, value_name = "SECS")]
        gate_timeout: u64,
    },
}

/// How to reach the nodes.
#[derive(Args, Debug)]
pub(crate) struct ReachArgs {
    /// An ssh_config file to use instead of ~/.ssh/config.
    #[arg(long, value_name = "FILE")]
    pub(crate) ssh_config: Option<PathBuf>,
    /// Nodes worked on at the same time (connections, facts, uploads, the
    /// nodes of a parallel phase).
    #[arg(long, default_value_t = 32)]
    pub(crate) concurrency: usize,
    /// Seconds to wait for an SSH connection.
    #[arg(long, default_value_t = 10, value_name = "SECS")]
    pub(crate) connect_timeout: u64,
    /// Keep each node's SSH connection up this many seconds after its last
    /// use, for the next kubeforge command to use (a plan, then its
    /// apply); 0 closes them when the command ends. Kept connections are
    /// recorded in the state directory's ssh/ and reached through control
    /// sockets only your user can use.
    #[arg(long, default_value_t = 0, value_name = "SECS")]
    pub(crate) keep_connections: u64,
}

impl ReachArgs {
    pub(crate) fn reach(&self) -> crate::online::Reach {
        crate::online::Reach {
            ssh_config: self.ssh_config.clone(),
            connect_timeout: std::time::Duration::from_secs(self.connect_timeout),
            concurrency: self.concurrency,
            keep: (self.keep_connections > 0)
                .then(|| std::time::Duration::from_secs(self.keep_connections)),
        }
    }
}

#[derive(Args, Debug)]
pub(crate) struct InventoryArgs {
    /// The inventory file (TOML).
    #[arg(long, short)]
    pub(crate) inventory: PathBuf,
    /// State directory holding the PKI [default: <inventory dir>/.kubeforge/<cluster>].
    #[arg(long)]
    pub(crate) state_dir: Option<PathBuf>,
}

#[derive(Args, Debug)]
pub(crate) struct NodeArgs {
    /// Directory of binaries with a SHA256SUMS manifest; each binary is
    /// pushed to bin_dir where missing or different. Without it, binaries
    /// are not managed.
    #[arg(long, value_name = "DIR")]
    pub(crate) bundle: Option<PathBuf>,
    #[command(flatten)]
    pub(crate) reach: ReachArgs,
    /// Only these phases (etcd, apiserver, lb, controllers, addons, node;
    /// repeatable): their files, binaries, units and, for addons, the API
    /// objects and the cluster gate. Default: all.
    #[arg(long = "phase", value_name = "PHASE")]
    pub(crate) phases: Vec<String>,
    /// Workers whose kubelet (or containerd) restarts are drained and
    /// restarted this many at a time (control-plane nodes one at a time).
    #[arg(long, default_value_t = 1, value_name = "N", value_parser = clap::value_parser!(u32).range(1..))]
    pub(crate) max_unavailable: u32,
    /// Allow going back to an older patch release of the same minor
    /// version (a minor version never goes back).
    #[arg(long)]
    pub(crate) allow_downgrade: bool,
}

impl NodeArgs {
    /// How plan and apply make the plan.
    pub(crate) fn plan_options(&self) -> kubeforge_plan::Options {
        kubeforge_plan::Options {
            only: self.phases.clone(),
            max_unavailable: self.max_unavailable as usize,
            allow_downgrade: self.allow_downgrade,
            ..Default::default()
        }
    }
}

/// Nodes kubeforge placed something on (their records are in the state
/// directory, `nodes/`) that the inventory no longer names.
#[derive(Args, Debug)]
pub(crate) struct PruneArgs {
    /// Remove from the cluster every node whose record is in the state
    /// directory but that the inventory no longer names: drained (pods
    /// evicted, PodDisruptionBudgets respected), its etcd member removed
    /// (when quorum allows), its units stopped and disabled, the files and
    /// binaries its record lists removed, its Node object deleted; the
    /// other nodes lose it from /etc/hosts, pod routes and the load
    /// balancers. Without it, apply refuses to run while there is such a
    /// node (plan shows what would be removed).
    #[arg(long)]
    pub(crate) prune: bool,
    /// A node being removed that cannot be reached (dead: powered off, its
    /// disk gone; repeatable). It is never contacted: cordoned instead of
    /// drained, its etcd member removed through a healthy member, its
    /// Node object deleted (the cluster garbage-collects its pods), its
    /// units and files left as they are. Only nodes the inventory no
    /// longer names and that have a record in the state directory.
    #[arg(long, value_name = "NODE", requires = "prune")]
    pub(crate) unreachable: Vec<String>,
    /// Accept a removal or an added etcd member that leaves an even number
    /// of etcd members.
    #[arg(long)]
    pub(crate) force: bool,
    /// Seconds draining a node may take (a removal, or an upgrade of its
    /// kubelet): evictions a PodDisruptionBudget refuses are tried again
    /// until then, then the apply stops.
    #[arg(long, default_value_t = 300, value_name = "SECS")]
    pub(crate) drain_timeout: u64,
}

impl PruneArgs {
    pub(crate) fn options(&self) -> kubeforge_plan::remove::PruneOptions {
        let mut unreachable = self.unreachable.clone();
        unreachable.sort();
        unreachable.dedup();
        kubeforge_plan::remove::PruneOptions {
            drain_timeout_secs: self.drain_timeout,
            force: self.force,
            unreachable,
        }
    }
}

#[derive(Args, Debug)]
pub(crate) struct PkiArgs {
    /// Replace a CA at once (kubernetes, etcd, front-proxy; repeatable):
    /// every certificate it signed is reissued and the old CA is kept as a
    /// .bak file; until every node has the new ones, they do not trust
    /// each other. `kubeforge certs renew --new-ca` rotates a CA without
    /// downtime instead. Never done without this flag.
    #[arg(long = "new-ca", value_name = "CA", value_parser = parse_ca)]
    pub(crate) new_ca: Vec<CaId>,
}

pub(crate) fn parse_ca(s: &str) -> Result<CaId, String> {
    CaId::parse(s).ok_or_else(|| format!("unknown CA \"{s}\": use kubernetes, etcd or front-proxy"))
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub(crate) enum Output {
    Text,
    Json,
}
