//! `kubeforge-standin`: a TEST STAND-IN for the Kubernetes server binaries.
//!
//! It is not Kubernetes. It lets kubeforge's tests run the command lines and
//! files kubeforge renders without the real binaries (the lab tests take
//! those from `KUBEFORGE_K8S_BIN_DIR` when given). One binary plays every
//! part; it picks the
//! part from the name it was started as (the basename of `argv[0]`): copy or
//! link it as `kube-apiserver`, `kube-controller-manager`, `kube-scheduler`,
//! `kubelet` or `kube-proxy` (or run `kubeforge-standin <part> [flags]`).
//! It plays Kubernetes 1.31 unless told another minor: the environment
//! variable `KUBEFORGE_STANDIN_MINOR=1.NN`, or `kubeforge-standin --minor
//! 1.NN <part> [flags]`.
//!
//! Whatever the part, the stand-in
//! 1. checks the command line against the real flag names of that component
//!    in that minor (`flags/<component>.txt`), rejecting unknown flags like
//!    the real binaries (exit 1, `unknown flag: --x`) and the flags that
//!    kubeforge's reference notes call removed;
//! 2. loads every file the flags name (certificates, keys, kubeconfigs,
//!    component configs, encryption config, audit policy) and fails loudly,
//!    naming flag and path, when one does not parse or a certificate does not
//!    match its key;
//! 3. then behaves just enough like the component for kubeforge's health
//!    checks and cluster gates:
//!    - kube-apiserver checks every `--etcd-servers` URL over mutual TLS
//!      (`GET /health`), then serves HTTPS `/livez`, `/healthz`, `/readyz`
//!      (etcd healthy now) and `/version`, and notifies systemd (`READY=1`);
//!      for clients with a certificate of the cluster CA it keeps the
//!      objects applied to it (server-side apply) in etcd and answers GET
//!      of them (`store`);
//!    - kube-controller-manager and kube-scheduler wait for their apiserver's
//!      `/readyz` (with the kubeconfig's client certificate), then serve
//!      HTTPS `/healthz`;
//!    - kubelet checks its kubeconfig's identity against
//!      `--hostname-override`, waits for the container runtime's socket and
//!      the apiserver's `/readyz`, registers its Node (Ready), then serves
//!      plain-HTTP `/healthz` and the kubelet API (HTTPS, client
//!      certificates required); it refuses `--bootstrap-kubeconfig`: TLS
//!      bootstrapping needs the real kubelet;
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
static MINOR: OnceLock<u32> = OnceLock::new();

/// The environment variable that tells the stand-in its minor (`1.NN`).
const MINOR_VAR: &str = "KUBEFORGE_STANDIN_MINOR";

/// The Kubernetes minor (1.NN) the stand-in plays.
pub(crate) fn minor() -> u32 {
    MINOR.get().copied().unwrap_or(flaglist::DEFAULT_MINOR)
}

/// The version it reports: `v1.31.4-kubeforge-standin` in the default minor
/// (the example inventories' version), `v1.NN.0-kubeforge-standin` in another.
pub(crate) fn version() -> String {
    let minor = minor();
    let patch = if minor == flaglist::DEFAULT_MINOR {
        4
    } else {
        0
    };
    format!("v1.{minor}.{patch}-kubeforge-standin")
}

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

mod files;
mod flaglist;
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

    /// The flag list of the component, every minor (see the files' headers).
    pub(crate) fn flag_list(self) -> &'static str {
        flaglist::list_text(self.name()).unwrap_or_default()
    }
}

