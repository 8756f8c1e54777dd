//! The command line, parsed the way the real components' pflag flag sets
//! parse it: `--name=value`, `--name value`, boolean `--name` (and
//! `--name=false`), shorthands `-v 2` / `-v=2` / `-v2` / `-h`, `--` ends the
//! flags, `_` and `-` in names are the same (WordSepNormalizeFunc), and no
//! positional arguments.

use std::collections::HashMap;

pub use crate::flaglist::normalize;
use crate::flaglist::{self, removed};

/// How a flag takes its value.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Arity {
    /// A bool: `--x` means true, a value only as `--x=false`.
    Bool,
    /// The value may be omitted (`--version`, `--version=raw`).
    Optional,
    /// A value is required: `--x=v` or `--x v`.
    Value,
}

#[derive(Clone, Debug)]
pub struct FlagSpec {
    /// Normalized name without dashes: `etcd-servers`.
    pub name: String,
    pub short: Option<char>,
    pub arity: Arity,
    /// The value type the reference page shows (`string`, `int`, `duration`…).
    pub ty: String,
}

/// One component's flags in one Kubernetes minor.
#[derive(Debug)]
pub struct FlagTable {
    /// The minor (1.NN) the flags are those of.
    pub minor: u32,
    specs: Vec<FlagSpec>,
    by_name: HashMap<String, usize>,
}

impl FlagTable {
    /// The flags of Kubernetes 1.`minor` from a `flags/<component>.txt` list.
    pub fn parse(text: &str, minor: u32) -> Result<FlagTable, String> {
        let mut specs = Vec::new();
        let mut by_name = HashMap::new();
        for flag in flaglist::flags_of_minor(text, minor)? {
            let arity = match flag.ty.as_str() {
                "bool" => Arity::Bool,
                "optional" => Arity::Optional,
                _ => Arity::Value,
            };
            by_name.insert(flag.name.clone(), specs.len());
            specs.push(FlagSpec {
                name: flag.name,
                short: flag.short,
                arity,
                ty: flag.ty,
            });
        }
        if specs.is_empty() {
            return Err(format!("no flags for 1.{minor}"));
        }
        Ok(FlagTable {
            minor,
            specs,
            by_name,
        })
    }

    #[cfg(test)]
    pub fn len(&self) -> usize {
        self.specs.len()
    }

    pub fn lookup(&self, name: &str) -> Option<&FlagSpec> {
        self.by_name.get(&normalize(name)).map(|&i| &self.specs[i])
    }

    fn lookup_short(&self, c: char) -> Option<&FlagSpec> {
        self.specs.iter().find(|s| s.short == Some(c))
    }

    /// `--help` text lines: `-v, --v int`.
    pub fn usage_lines(&self) -> Vec<String> {
        self.specs
            .iter()
            .map(|s| {
                let short = s.short.map(|c| format!("-{c}, ")).unwrap_or_default();
                let ty = match s.arity {
                    Arity::Bool => String::new(),
                    Arity::Optional => " [=value]".to_string(),
                    Arity::Value => format!(" {}", s.ty),
                };
                format!("{short}--{}{ty}", s.name)
            })
            .collect()
    }
}

/// The flags given, in order, by normalized name.
#[derive(Debug, Default)]
pub struct Parsed {
    values: Vec<(String, String)>,
}

impl Parsed {
    /// The last value given for `name`.
    pub fn get(&self, name: &str) -> Option<&str> {
        self.values
            .iter()
            .rev()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.as_str())
    }

    /// A list flag (`strings`): every occurrence, split at commas.
    pub fn list(&self, name: &str) -> Vec<String> {
        self.values
            .iter()
            .filter(|(n, _)| n == name)
            .flat_map(|(_, v)| v.split(','))
            .map(str::trim)
            .filter(|s| !s.is_empty())
            .map(String::from)
            .collect()
    }

    pub fn flag_bool(&self, name: &str) -> Option<bool> {
        self.get(name).and_then(parse_go_bool)
    }

    /// Every flag given (normalized name, value), in order.
    pub fn all(&self) -> &[(String, String)] {
        &self.values
    }
}

