//! Rules for the free-form strings of an inventory that end up in files on
//! the nodes (systemd units, containerd's config.toml and hosts.toml,
//! keepalived.conf, manifests) or on the ssh command line. Each rule accepts
//! a value or says why not; `validate` turns that into a located finding.

use crate::validate::is_dns_name;
use oci_spec::distribution::{ParseError, Reference};

/// Why a `bin_dir` is refused.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum PathProblem {
    NotAbsolute,
    /// A character other than letters, digits, `/`, `.`, `_`, `-` and `+`.
    Char(char),
    /// A `.` or `..` component, a doubled slash or a trailing slash.
    NotNormal,
}

/// `bin_dir`: an absolute, normalised path of letters, digits, `/`, `.`,
/// `_`, `-` and `+` (it is written unquoted into every systemd unit's
/// `ExecStart=`).
pub(crate) fn bin_dir(s: &str) -> Result<(), PathProblem> {
    if !s.starts_with('/') {
        return Err(PathProblem::NotAbsolute);
    }
    if let Some(c) = s
        .chars()
        .find(|c| !(c.is_ascii_alphanumeric() || matches!(c, '/' | '.' | '_' | '-' | '+')))
    {
        return Err(PathProblem::Char(c));
    }
    let abnormal = s
        .split('/')
        .skip(1)
        .any(|part| part.is_empty() || part == "." || part == "..");
    if s != "/" && abnormal {
        return Err(PathProblem::NotNormal);
    }
    Ok(())
}

/// Why a load balancer `interface` is refused.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum InterfaceProblem {
    /// Empty, `.` or `..`, or with white space or control characters.
    NotAName,
    /// More than 15 bytes (the kernel's IFNAMSIZ less its NUL).
    TooLong,
    /// `/` or `:`, which the kernel refuses in interface names.
    KernelChar(char),
    /// A character the kernel allows but kubeforge does not write into
    /// keepalived.conf.
    Char(char),
}