fn usage(role: Option<Role>, minor: u32) -> String {
    let mut s = String::new();
    match role {
        Some(r) => s.push_str(&format!(
            "{name} (kubeforge stand-in): a TEST STAND-IN for {name} v1.{minor}, not the real program.\n\n\
             Usage: {name} [flags]\n\n\
             It accepts exactly the flag names of the real {name} v1.{minor} (unknown ones\n\
             are an error, exit 1), loads and checks every file the flags name, and\n\
             then serves health endpoints (the apiserver also what is applied to it).\n\
             {MINOR_VAR}=1.NN picks another minor\n\
             (1.{first} to 1.{last}; default 1.{default}). See kubeforge's tests/standin.\n\n\
             Flags:\n",
            name = r.name(),
            first = flaglist::FIRST_MINOR,
            last = flaglist::LAST_MINOR,
            default = flaglist::DEFAULT_MINOR,
        )),
        None => s.push_str(&format!(
            "kubeforge-standin: a TEST STAND-IN for the Kubernetes server binaries (not Kubernetes).\n\n\
             Usage: copy or link this binary as kube-apiserver, kube-controller-manager,\n\
             kube-scheduler, kubelet or kube-proxy and run it under that name, or run\n\
             `kubeforge-standin [--minor 1.NN] <component> [flags]`.\n\n\
             It checks the flags of Kubernetes 1.NN: from --minor, else from\n\
             {MINOR_VAR}, else 1.{default} (1.{first} to 1.{last}).\n",
            first = flaglist::FIRST_MINOR,
            last = flaglist::LAST_MINOR,
            default = flaglist::DEFAULT_MINOR,
        )),
    }
    if let Some(r) = role {
        if let Ok(table) = flags::FlagTable::parse(r.flag_list(), minor) {
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

/// What the command line asks for.
#[derive(Debug)]
struct Invocation {
    role: Option<Role>,
    /// `--minor 1.NN` before the part's name (as `kubeforge-standin`).
    minor: Option<String>,
    /// The part's arguments.
    args: Vec<String>,
}

/// Which part to play and its arguments: from `argv[0]`'s basename, else
/// from the first argument (after `--minor 1.NN`, if given).
fn pick_role(args: Vec<OsString>) -> Result<Invocation, String> {
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
        return Ok(Invocation {
            role: Some(role),
            minor: None,
            args: rest,
        });
    }
    let (minor, rest) = match rest.first().map(String::as_str) {
        Some("--minor") => match rest.get(1) {
            Some(m) => (Some(m.clone()), &rest[2..]),
            None => return Err("--minor needs a value, e.g. --minor 1.33".into()),
        },
        Some(a) if a.starts_with("--minor=") => {
            (a.strip_prefix("--minor=").map(String::from), &rest[1..])
        }
        _ => (None, &rest[..]),
    };
    Ok(match rest.first().and_then(|a| Role::from_name(a)) {
        Some(role) => Invocation {
            role: Some(role),
            minor,
            args: rest[1..].to_vec(),
        },
        None => Invocation {
            role: None,
            minor,
            args: rest.to_vec(),
        },
    })
}

/// The minor to play: `--minor`, else `$KUBEFORGE_STANDIN_MINOR` (when not
/// empty), else the default.
fn choose_minor(flag: Option<&str>, env: Option<&str>) -> Result<u32, String> {
    match (flag, env.map(str::trim).filter(|e| !e.is_empty())) {
        (Some(m), _) => flaglist::parse_minor(m).map_err(|e| format!("--minor: {e}")),
        (None, Some(m)) => flaglist::parse_minor(m).map_err(|e| format!("{MINOR_VAR}: {e}")),
        (None, None) => Ok(flaglist::DEFAULT_MINOR),
    }
}

fn main() -> ExitCode {
    let Invocation {
        role,
        minor: minor_flag,
        args,
    } = match pick_role(std::env::args_os().collect()) {
        Ok(v) => v,
        Err(e) => {
            log!("{e}");
            return ExitCode::FAILURE;
        }
    };
    if let Some(role) = role {
        let _ = ROLE_NAME.set(role.name());
    }
    let env = std::env::var(MINOR_VAR).ok();
    let minor = match choose_minor(minor_flag.as_deref(), env.as_deref()) {
        Ok(m) => m,
        Err(e) => {
            log!("{e}");
            return ExitCode::FAILURE;
        }
    };
    let _ = MINOR.set(minor);
    let Some(role) = role else {
        let asked_help = args.iter().any(|a| a == "-h" || a == "--help");
        if asked_help {
            write_stdout(&usage(None, minor));
            return ExitCode::SUCCESS;
        }
        log!(
            "started as {:?}: not one of the parts it can play",
            std::env::args().next().unwrap_or_default()
        );
        eprintln!("{}", usage(None, minor));
        return ExitCode::FAILURE;
    };

    let table = match flags::FlagTable::parse(role.flag_list(), minor) {
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
        write_stdout(&usage(Some(role), minor));
        return ExitCode::SUCCESS;
    }
    if let Some(v) = parsed.get("version") {
        if v != "false" {
            write_stdout(&format!("Kubernetes {}\n", version()));
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
        let i = pick_role(os(&["/opt/bin/kube-apiserver", "--v=2"])).unwrap();
        assert_eq!(i.role, Some(Role::ApiServer));
        assert_eq!(i.args, ["--v=2"]);
        let i = pick_role(os(&["kubeforge-standin", "kubelet", "--config=x"])).unwrap();
        assert_eq!(i.role, Some(Role::Kubelet));
        assert_eq!(i.args, ["--config=x"]);
        assert_eq!(i.minor, None);
        let i = pick_role(os(&["kubeforge-standin", "--help"])).unwrap();
        assert_eq!(i.role, None);
    }

    #[test]
    fn minor_from_flag_env_or_default() {
        let i = pick_role(os(&[
            "kubeforge-standin",
            "--minor",
            "1.33",
            "kubelet",
            "--v=1",
        ]))
        .unwrap();
        assert_eq!(i.role, Some(Role::Kubelet));
        assert_eq!(i.minor.as_deref(), Some("1.33"));
        assert_eq!(i.args, ["--v=1"]);
        let i = pick_role(os(&["kubeforge-standin", "--minor=1.28", "kube-proxy"])).unwrap();
        assert_eq!(
            (i.role, i.minor.as_deref()),
            (Some(Role::KubeProxy), Some("1.28"))
        );
        assert!(pick_role(os(&["kubeforge-standin", "--minor"])).is_err());
        // Under a component's name, --minor is one of its flags (and unknown).
        let i = pick_role(os(&["/usr/bin/kubelet", "--minor", "1.33"])).unwrap();
        assert_eq!((i.minor, i.args.len()), (None, 2));

        assert_eq!(choose_minor(None, None), Ok(flaglist::DEFAULT_MINOR));
        assert_eq!(choose_minor(None, Some("")), Ok(flaglist::DEFAULT_MINOR));
        assert_eq!(choose_minor(None, Some("1.34")), Ok(34));
        assert_eq!(choose_minor(Some("1.29"), Some("1.34")), Ok(29));
        let e = choose_minor(None, Some("1.40")).unwrap_err();
        assert!(
            e.starts_with(MINOR_VAR) && e.contains("1.28 to 1.35"),
            "{e}"
        );
        assert!(choose_minor(Some("v1.31"), None)
            .unwrap_err()
            .starts_with("--minor"));
    }

    #[test]
    fn usage_says_stand_in() {
        for r in Role::ALL {
            let u = usage(Some(r), 33);
            assert!(u.contains("TEST STAND-IN"), "{u}");
            assert!(u.contains(" v1.33"), "{u}");
            assert!(u.contains("--help"), "{u}");
        }
        assert!(usage(None, 31).contains("TEST STAND-IN"));
    }
}
