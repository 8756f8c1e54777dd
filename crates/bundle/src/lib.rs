//! Builds a bundle directory: the binaries plus a `SHA256SUMS` manifest
//! (`<sha256>  <name>` per line, the format [`load`] reads). Two sources:
//!
//! - [`download`]: the official release files (the Kubernetes release bucket
//!   layout, `{base}/v{version}/bin/linux/{arch}/{name}` with `{name}.sha256`
//!   next to each; optionally the etcd release tarball with its
//!   `SHA256SUMS`). Every file is checked against its published sha256 and
//!   refused on mismatch.
//! - [`from_local`]: files already on this machine (air-gapped); when their
//!   directory holds a `SHA256SUMS`, each file is checked against it. It
//!   also takes container image archives (OCI image layout or
//!   docker-archive tar files) into the bundle's `images/` directory
//!   (manifest lines `<sha256>  images/<file>.tar`), each refused unless it
//!   names its images.
//!
//! Nothing partial is ever left in the output directory: everything is
//! written into a temporary directory next to it, which is renamed into
//! place only when every file is checked and the manifest is written.
//! This crate never prints; [`download`] reports what it fetches through a
//! callback.

use sha2::{Digest, Sha256};
use std::collections::BTreeMap;
use std::fmt;
use std::io::{Read, Write};
use std::os::unix::fs::{OpenOptionsExt as _, PermissionsExt as _};
use std::path::{Path, PathBuf};
use std::time::Duration;

mod load;
pub mod wire;
pub use load::{load, load_cached, Bundle};

/// The manifest file of a bundle.
pub const MANIFEST: &str = "SHA256SUMS";
/// The official Kubernetes release bucket.
pub const DEFAULT_BASE_URL: &str = "https://dl.k8s.io/release";
/// The etcd GitHub releases.
pub const DEFAULT_ETCD_BASE_URL: &str = "https://github.com/etcd-io/etcd/releases/download";
/// The Kubernetes binaries a downloaded bundle holds.
pub const SERVER_BINARIES: [&str; 6] = [
    "kube-apiserver",
    "kube-controller-manager",
    "kube-scheduler",
    "kubelet",
    "kube-proxy",
    "kubectl",
];
/// The binaries taken from the etcd release tarball.
pub const ETCD_BINARIES: [&str; 2] = ["etcd", "etcdctl"];
/// Taken from the etcd release tarball when it holds them (etcd 3.5 and
/// later): `etcdutl` restores snapshots (`kubeforge etcd restore`).
pub const ETCD_OPTIONAL_BINARIES: [&str; 1] = ["etcdutl"];

#[derive(Debug, thiserror::Error)]
pub enum BundleError {
    /// A file's content does not match the sha256 it should have.
    #[error(
        "{file}: sha256 is {actual}, but {published_in} says {expected}; refusing a corrupted or replaced file\n  help: nothing was written to {out}; fetch the file again or check its source"
    )]
    Mismatch {
        file: String,
        actual: String,
        expected: String,
        published_in: String,
        out: String,
    },
    /// An HTTP request failed.
    #[error("GET {url}: {detail}\n  help: {help}")]
    Http {
        url: String,
        detail: String,
        help: String,
    },
    /// A file could not be read or written.
    #[error("{what} {path}: {error}")]
    Io {
        what: &'static str,
        path: String,
        error: std::io::Error,
    },
    /// Anything else: what is wrong, then what to do.
    #[error("{what}\n  help: {help}")]
    Refused { what: String, help: String },
}

fn io_err(what: &'static str, path: &Path) -> impl FnOnce(std::io::Error) -> BundleError {
    let path = path.display().to_string();
    move |error| BundleError::Io { what, path, error }
}

fn refused(what: impl Into<String>, help: impl Into<String>) -> BundleError {
    BundleError::Refused {
        what: what.into(),
        help: help.into(),
    }
}

/// One file of a finished bundle.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BuiltFile {
    /// Its manifest name: `kubelet`, or `images/pause.tar`.
    pub name: String,
    pub sha256: String,
    pub size: u64,
    /// For an image archive: the names of its images.
    pub image_names: Vec<String>,
}

