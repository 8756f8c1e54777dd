//! `kubeforge-standin`: a TEST STAND-IN for the Kubernetes server binaries.
//!
//! It is not Kubernetes. It lets kubeforge's tests run the command lines and
//! files kubeforge renders without the real binaries, which no package
//! registry reachable here serves. One binary plays every part; it picks the
//! part from the name it was started as (the basename of `argv[0]`): copy or
//! link it as `kube-apiserver`, `kube-controller-manager`, `kube-scheduler`,
//! `kubelet` or `kube-proxy` (or run `kubeforge-standin <part> [flags]`).
//!
//! Whatever the part, the stand-in
//! 1. checks the command line against the real flag names of that component
//!    in Kubernetes v1.31 (`flags/<component>.txt`), rejecting unknown flags
//!    like the real binaries (exit 1, `unknown flag: --x`) and the flags that
//!    kubeforge's reference notes call removed;
//! 2. loads every file the flags name (certificates, keys, kubeconfigs,
//!    component configs, encryption config, audit policy) and fails loudly,
//!    naming flag and path, when one does not parse or a certificate does not
//!    match its key;
//! 3. then behaves just enough like the component for health checks and
//!    kubelet TLS bootstrapping:
//!    - kube-apiserver checks every `--etcd-servers` URL over mutual TLS
//!      (`GET /health`), then serves HTTPS `/livez`, `/healthz`, `/readyz`
//!      (etcd healthy now) and `/version`, and notifies systemd (`READY=1`);
//!      it keeps API objects in etcd (`store`) for clients with a
//!      certificate of the cluster CA or a bootstrap token (`auth`);
//!    - kube-controller-manager and kube-scheduler wait for their apiserver's
//!      `/readyz` (with the kubeconfig's client certificate), then serve
//!      HTTPS `/healthz`; the controller manager approves kubelet client
//!      certificate requests and signs kubelet requests (`csr`);
//!    - kubelet bootstraps its client and serving certificates when told to
//!      (`bootstrap`), checks its kubeconfig's identity against
//!      `--hostname-override`, waits for the container runtime's socket and
//!      the apiserver's `/readyz`, then serves plain-HTTP `/healthz` and the
//!      kubelet API (HTTPS, client certificates required);
//!    - kube-proxy waits for its apiserver's `/readyz`, then serves
//!      plain-HTTP `/healthz`.
//!
//! Every line it logs (stderr) starts with "<component> (kubeforge stand-in):".

// Diagnostics go to stderr, like the real components' logs.
#![allow(clippy::print_stderr)]

use std::ffi::OsString;
use std::path::Path;
use std::process::ExitCode;
use std::sync::OnceLock;

static ROLE_NAME: OnceLock<&'static str> = OnceLock::new();

/// The name every log line starts with.
pub(crate) fn role_name() -> &'static str {
    ROLE_NAME.get().copied().unwrap_or("kubeforge-standin")
}

/// `log!(...)`: one line on stderr, prefixed with the part played and the
/// words "kubeforge stand-in".
macro_rules! log {
    ($($arg:tt)*) => {
        eprintln!("{} (kubeforge stand-in): {}", $crate::role_name(), format_args!($($arg)*))
    };
}

mod auth;
mod bootstrap;
mod csr;
mod files;
mod flags;
mod http;
mod notify;
mod roles;
mod store;
mod tls;

/// The components the stand-in can play.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Role {
    ApiServer,
    ControllerManager,
    Scheduler,
    Kubelet,
    KubeProxy,
}

impl Role {
    pub(crate) const ALL: [Role; 5] = [
        Role::ApiServer,
        Role::ControllerManager,
        Role::Scheduler,
        Role::Kubelet,
        Role::KubeProxy,
    ];

    pub(crate) fn name(self) -> &'static str {
        match self {
            Role::ApiServer => "kube-apiserver",
            Role::ControllerManager => "kube-controller-manager",
            Role::Scheduler => "kube-scheduler",
            Role::Kubelet => "kubelet",
            Role::KubeProxy => "kube-proxy",
        }
    }

    pub(crate) fn from_name(name: &str) -> Option<Role> {
        Role::ALL.into_iter().find(|r| r.name() == name)
    }

    /// The v1.31 flag list of the component (see the files' headers).
    pub(crate) fn flag_list(self) -> &'static str {
        match self {
            Role::ApiServer => include_str!("../flags/kube-apiserver.txt"),
            Role::ControllerManager => include_str!("../flags/kube-controller-manager.txt"),
            Role::Scheduler => include_str!("../flags/kube-scheduler.txt"),
            Role::Kubelet => include_str!("../flags/kubelet.txt"),
            Role::KubeProxy => include_str!("../flags/kube-proxy.txt"),
        }
    }
}

const VERSION: &str = "v1.31.4-kubeforge-standin";

