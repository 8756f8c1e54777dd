//! The flags kubeforge renders, for every Kubernetes minor the inventory
//! accepts: `inventories/ha.toml` (and a variant with the kubelet's
//! bootstrap token and flannel, which render more flags) rendered with
//! `kubernetes_version = "1.NN.0"` for each minor from
//! `kubeforge_inventory::MIN_MINOR` to `MAX_MINOR`; every flag in the
//! `ExecStart=` of the kube-apiserver, kube-controller-manager,
//! kube-scheduler, kubelet and kube-proxy units must be a flag of that
//! component in that minor, by the stand-in's flag lists
//! (`tests/standin/flags/<component>.txt`, read with the stand-in's own
//! loader), and none may be one the stand-in's removed-flags list says
//! kubeforge must never render. A failure names minor, component, node and
//! flag. Needs nothing but the repository.

#![allow(clippy::unwrap_used)]

use kubeforge_tests::{exec_start_argv, inventory};
use std::path::Path;

/// The stand-in's flag lists and removed-flags list, shared with it.
#[allow(dead_code)]
#[path = "../standin/src/flaglist.rs"]
mod flaglist;

/// The components the lists cover and the units that start them.
const UNITS: [(&str, &str); 5] = [
    (
        "kube-apiserver",
        "/etc/systemd/system/kube-apiserver.service",
    ),
    (
        "kube-controller-manager",
        "/etc/systemd/system/kube-controller-manager.service",
    ),
    (
        "kube-scheduler",
        "/etc/systemd/system/kube-scheduler.service",
    ),
    ("kubelet", "/etc/systemd/system/kubelet.service"),
    ("kube-proxy", "/etc/systemd/system/kube-proxy.service"),
];

/// The inventory variants rendered for each minor: a name and an edit of
/// `ha.toml`'s text.
type Edit = fn(&str) -> String;
const VARIANTS: [(&str, Edit); 2] = [
    ("ha.toml", |text| text.to_string()),
    ("ha.toml with bootstrap-token and flannel", |text| {
        text.replace(
            "[cluster]\n",
            "[cluster]\nkubelet_join = \"bootstrap-token\"\n",
        )
        .replace("cni = \"bridge\"", "cni = \"flannel\"")
    }),
];

/// `text` with its `kubernetes_version` set to `version`.
fn with_version(text: &str, version: &str) -> String {
    let mut found = false;
    let out: Vec<String> = text
        .lines()
        .map(|line| {
            if line.trim_start().starts_with("kubernetes_version") {
                found = true;
                format!("kubernetes_version = \"{version}\"")
            } else {
                line.to_string()
            }
        })
        .collect();
    assert!(found, "no kubernetes_version line in the inventory");
    out.join("\n") + "\n"
}

/// The problems of one rendered command line against one minor's flags.
fn check_argv(
    minor: u32,
    component: &str,
    argv: &[String],
    flags: &[flaglist::ListedFlag],
) -> Vec<String> {
    let mut problems = Vec::new();
    let program = argv.first().map(|p| Path::new(p).file_name());
    if program != Some(Some(component.as_ref())) {
        problems.push(format!(
            "ExecStart runs {:?}, not {component}",
            argv.first()
        ));
    }
    let list = format!("tests/standin/flags/{component}.txt");
    let mut args = argv.iter().skip(1);
    while let Some(arg) = args.next() {
        let (name, inline) = if let Some(body) = arg.strip_prefix("--") {
            match body.split_once('=') {
                Some((n, v)) => (flaglist::normalize(n), Some(v)),
                None => (flaglist::normalize(body), None),
            }
        } else if let Some(c) = arg.strip_prefix('-').and_then(|s| s.chars().next()) {
            match flags.iter().find(|f| f.short == Some(c)) {
                Some(f) => (f.name.clone(), arg.get(2..).filter(|v| !v.is_empty())),
                None => {
                    problems.push(format!(
                        "{arg}: no shorthand -{c} in {component} 1.{minor} ({list})"
                    ));
                    continue;
                }
            }
        } else {
            problems.push(format!(
                "{arg:?}: {component} takes no positional arguments"
            ));
            continue;
        };
        if let Some(why) = flaglist::removed(component, &name) {
            problems.push(format!(
                "--{name} must never be rendered: {why} (shared/reference/pki-and-flags.md)"
            ));
        }
        let Some(flag) = flags.iter().find(|f| f.name == name) else {
            problems.push(format!(
                "--{name} is not a flag of {component} 1.{minor} ({list})"
            ));
            continue;
        };
        let value = match (flag.ty.as_str(), inline) {
            (_, Some(v)) => Some(v.trim_start_matches('=')),
            ("bool" | "optional", None) => None,
            (_, None) => args.next().map(String::as_str),
        };
        match (flag.ty.as_str(), value) {
            ("bool", Some(v)) if !matches!(v, "true" | "false" | "1" | "0") => problems.push(
                format!("--{name}={v}: {component} 1.{minor} takes a bool there"),
            ),
            (ty, None) if ty != "bool" && ty != "optional" => {
                problems.push(format!("--{name} needs a value ({ty})"))
            }
            _ => {}
        }
    }
    problems
}