/// A finished bundle.
#[derive(Debug, Clone)]
pub struct Built {
    pub dir: PathBuf,
    /// Sorted by name; exactly the lines of the manifest.
    pub files: Vec<BuiltFile>,
    /// The size of the files compressed for the wire ([`wire`]).
    pub wire_size: u64,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Arch {
    Amd64,
    Arm64,
}

impl Arch {
    pub fn as_str(self) -> &'static str {
        match self {
            Arch::Amd64 => "amd64",
            Arch::Arm64 => "arm64",
        }
    }
}

impl fmt::Display for Arch {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// What [`download`] fetches.
#[derive(Debug, Clone)]
pub struct Release {
    /// Kubernetes version, `1.31.4` (a leading `v` is accepted).
    pub version: String,
    pub arch: Arch,
    /// The release bucket, [`DEFAULT_BASE_URL`] normally.
    pub base_url: String,
    /// etcd and etcdctl from the etcd release tarball, if wanted.
    pub etcd: Option<EtcdRelease>,
}

#[derive(Debug, Clone)]
pub struct EtcdRelease {
    /// etcd version, `3.5.16` (a leading `v` is accepted).
    pub version: String,
    /// [`DEFAULT_ETCD_BASE_URL`] normally.
    pub base_url: String,
}

/// The HTTP client [`download`] uses.
pub struct Client {
    agent: ureq::Agent,
}

impl Client {
    /// Proxies from the environment (`HTTPS_PROXY`, `HTTP_PROXY`,
    /// `ALL_PROXY`, `NO_PROXY`), redirects followed, TLS verified against
    /// the Mozilla roots.
    pub fn new() -> Self {
        Self::build(ureq::Proxy::try_from_env())
    }

    /// Never uses a proxy, whatever the environment says.
    pub fn without_proxy() -> Self {
        Self::build(None)
    }

    fn build(proxy: Option<ureq::Proxy>) -> Self {
        let config = ureq::Agent::config_builder()
            .proxy(proxy)
            .timeout_connect(Some(Duration::from_secs(30)))
            .timeout_recv_response(Some(Duration::from_secs(60)))
            .user_agent(concat!("kubeforge/", env!("CARGO_PKG_VERSION")))
            .build();
        Client {
            agent: config.into(),
        }
    }

    fn get(&self, url: &str) -> Result<ureq::Body, BundleError> {
        match self.agent.get(url).call() {
            Ok(resp) => Ok(resp.into_body()),
            Err(ureq::Error::StatusCode(code)) => Err(BundleError::Http {
                url: url.to_string(),
                detail: format!("HTTP {code}"),
                help: "check --version / --etcd-version, --arch and the base URL: the release file must exist at this address".into(),
            }),
            Err(e) => Err(BundleError::Http {
                url: url.to_string(),
                detail: e.to_string(),
                help: "check the network, HTTPS_PROXY / NO_PROXY and the base URL".into(),
            }),
        }
    }

    fn get_text(&self, url: &str) -> Result<String, BundleError> {
        let mut body = self.get(url)?;
        body.with_config()
            .limit(1 << 20)
            .read_to_string()
            .map_err(|e| BundleError::Http {
                url: url.to_string(),
                detail: format!("reading the response: {e}"),
                help: "check the network and try again".into(),
            })
    }

