//! The kubeforge command line. It owns the terminal: the library crates
//! return data and errors, this binary prints them.

use anyhow::{bail, Context, Result};
use clap::{Args, Parser, Subcommand, ValueEnum};
use kubeforge_inventory::{Cluster, InventoryError, Loaded};
use kubeforge_pki::{Action, CaId, Event};
use kubeforge_plan::Facts;
use kubeforge_render::Prepared;
use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Duration;

mod online;

const SINGLE_SKELETON: &str = include_str!("../../../inventories/single.toml");
const HA_SKELETON: &str = include_str!("../../../inventories/ha.toml");

/// Installs Kubernetes "the binary way": from a TOML inventory, kubeforge
/// generates the whole PKI, renders systemd units and configs for etcd,
/// the control plane, the nodes and an nginx + keepalived VIP, and shows
/// exactly what it would change on every node.
#[derive(Parser, Debug)]
#[command(name = "kubeforge", version, max_term_width = 100)]
struct Cli {
    /// More log output on stderr (-v info, -vv debug).
    #[arg(short, long, global = true, action = clap::ArgAction::Count)]
    verbose: u8,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
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
    },
    /// Print the admin kubeconfig (pointing at the VIP), or write it.
    Kubeconfig {
        #[command(flatten)]
        inv: InventoryArgs,
        /// Write it to this file (mode 0600) instead of printing it.
        #[arg(long, short)]
        out: Option<PathBuf>,
    },
    /// List every certificate in the state directory with its expiry.
    Certs {
        #[command(flatten)]
        inv: InventoryArgs,
        /// Output format.
        #[arg(long, value_enum, default_value_t = Output::Text)]
        output: Output,
    },
    /// Build a bundle directory (binaries + SHA256SUMS) for `apply --bundle`.
    ///
    /// Download mode (--version): fetches kube-apiserver,
    /// kube-controller-manager, kube-scheduler, kubelet, kube-proxy and
    /// kubectl from the official release bucket
    /// (BASE/vVERSION/bin/linux/ARCH/NAME) and checks each against its
    /// published NAME.sha256; with --etcd-version also etcd and etcdctl from
    /// the etcd release tarball, checked against its SHA256SUMS. Proxies are
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
    #[command(
        verbatim_doc_comment,
        about = "Build a bundle directory (binaries + SHA256SUMS) for `apply --bundle`",
        group(clap::ArgGroup::new("source").required(true).multiple(true).args(["kubernetes", "from", "files", "images"]))
    )]
    Bundle {
        /// Download mode: the Kubernetes release, such as 1.31.4.
        #[arg(
            long = "version",
            value_name = "VERSION",
            conflicts_with_all = ["from", "files", "images"]
        )]
        kubernetes: Option<String>,
        /// The bundle directory to create (must not exist, or be empty).
        #[arg(long, short)]
        out: PathBuf,
        /// Download mode: the nodes' architecture.
        #[arg(long, value_enum, default_value_t = BundleArch::Amd64, conflicts_with_all = ["from", "files", "images"])]
        arch: BundleArch,
        /// Download mode: the Kubernetes release bucket.
        #[arg(long, value_name = "URL", default_value = kubeforge_bundle::DEFAULT_BASE_URL, conflicts_with_all = ["from", "files", "images"])]
        base_url: String,
        /// Download mode: also etcd and etcdctl of this etcd release, such
        /// as 3.5.16.
        #[arg(long, value_name = "VERSION", requires = "kubernetes")]
        etcd_version: Option<String>,
        /// Download mode: where the etcd releases are
        /// (URL/vVERSION/etcd-vVERSION-linux-ARCH.tar.gz and URL/vVERSION/SHA256SUMS).
        #[arg(long, value_name = "URL", default_value = kubeforge_bundle::DEFAULT_ETCD_BASE_URL, conflicts_with_all = ["from", "files", "images"])]
        etcd_base_url: String,
        /// Local-files mode: every regular file of this directory, and of
        /// its images/ as image archives.
        #[arg(long, value_name = "LOCALDIR")]
        from: Option<PathBuf>,
        /// Local-files mode: this file (repeatable).
        #[arg(long = "file", value_name = "PATH")]
        files: Vec<PathBuf>,
        /// Local-files mode: this container image archive, as
        /// images/NAME.tar (repeatable).
        #[arg(long = "image", value_name = "FILE")]
        images: Vec<PathBuf>,
    },
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
enum BundleArch {
    Amd64,
    Arm64,
}

