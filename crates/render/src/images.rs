//! The bundle's container image archives on the nodes: every archive is a
//! file in the `[[images]]` row's `dir` (sha256-tracked like a binary:
//! pushed only where it differs), and one step imports them into
//! containerd after the phase's units run.

use crate::table::Stage;
use crate::{cluster_context, render_str, RenderError, Rendered, RenderedFile, Renderer, Step};
use kubeforge_images::ImageArchive;
use kubeforge_inventory::Cluster;
use serde_json::json;

/// containerd's socket on the nodes: the `[grpc] address` of
/// `templates/node/containerd-config.toml` (a test keeps them equal).
pub const CONTAINERD_SOCKET: &str = "/run/containerd/containerd.sock";

impl Renderer {
    /// Places the bundle's image archives, and the step that imports
    /// them, on the nodes of every `[[images]]` row. Nothing happens
    /// without archives.
    pub fn add_images(
        &self,
        cluster: &Cluster,
        rendered: &mut Rendered,
        images: &[ImageArchive],
    ) -> Result<(), RenderError> {
        if images.is_empty() {
            return Ok(());
        }
        let ctx = cluster_context(cluster);
        for tree in &mut rendered.nodes {
            let Some(node) = cluster.node(&tree.name) else {
                continue;
            };
            for row in self.table.images.iter().filter(|r| r.on.matches(node)) {
                let phase = self.phase_of(row.on, &[], &[]);
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
                    written: None,
                    check: render_str(&row.check, &step_ctx, &what, &node.name)?,
                    check_key: row
                        .key
                        .as_deref()
                        .map(|k| render_str(k, &step_ctx, &what, &node.name))
                        .transpose()?,
                    run: render_str(&row.run, &step_ctx, &what, &node.name)?,
                });
            }
        }
        Ok(())
    }
}