    /// Streams `url` into `dest` (created with `mode`), hashing on the way.
    fn get_to_file(&self, url: &str, dest: &Path, mode: u32) -> Result<Hashed, BundleError> {
        let body = self.get(url)?;
        let mut reader = body.into_reader();
        write_hashing(&mut reader, dest, mode).map_err(|e| match e {
            CopyError::Read(e) => BundleError::Http {
                url: url.to_string(),
                detail: format!("reading the response: {e}"),
                help: "check the network and try again".into(),
            },
            CopyError::Write(e) => io_err("writing", dest)(e),
        })
    }
}

impl Default for Client {
    fn default() -> Self {
        Self::new()
    }
}

struct Hashed {
    sha256: String,
    size: u64,
}

enum CopyError {
    Read(std::io::Error),
    Write(std::io::Error),
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// Copies `reader` into a new file `dest` (fsynced), returning its sha256.
fn write_hashing(reader: &mut dyn Read, dest: &Path, mode: u32) -> Result<Hashed, CopyError> {
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(mode)
        .open(dest)
        .map_err(CopyError::Write)?;
    let mut h = Sha256::new();
    let mut buf = vec![0u8; 1 << 16];
    let mut size = 0u64;
    loop {
        let n = match reader.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(CopyError::Read(e)),
        };
        h.update(&buf[..n]);
        f.write_all(&buf[..n]).map_err(CopyError::Write)?;
        size += n as u64;
    }
    f.sync_all().map_err(CopyError::Write)?;
    Ok(Hashed {
        sha256: hex(&h.finalize()),
        size,
    })
}

/// Writes `data` into a new file `dest` (mode 0644, fsynced).
fn write_new(data: &[u8], dest: &Path) -> Result<(), BundleError> {
    write_hashing(&mut &data[..], dest, 0o644)
        .map(|_| ())
        .map_err(|e| match e {
            CopyError::Read(e) | CopyError::Write(e) => io_err("writing", dest)(e),
        })
}

fn is_sha256(s: &str) -> bool {
    s.len() == 64 && s.bytes().all(|b| b.is_ascii_hexdigit())
}

/// A file name the manifest can hold.
fn check_name(name: &str, origin: &Path) -> Result<(), BundleError> {
    let bad = name.is_empty()
        || name == MANIFEST
        || name.contains('/')
        || name.starts_with('*')
        || name.trim() != name
        || name.chars().any(char::is_control);
    if bad {
        return Err(refused(
            format!(
                "{}: `{name}` cannot be a file of a bundle",
                origin.display()
            ),
            "rename the file (no slashes, control characters or surrounding spaces; not SHA256SUMS)",
        ));
    }
    Ok(())
}

/// The lines of a `sha256sum` manifest: (line number, name, sha256 in
/// lower case), comments and empty lines left out.
pub(crate) fn manifest_lines(
    text: &str,
    path: &Path,
) -> Result<Vec<(usize, String, String)>, BundleError> {
    let mut out = Vec::new();
    for (i, line) in text.lines().enumerate() {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let parsed = line
            .split_once(char::is_whitespace)
            .map(|(sha, name)| (sha, name.trim().trim_start_matches('*')))
            .filter(|(sha, name)| is_sha256(sha) && !name.is_empty());
        let Some((sha, name)) = parsed else {
            return Err(refused(
                format!("{}:{}: expected `<sha256>  <name>`", path.display(), i + 1),
                "write it with `sha256sum FILES > SHA256SUMS`",
            ));
        };
        out.push((i + 1, name.to_string(), sha.to_ascii_lowercase()));
    }
    Ok(out)
}

/// Parses a `sha256sum` manifest into name -> sha256.
fn parse_manifest(text: &str, path: &Path) -> Result<BTreeMap<String, String>, BundleError> {
    Ok(manifest_lines(text, path)?
        .into_iter()
        .map(|(_, name, sha)| (name, sha))
        .collect())
}

/// The sha256 of a file, read in chunks.
pub(crate) fn sha256_file(path: &Path) -> std::io::Result<String> {
    let mut f = std::fs::File::open(path)?;
    let mut h = Sha256::new();
    let mut buf = vec![0u8; 1 << 20];
    loop {
        let n = f.read(&mut buf)?;
        if n == 0 {
            break;
        }
        h.update(&buf[..n]);
    }
    Ok(hex(&h.finalize()))
}

/// The temporary directory a bundle is built in, next to the output.
struct Staging {
    tmp: tempfile::TempDir,
    out: PathBuf,
    files: BTreeMap<String, Hashed>,
    /// Manifest name of an image archive -> the names of its images.
    image_names: BTreeMap<String, Vec<String>>,
}

impl Staging {
    fn new(out: &Path) -> Result<Self, BundleError> {
        match std::fs::symlink_metadata(out) {
            Ok(m) if m.is_dir() => {
                let mut entries = std::fs::read_dir(out).map_err(io_err("reading", out))?;
                if entries.next().is_some() {
                    return Err(refused(
                        format!("{} already exists and is not empty", out.display()),
                        "choose another --out directory, or remove this one",
                    ));
                }
            }
            Ok(_) => {
                return Err(refused(
                    format!("{} already exists and is not a directory", out.display()),
                    "choose another --out directory",
                ))
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(io_err("reading", out)(e)),
        }
        let name = out.file_name().ok_or_else(|| {
            refused(
                format!("{} does not name a directory", out.display()),
                "give --out a directory name, such as ./bundle",
            )
        })?;
        let parent = match out.parent() {
            Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
            _ => PathBuf::from("."),
        };
        std::fs::create_dir_all(&parent).map_err(io_err("creating", &parent))?;
        let tmp = tempfile::Builder::new()
            .prefix(&format!(".{}.partial-", name.to_string_lossy()))
            .tempdir_in(&parent)
            .map_err(io_err("creating a temporary directory in", &parent))?;
        Ok(Staging {
            tmp,
            out: out.to_path_buf(),
            files: BTreeMap::new(),
            image_names: BTreeMap::new(),
        })
    }

    fn path(&self, name: &str) -> PathBuf {
        self.tmp.path().join(name)
    }

    fn reserve(&self, name: &str, origin: &Path) -> Result<(), BundleError> {
        check_name(name, origin)?;
        if self.files.contains_key(name) {
            return Err(refused(
                format!(
                    "two files are named `{name}` (the second: {})",
                    origin.display()
                ),
                "a bundle holds each name once; pass only one of them",
            ));
        }
        Ok(())
    }

    fn check(
        &self,
        name: &str,
        got: &Hashed,
        expected: &str,
        published_in: &str,
    ) -> Result<(), BundleError> {
        if got.sha256 != expected.to_ascii_lowercase() {
            return Err(BundleError::Mismatch {
                file: name.to_string(),
                actual: got.sha256.clone(),
                expected: expected.to_string(),
                published_in: published_in.to_string(),
                out: self.out.display().to_string(),
            });
        }
        Ok(())
    }

    /// Writes the manifest, then moves the directory into place.
    fn finish(mut self) -> Result<Built, BundleError> {
        let files: Vec<BuiltFile> = std::mem::take(&mut self.files)
            .into_iter()
            .map(|(name, h)| BuiltFile {
                image_names: self.image_names.remove(&name).unwrap_or_default(),
                name,
                sha256: h.sha256,
                size: h.size,
            })
            .collect();
        let wire_size = self.write_for_apply(&files)?;
        let text: String = files
            .iter()
            .map(|f| format!("{}  {}\n", f.sha256, f.name))
            .collect();
        let manifest = self.path(MANIFEST);
        write_new(text.as_bytes(), &manifest)?;
        let dir = self.tmp.path().to_path_buf();
        std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o755))
            .map_err(io_err("setting the mode of", &dir))?;
        // Replaces an empty output directory, fails on anything else.
        std::fs::rename(&dir, &self.out).map_err(|e| {
            refused(
                format!("moving {} to {}: {e}", dir.display(), self.out.display()),
                "make sure the --out directory does not exist (or is empty) and nothing else writes to it",
            )
        })?;
        let _ = self.tmp.keep();
        if let Some(parent) = self.out.parent().filter(|p| !p.as_os_str().is_empty()) {
            if let Ok(d) = std::fs::File::open(parent) {
                let _ = d.sync_all();
            }
        }
        Ok(Built {
            dir: self.out,
            files,
            wire_size,
        })
    }

