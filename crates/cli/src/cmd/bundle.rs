//! `kubeforge bundle`: a bundle directory from the release files or from
//! local files.

use crate::args::{BundleArch, BundleArgs};
use crate::common::Term;
use anyhow::Result;

pub(crate) fn run(args: BundleArgs, term: &mut Term) -> Result<()> {
    let BundleArgs {
        kubernetes,
        out,
        arch,
        base_url,
        etcd_version,
        etcd_base_url,
        from,
        files,
        images,
    } = args;
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
        "wrote {} files ({:.1} MB) and {} to {}, and each file compressed for the wire ({:.1} MB, in {}/)\nnext: kubeforge apply -i INVENTORY --bundle {}",
        built.files.len(),
        total as f64 / 1e6,
        kubeforge_bundle::MANIFEST,
        built.dir.display(),
        built.wire_size as f64 / 1e6,
        kubeforge_bundle::wire::DIR,
        built.dir.display()
    ))?;
    Ok(())
}
