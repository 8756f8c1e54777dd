//! Bootstrap-token joins: whether a node's kubelet holds a valid client
//! certificate of its own, so its bootstrap kubeconfig can go, and whether
//! a CA other than the current one signed its certificates, so it must
//! join again.

use crate::ApplyError;
use kubeforge_render::{KubeletCerts, NodeTree};
use kubeforge_transport::{Script, Transport};

/// The certificate blocks of each file (never its key), each file's
/// blocks after a line `== PATH` (nothing for a missing file). Read only.
const CERTIFICATES: &str = r#"for f in "$@"; do
  echo "== $f"
  [ -f "$f" ] && sed -n '/-----BEGIN CERTIFICATE-----/,/-----END CERTIFICATE-----/p' "$f"
done
exit 0
"#;

/// The node's kubelet certificates judged on this machine against the
/// cluster CA (nothing without bootstrap files).
pub(crate) async fn kubelet_certs(
    t: &dyn Transport,
    tree: &NodeTree,
) -> Result<KubeletCerts, ApplyError> {
    let Some(b) = &tree.bootstrap else {
        return Ok(KubeletCerts::default());
    };
    let o = t
        .run(
            Script::new("read the kubelet's certificates", CERTIFICATES)
                .args([b.cert.clone(), b.serving_cert.clone()]),
        )
        .await?;
    if !o.success() {
        return Ok(KubeletCerts::default());
    }
    let out = o.stdout_str();
    let client = section(&out, &b.cert);
    let serving = section(&out, &b.serving_cert);
    Ok(b.judge(client, serving, std::time::SystemTime::now()))
}

/// The certificates printed after `== path` (None when there are none).
fn section<'a>(out: &'a str, path: &str) -> Option<&'a str> {
    let marker = format!("== {path}\n");
    let start = out.find(&marker)? + marker.len();
    let rest = &out[start..];
    let body = match rest.find("\n== ") {
        Some(end) => &rest[..=end],
        None => rest,
    };
    (!body.trim().is_empty()).then_some(body)
}

#[cfg(test)]
mod tests {
    use super::section;

    #[test]
    fn sections_per_file() {
        let out = "== /a\n-----BEGIN CERTIFICATE-----\nA\n-----END CERTIFICATE-----\n== /b\n";
        assert_eq!(
            section(out, "/a"),
            Some("-----BEGIN CERTIFICATE-----\nA\n-----END CERTIFICATE-----\n")
        );
        assert_eq!(section(out, "/b"), None);
        assert_eq!(section(out, "/c"), None);
    }
}
