//! The PKI part of the state directory: `<state>/pki/`. Writes are atomic
//! (a temporary file in the same directory under an unpredictable name,
//! created exclusively with mode 0600, then flushed and renamed), so no
//! file planted in the directory, a symlink included, ever receives a
//! key, and private keys are never readable by others.

use crate::{KeyCert, PkiError};
use std::fmt;
use std::fs;
use std::io::Write as _;
use std::os::unix::fs::PermissionsExt;
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
#[derive(Clone)]
pub(crate) enum Write {
    File {
        rel: String,
        content: String,
        secret: bool,
    },
    /// Copies `<stem>.crt` and `<stem>.key` aside before they are replaced.
    Backup { stem: String },
    /// Removes a file (after every other write).
    Remove { rel: String },
}

/// `Reconciled` derives `Debug`: the content of a secret file never shows.
impl fmt::Debug for Write {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Write::File {
                rel,
                content,
                secret,
            } => {
                let content: &dyn fmt::Debug = if *secret { &"<redacted>" } else { content };
                f.debug_struct("File")
                    .field("rel", rel)
                    .field("content", content)
                    .field("secret", secret)
                    .finish()
            }
            Write::Backup { stem } => f.debug_struct("Backup").field("stem", stem).finish(),
            Write::Remove { rel } => f.debug_struct("Remove").field("rel", rel).finish(),
        }
    }
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

    pub fn remove(rel: &str) -> Write {
        Write::Remove {
            rel: rel.to_string(),
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
    write_files(&[(path.to_path_buf(), content, mode)])
}

/// A new temporary file next to `path`, under an unpredictable name
/// (`.NAME.XXXXXXXXXXXX.tmp`), created with O_CREAT|O_EXCL|O_CLOEXEC and
/// mode 0600: whatever already sits at a name it picks, a planted symlink
/// among them, makes it pick another name instead of being followed, and
/// no one else can read the content before it gets its final mode.
fn temp_file(path: &Path, dir: &Path) -> std::io::Result<tempfile::NamedTempFile> {
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    tempfile::Builder::new()
        .prefix(&format!(".{name}."))
        .suffix(".tmp")
        .rand_bytes(12)
        .permissions(fs::Permissions::from_mode(0o600))
        .tempfile_in(dir)
}

/// Flushes the file system holding `dir` to disk.
fn sync_fs(dir: &Path) -> Result<(), PkiError> {
    let f = fs::File::open(dir).map_err(io(dir))?;
    rustix::fs::syncfs(&f).map_err(|e| PkiError::Io {
        path: dir.to_path_buf(),
        source: e.into(),
    })
}

/// Writes many files atomically, each with its mode, creating parents:
/// every file is written to a fresh temporary file beside it (see
/// [`temp_file`]; its mode is set on the open file, never through a
/// path), the file system is flushed once, then each is renamed over its
/// final name and the renames are flushed. A crash leaves every file
/// either old or new; on an error no temporary file is left behind.
pub fn write_files(items: &[(PathBuf, &[u8], u32)]) -> Result<(), PkiError> {
    let Some((first, _, _)) = items.first() else {
        return Ok(());
    };
    // Removed when dropped, so every early return cleans up.
    let mut temps: Vec<tempfile::NamedTempFile> = Vec::with_capacity(items.len());
    for (path, content, mode) in items {
        let dir = path.parent().unwrap_or(Path::new("."));
        fs::create_dir_all(dir).map_err(io(dir))?;
        let mut tmp = temp_file(path, dir).map_err(io(path))?;
        tmp.as_file_mut()
            .write_all(content)
            .and_then(|()| {
                tmp.as_file()
                    .set_permissions(fs::Permissions::from_mode(*mode))
            })
            .map_err(io(path))?;
        temps.push(tmp);
    }
    let root = first.parent().unwrap_or(Path::new("."));
    sync_fs(root)?;
    for ((path, _, _), tmp) in items.iter().zip(temps) {
        tmp.persist(path).map_err(|e| io(path)(e.error))?;
    }
    sync_fs(root)
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
    // Backups first, so that a replaced CA is never lost.
    for w in writes.iter().flatten() {
        if let Write::Backup { stem } = w {
            for ext in ["crt", "key"] {
                let from = store.path(&format!("{stem}.{ext}"));
                let to = store.path(&format!("{stem}.{ext}.{stamp}.bak"));
                if from.exists() {
                    let content = fs::read(&from).map_err(io(&from))?;
                    write_atomic(&to, &content, 0o600)?;
                    written.push(to);
                }
            }
        }
    }
    let files: Vec<(PathBuf, &[u8], u32)> = writes
        .iter()
        .flatten()
        .filter_map(|w| match w {
            Write::File {
                rel,
                content,
                secret,
            } => Some((
                store.path(rel),
                content.as_bytes(),
                if *secret { 0o600 } else { 0o644 },
            )),
            Write::Backup { .. } | Write::Remove { .. } => None,
        })
        .collect();
    write_files(&files)?;
    written.extend(files.into_iter().map(|(p, _, _)| p));
    for w in writes.iter().flatten() {
        if let Write::Remove { rel } = w {
            let path = store.path(rel);
            match fs::remove_file(&path) {
                Ok(()) => written.push(path),
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                Err(e) => return Err(io(&path)(e)),
            }
        }
    }
    Ok(written)
}