    /// Writes what apply reads beside the files ([`wire`]): each file
    /// compressed for the wire, then the sums with their keys. Returns the
    /// size of the compressed files.
    fn write_for_apply(&self, files: &[BuiltFile]) -> Result<u64, BundleError> {
        let wire_dir = self.path(wire::DIR).join(wire::WIRE);
        std::fs::create_dir_all(&wire_dir).map_err(io_err("creating", &wire_dir))?;
        let mut wire_size = 0;
        let mut sums = String::new();
        for f in files {
            let path = self.path(&f.name);
            let dest = wire::wire_file(self.tmp.path(), &f.sha256);
            if !dest.exists() {
                wire_size += wire::zstd_file(&path, &dest).map_err(io_err("compressing", &path))?;
            }
            if let Some(k) = load::key(&path) {
                sums.push_str(&format!("{k} {} {}\n", f.sha256, f.name));
            }
        }
        let sums_file = self.path(wire::DIR).join(wire::SUMS);
        write_new(sums.as_bytes(), &sums_file)?;
        Ok(wire_size)
    }
}

fn clean_version(v: &str, flag: &str) -> Result<String, BundleError> {
    let v = v.strip_prefix('v').unwrap_or(v);
    let ok = v.starts_with(|c: char| c.is_ascii_digit())
        && v.split('.').count() >= 3
        && v.chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '.' || c == '-' || c == '+');
    if !ok {
        return Err(refused(
            format!("`{v}` is not a release version"),
            format!("pass {flag} MAJOR.MINOR.PATCH, such as 1.31.4"),
        ));
    }
    Ok(v.to_string())
}

