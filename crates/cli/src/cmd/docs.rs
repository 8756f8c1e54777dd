//! `kubeforge completions` and `kubeforge man`: shell completions and man
//! pages, generated from the same clap definitions as the command line.

use crate::args::{Cli, Shell};
use crate::common::Term;
use anyhow::{Context, Result};
use clap::CommandFactory;
use std::path::Path;

pub(crate) fn completions(shell: Shell, term: &mut Term) -> Result<()> {
    let mut cmd = Cli::command();
    let shell = match shell {
        Shell::Bash => clap_complete::Shell::Bash,
        Shell::Zsh => clap_complete::Shell::Zsh,
        Shell::Fish => clap_complete::Shell::Fish,
    };
    let mut script = Vec::new();
    clap_complete::generate(shell, &mut cmd, "kubeforge", &mut script);
    term.raw(String::from_utf8_lossy(&script))
}

pub(crate) fn man(out: Option<&Path>, term: &mut Term) -> Result<()> {
    let cmd = Cli::command();
    let Some(dir) = out else {
        let mut page = Vec::new();
        clap_mangen::Man::new(cmd)
            .render(&mut page)
            .context("rendering the man page")?;
        return term.raw(String::from_utf8_lossy(&page));
    };
    std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    clap_mangen::generate_to(cmd, dir)
        .with_context(|| format!("writing the man pages into {}", dir.display()))?;
    let mut pages: Vec<String> = std::fs::read_dir(dir)
        .with_context(|| format!("reading {}", dir.display()))?
        .filter_map(Result::ok)
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| n.starts_with("kubeforge") && n.ends_with(".1"))
        .collect();
    pages.sort();
    term.line(format!(
        "wrote {} man pages into {}: {}",
        pages.len(),
        dir.display(),
        pages.join(", ")
    ))
}
