//! The bundle's container image archives on the nodes: every archive is a
//! file in the `[[images]]` row's `dir` (sha256-tracked like a binary:
//! pushed only where it differs), and one step imports them into
//! containerd after the phase's units run.

use crate::table::Stage;
use crate::{cluster_context, render_str, RenderError, Rendered, RenderedFile, Renderer, Step};
use kubeforge_inventory::Cluster;
use serde::Serialize;
use serde_json::json;
use std::path::PathBuf;

/// containerd's socket on the nodes: the `[grpc] address` of
/// `templates/node/containerd-config.toml` (a test keeps them equal).
pub const CONTAINERD_SOCKET: &str = "/run/containerd/containerd.sock";

/// A container image archive of the bundle (`images/<file>`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ImageArchive {
    /// Its file name in the bundle's `images/` directory, such as
    /// `pause.tar`.
    pub file: String,
    /// Where it is on the control machine.
    pub path: PathBuf,
    pub sha256: String,
    /// The names its images get when imported (read from the archive on
    /// the control machine).
    pub names: Vec<String>,
}

impl Renderer {
    /// Places the bundle's image archives, and the step that imports
    /// them, on the nodes of every `[[images]]` row, for the given phases
    /// only. Nothing happens without archives.
    pub fn add_images(
        &self,
        cluster: &Cluster,
        rendered: &mut Rendered,
        images: &[ImageArchive],
        phases: &[String],
    ) -> Result<(), RenderError> {
        if images.is_empty() {
            return Ok(());
        }
        let mut ctx = cluster_context(cluster);
        ctx["containerd"] = json!({ "socket": CONTAINERD_SOCKET });
        for tree in &mut rendered.nodes {
            let Some(node) = cluster.node(&tree.name) else {
                continue;
            };
            for row in self.table.images.iter().filter(|r| r.on.matches(node)) {
                let phase = self.phase_of(row.on, &[], &[]);
                if !phases.contains(&phase) {
                    continue;
                }
                let dir = row.dir.trim_end_matches('/');
                let mut list = Vec::new();
                for image in images {
                    let target = format!("{dir}/{}", image.file);
                    list.push(json!({
                        "file": image.file,
                        "path": target,
                        "names": image.names,
                    }));
                    tree.files.insert(
                        target.clone(),
                        RenderedFile {
                            path: target,
                            mode: 0o644,
                            owner: "root:root".into(),
                            content: Vec::new(),
                            sha256: image.sha256.clone(),
                            secret: false,
                            restarts: Vec::new(),
                            reloads: Vec::new(),
                            source: format!("bundle:images/{}", image.file),
                            phase: phase.clone(),
                            from_file: Some(image.path.clone()),
                        },
                    );
                }
                let mut step_ctx = ctx.clone();
                step_ctx["images"] = json!(list);
                let what = format!("images step {}", row.name);
                tree.steps.push(Step {
                    name: row.name.clone(),
                    phase,
                    stage: Stage::AfterUnits,
                    check: render_str(&row.check, &step_ctx, &what, &node.name)?,
                    run: render_str(&row.run, &step_ctx, &what, &node.name)?,
                });
            }
        }
        Ok(())
    }
}
