//! Reading a bundle: a local directory of binaries with a `SHA256SUMS`
//! manifest (`<sha256>  <name>` per line, as `sha256sum` writes it), and
//! optionally container image archives in its `images/` sub-directory
//! (manifest lines `<sha256>  images/<file>.tar`). Every file is checked
//! against the manifest when the bundle is loaded; a mismatch is refused,
//! and so is an image archive that names no image.

use crate::{refused, sha256_file, BundleError, MANIFEST};
use kubeforge_images::ImageArchive;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

/// A loaded, checked bundle.
#[derive(Debug, Clone, Default)]
pub struct Bundle {
    pub dir: PathBuf,
    /// Name -> (path, sha256).
    pub files: BTreeMap<String, (PathBuf, String)>,
    /// The image archives of `images/`, by file name, with the image
    /// names read from each.
    pub images: Vec<ImageArchive>,
}

/// Loads the bundle in `dir`, checking every file it lists.
pub fn load(dir: &Path) -> Result<Bundle, BundleError> {
    load_cached(dir, None)
}

/// The key under which a file's sum is remembered: device, inode, size and
/// change time (which no program can set), so a file changed in any way is
/// read again.
pub(crate) fn key(path: &Path) -> Option<String> {
    use std::os::unix::fs::MetadataExt as _;
    let m = std::fs::metadata(path).ok()?;
    Some(format!(
        "{} {} {} {}.{:09}",
        m.dev(),
        m.ino(),
        m.size(),
        m.ctime(),
        m.ctime_nsec()
    ))
}

/// Sums checked before, from `cache` ("KEY SHA256 PATH" lines).
fn read_cache(cache: &Path) -> BTreeMap<PathBuf, (String, String)> {
    let text = std::fs::read_to_string(cache).unwrap_or_default();
    let mut out = BTreeMap::new();
    for line in text.lines() {
        let f: Vec<&str> = line.splitn(6, ' ').collect();
        if let [dev, ino, size, ctime, sha, path] = f[..] {
            out.insert(
                PathBuf::from(path),
                (format!("{dev} {ino} {size} {ctime}"), sha.to_string()),
            );
        }
    }
    out
}

/// Loads the bundle in `dir` like [`load`]; with `cache` (a file of the
/// state directory), a file checked before and unchanged since is not read
/// again, and the cache is rewritten with every file checked now. The
/// bundle's own sums ([`crate::wire`]) count as checked before.
pub fn load_cached(dir: &Path, cache: Option<&Path>) -> Result<Bundle, BundleError> {
    let known = cache.map(read_cache).unwrap_or_default();
    // The sums `kubeforge bundle` wrote, by name: a first run with a
    // bundle built on this machine reads none of its files.
    let built: BTreeMap<PathBuf, (String, String)> =
        read_cache(&dir.join(crate::wire::DIR).join(crate::wire::SUMS))
            .into_iter()
            .map(|(name, v)| (dir.join(name), v))
            .collect();
    let mut checked: Vec<(String, String, PathBuf)> = Vec::new();
    let sum = |path: &Path| -> std::io::Result<String> {
        if let Some(k) = key(path) {
            for (known_key, sha) in [known.get(path), built.get(path)].into_iter().flatten() {
                if &k == known_key {
                    return Ok(sha.clone());
                }
            }
        }
        sha256_file(path)
    };
    let manifest = dir.join(MANIFEST);
    let err = |detail: String| {
        refused(
            format!("bundle {}: {detail}", manifest.display()),
            "a bundle directory holds the binaries and a SHA256SUMS file (`sha256sum * images/*.tar > SHA256SUMS`); `kubeforge bundle` builds one",
        )
    };
    let text = std::fs::read_to_string(&manifest).map_err(|e| err(e.to_string()))?;
    let mut files = BTreeMap::new();
    let mut images = Vec::new();
    for (line, name, sha) in crate::manifest_lines(&text, &manifest)? {
        let i = line - 1;
        let name = name.as_str();
        let image = match name.split_once('/') {
            Some((kubeforge_images::BUNDLE_DIR, file)) => {
                kubeforge_images::check_file_name(file)
                    .map_err(|e| err(format!("line {}: {e}", i + 1)))?;
                Some(file)
            }
            Some(_) => {
                return Err(err(format!(
                    "line {}: `{name}` is in a sub-directory; only {}/ (image archives) may be",
                    i + 1,
                    kubeforge_images::BUNDLE_DIR
                )))
            }
            None if name.is_empty() => {
                return Err(err(format!("line {}: `{name}` is not a file name", i + 1)))
            }
            None => None,
        };
        let path = dir.join(name);
        let actual = sum(&path).map_err(|e| err(format!("{}: {e}", path.display())))?;
        if actual != sha {
            return Err(err(format!(
                "{} has sha256 {actual}, the manifest says {sha}; refusing a corrupted or replaced file",
                path.display()
            )));
        }
        if let Some(k) = key(&path) {
            checked.push((k, actual.clone(), path.clone()));
        }
        match image {
            Some(file) => {
                let read = kubeforge_images::read_names(&path).map_err(|e| err(e.to_string()))?;
                images.push(ImageArchive {
                    file: file.to_string(),
                    path,
                    sha256: actual,
                    names: read.names,
                });
            }
            None => {
                files.insert(name.to_string(), (path, actual));
            }
        }
    }
    images.sort_by(|a, b| a.file.cmp(&b.file));
    images.dedup_by(|a, b| a.file == b.file);
    if let Some(cache) = cache {
        write_cache(cache, &checked);
    }
    Ok(Bundle {
        dir: dir.to_path_buf(),
        files,
        images,
    })
}

/// Rewrites the cache (best effort: a cache that cannot be written only
/// means the files are read again next time).
fn write_cache(cache: &Path, checked: &[(String, String, PathBuf)]) {
    use std::io::Write as _;
    let Some(dir) = cache.parent() else { return };
    let mut text = String::new();
    for (k, sha, path) in checked {
        text.push_str(&format!("{k} {sha} {}\n", path.display()));
    }
    let write = || -> std::io::Result<()> {
        std::fs::create_dir_all(dir)?;
        let mut t = tempfile::NamedTempFile::new_in(dir)?;
        t.write_all(text.as_bytes())?;
        t.persist(cache).map_err(|e| e.error)?;
        Ok(())
    };
    let _ = write();
}
