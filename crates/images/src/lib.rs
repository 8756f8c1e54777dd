//! Container image archives, read on the control machine: the image names
//! an archive gives its images, as `ctr images import` names them on a
//! node.
//!
//! - OCI image layout (`oci-layout` and `index.json`, as `ctr images
//!   export`, `skopeo copy ... oci-archive:` and `docker save` since
//!   Docker 25 write it): every manifest of `index.json` is named by its
//!   `io.containerd.image.name` annotation, else by its
//!   `org.opencontainers.image.ref.name` annotation when that is a whole
//!   reference (`ctr` gives a bare tag such as `1` a dated `import-...`
//!   name, so a bare tag does not count).
//! - docker-archive (`manifest.json`, as older `docker save` writes it):
//!   every `RepoTags` entry, normalized the way containerd does
//!   (`busybox:1` becomes `docker.io/library/busybox:1`).
//!
//! An archive with both is read as an OCI image layout, as containerd
//! does. Only the small metadata files are read; layers are skipped.

use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::io::Read;
use std::path::{Path, PathBuf};

/// The annotation containerd names an image by.
pub const ANNOTATION_IMAGE_NAME: &str = "io.containerd.image.name";
/// The OCI reference-name annotation (a whole reference or a bare tag).
pub const ANNOTATION_REF_NAME: &str = "org.opencontainers.image.ref.name";

/// The sub-directory of a bundle that holds image archives
/// (`images/<file>.tar`); the only sub-directory a bundle may have.
pub const BUNDLE_DIR: &str = "images";

/// A container image archive of a bundle (`images/<file>`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ImageArchive {
    /// Its file name in the bundle's `images/` directory, such as
    /// `pause.tar`.
    pub file: String,
    /// Where it is on the control machine.
    pub path: std::path::PathBuf,
    pub sha256: String,
    /// The names its images get when imported (read from the archive on
    /// the control machine).
    pub names: Vec<String>,
}

/// Checks the file name an image archive has in a bundle: `NAME.tar`, with
/// NAME of ASCII letters, digits, `.`, `_`, `+` and `-`, not starting with
/// `.` or `-` (it ends up in scripts and paths on the nodes).
pub fn check_file_name(name: &str) -> Result<(), String> {
    let stem = name.strip_suffix(".tar").unwrap_or_default();
    let ok = !stem.is_empty()
        && !stem.starts_with(['.', '-'])
        && stem
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '+' | '-'));
    if ok {
        Ok(())
    } else {
        Err(format!(
            "`{name}` is not an image archive name: use NAME.tar, NAME of letters, digits, '.', '_', '+' and '-'"
        ))
    }
}

/// `oci-layout`, `index.json` and `manifest.json` larger than this are
/// refused (they are a few kilobytes in practice).
const MAX_METADATA: u64 = 16 << 20;

const HELP_FORMAT: &str = "pass a tar file written by `ctr images export FILE NAME`, `docker save NAME:TAG -o FILE` or `skopeo copy ... oci-archive:FILE:NAME:TAG` (not compressed)";
const HELP_NAME: &str = "save the image with its name, such as `ctr images export FILE registry.local/pause:3.10`, `docker save registry.local/pause:3.10 -o FILE` or `skopeo copy ... oci-archive:FILE:registry.local/pause:3.10`; the name is what the nodes' containerd will know the image by";

/// The layout of an image archive.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    /// OCI image layout: `oci-layout` and `index.json`.
    Oci,
    /// `docker save`'s format: `manifest.json` with `RepoTags`.
    DockerArchive,
}

impl Format {
    pub fn as_str(self) -> &'static str {
        match self {
            Format::Oci => "OCI image layout",
            Format::DockerArchive => "docker-archive",
        }
    }
}

impl std::fmt::Display for Format {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// What an archive holds: its layout and the names of its images (in
/// the archive's order, each once).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ArchiveNames {
    pub format: Format,
    pub names: Vec<String>,
}

/// An archive that cannot be used: which file, what is wrong, what to do.
#[derive(Debug, thiserror::Error)]
#[error("{}: {what}\n  help: {help}", .path.display())]
pub struct ImageError {
    pub path: PathBuf,
    pub what: String,
    pub help: String,
}

