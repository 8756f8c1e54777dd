//! Writing the state directory: no file planted in it, a symlink at any
//! temporary name included, ever receives what is written.
#![allow(clippy::unwrap_used)]

use kubeforge_pki::{write_atomic, write_files};
use std::os::unix::fs::{symlink, PermissionsExt};
use std::path::{Path, PathBuf};

fn mode(p: &Path) -> u32 {
    std::fs::metadata(p).unwrap().permissions().mode() & 0o7777
}

fn names(dir: &Path) -> Vec<String> {
    let mut n: Vec<_> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    n.sort();
    n
}

/// The temporary name earlier versions used for `path`: fixed, known to
/// anyone who can guess the process id.
fn old_temp_name(path: &Path) -> PathBuf {
    let name = path.file_name().unwrap().to_string_lossy();
    path.with_file_name(format!(".{name}.tmp-{}", std::process::id()))
}

#[test]
fn symlinks_planted_at_the_old_temporary_names_receive_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let state = dir.path().join("state");
    let outside = dir.path().join("outside");
    std::fs::create_dir_all(state.join("pki")).unwrap();
    std::fs::create_dir_all(&outside).unwrap();
    let victim = outside.join("victim");
    std::fs::write(&victim, "untouched").unwrap();
    let dangling = outside.join("created-through-a-link");

    let admin_key = state.join("pki/admin.key");
    let ca_crt = state.join("pki/ca.crt");
    let kubeconfig = state.join("admin.kubeconfig");
    std::fs::write(&admin_key, "old key").unwrap();
    // Links to an existing file and a dangling one (an O_CREAT through it
    // would create its target), at the temporary name of every file
    // written below.
    symlink(&victim, old_temp_name(&admin_key)).unwrap();
    symlink(&dangling, old_temp_name(&ca_crt)).unwrap();
    symlink(&victim, old_temp_name(&kubeconfig)).unwrap();

    write_files(&[
        (admin_key.clone(), b"ADMIN KEY".as_slice(), 0o600),
        (ca_crt.clone(), b"CA CERT".as_slice(), 0o644),
    ])
    .unwrap();
    write_atomic(&kubeconfig, b"KUBECONFIG WITH KEY", 0o600).unwrap();

    assert_eq!(std::fs::read_to_string(&victim).unwrap(), "untouched");
    assert!(!dangling.exists());
    assert_eq!(names(&outside), ["victim"]);
    assert_eq!(std::fs::read(&admin_key).unwrap(), b"ADMIN KEY");
    assert_eq!(mode(&admin_key), 0o600);
    assert_eq!(std::fs::read(&ca_crt).unwrap(), b"CA CERT");
    assert_eq!(mode(&ca_crt), 0o644);
    assert_eq!(std::fs::read(&kubeconfig).unwrap(), b"KUBECONFIG WITH KEY");
    assert_eq!(mode(&kubeconfig), 0o600);
    // The planted links are left alone, and no temporary file remains.
    for (path, target) in [
        (&admin_key, &victim),
        (&ca_crt, &dangling),
        (&kubeconfig, &victim),
    ] {
        assert_eq!(&std::fs::read_link(old_temp_name(path)).unwrap(), target);
    }
    let pid = std::process::id();
    assert_eq!(
        names(&state.join("pki")),
        [
            format!(".admin.key.tmp-{pid}"),
            format!(".ca.crt.tmp-{pid}"),
            "admin.key".to_string(),
            "ca.crt".to_string()
        ]
    );
}

#[test]
fn a_symlink_at_the_final_name_is_replaced_not_followed() {
    let dir = tempfile::tempdir().unwrap();
    let victim = dir.path().join("victim");
    std::fs::write(&victim, "untouched").unwrap();
    let path = dir.path().join("state/pki/sa.key");
    std::fs::create_dir_all(path.parent().unwrap()).unwrap();
    symlink(&victim, &path).unwrap();
    write_atomic(&path, b"SA KEY", 0o600).unwrap();
    assert_eq!(std::fs::read_to_string(&victim).unwrap(), "untouched");
    assert!(!std::fs::symlink_metadata(&path).unwrap().is_symlink());
    assert_eq!(std::fs::read(&path).unwrap(), b"SA KEY");
    assert_eq!(mode(&path), 0o600);
}

#[test]
fn a_failed_batch_leaves_no_temporary_file_and_names_the_path() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    // A directory where a file is to go: its rename fails, first.
    std::fs::create_dir_all(d.join("in-the-way/sub")).unwrap();
    let err = write_files(&[
        (d.join("in-the-way"), b"x".as_slice(), 0o644),
        (d.join("fine"), b"y".as_slice(), 0o600),
    ])
    .unwrap_err();
    assert!(err.to_string().contains("in-the-way"), "{err}");
    assert_eq!(names(d), ["in-the-way"]);
}

#[test]
fn parents_are_created_and_an_empty_batch_does_nothing() {
    let dir = tempfile::tempdir().unwrap();
    write_files(&[]).unwrap();
    let path = dir.path().join("a/b/c/file");
    write_atomic(&path, b"content", 0o640).unwrap();
    assert_eq!(std::fs::read(&path).unwrap(), b"content");
    assert_eq!(mode(&path), 0o640);
    assert_eq!(names(path.parent().unwrap()), ["file"]);
}
