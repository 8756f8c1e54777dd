//! The flag lists, `flags/<component>.txt`: every command-line flag of each
//! component in every Kubernetes minor the lists cover (see the files'
//! headers for the format and the sources), and the flags kubeforge must
//! never render even where a real binary still accepts them.
//!
//! Only `std` here: kubeforge's integration tests include this file too
//! (`#[path]`) to check rendered units against the same lists.

/// The oldest minor (1.NN) the lists cover.
pub const FIRST_MINOR: u32 = 28;
/// The newest minor (1.NN) the lists cover.
pub const LAST_MINOR: u32 = 35;
/// The minor the stand-in plays unless told otherwise: the example
/// inventories' Kubernetes 1.31.4.
pub const DEFAULT_MINOR: u32 = 31;

/// The built-in list of `component` (`kube-apiserver`,
/// `kube-controller-manager`, `kube-scheduler`, `kubelet`, `kube-proxy`).
pub fn list_text(component: &str) -> Option<&'static str> {
    Some(match component {
        "kube-apiserver" => include_str!("../flags/kube-apiserver.txt"),
        "kube-controller-manager" => include_str!("../flags/kube-controller-manager.txt"),
        "kube-scheduler" => include_str!("../flags/kube-scheduler.txt"),
        "kubelet" => include_str!("../flags/kubelet.txt"),
        "kube-proxy" => include_str!("../flags/kube-proxy.txt"),
        _ => return None,
    })
}

/// `_` and `-` are the same in flag names (pflag's WordSepNormalizeFunc).
pub fn normalize(name: &str) -> String {
    name.replace('_', "-")
}

/// One line of a list.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ListedFlag {
    /// Normalized long name without dashes: `etcd-servers`, `log-dir`.
    pub name: String,
    pub short: Option<char>,
    /// The value type the sources show: `bool` (no value needed),
    /// `optional` (the value may be omitted) or the type of a value.
    pub ty: String,
    /// The first and the last minor that have the flag.
    pub since: u32,
    pub until: u32,
}

impl ListedFlag {
    pub fn in_minor(&self, minor: u32) -> bool {
        (self.since..=self.until).contains(&minor)
    }
}

/// `1.NN` (as in `since=1.33`, `--minor 1.33`) within the minors the lists
/// cover.
pub fn parse_minor(text: &str) -> Result<u32, String> {
    let minor = text
        .strip_prefix("1.")
        .and_then(|m| m.parse::<u32>().ok())
        .filter(|m| m.to_string().len() == text.len() - 2)
        .ok_or_else(|| format!("{text:?} is not a Kubernetes minor like 1.{DEFAULT_MINOR}"))?;
    if !(FIRST_MINOR..=LAST_MINOR).contains(&minor) {
        return Err(format!(
            "Kubernetes {text} is not covered: the flag lists cover 1.{FIRST_MINOR} to 1.{LAST_MINOR}"
        ));
    }
    Ok(minor)
}

/// Parses a whole list: `<names> <type> [since=1.NN] [until=1.NN]` a line.
pub fn parse_list(text: &str) -> Result<Vec<ListedFlag>, String> {
    let mut flags: Vec<ListedFlag> = Vec::new();
    for (n, raw) in text.lines().enumerate() {
        let line = raw.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let bad = |why: &str| format!("line {}: {why}: {raw:?}", n + 1);
        let mut words = line.split_whitespace().peekable();
        let short = match words.next_if(|w| w.ends_with(',')) {
            Some(w) => {
                let mut chars = w
                    .strip_prefix('-')
                    .and_then(|s| s.strip_suffix(','))
                    .ok_or_else(|| bad("a shorthand is \"-x,\""))?
                    .chars();
                match (chars.next(), chars.next()) {
                    (Some(c), None) => Some(c),
                    _ => return Err(bad("a shorthand is one character")),
                }
            }
            None => None,
        };
        let long = words
            .next()
            .and_then(|w| w.strip_prefix("--"))
            .filter(|w| !w.is_empty() && !w.starts_with('-'))
            .ok_or_else(|| bad("no \"--name\""))?;
        let ty = words.next().ok_or_else(|| bad("no type"))?;
        let (mut since, mut until) = (FIRST_MINOR, LAST_MINOR);
        for word in words {
            let (key, value) = word
                .split_once('=')
                .ok_or_else(|| bad("expected since=1.NN or until=1.NN after the type"))?;
            let minor = parse_minor(value).map_err(|e| bad(&e))?;
            match key {
                "since" => since = minor,
                "until" => until = minor,
                _ => return Err(bad(&format!("unknown key {key:?}"))),
            }
        }
        if since > until {
            return Err(bad("since is after until"));
        }
        let flag = ListedFlag {
            name: normalize(long),
            short,
            ty: ty.to_string(),
            since,
            until,
        };
        let overlaps = |other: &ListedFlag| other.since <= flag.until && flag.since <= other.until;
        if let Some(other) = flags.iter().find(|o| {
            overlaps(o) && (o.name == flag.name || (o.short.is_some() && o.short == flag.short))
        }) {
            return Err(bad(&format!(
                "--{} is already listed for some of these minors (as --{})",
                flag.name, other.name
            )));
        }
        flags.push(flag);
    }
    if flags.is_empty() {
        return Err("no flags".into());
    }
    Ok(flags)
}