#[derive(Args, Debug)]
struct InventoryArgs {
    /// The inventory file (TOML).
    #[arg(long, short)]
    inventory: PathBuf,
    /// State directory holding the PKI [default: <inventory dir>/.kubeforge/<cluster>].
    #[arg(long)]
    state_dir: Option<PathBuf>,
}

#[derive(Args, Debug)]
struct NodeArgs {
    /// Directory of binaries with a SHA256SUMS manifest; each binary is
    /// pushed to bin_dir where missing or different. Without it, binaries
    /// are not managed.
    #[arg(long, value_name = "DIR")]
    bundle: Option<PathBuf>,
    /// An ssh_config file to use instead of ~/.ssh/config.
    #[arg(long, value_name = "FILE")]
    ssh_config: Option<PathBuf>,
    /// Nodes worked on at the same time.
    #[arg(long, default_value_t = 8)]
    concurrency: usize,
    /// Seconds to wait for an SSH connection.
    #[arg(long, default_value_t = 10, value_name = "SECS")]
    connect_timeout: u64,
    /// Only these phases (etcd, apiserver, controllers, addons, lb, node;
    /// repeatable): their files, binaries, units and, for addons, the API
    /// objects and the cluster gates. Default: all.
    #[arg(long = "phase", value_name = "PHASE")]
    phases: Vec<String>,
}

#[derive(Args, Debug)]
struct PkiArgs {
    /// Replace a CA (kubernetes, etcd, front-proxy; repeatable). Every
    /// certificate it signed is reissued and the old CA is kept as a .bak
    /// file. Never done without this flag.
    #[arg(long = "new-ca", value_name = "CA", value_parser = parse_ca)]
    new_ca: Vec<CaId>,
}

fn parse_ca(s: &str) -> Result<CaId, String> {
    CaId::parse(s).ok_or_else(|| format!("unknown CA \"{s}\": use kubernetes, etcd or front-proxy"))
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
enum Output {
    Text,
    Json,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let filter = match cli.verbose {
        0 => "warn",
        1 => "info",
        _ => "debug",
    };
    use tracing_subscriber::layer::SubscriberExt as _;
    use tracing_subscriber::util::SubscriberInitExt as _;
    use tracing_subscriber::Layer as _;
    let stderr_layer = tracing_subscriber::fmt::layer()
        .with_writer(std::io::stderr)
        .with_filter(
            tracing_subscriber::EnvFilter::try_from_env("KUBEFORGE_LOG")
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(filter)),
        );
    let file_layer = tracing_subscriber::fmt::layer()
        .with_ansi(false)
        .with_writer(|| LogWriter)
        .with_filter(tracing_subscriber::EnvFilter::new("info"));
    tracing_subscriber::registry()
        .with(stderr_layer)
        .with(file_layer)
        .init();
    match run(cli) {
        Ok(code) => code,
        Err(e) => {
            #[allow(clippy::print_stderr)]
            {
                if let Some(inv) = e.downcast_ref::<InventoryError>() {
                    eprintln!("{inv}");
                } else {
                    eprintln!("error: {e:#}");
                }
            }
            ExitCode::FAILURE
        }
    }
}

/// Everything the commands print goes through here.
struct Term {
    out: std::io::Stdout,
}

impl Term {
    fn line(&mut self, s: impl AsRef<str>) -> Result<()> {
        writeln!(self.out, "{}", s.as_ref()).context("writing to stdout")
    }
    fn raw(&mut self, s: impl AsRef<str>) -> Result<()> {
        write!(self.out, "{}", s.as_ref()).context("writing to stdout")
    }
    fn warn(&mut self, s: impl AsRef<str>) {
        let _ = writeln!(std::io::stderr(), "{}", s.as_ref());
    }
}