fn error(path: &Path, what: impl Into<String>, help: impl Into<String>) -> ImageError {
    ImageError {
        path: path.to_path_buf(),
        what: what.into(),
        help: help.into(),
    }
}

/// Reads the image names of the archive at `path`. An archive that names
/// no image is refused.
pub fn read_names(path: &Path) -> Result<ArchiveNames, ImageError> {
    let file = std::fs::File::open(path).map_err(|e| {
        error(
            path,
            format!("cannot open the image archive: {e}"),
            "check the path and its permissions",
        )
    })?;
    read_names_from(std::io::BufReader::new(file), path)
}

#[derive(Deserialize)]
struct OciLayout {
    #[serde(rename = "imageLayoutVersion", default)]
    version: String,
}

#[derive(Deserialize)]
struct OciIndex {
    #[serde(default)]
    manifests: Vec<OciDescriptor>,
}

#[derive(Deserialize)]
struct OciDescriptor {
    #[serde(default)]
    annotations: Option<BTreeMap<String, String>>,
}

#[derive(Deserialize)]
struct DockerManifest {
    #[serde(rename = "RepoTags", default)]
    repo_tags: Option<Vec<String>>,
}

/// Like [`read_names`], from any reader; `path` names it in errors.
pub fn read_names_from(reader: impl Read, path: &Path) -> Result<ArchiveNames, ImageError> {
    let not_tar = |e: std::io::Error| {
        error(
            path,
            format!("not a readable tar archive: {e}"),
            HELP_FORMAT,
        )
    };
    let mut layout: Option<Vec<u8>> = None;
    let mut index: Option<Vec<u8>> = None;
    let mut manifest: Option<Vec<u8>> = None;
    let mut archive = tar::Archive::new(reader);
    for entry in archive.entries().map_err(not_tar)? {
        let mut entry = entry.map_err(not_tar)?;
        if entry.header().entry_type() != tar::EntryType::Regular {
            continue;
        }
        let raw = String::from_utf8_lossy(&entry.path_bytes()).into_owned();
        let mut name = raw.as_str();
        while let Some(rest) = name.strip_prefix("./") {
            name = rest;
        }
        let slot = match name {
            "oci-layout" => &mut layout,
            "index.json" => &mut index,
            "manifest.json" => &mut manifest,
            _ => continue,
        };
        if entry.size() > MAX_METADATA {
            return Err(error(
                path,
                format!(
                    "{name} is {} bytes, too large to be image metadata",
                    entry.size()
                ),
                HELP_FORMAT,
            ));
        }
        let mut buf = Vec::new();
        entry.read_to_end(&mut buf).map_err(not_tar)?;
        *slot = Some(buf);
    }
    let names = match (layout, manifest) {
        (Some(layout), _) => oci_names(path, &layout, index.as_deref())?,
        (None, Some(manifest)) => docker_names(path, &manifest)?,
        (None, None) => {
            return Err(error(
                path,
                "neither an OCI image layout (oci-layout and index.json) nor a docker-archive (manifest.json)",
                HELP_FORMAT,
            ))
        }
    };
    let (format, names) = names;
    if names.is_empty() {
        let detail = match format {
            Format::Oci => format!(
                "the archive names no image: no manifest of its index.json has an {ANNOTATION_IMAGE_NAME} annotation or a whole-reference {ANNOTATION_REF_NAME} annotation"
            ),
            Format::DockerArchive => {
                "the archive names no image: its manifest.json has no RepoTags".to_string()
            }
        };
        return Err(error(path, detail, HELP_NAME));
    }
    Ok(ArchiveNames { format, names })
}

fn parse_json<'a, T: Deserialize<'a>>(
    path: &Path,
    file: &str,
    bytes: &'a [u8],
) -> Result<T, ImageError> {
    serde_json::from_slice(bytes).map_err(|e| {
        error(
            path,
            format!("{file} is not valid: {e}"),
            "the archive is damaged or not an image archive; save the image again",
        )
    })
}

fn push_unique(names: &mut Vec<String>, name: String) {
    if !names.contains(&name) {
        names.push(name);
    }
}