fn clean_base(url: &str, flag: &str) -> Result<String, BundleError> {
    let url = url.trim_end_matches('/');
    if !(url.starts_with("https://") || url.starts_with("http://")) {
        return Err(refused(
            format!("`{url}` is not an http(s) URL"),
            format!("pass {flag} https://HOST/PATH"),
        ));
    }
    Ok(url.to_string())
}

/// The first token of a published `.sha256` file.
fn published_sha(text: &str, url: &str) -> Result<String, BundleError> {
    match text.split_whitespace().next() {
        Some(s) if is_sha256(s) => Ok(s.to_ascii_lowercase()),
        _ => Err(BundleError::Http {
            url: url.to_string(),
            detail: "the response is not a sha256".into(),
            help: "check the base URL: it must serve the release bucket layout".into(),
        }),
    }
}

/// Downloads the release binaries into a new bundle directory `out` (which
/// must not exist, or be empty). `on_fetch` is called with each URL before
/// it is fetched.
pub fn download(
    release: &Release,
    client: &Client,
    out: &Path,
    on_fetch: &mut dyn FnMut(&str),
) -> Result<Built, BundleError> {
    let version = clean_version(&release.version, "--version")?;
    let base = clean_base(&release.base_url, "--base-url")?;
    let etcd = match &release.etcd {
        Some(e) => Some((
            clean_version(&e.version, "--etcd-version")?,
            clean_base(&e.base_url, "--etcd-base-url")?,
        )),
        None => None,
    };
    let arch = release.arch;
    let mut staging = Staging::new(out)?;
    for name in SERVER_BINARIES {
        let url = format!("{base}/v{version}/bin/linux/{arch}/{name}");
        let sha_url = format!("{url}.sha256");
        on_fetch(&sha_url);
        let expected = published_sha(&client.get_text(&sha_url)?, &sha_url)?;
        on_fetch(&url);
        let got = client.get_to_file(&url, &staging.path(name), 0o755)?;
        staging.check(name, &got, &expected, &sha_url)?;
        staging.files.insert(name.to_string(), got);
    }
    if let Some((ver, base)) = etcd {
        fetch_etcd(&mut staging, client, &ver, &base, arch, on_fetch)?;
    }
    staging.finish()
}

fn fetch_etcd(
    staging: &mut Staging,
    client: &Client,
    ver: &str,
    base: &str,
    arch: Arch,
    on_fetch: &mut dyn FnMut(&str),
) -> Result<(), BundleError> {
    let top = format!("etcd-v{ver}-linux-{arch}");
    let tarball = format!("{top}.tar.gz");
    let sums_url = format!("{base}/v{ver}/SHA256SUMS");
    on_fetch(&sums_url);
    let sums = parse_manifest(&client.get_text(&sums_url)?, Path::new(&sums_url))?;
    let Some(expected) = sums.get(&tarball) else {
        return Err(BundleError::Http {
            url: sums_url,
            detail: format!("{tarball} is not listed"),
            help: "check --etcd-version and --arch".into(),
        });
    };
    let url = format!("{base}/v{ver}/{tarball}");
    on_fetch(&url);
    let tar_path = staging.path(".etcd.tar.gz");
    let got = client.get_to_file(&url, &tar_path, 0o600)?;
    staging.check(&tarball, &got, expected, &sums_url)?;
    let file = std::fs::File::open(&tar_path).map_err(io_err("opening", &tar_path))?;
    let mut archive = tar::Archive::new(flate2::read::GzDecoder::new(file));
    let bad = |e: std::io::Error| {
        refused(
            format!("{url}: reading the tarball: {e}"),
            "the tarball matched its published sha256 but is not a gzipped tar; report it",
        )
    };
    let mut found = BTreeMap::new();
    for entry in archive.entries().map_err(bad)? {
        let mut entry = entry.map_err(bad)?;
        if entry.header().entry_type() != tar::EntryType::Regular {
            continue;
        }
        let path = entry.path().map_err(bad)?.into_owned();
        let path = path.strip_prefix(".").unwrap_or(&path);
        let Some(name) = ETCD_BINARIES
            .into_iter()
            .chain(ETCD_OPTIONAL_BINARIES)
            .find(|b| path == Path::new(&top).join(b))
        else {
            continue;
        };
        let dest = staging.path(name);
        let hashed = write_hashing(&mut entry, &dest, 0o755).map_err(|e| match e {
            CopyError::Read(e) => bad(e),
            CopyError::Write(e) => io_err("writing", &dest)(e),
        })?;
        found.insert(name.to_string(), hashed);
    }
    std::fs::remove_file(&tar_path).map_err(io_err("removing", &tar_path))?;
    if let Some(missing) = ETCD_BINARIES.into_iter().find(|b| !found.contains_key(*b)) {
        return Err(refused(
            format!("{url} holds no {top}/{missing}"),
            "check --etcd-version: kubeforge expects the etcd release tarball layout",
        ));
    }
    for (name, h) in found {
        staging.reserve(&name, Path::new(&url))?;
        staging.files.insert(name, h);
    }
    Ok(())
}

