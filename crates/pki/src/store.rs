//! The PKI part of the state directory: `<state>/pki/`. Writes are atomic
//! (temp file in the same directory, fsync, rename) and private keys are
//! created with mode 0600.

use crate::{KeyCert, PkiError};
use std::fs;
use std::io::Write as _;
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

pub(crate) struct Store {
    dir: PathBuf,
}

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> PkiError + '_ {
    move |source| PkiError::Io {
        path: path.to_path_buf(),
        source,
    }
}

impl Store {
    pub fn new(state_dir: &Path) -> Self {
        Store {
            dir: state_dir.join("pki"),
        }
    }

    pub fn path(&self, rel: &str) -> PathBuf {
        self.dir.join(rel)
    }

    pub fn read_optional(&self, rel: &str) -> Result<Option<String>, PkiError> {
        let path = self.path(rel);
        match fs::read_to_string(&path) {
            Ok(s) => Ok(Some(s)),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(io(&path)(e)),
        }
    }

    /// Reads `<stem>.crt` and `<stem>.key`; `None` unless both exist.
    pub fn read_pair(&self, stem: &str) -> Result<Option<(String, String)>, PkiError> {
        self.read_pair_named(&format!("{stem}.crt"), &format!("{stem}.key"))
    }

    pub fn read_pair_named(
        &self,
        public: &str,
        private: &str,
    ) -> Result<Option<(String, String)>, PkiError> {
        match (self.read_optional(public)?, self.read_optional(private)?) {
            (Some(c), Some(k)) => Ok(Some((c, k))),
            _ => Ok(None),
        }
    }
}

/// One pending change to the state directory.
#[derive(Debug, Clone)]
pub(crate) enum Write {
    File {
        rel: String,
        content: String,
        secret: bool,
    },
    /// Copies `<stem>.crt` and `<stem>.key` aside before they are replaced.
    Backup { stem: String },
}

impl Write {
    pub fn pair(stem: &str, kc: &KeyCert) -> Vec<Write> {
        vec![
            Write::secret(&format!("{stem}.key"), &kc.key.0),
            Write::public(&format!("{stem}.crt"), &kc.cert_pem),
        ]
    }

    pub fn public(rel: &str, content: &str) -> Write {
        Write::File {
            rel: rel.to_string(),
            content: content.to_string(),
            secret: false,
        }
    }

    pub fn secret(rel: &str, content: &str) -> Write {
        Write::File {
            rel: rel.to_string(),
            content: content.to_string(),
            secret: true,
        }
    }

    pub fn backup(stem: &str) -> Vec<Write> {
        vec![Write::Backup {
            stem: stem.to_string(),
        }]
    }
}

/// Writes `content` to `path` atomically with `mode`, creating parents.
pub fn write_atomic(path: &Path, content: &[u8], mode: u32) -> Result<(), PkiError> {
    let dir = path.parent().unwrap_or(Path::new("."));
    fs::create_dir_all(dir).map_err(io(dir))?;
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let tmp = dir.join(format!(".{name}.tmp-{}", std::process::id()));
    let result = (|| {
        let mut f = fs::OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(mode)
            .open(&tmp)?;
        f.set_permissions(fs::Permissions::from_mode(mode))?;
        f.write_all(content)?;
        f.sync_all()?;
        fs::rename(&tmp, path)
    })();
    if result.is_err() {
        let _ = fs::remove_file(&tmp);
    }
    result.map_err(io(path))
}

pub(crate) fn persist(state_dir: &Path, writes: &[Vec<Write>]) -> Result<Vec<PathBuf>, PkiError> {
    let store = Store::new(state_dir);
    if !writes.is_empty() {
        // The PKI directory holds CA keys: only its owner may enter it.
        fs::create_dir_all(&store.dir).map_err(io(&store.dir))?;
        fs::set_permissions(&store.dir, fs::Permissions::from_mode(0o700))
            .map_err(io(&store.dir))?;
    }
    let stamp = time::OffsetDateTime::now_utc().unix_timestamp();
    let mut written = Vec::new();
    for w in writes.iter().flatten() {
        match w {
            Write::File {
                rel,
                content,
                secret,
            } => {
                let path = store.path(rel);
                write_atomic(
                    &path,
                    content.as_bytes(),
                    if *secret { 0o600 } else { 0o644 },
                )?;
                written.push(path);
            }
            Write::Backup { stem } => {
                for ext in ["crt", "key"] {
                    let from = store.path(&format!("{stem}.{ext}"));
                    let to = store.path(&format!("{stem}.{ext}.{stamp}.bak"));
                    if from.exists() {
                        fs::copy(&from, &to).map_err(io(&to))?;
                        fs::set_permissions(&to, fs::Permissions::from_mode(0o600))
                            .map_err(io(&to))?;
                        written.push(to);
                    }
                }
            }
        }
    }
    Ok(written)
}