fn oci_names(
    path: &Path,
    layout: &[u8],
    index: Option<&[u8]>,
) -> Result<(Format, Vec<String>), ImageError> {
    let layout: OciLayout = parse_json(path, "oci-layout", layout)?;
    if layout.version != "1.0.0" {
        return Err(error(
            path,
            format!(
                "OCI image layout version \"{}\" is not supported (containerd reads 1.0.0)",
                layout.version
            ),
            HELP_FORMAT,
        ));
    }
    let Some(index) = index else {
        return Err(error(
            path,
            "the OCI image layout has no index.json",
            HELP_FORMAT,
        ));
    };
    let index: OciIndex = parse_json(path, "index.json", index)?;
    let mut names = Vec::new();
    for m in index.manifests {
        let annotations = m.annotations.unwrap_or_default();
        let named = annotations
            .get(ANNOTATION_IMAGE_NAME)
            .filter(|n| !n.is_empty())
            .or_else(|| {
                annotations
                    .get(ANNOTATION_REF_NAME)
                    .filter(|n| n.contains(['/', ':', '@']))
            });
        if let Some(name) = named {
            check_reference(name).map_err(|why| {
                error(
                    path,
                    format!("index.json names an image `{name}`, which is not an image reference: {why}"),
                    HELP_NAME,
                )
            })?;
            push_unique(&mut names, name.clone());
        }
    }
    Ok((Format::Oci, names))
}

fn docker_names(path: &Path, manifest: &[u8]) -> Result<(Format, Vec<String>), ImageError> {
    let manifests: Vec<DockerManifest> = parse_json(path, "manifest.json", manifest)?;
    let mut names = Vec::new();
    for m in manifests {
        for tag in m.repo_tags.unwrap_or_default() {
            let name = normalize_docker_reference(&tag).map_err(|why| {
                error(
                    path,
                    format!("manifest.json tags an image `{tag}`, which is not an image reference: {why}"),
                    HELP_NAME,
                )
            })?;
            push_unique(&mut names, name);
        }
    }
    Ok((Format::DockerArchive, names))
}