/// Files already on this machine.
#[derive(Debug, Clone, Default)]
pub struct Local {
    /// Every regular file of this directory (except its `SHA256SUMS`), and
    /// every regular file of its `images/` sub-directory as an image
    /// archive.
    pub dir: Option<PathBuf>,
    /// These files.
    pub files: Vec<PathBuf>,
    /// These container image archives (OCI image layout or docker-archive
    /// tar files, named `NAME.tar`), put into the bundle's `images/`.
    pub images: Vec<PathBuf>,
}

/// A file to copy into the bundle.
struct Source {
    path: PathBuf,
    /// Its manifest name: `kubelet` or `images/pause.tar`.
    name: String,
    /// The directory whose `SHA256SUMS` may list it, and the name it has
    /// there.
    listed_in: PathBuf,
    listed_as: String,
    image: bool,
}

fn parent_dir(path: &Path) -> PathBuf {
    match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
        _ => PathBuf::from("."),
    }
}

fn file_name(path: &Path) -> String {
    path.file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default()
}

/// The regular files of `dir` (following symlinks), sorted, without its
/// `SHA256SUMS`.
fn regular_files(dir: &Path) -> Result<Vec<PathBuf>, BundleError> {
    let mut found = Vec::new();
    for entry in std::fs::read_dir(dir).map_err(io_err("reading", dir))? {
        let path = entry.map_err(io_err("reading", dir))?.path();
        let meta = std::fs::metadata(&path).map_err(io_err("reading", &path))?;
        if meta.is_file() && path.file_name() != Some(MANIFEST.as_ref()) {
            found.push(path);
        }
    }
    found.sort();
    Ok(found)
}

fn image_source(path: PathBuf, listed_in: PathBuf, listed_as: String) -> Source {
    let file = file_name(&path);
    Source {
        name: format!("{}/{file}", kubeforge_images::BUNDLE_DIR),
        path,
        listed_in,
        listed_as,
        image: true,
    }
}

