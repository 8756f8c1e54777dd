//! The templates, compiled into the binary from `templates/`.

macro_rules! templates {
    ($($name:literal),* $(,)?) => {
        pub const TEMPLATES: &[(&str, &str)] = &[
            $(($name, include_str!(concat!("../../../templates/", $name))),)*
        ];
    };
}

templates!(
    "etcd/etcd.service",
    "etcd/etcd-initial.env",
    "control-plane/kube-apiserver.service",
    "control-plane/encryption-config.yaml",
    "control-plane/audit-policy.yaml",
    "control-plane/kube-controller-manager.service",
    "control-plane/kube-scheduler.service",
    "control-plane/kube-scheduler-config.yaml",
    "control-plane/rbac.yaml",
    "control-plane/coredns.yaml",
    "control-plane/kubelet-bootstrap.yaml",
    "addons/flannel.yaml",
    "addons/calico.yaml",
    "node/containerd.service",
    "node/containerd-config.toml",
    "node/cni-bridge.conflist",
    "node/pod-routes.sh",
    "node/kubeforge-pod-routes.service",
    "node/container-node.sh",
    "node/kubeforge-container-node.service",
    "node/kubelet.service",
    "node/kubelet-config.yaml",
    "node/kube-proxy.service",
    "node/kube-proxy-config.yaml",
    "node/modules-load.conf",
    "node/sysctl.conf",
    "node/registry-hosts.toml",
    "lb/nginx.conf",
    "lb/keepalived.conf",
    "lb/check-apiserver-lb.sh",
    "common/kubeconfig.yaml",
    "common/bootstrap-kubeconfig.yaml",
);
