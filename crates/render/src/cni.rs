//! The CNI add-ons (`cni = "flannel"` and `cni = "calico"`): their image
//! versions, in one place, and where their images are pulled from.
//!
//! Their upstream images live on docker.io. When the inventory leaves
//! `image_registry` at its default (`registry.k8s.io`, which does not carry
//! them) they come from docker.io; when it names another registry they come
//! from there, under the same paths as upstream (`<registry>/flannel/flannel`,
//! `<registry>/calico/node`, ...), the way CoreDNS comes from
//! `<image_registry>/coredns/coredns`.

use kubeforge_inventory::{Cluster, Cni};
use serde_json::{json, Value};

/// flannel (`flannel/flannel`).
pub const FLANNEL_VERSION: &str = "v0.26.7";
/// The flannel CNI plugin that flannel v0.26.7 ships with
/// (`flannel/flannel-cni-plugin`).
pub const FLANNEL_CNI_PLUGIN_VERSION: &str = "v1.6.2-flannel1";
/// Calico (`calico/cni`, `calico/node`, `calico/kube-controllers`).
pub const CALICO_VERSION: &str = "v3.29.7";

/// The registry `image_registry` defaults to: it serves the Kubernetes
/// images, not the CNI add-ons'.
const DEFAULT_IMAGE_REGISTRY: &str = "registry.k8s.io";
/// Where flannel and Calico publish their images.
const UPSTREAM_REGISTRY: &str = "docker.io";

/// The registry the add-on images are pulled from.
fn registry(cluster: &Cluster) -> &str {
    if cluster.image_registry == DEFAULT_IMAGE_REGISTRY {
        UPSTREAM_REGISTRY
    } else {
        &cluster.image_registry
    }
}

/// Every add-on image, by the name the templates use (`cni_images.NAME`).
fn all(cluster: &Cluster) -> [(&'static str, Cni, String); 5] {
    let r = registry(cluster);
    [
        (
            "flannel",
            Cni::Flannel,
            format!("{r}/flannel/flannel:{FLANNEL_VERSION}"),
        ),
        (
            "flannel_cni_plugin",
            Cni::Flannel,
            format!("{r}/flannel/flannel-cni-plugin:{FLANNEL_CNI_PLUGIN_VERSION}"),
        ),
        (
            "calico_cni",
            Cni::Calico,
            format!("{r}/calico/cni:{CALICO_VERSION}"),
        ),
        (
            "calico_node",
            Cni::Calico,
            format!("{r}/calico/node:{CALICO_VERSION}"),
        ),
        (
            "calico_kube_controllers",
            Cni::Calico,
            format!("{r}/calico/kube-controllers:{CALICO_VERSION}"),
        ),
    ]
}

/// The images the cluster's CNI runs (none for the bridge CNI).
pub fn cni_images(cluster: &Cluster) -> Vec<String> {
    all(cluster)
        .into_iter()
        .filter(|(_, cni, _)| *cni == cluster.cni)
        .map(|(_, _, image)| image)
        .collect()
}

/// The template context `cni_images`: every add-on image by name.
pub(crate) fn context(cluster: &Cluster) -> Value {
    let mut out = json!({});
    for (name, _, image) in all(cluster) {
        out[name] = json!(image);
    }
    out
}
