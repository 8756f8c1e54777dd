//! The operations over the local transport: real files, real `sh`.
#![allow(clippy::unwrap_used)]

use kubeforge_transport::{ops, LocalTransport, Script, Transport};
use std::os::unix::fs::PermissionsExt;

#[tokio::test]
async fn put_is_atomic_and_sets_mode_and_owner() {
    let dir = tempfile::tempdir().unwrap();
    let t = LocalTransport::new("local");
    let path = dir.path().join("etc/kubernetes/pki/x.key");
    let p = path.to_str().unwrap();
    ops::put(&t, p, b"secret\n".to_vec(), 0o600, "root:root")
        .await
        .unwrap();
    assert_eq!(std::fs::read(&path).unwrap(), b"secret\n");
    let mode = std::fs::metadata(&path).unwrap().permissions().mode() & 0o7777;
    assert_eq!(mode, 0o600);
    // Replacing keeps no temporary file behind.
    ops::put(&t, p, b"new".to_vec(), 0o644, "root:root")
        .await
        .unwrap();
    assert_eq!(std::fs::read(&path).unwrap(), b"new");
    let names: Vec<_> = std::fs::read_dir(path.parent().unwrap())
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    assert_eq!(names.len(), 1, "{names:?}");
}

#[tokio::test]
async fn failed_put_leaves_the_old_file() {
    let dir = tempfile::tempdir().unwrap();
    let t = LocalTransport::new("local");
    let path = dir.path().join("f");
    std::fs::write(&path, "old").unwrap();
    let err = ops::put(
        &t,
        path.to_str().unwrap(),
        b"new".to_vec(),
        0o644,
        "nosuchuser:nosuchgroup",
    )
    .await
    .unwrap_err();
    assert!(err.to_string().contains("local: `write"), "{err}");
    assert_eq!(std::fs::read(&path).unwrap(), b"old");
    assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 1);
}

#[tokio::test]
async fn stat_and_read() {
    let dir = tempfile::tempdir().unwrap();
    let t = LocalTransport::new("local");
    let a = dir.path().join("a");
    std::fs::write(&a, "hello\n").unwrap();
    std::fs::set_permissions(&a, std::fs::Permissions::from_mode(0o640)).unwrap();
    let missing = dir.path().join("missing");
    let paths = vec![a.display().to_string(), missing.display().to_string()];
    let st = ops::stat(&t, &paths).await.unwrap();
    assert_eq!(st.len(), 1);
    let s = &st[&paths[0]];
    assert_eq!(s.mode, 0o640);
    assert_eq!(
        s.sha256,
        "5891b5b522d5df086d0ff0b110fbd9d21bb4fc7163af34d08286a2e846f6be03"
    );
    assert_eq!(ops::read(&t, &paths[0]).await.unwrap().unwrap(), b"hello\n");
    assert_eq!(ops::read(&t, &paths[1]).await.unwrap(), None);
}

#[tokio::test]
async fn arguments_are_not_interpreted_by_the_shell() {
    let t = LocalTransport::new("local");
    let o = t
        .run(Script::new("echo", r#"printf '%s|' "$@""#).args(["a b", "$(id)", "'q'"]))
        .await
        .unwrap();
    assert_eq!(o.stdout_str(), "a b|$(id)|'q'|");
}

#[tokio::test]
async fn timeout_is_reported_with_the_node() {
    let t = LocalTransport::new("n1");
    let err = t
        .run(Script::new("sleep", "sleep 5").timeout(std::time::Duration::from_millis(200)))
        .await
        .unwrap_err();
    assert_eq!(err.to_string(), "n1: `sleep` did not finish within 0 s");
}

#[tokio::test]
async fn the_lock_is_exclusive_and_released() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("kubeforge.lock");
    let p = path.to_str().unwrap();
    let t = LocalTransport::new("n1");
    let held = ops::lock(&t, p, "apply by alice").await.unwrap();
    let err = ops::lock(&t, p, "apply by bob").await.err().unwrap();
    let msg = err.to_string();
    assert!(
        msg.contains("another kubeforge apply holds it (apply by alice)"),
        "{msg}"
    );
    held.release().await;
    let again = ops::lock(&t, p, "apply by bob").await.unwrap();
    again.release().await;
}

#[tokio::test]
async fn host_facts() {
    let t = LocalTransport::new("local");
    let f = ops::host(&t).await.unwrap();
    assert!(!f.hostname.is_empty());
    assert_eq!(f.kernel, "Linux");
    assert!(f.time > 1.7e9);
}