fn usage(role: Option<Role>) -> String {
    let mut s = String::new();
    match role {
        Some(r) => s.push_str(&format!(
            "{name} (kubeforge stand-in): a TEST STAND-IN for {name} v1.31, not the real program.\n\n\
             Usage: {name} [flags]\n\n\
             It accepts exactly the flag names of the real {name} v1.31 (unknown ones\n\
             are an error, exit 1), loads and checks every file the flags name, and\n\
             then serves only health endpoints. See kubeforge's tests/standin.\n\n\
             Flags:\n",
            name = r.name()
        )),
        None => s.push_str(
            "kubeforge-standin: a TEST STAND-IN for the Kubernetes server binaries (not Kubernetes).\n\n\
             Usage: copy or link this binary as kube-apiserver, kube-controller-manager,\n\
             kube-scheduler, kubelet or kube-proxy and run it under that name, or run\n\
             `kubeforge-standin <component> [flags]`.\n",
        ),
    }
    if let Some(r) = role {
        if let Ok(table) = flags::FlagTable::parse(r.flag_list()) {
            for line in table.usage_lines() {
                s.push_str("  ");
                s.push_str(&line);
                s.push('\n');
            }
        }
    }
    s
}

fn write_stdout(text: &str) {
    use std::io::Write;
    let mut out = std::io::stdout().lock();
    let _ = out.write_all(text.as_bytes());
    let _ = out.flush();
}

/// Which part to play and its arguments: from `argv[0]`'s basename, else
/// from the first argument.
fn pick_role(args: Vec<OsString>) -> Result<(Option<Role>, Vec<String>), String> {
    let mut args = args.into_iter();
    let argv0 = args.next().unwrap_or_default();
    let base = Path::new(&argv0)
        .file_name()
        .map(|b| b.to_string_lossy().into_owned())
        .unwrap_or_default();
    let rest: Vec<String> = args
        .map(|a| {
            a.into_string()
                .map_err(|a| format!("argument is not UTF-8: {a:?}"))
        })
        .collect::<Result<_, _>>()?;
    if let Some(role) = Role::from_name(&base) {
        return Ok((Some(role), rest));
    }
    match rest.first().and_then(|a| Role::from_name(a)) {
        Some(role) => Ok((Some(role), rest[1..].to_vec())),
        None => Ok((None, rest)),
    }
}

fn main() -> ExitCode {
    let (role, args) = match pick_role(std::env::args_os().collect()) {
        Ok(v) => v,
        Err(e) => {
            log!("{e}");
            return ExitCode::FAILURE;
        }
    };
    let Some(role) = role else {
        let asked_help = args.iter().any(|a| a == "-h" || a == "--help");
        if asked_help {
            write_stdout(&usage(None));
            return ExitCode::SUCCESS;
        }
        log!(
            "started as {:?}: not one of the parts it can play",
            std::env::args().next().unwrap_or_default()
        );
        eprintln!("{}", usage(None));
        return ExitCode::FAILURE;
    };
    let _ = ROLE_NAME.set(role.name());

    let table = match flags::FlagTable::parse(role.flag_list()) {
        Ok(t) => t,
        Err(e) => {
            log!("bad built-in flag list: {e}");
            return ExitCode::FAILURE;
        }
    };
    let parsed = match flags::parse_args(&table, role.name(), &args) {
        Ok(p) => p,
        Err(e) => {
            log!("{e}");
            log!("see '{} --help' for the flags it accepts", role.name());
            return ExitCode::FAILURE;
        }
    };
    if parsed.flag_bool("help") == Some(true) {
        write_stdout(&usage(Some(role)));
        return ExitCode::SUCCESS;
    }
    if let Some(v) = parsed.get("version") {
        if v != "false" {
            write_stdout(&format!("Kubernetes {VERSION}\n"));
            return ExitCode::SUCCESS;
        }
    }

    match roles::run(role, &parsed) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            log!("{e}");
            ExitCode::FAILURE
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn os(v: &[&str]) -> Vec<OsString> {
        v.iter().map(OsString::from).collect()
    }

    #[test]
    fn role_from_argv0_or_first_argument() {
        let (r, a) = pick_role(os(&["/opt/bin/kube-apiserver", "--v=2"])).unwrap();
        assert_eq!(r, Some(Role::ApiServer));
        assert_eq!(a, ["--v=2"]);
        let (r, a) = pick_role(os(&["kubeforge-standin", "kubelet", "--config=x"])).unwrap();
        assert_eq!(r, Some(Role::Kubelet));
        assert_eq!(a, ["--config=x"]);
        let (r, _) = pick_role(os(&["kubeforge-standin", "--help"])).unwrap();
        assert_eq!(r, None);
    }

    #[test]
    fn usage_says_stand_in() {
        for r in Role::ALL {
            let u = usage(Some(r));
            assert!(u.contains("TEST STAND-IN"), "{u}");
            assert!(u.contains("--help"), "{u}");
        }
        assert!(usage(None).contains("TEST STAND-IN"));
    }
}