/// Go's strconv.ParseBool.
pub fn parse_go_bool(s: &str) -> Option<bool> {
    match s {
        "1" | "t" | "T" | "TRUE" | "true" | "True" => Some(true),
        "0" | "f" | "F" | "FALSE" | "false" | "False" => Some(false),
        _ => None,
    }
}

/// Go's time.ParseDuration, to seconds.
pub fn parse_go_duration(s: &str) -> Option<f64> {
    let (neg, mut rest) = match s.strip_prefix('-') {
        Some(r) => (true, r),
        None => (false, s.strip_prefix('+').unwrap_or(s)),
    };
    if rest == "0" {
        return Some(0.0);
    }
    if rest.is_empty() {
        return None;
    }
    let mut total = 0.0;
    while !rest.is_empty() {
        let num_len = rest
            .find(|c: char| !(c.is_ascii_digit() || c == '.'))
            .unwrap_or(rest.len());
        let num: f64 = rest[..num_len].parse().ok()?;
        rest = &rest[num_len..];
        let unit_len = rest
            .find(|c: char| c.is_ascii_digit() || c == '.')
            .unwrap_or(rest.len());
        let factor = match &rest[..unit_len] {
            "ns" => 1e-9,
            "us" | "µs" | "μs" => 1e-6,
            "ms" => 1e-3,
            "s" => 1.0,
            "m" => 60.0,
            "h" => 3600.0,
            _ => return None,
        };
        rest = &rest[unit_len..];
        total += num * factor;
    }
    Some(if neg { -total } else { total })
}

/// Checks a value against the flag's type, like pflag's Set.
fn check_value(spec: &FlagSpec, flag: &str, value: &str) -> Result<(), String> {
    let ok = match spec.ty.as_str() {
        "bool" => parse_go_bool(value).is_some(),
        "int" | "int64" => value.parse::<i64>().is_ok(),
        "int32" => value.parse::<i32>().is_ok(),
        "uint" => value.parse::<u64>().is_ok(),
        "float" => value.parse::<f64>().is_ok(),
        "duration" => parse_go_duration(value).is_some(),
        _ => true,
    };
    if ok {
        Ok(())
    } else {
        Err(format!(
            "invalid argument {value:?} for \"{flag}\" flag: not a valid {}",
            spec.ty
        ))
    }
}

