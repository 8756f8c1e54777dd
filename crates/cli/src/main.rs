//! The kubeforge command line. It owns the terminal: the library crates
//! return data and errors, this binary prints them.

use anyhow::{bail, Context, Result};
use clap::{Args, Parser, Subcommand, ValueEnum};
use kubeforge_inventory::{Cluster, InventoryError, Loaded};
use kubeforge_pki::{Action, CaId, Event};
use kubeforge_plan::Facts;
use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

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
    /// Show what an apply would change on every node.
    Plan {
        #[command(flatten)]
        inv: InventoryArgs,
        #[command(flatten)]
        pki: PkiArgs,
        /// Plan without contacting the nodes, as if every node were bare.
        #[arg(long)]
        offline: bool,
        /// Output format.
        #[arg(long, value_enum, default_value_t = Output::Text)]
        output: Output,
    },
    /// List every certificate in the state directory with its expiry.
    Certs {
        #[command(flatten)]
        inv: InventoryArgs,
        /// Output format.
        #[arg(long, value_enum, default_value_t = Output::Text)]
        output: Output,
    },
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
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("KUBEFORGE_LOG")
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(filter)),
        )
        .with_writer(std::io::stderr)
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
            let opts = kubeforge_pki::Options {
                new_cas: pki.new_ca,
                ..Default::default()
            };
            let reconciled = kubeforge_pki::reconcile(&state, cluster, &opts)?;
            let alloc = kubeforge_render::allocate_pod_subnets(&state, cluster)?;
            let renderer = kubeforge_render::Renderer::new()?;
            let rendered = renderer.render(cluster, &reconciled.pki, &alloc.subnets)?;
            reconciled.persist(&state)?;
            alloc.persist(&state)?;
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
            offline,
            output,
        } => {
            if !offline {
                bail!(
                    "an online plan gathers facts from the nodes over SSH, which this build does not do yet\n  help: pass --offline to plan as if every node were bare"
                );
            }
            let (loaded, state) = load(&inv, &mut term)?;
            let cluster = &loaded.cluster;
            let opts = kubeforge_pki::Options {
                new_cas: pki.new_ca,
                ..Default::default()
            };
            let reconciled = kubeforge_pki::reconcile(&state, cluster, &opts)?;
            let alloc = kubeforge_render::allocate_pod_subnets(&state, cluster)?;
            let renderer = kubeforge_render::Renderer::new()?;
            let rendered = renderer.render(cluster, &reconciled.pki, &alloc.subnets)?;
            let plan = kubeforge_plan::plan(&cluster.name, &rendered, &Facts::Offline);
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
    }
    Ok(ExitCode::SUCCESS)
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