#[test]
fn rendered_flags_exist_in_every_minor() {
    let (min, max) = (
        kubeforge_inventory::MIN_MINOR,
        kubeforge_inventory::MAX_MINOR,
    );
    assert!(
        flaglist::FIRST_MINOR <= min && max <= flaglist::LAST_MINOR,
        "the inventory accepts 1.{min} to 1.{max}, the stand-in's flag lists cover 1.{} to 1.{}",
        flaglist::FIRST_MINOR,
        flaglist::LAST_MINOR
    );
    let path = inventory("ha.toml");
    let base = std::fs::read_to_string(&path).unwrap();
    let mut problems = Vec::new();
    let mut checked = 0;
    for minor in min..=max {
        let lists: Vec<(&str, &str, Vec<flaglist::ListedFlag>)> = UNITS
            .iter()
            .map(|&(component, unit)| {
                let text = flaglist::list_text(component).unwrap();
                let flags = flaglist::flags_of_minor(text, minor)
                    .unwrap_or_else(|e| panic!("tests/standin/flags/{component}.txt: {e}"));
                (component, unit, flags)
            })
            .collect();
        for (variant, edit) in VARIANTS {
            let text = with_version(&edit(&base), &format!("1.{minor}.0"));
            let loaded = kubeforge_inventory::parse(&path, &text)
                .unwrap_or_else(|e| panic!("1.{minor} {variant}: {e}"));
            let state = tempfile::tempdir().unwrap();
            let rendered =
                kubeforge_render::prepare(state.path(), &loaded.cluster, &Default::default())
                    .unwrap_or_else(|e| panic!("1.{minor} {variant}: render: {e}"))
                    .rendered;
            for (component, unit, flags) in &lists {
                let mut seen = false;
                for node in &rendered.nodes {
                    let Some(file) = node.files.get(*unit) else {
                        continue;
                    };
                    seen = true;
                    checked += 1;
                    let where_ = format!("1.{minor} {component} on {} ({variant})", node.name);
                    let text = String::from_utf8_lossy(&file.content);
                    match exec_start_argv(&text) {
                        Ok(argv) => problems.extend(
                            check_argv(minor, component, &argv, flags)
                                .into_iter()
                                .map(|p| format!("{where_}: {p}")),
                        ),
                        Err(e) => problems.push(format!("{where_}: {unit}: {e}")),
                    }
                }
                if !seen {
                    problems.push(format!(
                        "1.{minor} {component} ({variant}): no node has {unit}"
                    ));
                }
            }
        }
    }
    assert!(
        problems.is_empty(),
        "{} problem(s) in the rendered command lines:\n{}",
        problems.len(),
        problems.join("\n")
    );
    assert!(checked > 0);
}