/// The flags one minor has.
pub fn flags_of_minor(text: &str, minor: u32) -> Result<Vec<ListedFlag>, String> {
    Ok(parse_list(text)?
        .into_iter()
        .filter(|f| f.in_minor(minor))
        .collect())
}

/// A flag that kubeforge's reference notes (shared/reference/pki-and-flags.md,
/// "Removed flags (do not render them)") call removed. The stand-in rejects
/// it in every minor, even where the real binary still accepts it.
struct Removed {
    names: &'static [&'static str],
    /// Components it applies to; empty: all.
    roles: &'static [&'static str],
    why: &'static str,
}

const KLOG: &[&str] = &[
    "add-dir-header",
    "alsologtostderr",
    "log-backtrace-at",
    "log-dir",
    "log-file",
    "log-file-max-size",
    "logtostderr",
    "one-output",
    "skip-headers",
    "skip-log-headers",
    "stderrthreshold",
];

const REMOVED: &[Removed] = &[
    Removed {
        names: KLOG,
        roles: &[],
        why: "klog flags were removed in Kubernetes 1.26",
    },
    Removed {
        names: &["insecure-port", "insecure-bind-address"],
        roles: &["kube-apiserver"],
        why: "the apiserver's insecure port is gone",
    },
    Removed {
        names: &["port", "address"],
        roles: &["kube-scheduler"],
        why: "kube-scheduler's insecure serving flags are gone (it serves on --secure-port)",
    },
    Removed {
        names: &["network-plugin", "cni-bin-dir", "cni-conf-dir"],
        roles: &["kubelet"],
        why: "dockershim flags, removed in Kubernetes 1.24",
    },
    Removed {
        names: &["container-runtime"],
        roles: &["kubelet"],
        why: "removed in Kubernetes 1.27",
    },
    Removed {
        names: &["pod-infra-container-image"],
        roles: &["kubelet"],
        why: "deprecated: the sandbox image comes from the CRI runtime's config",
    },
];

/// Why `component` must never get `--name` (normalized), if it must not.
pub fn removed(component: &str, name: &str) -> Option<&'static str> {
    REMOVED
        .iter()
        .find(|r| (r.roles.is_empty() || r.roles.contains(&component)) && r.names.contains(&name))
        .map(|r| r.why)
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn minors() {
        assert_eq!(parse_minor("1.28"), Ok(28));
        assert_eq!(parse_minor("1.35"), Ok(35));
        for bad in [
            "1.27", "1.36", "1.3", "2.31", "31", "1.031", "1.31.4", "", "1.x",
        ] {
            assert!(parse_minor(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn lines_and_ranges() {
        let text = "# comment\n\
                    --a string\n\
                    -v, --v int since=1.30\n\
                    --old_flag bool until=1.29\n\
                    --b int until=1.31\n\
                    --b duration since=1.32\n";
        let all = parse_list(text).unwrap();
        assert_eq!(all.len(), 5);
        assert_eq!(all[1].short, Some('v'));
        assert_eq!((all[1].since, all[1].until), (30, LAST_MINOR));
        assert_eq!(all[2].name, "old-flag");
        let names = |minor| -> Vec<String> {
            flags_of_minor(text, minor)
                .unwrap()
                .into_iter()
                .map(|f| format!("{} {}", f.name, f.ty))
                .collect()
        };
        assert_eq!(names(28), ["a string", "old-flag bool", "b int"]);
        assert_eq!(names(31), ["a string", "v int", "b int"]);
        assert_eq!(names(35), ["a string", "v int", "b duration"]);
    }

    #[test]
    fn bad_lists() {
        for bad in [
            "",
            "--a",
            "a string",
            "-xy, --a string",
            "--a string since=1.40",
            "--a string since=1.31 until=1.30",
            "--a string from=1.30",
            "--a string 1.30",
            "--a string\n--a int since=1.35",
            "--a_b string until=1.30\n--a-b string since=1.30",
            "-v, --a string\n-v, --b string",
        ] {
            assert!(parse_list(bad).is_err(), "{bad:?}");
        }
        parse_list("--a string until=1.30\n--a int since=1.31").unwrap();
    }

    #[test]
    fn every_built_in_list_parses() {
        for c in [
            "kube-apiserver",
            "kube-controller-manager",
            "kube-scheduler",
            "kubelet",
            "kube-proxy",
        ] {
            let all = parse_list(list_text(c).unwrap()).unwrap_or_else(|e| panic!("{c}: {e}"));
            for minor in FIRST_MINOR..=LAST_MINOR {
                let n = all.iter().filter(|f| f.in_minor(minor)).count();
                assert!(n > 50, "{c} 1.{minor}: {n} flags");
            }
        }
        assert!(list_text("etcd").is_none());
    }

    #[test]
    fn removed_flags() {
        assert!(removed("kube-proxy", "log-dir").is_some());
        assert!(removed("kube-scheduler", "port").is_some());
        assert!(removed("kubelet", "port").is_none());
        assert!(removed("kube-apiserver", "secure-port").is_none());
    }
}
