//! One module per command.

pub(crate) mod apply;
pub(crate) mod bundle;
pub(crate) mod certs;
pub(crate) mod docs;
pub(crate) mod etcd;
pub(crate) mod init;
pub(crate) mod kubeconfig;
pub(crate) mod plan;
pub(crate) mod render;
pub(crate) mod reset;
pub(crate) mod status;
pub(crate) mod validate;
