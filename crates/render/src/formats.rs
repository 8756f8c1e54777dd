//! Whether a rendered file still parses as the format its path says it
//! has: TOML, YAML (every document; kubeconfigs too), JSON, systemd units,
//! and the brace-structured configs of keepalived and nginx. A value that
//! slipped through validation and broke a file's syntax shows here, before
//! the file reaches a node.

/// Checks that `bytes`, the content of the file rendered for `path` on a
/// node, parses as the format of that path:
///
/// - `*.toml`: TOML;
/// - `*.yaml`, `*.yml`, and kubeconfigs (`/etc/kubernetes/**.conf`): every
///   YAML document;
/// - `*.conflist`, `*.json`: JSON;
/// - `*.service`: a systemd unit: every line that is not empty, a comment
///   or the continuation of a line ending in `\` is `[Section]` with a
///   known section or `Key=Value` inside one, and no line holds a control
///   character;
/// - `keepalived.conf`, `nginx.conf`: braces balanced (outside comments
///   and quotes), no control characters but newline and tab.
///
/// Other files (scripts, environment files, certificates, binaries) are not
/// checked. The error names the path, the line and column where known, and
/// what is wrong.
pub fn check_rendered(path: &str, bytes: &[u8]) -> Result<(), String> {
    let name = path.rsplit('/').next().unwrap_or(path);
    let kind = if name == "keepalived.conf" {
        Kind::Braces {
            bang_comments: true,
        }
    } else if name == "nginx.conf" {
        Kind::Braces {
            bang_comments: false,
        }
    } else if name.ends_with(".toml") {
        Kind::Toml
    } else if name.ends_with(".yaml")
        || name.ends_with(".yml")
        || (path.starts_with("/etc/kubernetes/") && name.ends_with(".conf"))
    {
        Kind::Yaml
    } else if name.ends_with(".conflist") || name.ends_with(".json") {
        Kind::Json
    } else if name.ends_with(".service") || name.ends_with(".timer") {
        Kind::Unit
    } else {
        return Ok(());
    };
    let text = std::str::from_utf8(bytes).map_err(|e| {
        format!(
            "{path}: not UTF-8 text (invalid byte at offset {})",
            e.valid_up_to()
        )
    })?;
    match kind {
        Kind::Toml => toml_document(text),
        Kind::Yaml => yaml_documents(text),
        Kind::Json => json_document(text),
        Kind::Unit => systemd_unit(text),
        Kind::Braces { bang_comments } => braces(text, bang_comments),
    }
    .map_err(|e| format!("{path}:{e}"))
}

enum Kind {
    Toml,
    Yaml,
    Json,
    Unit,
    /// keepalived.conf (comments start with `#` or `!`) or nginx.conf
    /// (`#`).
    Braces {
        bang_comments: bool,
    },
}

/// 1-based line and column of a byte offset.
fn line_column(text: &str, offset: usize) -> (usize, usize) {
    let before = text.get(..offset).unwrap_or(text);
    let line_start = before.rfind('\n').map_or(0, |i| i + 1);
    (
        before.matches('\n').count() + 1,
        before[line_start..].chars().count() + 1,
    )
}

fn toml_document(text: &str) -> Result<(), String> {
    match text.parse::<toml::Table>() {
        Ok(_) => Ok(()),
        Err(e) => {
            let (line, column) = line_column(text, e.span().map_or(0, |s| s.start));
            Err(format!(
                "{line}:{column}: not valid TOML: {}",
                e.message().trim()
            ))
        }
    }
}

fn yaml_documents(text: &str) -> Result<(), String> {
    use serde::Deserialize as _;
    for (i, document) in serde_yaml_ng::Deserializer::from_str(text).enumerate() {
        if let Err(e) = serde_yaml_ng::Value::deserialize(document) {
            let at = e
                .location()
                .map_or_else(String::new, |l| format!("{}:{}:", l.line(), l.column()));
            return Err(format!("{at} document {} is not valid YAML: {e}", i + 1));
        }
    }
    Ok(())
}