fn load(args: &InventoryArgs, term: &mut Term) -> Result<(Loaded, PathBuf)> {
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

fn pki_line(e: &Event, persisted: bool) -> Option<String> {
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
    }
}

fn run(cli: Cli) -> Result<ExitCode> {
    let mut term = Term {
        out: std::io::stdout(),
    };
    match cli.command {
        Command::Init { ha, force, dir } => {
            let path = dir.join("inventory.toml");
            if path.exists() && !force {
                bail!(
                    "{} already exists\n  help: pass --force to overwrite it",
                    path.display()
                );
            }
            std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
            let text = if ha { HA_SKELETON } else { SINGLE_SKELETON };
            std::fs::write(&path, text).with_context(|| format!("writing {}", path.display()))?;
            term.line(format!(
                "wrote {}\nnext: edit the node names and addresses, then run\n  kubeforge plan -i {} --offline",
                path.display(),
                path.display()
            ))?;
        }
        Command::Validate(args) => {
            let (loaded, _) = load(&args, &mut term)?;
            let c = &loaded.cluster;
            term.line(format!(
                "{}: cluster \"{}\", Kubernetes {}, {} nodes: inventory is valid",
                args.inventory.display(),
                c.name,
                c.version,
                c.nodes.len()
            ))?;
        }
        Command::Render { inv, pki, out } => {
            let (loaded, state) = load(&inv, &mut term)?;
            let cluster = &loaded.cluster;
            let prepared = prepare(&state, cluster, pki.new_ca)?;
            prepared.persist(&state)?;
            let Prepared {
                reconciled,
                rendered,
                ..
            } = prepared;
            let written = kubeforge_render::write_tree(&rendered, &out)?;
            term.line(format!("PKI in {}:", state.display()))?;
            let mut any = false;
            for e in &reconciled.events {
                if let Some(l) = pki_line(e, true) {
                    term.line(l)?;
                    any = true;
                }
            }
            if !any {
                term.line("  every certificate kept")?;
            }
            term.line(format!(
                "rendered {} files for {} nodes into {} (admin kubeconfig: {})",
                written.len().saturating_sub(2),
                rendered.nodes.len(),
                out.display(),
                out.join("admin.conf").display()
            ))?;
        }
        Command::Plan {
            inv,
            pki,
            nodes,
            offline,
            output,
        } => {
            let (loaded, state) = load(&inv, &mut term)?;
            let cluster = &loaded.cluster;
            let Prepared {
                reconciled,
                renderer,
                mut rendered,
                ..
            } = prepare(&state, cluster, pki.new_ca)?;
            let facts = if offline {
                Facts::Offline
            } else {
                with_bundle(&renderer, cluster, &mut rendered, &nodes)?;
                let rt = runtime()?;
                rt.block_on(async {
                    let t = online::connect_all(cluster, &state, &reach(&nodes)).await?;
                    let facts = kubeforge_apply::gather(&t, &rendered, nodes.concurrency).await?;
                    Ok::<_, anyhow::Error>(facts)
                })?
            };
            let plan = kubeforge_plan::plan(&cluster.name, &rendered, &facts);
            match output {
                Output::Json => {
                    let doc = serde_json::json!({
                        "plan": plan,
                        "pki": reconciled.events,
                        "warnings": loaded.warnings,
                    });
                    term.line(serde_json::to_string_pretty(&doc)?)?;
                }
                Output::Text => {
                    let lines: Vec<String> = reconciled
                        .events
                        .iter()
                        .filter_map(|e| pki_line(e, false))
                        .collect();
                    if !lines.is_empty() {
                        term.line(format!("PKI ({}):", state.display()))?;
                        for l in lines {
                            term.line(l)?;
                        }
                        term.line("")?;
                    }
                    term.raw(kubeforge_plan::to_text(&plan))?;
                }
            }
        }
        Command::Apply {
            inv,
            pki,
            nodes,
            gate_timeout,
            max_clock_skew,
        } => {
            let (loaded, state) = load(&inv, &mut term)?;
            let cluster = &loaded.cluster;
            let Prepared {
                reconciled,
                alloc,
                renderer,
                mut rendered,
            } = prepare(&state, cluster, pki.new_ca)?;
            let known = renderer.phases();
            let phases = nodes.phases.clone();
            with_bundle(&renderer, cluster, &mut rendered, &nodes)?;
            init_log(&state)?;
            let apply_opts = kubeforge_apply::Options {
                concurrency: nodes.concurrency,
                gate_timeout: Duration::from_secs(gate_timeout),
                max_clock_skew: Duration::from_secs(max_clock_skew),
                phases,
            };
            let started = std::time::Instant::now();
            let rt = runtime()?;
            let outcome = rt.block_on(async {
                let transports = online::connect_all(cluster, &state, &reach(&nodes)).await?;
                let owner = format!(
                    "kubeforge apply of cluster {} from {} (pid {})",
                    cluster.name,
                    std::env::var("HOSTNAME").unwrap_or_else(|_| "the control machine".into()),
                    std::process::id()
                );
                let mut locks = Vec::new();
                for (name, t) in &transports {
                    match kubeforge_transport::ops::lock(
                        t.as_ref(),
                        kubeforge_transport::ops::LOCK_PATH,
                        &owner,
                    )
                    .await
                    {
                        Ok(l) => locks.push(l),
                        Err(e) => {
                            for l in locks {
                                l.release().await;
                            }
                            bail!("{e}\n  (while locking {name}; nothing was changed)");
                        }
                    }
                }
                let result = async {
                    let facts =
                        kubeforge_apply::gather(&transports, &rendered, nodes.concurrency).await?;
                    let hosts =
                        kubeforge_apply::preflight(cluster, &transports, &facts, &apply_opts)
                            .await?;
                    for w in kubeforge_apply::preflight_warnings(&hosts) {
                        let _ = writeln!(std::io::stderr(), "warning: {w}");
                    }
                    let plan = kubeforge_plan::plan(&cluster.name, &rendered, &facts);
                    if plan.is_empty() {
                        return Ok::<_, anyhow::Error>((plan, None));
                    }
                    // The state directory first: the nodes never hold a
                    // certificate the control machine does not have.
                    reconciled.persist(&state)?;
                    alloc.persist(&state)?;
                    let bars = online::Bars::new();
                    let applied = kubeforge_apply::execute(
                        cluster,
                        &rendered,
                        &plan,
                        &known,
                        &transports,
                        &apply_opts,
                        &bars,
                    )
                    .await
                    .map_err(online::explain)?;
                    Ok((plan, Some(applied)))
                }
                .await;
                for l in locks {
                    l.release().await;
                }
                result
            })?;
            let (plan, applied) = outcome;
            match applied {
                None => term.line(format!(
                    "No changes: {} nodes, {} files and {} API objects up to date. ({:.1} s)",
                    plan.summary.nodes,
                    plan.summary.unchanged,
                    plan.summary.api_unchanged,
                    started.elapsed().as_secs_f64()
                ))?,
                Some(a) => {
                    term.raw(kubeforge_plan::to_text(&plan))?;
                    for w in &a.warnings {
                        let _ = writeln!(std::io::stderr(), "warning: {w}");
                    }
                    let approved = if a.csrs_approved > 0 {
                        format!(
                            ", {} serving certificate requests approved",
                            a.csrs_approved
                        )
                    } else {
                        String::new()
                    };
                    term.line(format!(
                        "Applied: {} steps run, {} files written, {} units started, {} restarted, {} reloaded, {} API objects applied{approved} in {:.1} s.",
                        a.steps_run,
                        a.files_written,
                        a.started.len(),
                        a.restarted.len(),
                        a.reloaded.len(),
                        a.api_applied,
                        started.elapsed().as_secs_f64()
                    ))?;
                }
            }
        }
        Command::Kubeconfig { inv, out } => {
            let (loaded, state) = load(&inv, &mut term)?;
            let cluster = &loaded.cluster;
            let Prepared {
                reconciled,
                rendered,
                ..
            } = prepare(&state, cluster, Vec::new())?;
            if reconciled
                .events
                .iter()
                .any(|e| matches!(e.action, Action::Created))
            {
                bail!(
                    "{} holds no complete PKI for cluster \"{}\" yet\n  help: run `kubeforge apply` (or `kubeforge render`) first",
                    state.display(),
                    cluster.name
                );
            }
            match out {
                Some(path) => {
                    kubeforge_pki::write_atomic(&path, &rendered.admin_kubeconfig, 0o600)?;
                    term.line(format!(
                        "wrote {} (server {})",
                        path.display(),
                        cluster.api_url()
                    ))?;
                }
                None => term.raw(String::from_utf8_lossy(&rendered.admin_kubeconfig))?,
            }
        }
        Command::Certs { inv, output } => {
            let (loaded, state) = load(&inv, &mut term)?;
            let rows = certs(&state, &loaded.cluster)?;
            match output {
                Output::Json => term.line(serde_json::to_string_pretty(&rows)?)?,
                Output::Text => {
                    term.line(format!(
                        "{:<48} {:<12} {:<26} {}",
                        "CERTIFICATE", "CA", "EXPIRES", "RESIDUAL"
                    ))?;
                    for r in rows {
                        term.line(format!(
                            "{:<48} {:<12} {:<26} {}",
                            r.name, r.ca, r.not_after, r.residual
                        ))?;
                    }
                }
            }
        }
        Command::Bundle {
            kubernetes,
            out,
            arch,
            base_url,
            etcd_version,
            etcd_base_url,
            from,
            files,
            images,
        } => {
            let built = match kubernetes {
                Some(version) => {
                    let release = kubeforge_bundle::Release {
                        version,
                        arch: match arch {
                            BundleArch::Amd64 => kubeforge_bundle::Arch::Amd64,
                            BundleArch::Arm64 => kubeforge_bundle::Arch::Arm64,
                        },
                        base_url,
                        etcd: etcd_version.map(|version| kubeforge_bundle::EtcdRelease {
                            version,
                            base_url: etcd_base_url,
                        }),
                    };
                    let client = kubeforge_bundle::Client::new();
                    kubeforge_bundle::download(&release, &client, &out, &mut |url| {
                        term.warn(format!("fetching {url}"))
                    })?
                }
                None => kubeforge_bundle::from_local(
                    &kubeforge_bundle::Local {
                        dir: from,
                        files,
                        images,
                    },
                    &out,
                )?,
            };
            let total: u64 = built.files.iter().map(|f| f.size).sum();
            for f in &built.files {
                term.line(format!(
                    "  {:<26} {}  {:>8.1} MB",
                    f.name,
                    f.sha256,
                    f.size as f64 / 1e6
                ))?;
                if !f.image_names.is_empty() {
                    term.line(format!("    images: {}", f.image_names.join(", ")))?;
                }
            }
            term.line(format!(
                "wrote {} files ({:.1} MB) and {} to {}\nnext: kubeforge apply -i INVENTORY --bundle {}",
                built.files.len(),
                total as f64 / 1e6,
                kubeforge_bundle::MANIFEST,
                built.dir.display(),
                built.dir.display()
            ))?;
        }
    }
    Ok(ExitCode::SUCCESS)
}