/// The load balancer `interface`: the kernel's rules for interface names
/// (1 to 15 bytes; no `/`, `:` or white space; not `.` or `..`), and only
/// letters, digits, `.`, `_` and `-`, which keepalived.conf takes as they
/// are.
pub(crate) fn interface(s: &str) -> Result<(), InterfaceProblem> {
    if s.is_empty()
        || s == "."
        || s == ".."
        || s.chars().any(|c| c.is_whitespace() || c.is_control())
    {
        return Err(InterfaceProblem::NotAName);
    }
    if s.len() > 15 {
        return Err(InterfaceProblem::TooLong);
    }
    if let Some(c) = s.chars().find(|c| matches!(c, '/' | ':')) {
        return Err(InterfaceProblem::KernelChar(c));
    }
    if let Some(c) = s
        .chars()
        .find(|c| !(c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-')))
    {
        return Err(InterfaceProblem::Char(c));
    }
    Ok(())
}

/// A TCP port written as digits only, 1 to 65535.
fn is_port(s: &str) -> bool {
    !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit()) && s.parse::<u16>().is_ok_and(|p| p > 0)
}

/// A registry host as image references name it: `HOST[:PORT]`, where HOST
/// is a DNS name or an IPv4 address and has a dot, a port or is
/// `localhost` (a first component without any of these is read as a path
/// on docker.io). Returns why not.
pub(crate) fn registry_host(s: &str) -> Result<(), String> {
    let (name, port) = match s.rsplit_once(':') {
        Some((n, p)) => (n, Some(p)),
        None => (s, None),
    };
    if let Some(p) = port {
        if !is_port(p) {
            return Err(format!("its port {p:?} is not a number from 1 to 65535"));
        }
    }
    if !is_dns_name(&name.to_ascii_lowercase()) {
        return Err(format!("{name:?} is not a host name"));
    }
    if port.is_none() && !name.contains('.') && name != "localhost" {
        return Err(format!(
            "{name:?} has no dot and no port, so image names would read it as a path on docker.io"
        ));
    }
    Ok(())
}

/// `image_registry` (trailing slashes removed): a registry host with an
/// optional path prefix, no tag and no digest, such that
/// `<image_registry>/coredns/coredns:TAG` is an image reference. Returns
/// why not.
pub(crate) fn registry_prefix(s: &str) -> Result<(), String> {
    if s.is_empty() {
        return Err("it is empty".into());
    }
    if let Some(c) = s
        .chars()
        .find(|c| !(c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-' | '/' | ':')))
    {
        return Err(format!("it holds {c:?}"));
    }
    let (host, path) = s.split_once('/').unwrap_or((s, ""));
    registry_host(host)?;
    if path.contains(':') {
        return Err("it has a tag".into());
    }
    let probe = format!("{s}/pause:3.10");
    match Reference::try_from(probe.as_str()) {
        Ok(_) => Ok(()),
        Err(_) => Err(
            "its path is not lowercase letters and digits separated by '/', '.', '_', '__' or '-'"
                .into(),
        ),
    }
}

/// A whole image reference by the distribution grammar:
/// `[HOST[:PORT]/]PATH[:TAG][@ALGORITHM:DIGEST]`, in ASCII. Returns why
/// not.
pub(crate) fn image_reference(s: &str) -> Result<(), String> {
    if s.is_empty() {
        return Err("it is empty".into());
    }
    // The grammar's tag class is ASCII; the parser's regex would take any
    // Unicode letter there.
    if let Some(c) = s.chars().find(|c| {
        !(c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-' | '/' | ':' | '@' | '+'))
    }) {
        return Err(format!("it holds {c:?}"));
    }
    match Reference::try_from(s) {
        Ok(_) => Ok(()),
        Err(_) if Reference::try_from(s.to_ascii_lowercase().as_str()).is_ok() => {
            Err("its path has upper-case letters".into())
        }
        Err(
            ParseError::DigestInvalidFormat
            | ParseError::DigestInvalidLength
            | ParseError::DigestUnsupported,
        ) => Err("its digest is not sha256, sha384 or sha512 with all its hex digits".into()),
        Err(ParseError::NameTooLong) => Err("its path is longer than 255 characters".into()),
        Err(_) => Err("it does not follow the image reference grammar".into()),
    }
}

/// Why a registry mirror URL is refused.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum MirrorProblem {
    /// Not `http://` or `https://` with a host name or address.
    NotHttpUrl,
    /// White space, a control character, a quote, a backslash, a brace or
    /// another character that URLs do not hold as it is.
    Char(char),
    Credentials,
    QueryOrFragment,
}

/// A registry mirror: an `http://` or `https://` URL with a host, an
/// optional port and path, and nothing else (no credentials, query or
/// fragment), written in the characters URLs hold as they are.
pub(crate) fn mirror_url(s: &str) -> Result<(), MirrorProblem> {
    if let Some(c) = s.chars().find(|c| {
        !c.is_ascii_graphic()
            || matches!(
                c,
                '"' | '\'' | '\\' | '<' | '>' | '^' | '`' | '{' | '|' | '}'
            )
    }) {
        return Err(MirrorProblem::Char(c));
    }
    let rest = s
        .strip_prefix("https://")
        .or_else(|| s.strip_prefix("http://"))
        .ok_or(MirrorProblem::NotHttpUrl)?;
    if rest.is_empty() || rest.starts_with('/') {
        return Err(MirrorProblem::NotHttpUrl);
    }
    let url = url::Url::parse(s).map_err(|_| MirrorProblem::NotHttpUrl)?;
    let host_ok = match url.host() {
        Some(url::Host::Domain(d)) => is_dns_name(d),
        Some(url::Host::Ipv4(_) | url::Host::Ipv6(_)) => true,
        None => false,
    };
    if !host_ok {
        return Err(MirrorProblem::NotHttpUrl);
    }
    if !url.username().is_empty() || url.password().is_some() {
        return Err(MirrorProblem::Credentials);
    }
    if url.query().is_some() || url.fragment().is_some() {
        return Err(MirrorProblem::QueryOrFragment);
    }
    Ok(())
}

/// An SSH login name: 1 to 32 letters, digits, `.`, `_` and `-`, not
/// starting with `-` (which ssh would read as an option).
pub(crate) fn is_user_name(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 32
        && !s.starts_with('-')
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'))
}

/// A system user name as `useradd` takes it by default (and nginx.conf
/// takes unquoted): 1 to 32 lowercase letters, digits, `_` and `-`,
/// starting with a letter or `_`.
pub(crate) fn is_system_user(s: &str) -> bool {
    s.len() <= 32
        && s.as_bytes()
            .first()
            .is_some_and(|b| b.is_ascii_lowercase() || *b == b'_')
        && s.bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || matches!(b, b'_' | b'-'))
}

/// The path of an SSH private key on this machine: not empty, not starting
/// with `-`, no control characters.
pub(crate) fn is_key_path(s: &str) -> bool {
    !s.is_empty() && !s.starts_with('-') && !s.chars().any(char::is_control)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bin_dir_rules() {
        for ok in ["/", "/usr/local/bin", "/opt/k8s-1.31+x/bin", "/a_b/.hidden"] {
            assert_eq!(bin_dir(ok), Ok(()), "{ok}");
        }
        assert_eq!(bin_dir("usr/bin"), Err(PathProblem::NotAbsolute));
        assert_eq!(bin_dir("/usr/bin\nX=1"), Err(PathProblem::Char('\n')));
        assert_eq!(bin_dir("/usr/local bin"), Err(PathProblem::Char(' ')));
        for bad in ["/usr//bin", "/usr/bin/", "/usr/../bin", "/usr/./bin", "/.."] {
            assert_eq!(bin_dir(bad), Err(PathProblem::NotNormal), "{bad}");
        }
    }

    #[test]
    fn interface_rules() {
        for ok in [
            "eth0",
            "enp0s31f6",
            "br-lan",
            "eth0.100",
            "wg_home",
            "a23456789012345",
        ] {
            assert_eq!(interface(ok), Ok(()), "{ok}");
        }
        for bad in ["", ".", "..", "eth 0", "eth0\n", "eth0\t"] {
            assert_eq!(interface(bad), Err(InterfaceProblem::NotAName), "{bad:?}");
        }
        assert_eq!(
            interface("a234567890123456"),
            Err(InterfaceProblem::TooLong)
        );
        assert_eq!(interface("eth0:1"), Err(InterfaceProblem::KernelChar(':')));
        assert_eq!(interface("a/b"), Err(InterfaceProblem::KernelChar('/')));
        assert_eq!(interface("eth0}"), Err(InterfaceProblem::Char('}')));
        assert_eq!(
            interface("eth\u{e9}"),
            Err(InterfaceProblem::Char('\u{e9}'))
        );
    }

    #[test]
    fn registry_rules() {
        for ok in [
            "registry.k8s.io",
            "registry.local:5000",
            "localhost:5000",
            "localhost",
            "10.0.0.5:5000",
            "Registry.Local/k8s",
            "registry.local/team/k8s-images",
        ] {
            assert_eq!(registry_prefix(ok), Ok(()), "{ok}");
        }
        for bad in [
            "",
            "registry",
            "registry.local:0",
            "registry.local:+5000",
            "registry.local/K8s",
            "registry.local/k8s:1.0",
            "registry.local/k8s@sha256:00",
            "registry.local/k8s\n",
            "registry.local//k8s",
            "-registry.local",
        ] {
            assert!(registry_prefix(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn image_reference_rules() {
        let digest = format!("registry.k8s.io/pause@sha256:{}", "a".repeat(64));
        for ok in [
            "registry.k8s.io/pause:3.10",
            "pause",
            "lab.local/pause:3.10",
            "localhost:5000/a/b__c-d.e:v1_X",
            digest.as_str(),
        ] {
            assert_eq!(image_reference(ok), Ok(()), "{ok}");
        }
        assert_eq!(
            image_reference("registry.k8s.io/Pause:3.10"),
            Err("its path has upper-case letters".into())
        );
        for bad in [
            "",
            "registry.k8s.io/pause:3.10\"",
            "registry.k8s.io/pause:3.10\n[x]",
            "registry.k8s.io/pause:3.1\u{e9}",
            "registry.k8s.io/pause:-1",
            "registry.k8s.io/pause@sha256:abc",
            "registry.k8s.io//pause",
        ] {
            assert!(image_reference(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn mirror_rules() {
        for ok in [
            "https://registry.local:5000",
            "http://10.0.0.5:5000/docker/",
            "https://[fd00::1]:5000",
        ] {
            assert_eq!(mirror_url(ok), Ok(()), "{ok}");
        }
        for bad in [
            "registry.local",
            "ftp://x.local",
            "https://",
            "https:///x",
            "https://a$b",
        ] {
            assert_eq!(mirror_url(bad), Err(MirrorProblem::NotHttpUrl), "{bad}");
        }
        assert_eq!(
            mirror_url("https://u:p@registry.local"),
            Err(MirrorProblem::Credentials)
        );
        assert_eq!(
            mirror_url("https://registry.local/?x=1"),
            Err(MirrorProblem::QueryOrFragment)
        );
        assert_eq!(
            mirror_url("https://registry.local/#x"),
            Err(MirrorProblem::QueryOrFragment)
        );
        assert_eq!(
            mirror_url("https://registry.local\"]"),
            Err(MirrorProblem::Char('"'))
        );
        assert_eq!(
            mirror_url("https://registry.local/a b"),
            Err(MirrorProblem::Char(' '))
        );
    }

    #[test]
    fn ssh_rules() {
        for ok in ["root", "vagrant", "john.doe", "ci_user-2"] {
            assert!(is_user_name(ok), "{ok}");
        }
        for bad in [
            "",
            "-oProxyCommand=x",
            "ops user",
            "a\nb",
            "a@b",
            &"a".repeat(33),
        ] {
            assert!(!is_user_name(bad), "{bad:?}");
        }
        for ok in ["www-data", "nginx", "_nginx", "nobody", "lb-proxy2"] {
            assert!(is_system_user(ok), "{ok}");
        }
        for bad in [
            "",
            "WWW",
            "2nginx",
            "-nginx",
            "www data",
            "nginx;",
            "a\nb",
            &"a".repeat(33),
        ] {
            assert!(!is_system_user(bad), "{bad:?}");
        }
        assert!(is_key_path("~/.ssh/id_ed25519"));
        assert!(is_key_path("/tmp/lab key/id"));
        for bad in ["", "-i", "/tmp/a\nb"] {
            assert!(!is_key_path(bad), "{bad:?}");
        }
    }
}