fn json_document(text: &str) -> Result<(), String> {
    serde_json::from_str::<serde_json::Value>(text)
        .map(|_| ())
        .map_err(|e| format!("{}:{}: not valid JSON: {e}", e.line(), e.column()))
}

/// The sections a rendered unit may have.
const UNIT_SECTIONS: [&str; 4] = ["Unit", "Service", "Timer", "Install"];

fn systemd_unit(text: &str) -> Result<(), String> {
    let mut section: Option<&str> = None;
    // The line whose trailing `\` the next line continues.
    let mut continued_from: Option<usize> = None;
    for (i, line) in text.split('\n').enumerate() {
        let n = i + 1;
        if let Some((col, c)) = line.chars().enumerate().find(|(_, c)| c.is_control()) {
            return Err(format!(
                "{n}:{}: control character {c:?} in a systemd unit",
                col + 1
            ));
        }
        let trimmed = line.trim();
        let comment = trimmed.starts_with(['#', ';']);
        if continued_from.is_some() {
            // A continuation line; a comment line inside one is skipped.
            if !comment {
                continued_from = trimmed.ends_with('\\').then_some(n);
            }
            continue;
        }
        if trimmed.is_empty() || comment {
            continue;
        }
        if let Some(name) = trimmed
            .strip_prefix('[')
            .and_then(|rest| rest.strip_suffix(']'))
        {
            if !UNIT_SECTIONS.contains(&name) {
                return Err(format!(
                    "{n}:1: unknown section [{name}] in a systemd unit (known: {})",
                    UNIT_SECTIONS.map(|s| format!("[{s}]")).join(", ")
                ));
            }
            section = Some(name);
            continue;
        }
        let Some((key, _)) = trimmed.split_once('=') else {
            return Err(format!(
                "{n}:1: {trimmed:?} is neither [Section] nor Key=Value"
            ));
        };
        let key = key.trim_end();
        let key_ok = !key.is_empty()
            && key
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_'));
        if !key_ok {
            return Err(format!("{n}:1: {key:?} is not a systemd key"));
        }
        if section.is_none() {
            return Err(format!("{n}:1: {key}= comes before any [Section]"));
        }
        continued_from = trimmed.ends_with('\\').then_some(n);
    }
    match continued_from {
        Some(n) => Err(format!(
            "{n}:1: the line ends in '\\' but no line continues it"
        )),
        None => Ok(()),
    }
}