fn prepare(state: &Path, cluster: &Cluster, new_cas: Vec<CaId>) -> Result<Prepared> {
    let opts = kubeforge_pki::Options {
        new_cas,
        ..Default::default()
    };
    Ok(kubeforge_render::prepare(state, cluster, &opts)?)
}

/// The phases named with --phase (checked), or all of them.
fn selected_phases(renderer: &kubeforge_render::Renderer, asked: &[String]) -> Result<Vec<String>> {
    let known = renderer.phases();
    if let Some(bad) = asked.iter().find(|p| !known.contains(p)) {
        bail!(
            "unknown phase \"{bad}\"\n  help: use one of {}",
            known.join(", ")
        );
    }
    Ok(if asked.is_empty() {
        known
    } else {
        known.into_iter().filter(|p| asked.contains(p)).collect()
    })
}

fn runtime() -> Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("starting the async runtime")
}

fn reach(n: &NodeArgs) -> online::Reach {
    online::Reach {
        ssh_config: n.ssh_config.clone(),
        connect_timeout: Duration::from_secs(n.connect_timeout),
        concurrency: n.concurrency,
    }
}

/// What plan and apply work on: the bundle's binaries and images added to
/// the rendered trees, then only the phases named with --phase kept.
fn with_bundle(
    renderer: &kubeforge_render::Renderer,
    cluster: &kubeforge_inventory::Cluster,
    rendered: &mut kubeforge_render::Rendered,
    nodes: &NodeArgs,
) -> Result<()> {
    let run_phases = selected_phases(renderer, &nodes.phases)?;
    let bundle = load_bundle(nodes.bundle.as_deref())?;
    renderer.add_binaries(cluster, rendered, &bundle.files, &run_phases)?;
    renderer.add_images(cluster, rendered, &bundle.images, &run_phases)?;
    rendered.retain_phases(&run_phases);
    Ok(())
}

