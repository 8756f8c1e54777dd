//! Bootstrap-token joins: whether a node's kubelet holds a valid client
//! certificate of its own, so its bootstrap kubeconfig can go.

use crate::ApplyError;
use kubeforge_render::NodeTree;
use kubeforge_transport::{Script, Transport};

/// The certificate blocks of a file (never its key), or exit 3 when it is
/// missing. Read only.
const CERTIFICATES: &str = r#"[ -f "$1" ] || exit 3
sed -n '/-----BEGIN CERTIFICATE-----/,/-----END CERTIFICATE-----/p' "$1"
"#;

/// True when the node's kubelet holds its own valid client certificate
/// (checked on this machine against the cluster CA); false without
/// bootstrap files or without such a certificate.
pub(crate) async fn bootstrapped(t: &dyn Transport, tree: &NodeTree) -> Result<bool, ApplyError> {
    let Some(b) = &tree.bootstrap else {
        return Ok(false);
    };
    let o = t
        .run(
            Script::new("read the kubelet's client certificate", CERTIFICATES)
                .args([b.cert.clone()]),
        )
        .await?;
    Ok(o.success() && b.has_client_certificate(&o.stdout_str(), std::time::SystemTime::now()))
}