/// Parses `args` (without argv[0]) against `table`.
pub fn parse_args(table: &FlagTable, role: &str, args: &[String]) -> Result<Parsed, String> {
    let mut parsed = Parsed::default();
    let mut positional: Vec<&str> = Vec::new();
    let mut i = 0;
    while i < args.len() {
        let arg = args[i].as_str();
        i += 1;
        if arg == "--" {
            positional.extend(args[i..].iter().map(String::as_str));
            break;
        }
        if let Some(body) = arg.strip_prefix("--") {
            let (name, inline) = match body.split_once('=') {
                Some((n, v)) => (n, Some(v)),
                None => (body, None),
            };
            if name.is_empty() || name.starts_with('-') {
                return Err(format!("bad flag syntax: {arg}"));
            }
            let norm = normalize(name);
            let spec = table.lookup(&norm);
            if let Some(why) = removed(role, &norm) {
                return Err(match spec {
                    None => format!("unknown flag: --{name} (removed: {why}; pki-and-flags.md)"),
                    Some(_) => format!(
                        "flag --{name} is rejected by the stand-in: {why} (pki-and-flags.md, \
                         \"Removed flags\"); the real {role} v1.{} still accepts it, deprecated, \
                         but kubeforge must not render it",
                        table.minor
                    ),
                });
            }
            let Some(spec) = spec else {
                return Err(format!("unknown flag: --{name}"));
            };
            let flag = format!("--{name}");
            let value = match (&spec.arity, inline) {
                (_, Some(v)) => v.to_string(),
                (Arity::Bool | Arity::Optional, None) => "true".to_string(),
                (Arity::Value, None) => {
                    let Some(v) = args.get(i) else {
                        return Err(format!("flag needs an argument: {flag}"));
                    };
                    i += 1;
                    v.clone()
                }
            };
            if spec.arity == Arity::Bool && parse_go_bool(&value).is_none() {
                return Err(format!(
                    "invalid argument {value:?} for \"{flag}\" flag: not a bool"
                ));
            }
            check_value(spec, &flag, &value)?;
            parsed.values.push((spec.name.clone(), value));
        } else if let Some(shorts) = arg.strip_prefix('-').filter(|s| !s.is_empty()) {
            let mut rest = shorts;
            while let Some(c) = rest.chars().next() {
                rest = &rest[c.len_utf8()..];
                let Some(spec) = table.lookup_short(c) else {
                    return Err(format!("unknown shorthand flag: '{c}' in {arg}"));
                };
                let flag = format!("-{c}");
                let value = if let Some(v) = rest.strip_prefix('=') {
                    let v = v.to_string();
                    rest = "";
                    v
                } else if spec.arity != Arity::Value {
                    "true".to_string()
                } else if !rest.is_empty() {
                    let v = rest.to_string();
                    rest = "";
                    v
                } else {
                    let Some(v) = args.get(i) else {
                        return Err(format!("flag needs an argument: '{c}' in {arg}"));
                    };
                    i += 1;
                    v.clone()
                };
                check_value(spec, &flag, &value)?;
                parsed.values.push((spec.name.clone(), value));
            }
        } else {
            positional.push(arg);
        }
    }
    if positional.iter().any(|a| !a.is_empty()) {
        return Err(format!(
            "{role:?} does not take any arguments, got {positional:?}"
        ));
    }
    Ok(parsed)
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use crate::flaglist::{DEFAULT_MINOR, FIRST_MINOR, LAST_MINOR};
    use crate::Role;

    /// The role's flags in the default minor.
    fn table(role: Role) -> FlagTable {
        FlagTable::parse(role.flag_list(), DEFAULT_MINOR).unwrap()
    }

    fn args(v: &[&str]) -> Vec<String> {
        v.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn every_list_parses() {
        for role in Role::ALL {
            for minor in FIRST_MINOR..=LAST_MINOR {
                let t = FlagTable::parse(role.flag_list(), minor).unwrap();
                let what = format!("{} 1.{minor}", role.name());
                assert!(t.len() > 50, "{what}: {} flags", t.len());
                for must in ["help", "version", "v", "vmodule", "log-flush-frequency"] {
                    assert!(t.lookup(must).is_some(), "{what}: --{must}");
                }
                assert_eq!(t.lookup("help").unwrap().short, Some('h'));
                assert_eq!(t.lookup("v").unwrap().short, Some('v'));
            }
        }
        assert!(FlagTable::parse(Role::Kubelet.flag_list(), LAST_MINOR + 1).is_err());
    }

    /// The lists follow the flags across releases (see the files' headers).
    #[test]
    fn flags_differ_by_minor() {
        let has = |role: Role, minor: u32, flag: &str| {
            FlagTable::parse(role.flag_list(), minor)
                .unwrap()
                .lookup(flag)
                .is_some()
        };
        // Removed from the apiserver in 1.29.
        assert!(has(Role::ApiServer, 28, "cloud-provider"));
        assert!(!has(Role::ApiServer, 29, "cloud-provider"));
        // New in 1.31 (kubelet) and 1.32 (apiserver).
        assert!(!has(Role::Kubelet, 30, "fail-cgroupv1"));
        assert!(has(Role::Kubelet, 31, "fail-cgroupv1"));
        assert!(!has(Role::ApiServer, 31, "requestheader-uid-headers"));
        assert!(has(Role::ApiServer, 32, "requestheader-uid-headers"));
        // Removed from the kubelet in 1.31 and 1.34.
        assert!(has(Role::Kubelet, 30, "keep-terminated-pod-volumes"));
        assert!(!has(Role::Kubelet, 31, "keep-terminated-pod-volumes"));
        assert!(has(Role::Kubelet, 33, "cloud-config"));
        assert!(!has(Role::Kubelet, 34, "cloud-config"));
        let kubelet_28 = FlagTable::parse(Role::Kubelet.flag_list(), 28).unwrap();
        let e = parse_args(&kubelet_28, "kubelet", &args(&["--fail-cgroupv1=false"])).unwrap_err();
        assert_eq!(e, "unknown flag: --fail-cgroupv1");
    }

    #[test]
    fn value_forms() {
        let t = table(Role::ApiServer);
        let p = parse_args(
            &t,
            "kube-apiserver",
            &args(&[
                "--secure-port=6443",
                "--etcd-servers",
                "https://a:2379,https://b:2379",
                "--etcd-servers=https://c:2379",
                "--allow-privileged",
                "--profiling=false",
                "-v",
                "2",
                "--",
            ]),
        )
        .unwrap();
        assert_eq!(p.get("secure-port"), Some("6443"));
        assert_eq!(
            p.list("etcd-servers"),
            ["https://a:2379", "https://b:2379", "https://c:2379"]
        );
        assert_eq!(p.flag_bool("allow-privileged"), Some(true));
        assert_eq!(p.flag_bool("profiling"), Some(false));
        assert_eq!(p.get("v"), Some("2"));
        for form in [&["-v=3"][..], &["-v3"], &["--v", "3"]] {
            let p = parse_args(&t, "kube-apiserver", &args(form)).unwrap();
            assert_eq!(p.get("v"), Some("3"), "{form:?}");
        }
        let p = parse_args(&t, "kube-apiserver", &args(&["--version"])).unwrap();
        assert_eq!(p.get("version"), Some("true"));
        let p = parse_args(&t, "kube-apiserver", &args(&["-h"])).unwrap();
        assert_eq!(p.flag_bool("help"), Some(true));
    }

    #[test]
    fn underscores_are_dashes() {
        let t = table(Role::ApiServer);
        let p = parse_args(&t, "kube-apiserver", &args(&["--secure_port=1"])).unwrap();
        assert_eq!(p.get("secure-port"), Some("1"));
    }

    #[test]
    fn errors_like_pflag() {
        let t = table(Role::ApiServer);
        let err = |a: &[&str]| parse_args(&t, "kube-apiserver", &args(a)).unwrap_err();
        assert_eq!(err(&["--nope=1"]), "unknown flag: --nope");
        assert_eq!(err(&["--nope"]), "unknown flag: --nope");
        assert_eq!(err(&["-x"]), "unknown shorthand flag: 'x' in -x");
        assert_eq!(
            err(&["--etcd-servers"]),
            "flag needs an argument: --etcd-servers"
        );
        // A bool does not take the next argument: "false" is positional.
        assert!(err(&["--profiling", "false"]).contains("does not take any arguments"));
        assert!(err(&["--profiling=maybe"]).contains("not a bool"));
        assert!(err(&["--secure-port=https"]).contains("not a valid int"));
        assert!(err(&["--request-timeout=5 minutes"]).contains("not a valid duration"));
        assert!(err(&["---x"]).contains("bad flag syntax"));
    }

    #[test]
    fn removed_flags_are_rejected() {
        let api = table(Role::ApiServer);
        let e = parse_args(&api, "kube-apiserver", &args(&["--insecure-port=8080"])).unwrap_err();
        assert!(e.starts_with("unknown flag: --insecure-port"), "{e}");
        let e = parse_args(&api, "kube-apiserver", &args(&["--logtostderr"])).unwrap_err();
        assert!(e.starts_with("unknown flag: --logtostderr"), "{e}");
        let sched = table(Role::Scheduler);
        let e = parse_args(&sched, "kube-scheduler", &args(&["--port=0"])).unwrap_err();
        assert!(e.starts_with("unknown flag: --port"), "{e}");
        // In kube-proxy's 1.31 list, but removed per pki-and-flags.md.
        let proxy = table(Role::KubeProxy);
        assert!(proxy.lookup("log-dir").is_some());
        let e = parse_args(&proxy, "kube-proxy", &args(&["--log_dir=/tmp"])).unwrap_err();
        assert!(e.contains("rejected by the stand-in"), "{e}");
        let kubelet = table(Role::Kubelet);
        for f in [
            "--network-plugin=cni",
            "--cni-bin-dir=/opt/cni/bin",
            "--container-runtime=remote",
            "--pod-infra-container-image=pause",
        ] {
            assert!(parse_args(&kubelet, "kubelet", &args(&[f])).is_err(), "{f}");
        }
        // --port and --address are fine for the kubelet.
        parse_args(
            &kubelet,
            "kubelet",
            &args(&["--port=10250", "--address=0.0.0.0"]),
        )
        .unwrap();
    }

    #[test]
    fn durations() {
        assert_eq!(parse_go_duration("0"), Some(0.0));
        assert_eq!(parse_go_duration("1h0m0s"), Some(3600.0));
        assert_eq!(parse_go_duration("8760h"), Some(8760.0 * 3600.0));
        assert_eq!(parse_go_duration("100ms"), Some(0.1));
        assert_eq!(parse_go_duration("1.5s"), Some(1.5));
        assert_eq!(parse_go_duration("-2m"), Some(-120.0));
        for bad in ["", "5", "s", "5 s", "5x", "1h-2m"] {
            assert_eq!(parse_go_duration(bad), None, "{bad}");
        }
    }

    /// The flag names in a rendered unit's ExecStart, as written in the
    /// template (one `--flag=value \\` per line), each with whether it
    /// stands inside a `{% if %}` block (rendered only for some settings or
    /// minors).
    fn template_flags(template: &str) -> Vec<(String, bool)> {
        let mut depth = 0usize;
        let mut out = Vec::new();
        for line in template.lines().map(str::trim) {
            let tag = line
                .trim_start_matches("{%")
                .trim_start_matches('-')
                .trim_start();
            if line.starts_with("{%") {
                if tag.starts_with("if ") {
                    depth += 1;
                } else if tag.starts_with("endif") {
                    depth = depth.saturating_sub(1);
                }
                continue;
            }
            if let Some(l) = line.strip_prefix("--") {
                let name = l.split(['=', ' ', '\\']).next().unwrap_or_default();
                out.push((name.to_string(), depth > 0));
            }
        }
        out
    }

    /// Every flag kubeforge's templates name is a real flag of its component
    /// in every minor the lists cover (one inside an `{% if %}` block: in
    /// at least one, since it may be rendered only for some minors) and
    /// none is one the reference notes call removed (the integration test
    /// `flag_matrix` checks the rendered units of each minor).
    #[test]
    fn rendered_templates_use_known_flags() {
        let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../templates");
        let units = [
            ("control-plane/kube-apiserver.service", Role::ApiServer),
            (
                "control-plane/kube-controller-manager.service",
                Role::ControllerManager,
            ),
            ("control-plane/kube-scheduler.service", Role::Scheduler),
            ("node/kubelet.service", Role::Kubelet),
            ("node/kube-proxy.service", Role::KubeProxy),
        ];
        for (file, role) in units {
            let text = std::fs::read_to_string(root.join(file)).unwrap();
            let flags = template_flags(&text);
            assert!(!flags.is_empty(), "{file}: no flags found");
            let tables: Vec<(u32, FlagTable)> = (FIRST_MINOR..=LAST_MINOR)
                .map(|minor| (minor, FlagTable::parse(role.flag_list(), minor).unwrap()))
                .collect();
            for (f, conditional) in &flags {
                let missing: Vec<u32> = tables
                    .iter()
                    .filter(|(_, t)| t.lookup(f).is_none())
                    .map(|(minor, _)| *minor)
                    .collect();
                assert!(
                    missing.is_empty() || (*conditional && missing.len() < tables.len()),
                    "{file}: --{f} is not a {} flag in 1.{missing:?}",
                    role.name()
                );
                assert!(
                    removed(role.name(), &normalize(f)).is_none(),
                    "{file}: --{f} is removed"
                );
            }
        }
    }
}
