//! A bundle: a local directory of binaries with a `SHA256SUMS` manifest
//! (`<sha256>  <name>` per line, as `sha256sum` writes it). Every file is
//! checked against the manifest when the bundle is loaded; a mismatch is
//! refused.

use crate::ApplyError;
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
            "{e}\n  help: a bundle directory holds the binaries and a SHA256SUMS file (`sha256sum * > SHA256SUMS`)"
        ))
    })?;
    let mut files = BTreeMap::new();
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
        if name.contains('/') || name.is_empty() {
            return Err(err(format!("line {}: `{name}` is not a file name", i + 1)));
        }
        let path = dir.join(name);
        let actual = sha256_file(&path).map_err(|e| err(format!("{}: {e}", path.display())))?;
        if actual != sha.to_ascii_lowercase() {
            return Err(err(format!(
                "{} has sha256 {actual}, the manifest says {sha}; refusing a corrupted or replaced file",
                path.display()
            )));
        }
        files.insert(name.to_string(), (path, actual));
    }
    Ok(Bundle {
        dir: dir.to_path_buf(),
        files,
    })
}
