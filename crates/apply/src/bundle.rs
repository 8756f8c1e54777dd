//! A bundle: a local directory of binaries with a `SHA256SUMS` manifest
//! (`<sha256>  <name>` per line, as `sha256sum` writes it), and optionally
//! container image archives in its `images/` sub-directory (manifest lines
//! `<sha256>  images/<file>.tar`). Every file is checked against the
//! manifest when the bundle is loaded; a mismatch is refused, and so is an
//! image archive that names no image.

use crate::ApplyError;
use kubeforge_render::ImageArchive;
use sha2::{Digest, Sha256};
use std::collections::BTreeMap;
use std::io::Read;
use std::path::{Path, PathBuf};

pub const MANIFEST: &str = "SHA256SUMS";

#[derive(Debug, Clone, Default)]
pub struct Bundle {
    pub dir: PathBuf,
    /// Name -> (path, sha256).
    pub files: BTreeMap<String, (PathBuf, String)>,
    /// The image archives of `images/`, by file name, with the image
    /// names read from each.
    pub images: Vec<ImageArchive>,
}

fn sha256_file(path: &Path) -> std::io::Result<String> {
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
    Ok(h.finalize().iter().map(|b| format!("{b:02x}")).collect())
}

pub fn load_bundle(dir: &Path) -> Result<Bundle, ApplyError> {
    let manifest = dir.join(MANIFEST);
    let err = |detail: String| ApplyError::Bundle {
        path: manifest.display().to_string(),
        detail,
    };
    let text = std::fs::read_to_string(&manifest).map_err(|e| {
        err(format!(
            "{e}\n  help: a bundle directory holds the binaries and a SHA256SUMS file (`sha256sum * images/*.tar > SHA256SUMS`)"
        ))
    })?;
    let mut files = BTreeMap::new();
    let mut images = Vec::new();
    for (i, line) in text.lines().enumerate() {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let Some((sha, name)) = line.split_once(char::is_whitespace) else {
            return Err(err(format!("line {}: expected `<sha256>  <name>`", i + 1)));
        };
        let name = name.trim().trim_start_matches('*');
        if sha.len() != 64 || !sha.bytes().all(|b| b.is_ascii_hexdigit()) {
            return Err(err(format!("line {}: `{sha}` is not a sha256", i + 1)));
        }
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
        let actual = sha256_file(&path).map_err(|e| err(format!("{}: {e}", path.display())))?;
        if actual != sha.to_ascii_lowercase() {
            return Err(err(format!(
                "{} has sha256 {actual}, the manifest says {sha}; refusing a corrupted or replaced file",
                path.display()
            )));
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
    Ok(Bundle {
        dir: dir.to_path_buf(),
        files,
        images,
    })
}