#[test]
fn check_argv_names_minor_component_and_flag() {
    let text = "--a string\n--b bool until=1.30\n-v, --v int\n--log_dir string\n";
    let flags = flaglist::flags_of_minor(text, 31).unwrap();
    let argv = |args: &[&str]| -> Vec<String> {
        std::iter::once("/usr/local/bin/kube-proxy")
            .chain(args.iter().copied())
            .map(String::from)
            .collect()
    };
    assert!(check_argv(
        31,
        "kube-proxy",
        &argv(&["--a=x", "--a", "y", "-v", "2"]),
        &flags
    )
    .is_empty());
    let p = check_argv(31, "kube-proxy", &argv(&["--b=true"]), &flags);
    assert_eq!(
        p,
        ["--b is not a flag of kube-proxy 1.31 (tests/standin/flags/kube-proxy.txt)"]
    );
    let p = check_argv(31, "kube-proxy", &argv(&["--log_dir=/x"]), &flags);
    assert!(
        p.len() == 1 && p[0].starts_with("--log-dir must never be rendered"),
        "{p:?}"
    );
    let p = check_argv(31, "kubelet", &argv(&["--a"]), &flags);
    assert_eq!(p.len(), 2, "{p:?}");
    assert!(
        p[0].contains("not kubelet") && p[1].contains("needs a value"),
        "{p:?}"
    );
}

/// Anonymous requests: up to 1.31 `--anonymous-auth=true` (health checks
/// need no credentials) and no AuthenticationConfiguration; from 1.32 the
/// AuthenticationConfiguration (v1beta1 in 1.32 and 1.33, v1 from 1.34)
/// allows them only for /livez, /readyz and /healthz, and the unit names it
/// instead of `--anonymous-auth` (kube-apiserver refuses both together).
#[test]
fn anonymous_requests_only_for_health_endpoints_where_the_minor_can() {
    const CONFIG: &str = "/etc/kubernetes/authentication-config.yaml";
    let path = inventory("ha.toml");
    let base = std::fs::read_to_string(&path).unwrap();
    for minor in kubeforge_inventory::MIN_MINOR..=kubeforge_inventory::MAX_MINOR {
        let text = with_version(&base, &format!("1.{minor}.0"));
        let loaded = kubeforge_inventory::parse(&path, &text).unwrap();
        let state = tempfile::tempdir().unwrap();
        let rendered =
            kubeforge_render::prepare(state.path(), &loaded.cluster, &Default::default())
                .unwrap()
                .rendered;
        let cp = rendered.nodes.iter().find(|n| n.name == "cp1").unwrap();
        let unit = &cp.files["/etc/systemd/system/kube-apiserver.service"].content;
        let argv = exec_start_argv(&String::from_utf8_lossy(unit)).unwrap();
        let anonymous_flag = argv.iter().any(|a| a.starts_with("--anonymous-auth"));
        let config_flag = argv.contains(&format!("--authentication-config={CONFIG}"));
        let config = cp.files.get(CONFIG);
        if minor < 32 {
            assert!(
                argv.contains(&"--anonymous-auth=true".to_string()),
                "1.{minor}"
            );
            assert!(!config_flag && config.is_none(), "1.{minor}");
            continue;
        }
        assert!(!anonymous_flag && config_flag, "1.{minor}: {argv:?}");
        let config = config.unwrap_or_else(|| panic!("1.{minor}: no {CONFIG}"));
        assert_eq!(config.restarts, ["kube-apiserver"], "1.{minor}");
        let v: serde_yaml_ng::Value = serde_yaml_ng::from_slice(&config.content).unwrap();
        let version = if minor >= 34 { "v1" } else { "v1beta1" };
        assert_eq!(
            v["apiVersion"].as_str(),
            Some(format!("apiserver.config.k8s.io/{version}").as_str()),
            "1.{minor}"
        );
        assert_eq!(v["kind"].as_str(), Some("AuthenticationConfiguration"));
        assert_eq!(v["anonymous"]["enabled"].as_bool(), Some(true));
        let paths: Vec<&str> = v["anonymous"]["conditions"]
            .as_sequence()
            .unwrap()
            .iter()
            .filter_map(|c| c["path"].as_str())
            .collect();
        assert_eq!(paths, ["/livez", "/readyz", "/healthz"], "1.{minor}");
        // Nowhere else: not on workers or LB nodes.
        for n in rendered
            .nodes
            .iter()
            .filter(|n| n.name.starts_with("worker"))
        {
            assert!(!n.files.contains_key(CONFIG), "1.{minor} {}", n.name);
        }
    }
}
