//! What a bundle keeps beside its files for `apply`, in `.kubeforge/`
//! (a directory, so `bundle --from` and `SHA256SUMS` never see it):
//!
//! - `wire/SHA256.zstd`: each file compressed as it travels to the nodes,
//!   made once here instead of by the first apply of every state
//!   directory. A node decompresses it and checks the sha256 of what it
//!   got, so a damaged copy is refused there, never installed; apply then
//!   compresses the file itself and sends it again.
//! - `sums`: the sha256 of each file with the key that says it is
//!   unchanged since (device, inode, size, change time; see
//!   [`crate::load_cached`]), so a first apply does not read the whole
//!   bundle again. A copied bundle has new keys, and is read.

use std::io::Write as _;
use std::path::{Path, PathBuf};

/// The directory of a bundle that holds what this module writes.
pub const DIR: &str = ".kubeforge";
/// Under [`DIR`]: the files compressed for the wire.
pub const WIRE: &str = "wire";
/// Under [`DIR`]: the sums with their keys ("DEV INO SIZE CTIME SHA256
/// NAME" lines, NAME as in `SHA256SUMS`).
pub const SUMS: &str = "sums";
/// The zstd level of the wire: fast to make, about a third of the size.
pub const ZSTD_LEVEL: i32 = 3;

/// A zstd encoder at [`ZSTD_LEVEL`] on every core, writing into `w`.
fn encoder<W: std::io::Write>(w: W) -> std::io::Result<zstd::stream::Encoder<'static, W>> {
    let mut e = zstd::stream::Encoder::new(w, ZSTD_LEVEL)?;
    let threads = std::thread::available_parallelism().map_or(1, |n| n.get() as u32);
    // Without multithreading support compiled in, one thread does it.
    let _ = e.multithread(threads);
    Ok(e)
}

/// `data` as zstd at [`ZSTD_LEVEL`], on every core.
pub fn zstd(data: &[u8]) -> std::io::Result<Vec<u8>> {
    let mut e = encoder(Vec::new())?;
    e.write_all(data)?;
    e.finish()
}

/// `src` compressed as [`zstd`] does into the new file `dest` (0644,
/// fsynced), read and written in pieces; returns the size written.
pub fn zstd_file(src: &Path, dest: &Path) -> std::io::Result<u64> {
    use std::os::unix::fs::OpenOptionsExt as _;
    let mut input = std::fs::File::open(src)?;
    let out = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o644)
        .open(dest)?;
    let mut e = encoder(out)?;
    std::io::copy(&mut input, &mut e)?;
    let out = e.finish()?;
    out.sync_all()?;
    Ok(out.metadata()?.len())
}

/// Where the bundle in `dir` keeps the file whose sha256 is `sha256`
/// compressed for the wire.
pub fn wire_file(dir: &Path, sha256: &str) -> PathBuf {
    dir.join(DIR).join(WIRE).join(format!("{sha256}.zstd"))
}
