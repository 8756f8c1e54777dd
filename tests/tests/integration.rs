//! kubeforge's integration tests: one binary, one module per subject.
//! Add a module by adding a line below and a file next to this one.

mod etcd_tls;
mod flag_matrix;
mod fuzz_corpus;
mod lab_apply;
mod lab_bench;
mod lab_bootstrap;
mod lab_certs;
mod lab_etcd;
mod lab_fault;
mod lab_nodes;
mod lab_real;
mod lab_remove;
mod lab_smoke;
mod lab_status;
mod lab_upgrade;
mod probe;
mod ssh_transport;
mod vagrant;