/// Copies local files into a new bundle directory `out` (which must not
/// exist, or be empty). A file whose directory holds a `SHA256SUMS` must be
/// listed there and match it (an image archive of `--from DIR`'s `images/`
/// as `images/<file>` in `DIR/SHA256SUMS`, when that exists). Every image
/// archive must name its images.
pub fn from_local(local: &Local, out: &Path) -> Result<Built, BundleError> {
    let mut sources: Vec<Source> = Vec::new();
    if let Some(dir) = &local.dir {
        if !dir.is_dir() {
            return Err(refused(
                format!("{} is not a directory", dir.display()),
                "pass --from a directory holding the binaries (and, ideally, their SHA256SUMS)",
            ));
        }
        for path in regular_files(dir)? {
            let name = file_name(&path);
            sources.push(Source {
                listed_in: dir.clone(),
                listed_as: name.clone(),
                name,
                path,
                image: false,
            });
        }
        let images = dir.join(kubeforge_images::BUNDLE_DIR);
        if images.is_dir() {
            let (listed_in, prefix) = if dir.join(MANIFEST).exists() {
                (dir.clone(), format!("{}/", kubeforge_images::BUNDLE_DIR))
            } else {
                (images.clone(), String::new())
            };
            for path in regular_files(&images)? {
                let listed_as = format!("{prefix}{}", file_name(&path));
                sources.push(image_source(path, listed_in.clone(), listed_as));
            }
        }
    }
    for (list, image) in [(&local.files, false), (&local.images, true)] {
        for f in list {
            let meta = std::fs::metadata(f).map_err(io_err("reading", f))?;
            if !meta.is_file() {
                return Err(refused(
                    format!("{} is not a regular file", f.display()),
                    "pass files with --file or --image, or a directory with --from",
                ));
            }
            let name = file_name(f);
            let source = if image {
                image_source(f.clone(), parent_dir(f), name)
            } else {
                Source {
                    path: f.clone(),
                    listed_in: parent_dir(f),
                    listed_as: name.clone(),
                    name,
                    image: false,
                }
            };
            sources.push(source);
        }
    }
    if sources.is_empty() {
        return Err(refused(
            "no files to put in the bundle",
            "pass a directory holding the binaries with --from, files with --file, or image archives with --image",
        ));
    }
    let mut manifests: BTreeMap<PathBuf, Option<BTreeMap<String, String>>> = BTreeMap::new();
    let mut staging = Staging::new(out)?;
    for src in sources {
        if src.image {
            kubeforge_images::check_file_name(&file_name(&src.path)).map_err(|e| {
                refused(
                    format!("{}: {e}", src.path.display()),
                    "rename the archive (image archives are tar files, NAME.tar)",
                )
            })?;
            if staging.files.contains_key(&src.name) {
                return Err(refused(
                    format!(
                        "two image archives are named `{}` (the second: {})",
                        src.name,
                        src.path.display()
                    ),
                    "a bundle holds each name once; rename one of them",
                ));
            }
        } else {
            staging.reserve(&src.name, &src.path)?;
        }
        let manifest_path = src.listed_in.join(MANIFEST);
        if !manifests.contains_key(&src.listed_in) {
            let parsed = match std::fs::read_to_string(&manifest_path) {
                Ok(text) => Some(parse_manifest(&text, &manifest_path)?),
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => None,
                Err(e) => return Err(io_err("reading", &manifest_path)(e)),
            };
            manifests.insert(src.listed_in.clone(), parsed);
        }
        let expected =
            match manifests.get(&src.listed_in) {
                Some(Some(m)) => match m.get(&src.listed_as) {
                    Some(sha) => Some(sha.clone()),
                    None => return Err(refused(
                        format!(
                            "{} is not listed in {}{}",
                            src.path.display(),
                            manifest_path.display(),
                            if src.listed_as.contains('/') {
                                format!(" (as {})", src.listed_as)
                            } else {
                                String::new()
                            }
                        ),
                        "add its sha256 to that SHA256SUMS, or move the file out of the directory",
                    )),
                },
                _ => None,
            };
        let mode = if src.image {
            0o644
        } else {
            (std::fs::metadata(&src.path)
                .map_err(io_err("reading", &src.path))?
                .permissions()
                .mode()
                & 0o777)
                | 0o400
        };
        let dest = staging.path(&src.name);
        if let Some(parent) = dest.parent() {
            if !parent.exists() {
                std::fs::create_dir(parent).map_err(io_err("creating", parent))?;
                std::fs::set_permissions(parent, std::fs::Permissions::from_mode(0o755))
                    .map_err(io_err("setting the mode of", parent))?;
            }
        }
        let mut reader = std::fs::File::open(&src.path).map_err(io_err("opening", &src.path))?;
        let got = write_hashing(&mut reader, &dest, mode).map_err(|e| match e {
            CopyError::Read(e) => io_err("reading", &src.path)(e),
            CopyError::Write(e) => io_err("writing", &dest)(e),
        })?;
        if let Some(expected) = expected {
            staging.check(
                &src.path.display().to_string(),
                &got,
                &expected,
                &manifest_path.display().to_string(),
            )?;
        }
        if src.image {
            // Read from the copy that was just checked.
            let names = kubeforge_images::read_names(&dest).map_err(|e| {
                refused(
                    format!("{}: {}", src.path.display(), e.what),
                    format!("{}; nothing was written to {}", e.help, out.display()),
                )
            })?;
            staging.image_names.insert(src.name.clone(), names.names);
        }
        staging.files.insert(src.name, got);
    }
    staging.finish()
}