/// Braces balanced outside comments and quoted strings; no control
/// characters but newline and tab.
fn braces(text: &str, bang_comments: bool) -> Result<(), String> {
    // Line and column of every `{` still open.
    let mut open: Vec<(usize, usize)> = Vec::new();
    for (i, line) in text.split('\n').enumerate() {
        let n = i + 1;
        let mut quote: Option<char> = None;
        for (col, c) in line.chars().enumerate() {
            let col = col + 1;
            if c.is_control() && c != '\t' {
                return Err(format!("{n}:{col}: control character {c:?}"));
            }
            match quote {
                Some(q) if c == q => quote = None,
                Some(_) => {}
                None => match c {
                    '"' | '\'' => quote = Some(c),
                    '#' => break,
                    '!' if bang_comments => break,
                    '{' => open.push((n, col)),
                    '}' if open.pop().is_none() => {
                        return Err(format!("{n}:{col}: '}}' closes no '{{'"));
                    }
                    _ => {}
                },
            }
        }
    }
    match open.last() {
        Some((n, col)) => Err(format!("{n}:{col}: this '{{' is never closed")),
        None => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn err(path: &str, text: &str) -> String {
        match check_rendered(path, text.as_bytes()) {
            Ok(()) => panic!("{path} accepted:\n{text}"),
            Err(e) => e,
        }
    }

    fn ok(path: &str, text: &str) {
        if let Err(e) = check_rendered(path, text.as_bytes()) {
            panic!("{path} refused: {e}\n{text}");
        }
    }

    #[test]
    fn toml_files() {
        let good = "version = 2\n\n[plugins.\"io.containerd.grpc.v1.cri\"]\n  sandbox_image = \"registry.k8s.io/pause:3.10\"\n";
        ok("/etc/containerd/config.toml", good);
        ok(
            "/etc/containerd/certs.d/docker.io/hosts.toml",
            "server = \"https://registry-1.docker.io\"\n\n[host.\"https://m.local\"]\n  capabilities = [\"pull\", \"resolve\"]\n",
        );
        // A value that closed its string and opened a table of its own.
        let bad = "[plugins.\"io.containerd.grpc.v1.cri\"]\n  sandbox_image = \"pause:3.10\"\n[plugins.\"io.containerd.grpc.v1.cri\"]\n";
        let e = err("/etc/containerd/config.toml", bad);
        assert!(
            e.starts_with("/etc/containerd/config.toml:3:") && e.contains("not valid TOML"),
            "{e}"
        );
        let e = err("/x/hosts.toml", "server = \"https://a\" x\n");
        assert!(e.starts_with("/x/hosts.toml:1:"), "{e}");
    }

    #[test]
    fn yaml_files_and_kubeconfigs() {
        ok(
            "/etc/kubernetes/addons/coredns.yaml",
            "apiVersion: v1\nkind: ServiceAccount\n---\napiVersion: v1\nkind: ConfigMap\ndata:\n  a: b\n",
        );
        ok(
            "/etc/kubernetes/kubelet.conf",
            "apiVersion: v1\nkind: Config\nclusters:\n- name: c\n  cluster:\n    server: https://10.77.0.11:6443\n",
        );
        // Only the second document is broken.
        let e = err(
            "/etc/kubernetes/addons/coredns.yaml",
            "kind: A\n---\nkind: B\n  image: x: y\n",
        );
        assert!(e.contains("document 2 is not valid YAML"), "{e}");
        let e = err("/etc/kubernetes/scheduler.conf", "clusters: [\n- name: c\n");
        assert!(e.starts_with("/etc/kubernetes/scheduler.conf:"), "{e}");
        assert!(e.contains("not valid YAML"), "{e}");
        let e = err("/etc/kubernetes/kubelet-config.yml", "a: {b: 1\n");
        assert!(e.contains("not valid YAML"), "{e}");
        // A .conf elsewhere is no kubeconfig.
        ok(
            "/etc/modules-load.d/kubeforge.conf",
            "overlay\nbr_netfilter\n",
        );
        ok("/etc/sysctl.d/90-kubeforge.conf", "a: {\n");
    }

    #[test]
    fn json_files() {
        ok(
            "/etc/cni/net.d/10-kubeforge.conflist",
            "{\"cniVersion\": \"1.0.0\", \"plugins\": [{\"type\": \"bridge\"}]}\n",
        );
        let e = err(
            "/etc/cni/net.d/10-kubeforge.conflist",
            "{\"cniVersion\": \"1.0.0\",\n \"name\": \"a\"b\"}\n",
        );
        assert!(
            e.starts_with("/etc/cni/net.d/10-kubeforge.conflist:2:"),
            "{e}"
        );
        let e = err("/a/b.json", "");
        assert!(e.contains("not valid JSON"), "{e}");
    }

    #[test]
    fn systemd_units() {
        let good = "# Rendered by kubeforge\n[Unit]\nDescription=Kubernetes kubelet\nAfter=containerd.service\n\n[Service]\nExecStart=/usr/local/bin/kubelet \\\n  --config=/etc/kubernetes/kubelet-config.yaml \\\n  --v=2\nRestart=always\nEnvironment=\"A=b c\"\n\n[Install]\nWantedBy=multi-user.target\n";
        ok("/etc/systemd/system/kubelet.service", good);
        ok("/etc/systemd/system/x.service", "");
        ok(
            "/etc/systemd/system/x.service",
            "[Service]\nExecStart=/bin/a \\\n# a comment inside\n  --b\n",
        );
        for (text, what) in [
            (
                "[Service]\nExecStart=/bin/a\n[Evil]\nX=1\n",
                "3:1: unknown section [Evil]",
            ),
            (
                "[Service]\nExecStart=/usr/local/bin /tmp/x\nExecStartPre /bin/sh\n",
                "3:1: \"ExecStartPre /bin/sh\" is neither [Section] nor Key=Value",
            ),
            (
                "ExecStart=/bin/a\n[Service]\n",
                "1:1: ExecStart= comes before any [Section]",
            ),
            (
                "[Service]\nExec Start=/bin/a\n",
                "2:1: \"Exec Start\" is not a systemd key",
            ),
            (
                "[Service]\nExecStart=/bin/a\u{1b}[2J\n",
                "2:17: control character '\\u{1b}' in a systemd unit",
            ),
            (
                "[Service]\r\nExecStart=/bin/a\r\n",
                "1:10: control character '\\r' in a systemd unit",
            ),
            (
                "[Service]\nExecStart=/bin/a \\",
                "2:1: the line ends in '\\' but no line continues it",
            ),
        ] {
            let e = err("/etc/systemd/system/x.service", text);
            assert!(
                e.starts_with("/etc/systemd/system/x.service:") && e.contains(what),
                "{e} lacks {what:?}"
            );
        }
    }

    #[test]
    fn keepalived_and_nginx() {
        let keepalived = "global_defs {\n    router_id lb1\n}\n\nvrrp_script check {\n    script \"/etc/keepalived/check.sh {x}\"\n}\n\nvrrp_instance kubeforge_demo {\n\tinterface eth0\n    unicast_peer {\n        10.77.0.32 # lb2 }\n    }\n    ! a comment with {\n}\n";
        ok("/etc/keepalived/keepalived.conf", keepalived);
        let nginx = "events {\n    worker_connections 4096;\n}\n\nstream {\n    upstream a {\n        server 10.77.0.11:6443; # cp1 {\n    }\n}\n";
        ok("/etc/nginx/nginx.conf", nginx);
        for (path, text, what) in [
            (
                "/etc/keepalived/keepalived.conf",
                "vrrp_instance a {\n    interface eth0\n}\n}\nvrrp_script evil {\n",
                "4:1: '}' closes no '{'",
            ),
            (
                "/etc/keepalived/keepalived.conf",
                "vrrp_instance a {\n    interface eth0{\n}\n",
                "1:17: this '{' is never closed",
            ),
            (
                "/etc/keepalived/keepalived.conf",
                "global_defs {\n    router_id lb1\u{0}\n}\n",
                "2:18: control character '\\0'",
            ),
            (
                "/etc/nginx/nginx.conf",
                "stream {\n    server {\n        listen 8443;\n    }\n",
                "1:8: this '{' is never closed",
            ),
            (
                "/etc/nginx/nginx.conf",
                "events {\r\n}\r\n",
                "1:9: control character '\\r'",
            ),
        ] {
            let e = err(path, text);
            assert!(e == format!("{path}:{what}"), "{e} is not {path}:{what}");
        }
    }

    #[test]
    fn other_files_are_not_checked() {
        for path in [
            "/etc/kubeforge/pod-routes.sh",
            "/etc/etcd/initial-cluster.env",
            "/etc/kubernetes/pki/ca.crt",
            "/usr/local/bin/kubelet",
        ] {
            ok(path, "{ [ \" unbalanced \u{1b}");
        }
        assert!(check_rendered("/usr/local/bin/kubelet", &[0xff, 0xfe]).is_ok());
    }

    #[test]
    fn checked_files_must_be_utf8() {
        let e = match check_rendered("/etc/containerd/config.toml", b"a = 1\n\xff") {
            Ok(()) => panic!("accepted"),
            Err(e) => e,
        };
        assert_eq!(
            e,
            "/etc/containerd/config.toml: not UTF-8 text (invalid byte at offset 6)"
        );
    }
}