/// A whole image reference (`[host[:port]/]path[:tag][@algo:hex]`),
/// spelled with the characters references allow (which also keeps it
/// safe to quote in a shell script).
pub fn check_reference(name: &str) -> Result<(), String> {
    if name.is_empty() {
        return Err("it is empty".into());
    }
    if name.len() > 255 {
        return Err("it is longer than 255 characters".into());
    }
    if let Some(c) = name
        .chars()
        .find(|c| !(c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-' | '/' | ':' | '@')))
    {
        return Err(format!("it holds the character {c:?}"));
    }
    let (rest, digest) = match name.split_once('@') {
        Some((r, d)) => (r, Some(d)),
        None => (name, None),
    };
    if let Some(d) = digest {
        let ok = d.split_once(':').is_some_and(|(algo, hex)| {
            !algo.is_empty() && hex.len() >= 32 && hex.bytes().all(|b| b.is_ascii_hexdigit())
        });
        if !ok {
            return Err(format!("`@{d}` is not a digest such as @sha256:<hex>"));
        }
    }
    let (repo, tag) = split_tag(rest);
    if let Some(t) = tag {
        let ok = !t.is_empty()
            && t.len() <= 128
            && !t.starts_with(['.', '-'])
            && !t.contains(['/', ':']);
        if !ok {
            return Err(format!("`:{t}` is not a tag"));
        }
    }
    if repo.is_empty() || repo.split('/').any(str::is_empty) {
        return Err("its repository has an empty path component".into());
    }
    Ok(())
}

/// `name[:tag]` with the tag split off (a `:` before the last `/` is a
/// registry port, not a tag).
fn split_tag(s: &str) -> (&str, Option<&str>) {
    let slash = s.rfind('/').map_or(0, |i| i + 1);
    match s[slash..].rfind(':') {
        Some(i) => (&s[..slash + i], Some(&s[slash + i + 1..])),
        None => (s, None),
    }
}

/// A docker reference normalized as containerd imports it: the registry
/// `docker.io` added when the first component is not a host,
/// `library/` for its one-component names, `:latest` when neither a tag
/// nor a digest is given, and only the digest when both are.
pub fn normalize_docker_reference(reference: &str) -> Result<String, String> {
    check_reference(reference)?;
    let (rest, digest) = match reference.split_once('@') {
        Some((r, d)) => (r, Some(d)),
        None => (reference, None),
    };
    let (repo, tag) = split_tag(rest);
    let (domain, path) = match repo.split_once('/') {
        Some((first, path))
            if first.contains(['.', ':'])
                || first == "localhost"
                || first.chars().any(|c| c.is_ascii_uppercase()) =>
        {
            (first, path.to_string())
        }
        _ => ("docker.io", repo.to_string()),
    };
    let domain = if domain == "index.docker.io" {
        "docker.io"
    } else {
        domain
    };
    if path.chars().any(|c| c.is_ascii_uppercase()) {
        return Err(format!("its repository `{path}` has upper-case letters"));
    }
    let path = if domain == "docker.io" && !path.contains('/') {
        format!("library/{path}")
    } else {
        path
    };
    Ok(match (tag, digest) {
        (_, Some(d)) => format!("{domain}/{path}@{d}"),
        (Some(t), None) => format!("{domain}/{path}:{t}"),
        (None, None) => format!("{domain}/{path}:latest"),
    })
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    fn tar_of(files: &[(&str, &[u8])]) -> Vec<u8> {
        let mut b = tar::Builder::new(Vec::new());
        for (name, data) in files {
            let mut h = tar::Header::new_ustar();
            h.set_size(data.len() as u64);
            h.set_mode(0o644);
            h.set_entry_type(tar::EntryType::Regular);
            b.append_data(&mut h, name, *data).unwrap();
        }
        b.into_inner().unwrap()
    }

    fn names(files: &[(&str, &[u8])]) -> Result<ArchiveNames, ImageError> {
        read_names_from(&tar_of(files)[..], Path::new("images/x.tar"))
    }

    const LAYOUT: &[u8] = br#"{"imageLayoutVersion":"1.0.0"}"#;
    const BLOB: &[u8] = &[0u8; 4096];

    #[test]
    fn oci_names_come_from_the_index_annotations() {
        let index = br#"{"schemaVersion":2,"manifests":[
            {"mediaType":"application/vnd.oci.image.manifest.v1+json","digest":"sha256:00","size":1,
             "annotations":{"io.containerd.image.name":"lab.local/pause:3.10","org.opencontainers.image.ref.name":"3.10"}},
            {"mediaType":"application/vnd.oci.image.manifest.v1+json","digest":"sha256:01","size":1,
             "annotations":{"org.opencontainers.image.ref.name":"registry.local/busybox:1"}},
            {"mediaType":"application/vnd.oci.image.manifest.v1+json","digest":"sha256:02","size":1,
             "annotations":{"org.opencontainers.image.ref.name":"latest"}},
            {"mediaType":"application/vnd.oci.image.manifest.v1+json","digest":"sha256:03","size":1}
        ]}"#;
        let got = names(&[
            ("oci-layout", LAYOUT),
            ("blobs/sha256/00", BLOB),
            ("./index.json", index),
        ])
        .unwrap();
        assert_eq!(got.format, Format::Oci);
        assert_eq!(
            got.names,
            ["lab.local/pause:3.10", "registry.local/busybox:1"]
        );
    }

    #[test]
    fn docker_archive_names_are_normalized_repo_tags() {
        let manifest = br#"[
            {"Config":"c.json","RepoTags":["busybox:1","lab.local/pause:3.10","localhost:5000/x/y"],"Layers":["l/layer.tar"]},
            {"Config":"d.json","RepoTags":null,"Layers":[]},
            {"Config":"e.json","RepoTags":["busybox:1","me/app@sha256:0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef"],"Layers":[]}
        ]"#;
        let got = names(&[
            ("l/layer.tar", BLOB),
            ("manifest.json", manifest),
            ("repositories", b"{}"),
        ])
        .unwrap();
        assert_eq!(got.format, Format::DockerArchive);
        assert_eq!(
            got.names,
            [
                "docker.io/library/busybox:1",
                "lab.local/pause:3.10",
                "localhost:5000/x/y:latest",
                "docker.io/me/app@sha256:0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef",
            ]
        );
    }

    #[test]
    fn an_oci_layout_wins_over_manifest_json() {
        let index = br#"{"manifests":[{"annotations":{"io.containerd.image.name":"docker.io/library/busybox:latest"}}]}"#;
        let got = names(&[
            ("manifest.json", br#"[{"RepoTags":["other:1"]}]"#),
            ("oci-layout", LAYOUT),
            ("index.json", index),
        ])
        .unwrap();
        assert_eq!(got.format, Format::Oci);
        assert_eq!(got.names, ["docker.io/library/busybox:latest"]);
    }

    #[test]
    fn a_nameless_archive_is_refused_with_what_to_do() {
        let index = br#"{"manifests":[{"annotations":{"org.opencontainers.image.ref.name":"1"}}]}"#;
        let msg = names(&[("oci-layout", LAYOUT), ("index.json", index)])
            .unwrap_err()
            .to_string();
        assert!(
            msg.starts_with("images/x.tar: the archive names no image"),
            "{msg}"
        );
        assert!(msg.contains(ANNOTATION_IMAGE_NAME), "{msg}");
        assert!(msg.contains("help: save the image with its name"), "{msg}");

        let msg = names(&[("manifest.json", br#"[{"Config":"c","RepoTags":[]}]"#)])
            .unwrap_err()
            .to_string();
        assert!(msg.contains("its manifest.json has no RepoTags"), "{msg}");
        assert!(msg.contains("docker save"), "{msg}");
    }

    #[test]
    fn what_is_not_an_image_archive_is_refused() {
        let msg = names(&[("bin/busybox", BLOB)]).unwrap_err().to_string();
        assert!(msg.contains("neither an OCI image layout"), "{msg}");
        let msg = read_names_from(&b"not a tar at all, just text"[..], Path::new("a.tar"))
            .unwrap_err()
            .to_string();
        assert!(msg.starts_with("a.tar: "), "{msg}");
        let msg = names(&[("oci-layout", LAYOUT)]).unwrap_err().to_string();
        assert!(msg.contains("has no index.json"), "{msg}");
        let msg = names(&[("oci-layout", LAYOUT), ("index.json", b"{")])
            .unwrap_err()
            .to_string();
        assert!(msg.contains("index.json is not valid"), "{msg}");
        let bad =
            br#"{"manifests":[{"annotations":{"io.containerd.image.name":"x/y:1; rm -rf /"}}]}"#;
        let msg = names(&[("oci-layout", LAYOUT), ("index.json", bad)])
            .unwrap_err()
            .to_string();
        assert!(msg.contains("not an image reference"), "{msg}");
    }

    #[test]
    fn read_names_reads_a_file() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("a.tar");
        std::fs::write(
            &p,
            tar_of(&[(
                "manifest.json",
                br#"[{"Config":"c","RepoTags":["lab.local/busybox:1"]}]"#,
            )]),
        )
        .unwrap();
        assert_eq!(read_names(&p).unwrap().names, ["lab.local/busybox:1"]);
        let msg = read_names(&dir.path().join("missing.tar"))
            .unwrap_err()
            .to_string();
        assert!(
            msg.contains("missing.tar: cannot open the image archive"),
            "{msg}"
        );
    }

    #[test]
    fn archive_file_names() {
        for ok in ["pause.tar", "busybox-1.36_x86+64.tar", "a.b.tar"] {
            assert_eq!(check_file_name(ok), Ok(()), "{ok}");
        }
        for bad in [
            ".tar",
            "pause",
            "pause.tar.gz",
            "-x.tar",
            ".x.tar",
            "a'b.tar",
            "a b.tar",
            "a/b.tar",
        ] {
            assert!(check_file_name(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn references() {
        for ok in [
            "busybox",
            "lab.local/pause:3.10",
            "localhost:5000/a/b:c",
            "a/b@sha256:0123456789abcdef0123456789abcdef",
        ] {
            assert_eq!(check_reference(ok), Ok(()), "{ok}");
        }
        for bad in ["", "a b", "a//b", "a:", "a:-x", "a@sha256:zz", "$(x)"] {
            assert!(check_reference(bad).is_err(), "{bad}");
        }
        assert_eq!(
            normalize_docker_reference("index.docker.io/busybox").unwrap(),
            "docker.io/library/busybox:latest"
        );
        assert!(normalize_docker_reference("Busybox:1").is_err());
    }
}