fn load_bundle(dir: Option<&Path>) -> Result<kubeforge_apply::Bundle> {
    Ok(match dir {
        Some(d) => kubeforge_apply::load_bundle(d)?,
        None => Default::default(),
    })
}

/// Full logs of an apply go to `<state>/kubeforge.log`.
fn init_log(state: &Path) -> Result<()> {
    std::fs::create_dir_all(state).with_context(|| format!("creating {}", state.display()))?;
    let path = state.join("kubeforge.log");
    let file = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(&path)
        .with_context(|| format!("opening {}", path.display()))?;
    LOG_FILE
        .set(std::sync::Mutex::new(file))
        .map_err(|_| anyhow::anyhow!("log file opened twice"))?;
    Ok(())
}

static LOG_FILE: std::sync::OnceLock<std::sync::Mutex<std::fs::File>> = std::sync::OnceLock::new();

/// Writes tracing output to the log file once one is open.
struct LogWriter;

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

#[derive(serde::Serialize)]
struct CertRow {
    name: String,
    ca: String,
    not_after: String,
    residual: String,
}

fn certs(state: &Path, cluster: &Cluster) -> Result<Vec<CertRow>> {
    let now = time::OffsetDateTime::now_utc();
    let mut rows = Vec::new();
    let mut push = |name: String, ca: String, path: PathBuf| -> Result<()> {
        let (not_after, residual) = match std::fs::read_to_string(&path) {
            Err(_) => ("missing".to_string(), "-".to_string()),
            Ok(pem) => {
                let info = kubeforge_pki::inspect(&pem)
                    .map_err(|e| anyhow::anyhow!("{}: {e}", path.display()))?;
                let days = (info.not_after - now).whole_days();
                (
                    info.not_after
                        .format(&time::format_description::well_known::Rfc3339)
                        .unwrap_or_default(),
                    if days < 0 {
                        "EXPIRED".to_string()
                    } else {
                        format!("{days}d")
                    },
                )
            }
        };
        rows.push(CertRow {
            name,
            ca,
            not_after,
            residual,
        });
        Ok(())
    };
    for ca in CaId::ALL {
        push(
            ca.to_string(),
            "-".into(),
            state.join("pki").join(format!("{}.crt", ca.file_stem())),
        )?;
    }
    for req in kubeforge_pki::catalog::requests(cluster) {
        push(
            req.describe(),
            req.spec.ca.name().into(),
            state.join("pki").join(format!("{}.crt", req.stem())),
        )?;
    }
    Ok(rows)
}
