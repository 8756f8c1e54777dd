//! The kubeforge command line. It owns the terminal: the library crates
//! return data and errors, this binary prints them.

mod args;
mod cmd;
mod common;
mod known;
mod online;
mod progress;

use args::{Cli, Command};
use clap::Parser;
use common::{LogWriter, Term};
use kubeforge_inventory::InventoryError;
use std::process::ExitCode;

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
    match run(cli.command) {
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
            // Ended by a signal: the status a shell expects (130, 143).
            match e.downcast_ref::<kubeforge_transport::Interrupted>() {
                Some(i) => ExitCode::from(i.exit_code()),
                None => ExitCode::FAILURE,
            }
        }
    }
}

/// Runs a command; its exit status (`status` says how healthy the
/// cluster is with it, the others succeed or fail).
fn run(command: Command) -> anyhow::Result<ExitCode> {
    let mut term = Term {
        out: std::io::stdout(),
    };
    let term = &mut term;
    let done = match command {
        Command::Status {
            inv,
            bundle,
            reach,
            max_clock_skew,
            output,
        } => {
            let req = cmd::status::Request {
                bundle,
                reach: reach.reach(),
                max_clock_skew: std::time::Duration::from_secs(max_clock_skew),
                output,
            };
            return cmd::status::run(&inv, &req, term).map(ExitCode::from);
        }
        Command::Etcd { op } => cmd::etcd::run(op, term),
        Command::Reset {
            inv,
            reach,
            nodes,
            keep_data,
            yes,
        } => cmd::reset::run(&inv, &reach, &nodes, keep_data, yes, term),
        Command::Completions { shell } => cmd::docs::completions(shell, term),
        Command::Man { out } => cmd::docs::man(out.as_deref(), term),
        Command::Init { ha, force, dir } => cmd::init::run(ha, force, &dir, term),
        Command::Validate(args) => cmd::validate::run(&args, term),
        Command::Render { inv, pki, out } => cmd::render::run(&inv, &pki, &out, term),
        Command::Plan {
            inv,
            pki,
            nodes,
            offline,
            prune,
            output,
        } => cmd::plan::run(&inv, &pki, &nodes, offline, &prune, output, term),
        Command::Apply {
            inv,
            pki,
            nodes,
            gate_timeout,
            max_clock_skew,
            prune,
            output,
        } => cmd::apply::run(
            &inv,
            &pki,
            &nodes,
            cmd::apply::Limits {
                gate_timeout,
                max_clock_skew,
                drain_timeout: prune.drain_timeout,
            },
            &prune,
            output,
            term,
        ),
        Command::Kubeconfig { inv, out } => cmd::kubeconfig::run(&inv, out, term),
        Command::Certs(args) => cmd::certs::run(args, term),
        Command::Bundle(args) => cmd::bundle::run(args, term),
    };
    done.map(|()| ExitCode::SUCCESS)
}
