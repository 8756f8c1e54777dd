//! The operations over the local transport: real files, real `sh`.
#![allow(clippy::unwrap_used)]

use kubeforge_transport::{ops, LocalTransport, Output, Script, Transport};
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

/// Runs the upload script as `put` would, but with the size and digest of
/// `declared` while `sent` is what actually arrives on stdin.
async fn put_raw(t: &LocalTransport, path: &str, declared: &[u8], sent: &[u8]) -> Output {
    let (size, sha) = ops::size_and_sha256(declared);
    t.run(
        Script::new("write", ops::PUT)
            .args([path, "0755", "root:root", &size, &sha])
            .stdin(sent.to_vec()),
    )
    .await
    .unwrap()
}

fn names(dir: &std::path::Path) -> Vec<String> {
    let mut n: Vec<_> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    n.sort();
    n
}

#[tokio::test]
async fn a_cut_short_upload_is_refused_and_leaves_the_old_file() {
    let dir = tempfile::tempdir().unwrap();
    let t = LocalTransport::new("local");
    let path = dir.path().join("kubelet");
    let p = path.to_str().unwrap();
    std::fs::write(&path, "old binary").unwrap();
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644)).unwrap();
    let full: Vec<u8> = (0..200_000u32).map(|i| (i % 251) as u8).collect();
    // Stdin ends after a prefix, as when kubeforge or ssh is killed.
    let o = put_raw(&t, p, &full, &full[..70_000]).await;
    assert_eq!(o.status, ops::PUT_MISMATCH, "{}", o.stderr_str());
    let (size, sha) = ops::size_and_sha256(&full);
    let (_, got) = ops::size_and_sha256(&full[..70_000]);
    let msg = o.stderr_str();
    for part in [p, &size, &sha, "70000", &got, "unchanged"] {
        assert!(msg.contains(part), "{part} not in {msg}");
    }
    assert_eq!(std::fs::read(&path).unwrap(), b"old binary");
    let mode = std::fs::metadata(&path).unwrap().permissions().mode() & 0o7777;
    assert_eq!(mode, 0o644);
    assert_eq!(names(dir.path()), ["kubelet"]);
}

#[tokio::test]
async fn an_altered_upload_is_refused_and_creates_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let t = LocalTransport::new("local");
    let path = dir.path().join("bin/etcd");
    let p = path.to_str().unwrap();
    // Same size, other bytes: the digest tells them apart.
    let o = put_raw(&t, p, b"expected", b"EXPECTED").await;
    assert_eq!(o.status, ops::PUT_MISMATCH, "{}", o.stderr_str());
    assert!(!path.exists());
    assert!(names(&dir.path().join("bin")).is_empty());
    // Nothing at all arrived.
    let o = put_raw(&t, p, b"expected", b"").await;
    assert_eq!(o.status, ops::PUT_MISMATCH, "{}", o.stderr_str());
    assert!(
        o.stderr_str().contains("received 0 bytes"),
        "{}",
        o.stderr_str()
    );
    assert!(names(&dir.path().join("bin")).is_empty());
}

#[tokio::test]
async fn a_whole_upload_is_installed_with_its_mode() {
    let dir = tempfile::tempdir().unwrap();
    let t = LocalTransport::new("n1");
    let path = dir.path().join("f");
    let p = path.to_str().unwrap();
    // The whole content arrives (the arguments `put` itself sends).
    let o = put_raw(&t, p, b"content\n", b"content\n").await;
    assert!(o.success(), "{}", o.stderr_str());
    assert_eq!(std::fs::read(&path).unwrap(), b"content\n");
    let mode = std::fs::metadata(&path).unwrap().permissions().mode() & 0o7777;
    assert_eq!(mode, 0o755);
    assert_eq!(names(dir.path()), ["f"]);
}

#[test]
fn size_and_sha256_are_what_sha256sum_prints() {
    assert_eq!(
        ops::size_and_sha256(b"hello\n"),
        (
            "6".to_string(),
            "5891b5b522d5df086d0ff0b110fbd9d21bb4fc7163af34d08286a2e846f6be03".to_string()
        )
    );
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
    let held = t.lock(p, "apply by alice").await.unwrap();
    let err = t.lock(p, "apply by bob").await.err().unwrap();
    let msg = err.to_string();
    assert!(
        msg.contains("another kubeforge apply holds it (apply by alice)"),
        "{msg}"
    );
    held.release().await;
    let again = t.lock(p, "apply by bob").await.unwrap();
    again.release().await;
}

#[tokio::test]
async fn host_facts() {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    let t = LocalTransport::new("local");
    let f = ops::host(&t).await.unwrap();
    assert!(!f.hostname.is_empty());
    assert_eq!(f.kernel, "Linux");
    assert_eq!(f.arch, std::env::consts::ARCH);
    assert!(f.listening.contains(&port), "{port}: {:?}", f.listening);
    assert!(f.time > 1.7e9);
}

/// Files written in one batch: bytes and a blob of the store (which
/// stays there), modes set, nothing left behind, the sha256 cache told
/// every new sum (and only one line per path).
#[tokio::test]
async fn a_batch_installs_bytes_and_blobs_with_their_modes() {
    let dir = tempfile::tempdir().unwrap();
    let t = LocalTransport::new("n1");
    let store = dir.path().join("store");
    std::fs::create_dir_all(&store).unwrap();
    let binary: Vec<u8> = (0..100_000u32).map(|i| (i % 253) as u8).collect();
    let (_, blob) = ops::size_and_sha256(&binary);
    std::fs::write(store.join(&blob), &binary).unwrap();
    let at = |rel: &str| dir.path().join(rel).to_str().unwrap().to_string();
    let cache = at("cache/sha256");
    std::fs::create_dir_all(dir.path().join("cache")).unwrap();
    std::fs::write(
        &cache,
        format!("1 2 3 oldsum {}\n9 9 9 keep /elsewhere\n", at("etc/a.conf")),
    )
    .unwrap();
    let file = |rel: &str, mode: u32, source: ops::Source| ops::PutFile {
        path: at(rel),
        mode,
        owner: "root:root".into(),
        source,
    };
    let files = vec![
        file("etc/a.conf", 0o644, ops::Source::Bytes(b"a = 1\n".to_vec())),
        file("etc/pki/b.key", 0o600, ops::Source::Bytes(Vec::new())),
        file(
            "bin/kubelet",
            0o755,
            ops::Source::Blob {
                sha256: blob.clone(),
                size: binary.len() as u64,
                checked: false,
            },
        ),
    ];
    ops::put_all(&t, files, store.to_str().unwrap(), Some(&cache))
        .await
        .unwrap();
    assert_eq!(std::fs::read(at("etc/a.conf")).unwrap(), b"a = 1\n");
    assert_eq!(std::fs::read(at("etc/pki/b.key")).unwrap(), b"");
    assert_eq!(std::fs::read(at("bin/kubelet")).unwrap(), binary);
    let mode = |rel: &str| std::fs::metadata(at(rel)).unwrap().permissions().mode() & 0o7777;
    assert_eq!(
        [
            mode("etc/a.conf"),
            mode("etc/pki/b.key"),
            mode("bin/kubelet")
        ],
        [0o644, 0o600, 0o755]
    );
    assert!(store.join(&blob).exists(), "the store keeps its blob");
    assert_eq!(names(&dir.path().join("etc")), ["a.conf", "pki"]);
    assert_eq!(names(&dir.path().join("bin")), ["kubelet"]);
    let cached = std::fs::read_to_string(&cache).unwrap();
    assert!(cached.contains("keep /elsewhere"), "{cached}");
    assert!(!cached.contains("oldsum"), "{cached}");
    assert_eq!(cached.matches(&at("etc/a.conf")).count(), 1, "{cached}");
    assert!(
        cached.contains(&format!("{blob} {}", at("bin/kubelet"))),
        "{cached}"
    );
}

/// A temporary name a killed run left behind (the script's own process ID
/// names its files) is neither reused nor removed: the batch makes another
/// name, installs its file 0600 and leaves nothing of its own.
#[tokio::test]
async fn a_batch_does_not_reuse_a_temporary_name_left_behind() {
    let dir = tempfile::tempdir().unwrap();
    let t = LocalTransport::new("n1");
    let script = dir.path().join("put-all.sh");
    std::fs::write(&script, ops::PUT_ALL).unwrap();
    let key = dir.path().join("b.key");
    let (size, sum) = ops::size_and_sha256(b"secret");
    let mut stdin = format!("D 0600 root:root {size} {sum} {}\n", key.display()).into_bytes();
    stdin.extend_from_slice(b"secret");
    // The leftover takes the name the script would claim first; `exec`
    // keeps the process ID.
    let o = t
        .run(
            Script::new(
                "write",
                r#"ln -s /nonexistent "$1/.kubeforge-tmp.$$.1"; : > "$1/.kubeforge-tmp.$$.2"; exec sh "$2" /nonexistent-store"#,
            )
            .args([dir.path().display().to_string(), script.display().to_string()])
            .stdin(stdin),
        )
        .await
        .unwrap();
    assert!(o.success(), "{}", o.stderr_str());
    assert_eq!(std::fs::read(&key).unwrap(), b"secret");
    let mode = std::fs::metadata(&key).unwrap().permissions().mode() & 0o7777;
    assert_eq!(mode, 0o600);
    assert!(!std::path::Path::new("/nonexistent").exists());
    let left: Vec<String> = names(dir.path())
        .into_iter()
        .filter(|n| n.starts_with(".kubeforge-tmp."))
        .collect();
    assert_eq!(left.len(), 2, "only the leftovers remain: {left:?}");
}

/// One checked blob installed at two paths of a batch: the first is the
/// blob itself (a link), the second a copy with its own mode.
#[tokio::test]
async fn a_blob_is_linked_once_per_batch() {
    use std::os::unix::fs::MetadataExt as _;
    let dir = tempfile::tempdir().unwrap();
    let t = LocalTransport::new("n1");
    let store = dir.path().join("store");
    std::fs::create_dir_all(&store).unwrap();
    let binary = b"a binary".repeat(1000);
    let (size, sum) = ops::size_and_sha256(&binary);
    std::fs::write(store.join(&sum), &binary).unwrap();
    let at = |rel: &str| dir.path().join(rel).display().to_string();
    let file = |rel: &str, mode: u32| ops::PutFile {
        path: at(rel),
        mode,
        owner: "root:root".into(),
        source: ops::Source::Blob {
            sha256: sum.clone(),
            size: size.parse().unwrap(),
            checked: true,
        },
    };
    let files = vec![file("bin/a", 0o755), file("bin/b", 0o700)];
    ops::put_all(&t, files, store.to_str().unwrap(), None)
        .await
        .unwrap();
    let meta = |p: &str| std::fs::metadata(p).unwrap();
    let blob = store.join(&sum).display().to_string();
    assert_eq!(meta(&at("bin/a")).ino(), meta(&blob).ino());
    assert_ne!(meta(&at("bin/b")).ino(), meta(&blob).ino());
    assert_eq!(std::fs::read(at("bin/b")).unwrap(), binary);
    assert_eq!(
        [
            meta(&at("bin/a")).mode() & 0o7777,
            meta(&at("bin/b")).mode() & 0o7777
        ],
        [0o755, 0o700]
    );
}

/// A batch whose second file arrives cut short installs nothing: the old
/// first file stays, no temporary file is left, and the error names the
/// path.
#[tokio::test]
async fn a_cut_short_batch_installs_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let t = LocalTransport::new("n1");
    let a = dir.path().join("a");
    let b = dir.path().join("b");
    std::fs::write(&a, "old a").unwrap();
    let (size_a, sum_a) = ops::size_and_sha256(b"new a");
    let (size_b, sum_b) = ops::size_and_sha256(b"new b, longer");
    let mut stdin = format!("D 0644 root:root {size_a} {sum_a} {}\n", a.display()).into_bytes();
    stdin.extend_from_slice(b"new a");
    stdin.extend_from_slice(
        format!("D 0644 root:root {size_b} {sum_b} {}\n", b.display()).as_bytes(),
    );
    stdin.extend_from_slice(b"new b");
    let o = t
        .run(
            Script::new("write", ops::PUT_ALL)
                .args(["/nonexistent-store"])
                .stdin(stdin),
        )
        .await
        .unwrap();
    assert_eq!(o.status, ops::PUT_MISMATCH, "{}", o.stderr_str());
    assert!(
        o.stderr_str().contains(&b.display().to_string()),
        "{}",
        o.stderr_str()
    );
    assert_eq!(std::fs::read(&a).unwrap(), b"old a");
    assert_eq!(names(dir.path()), ["a"]);
}

/// A directory of links to the programs `PUT_ALL` runs, without OpenSSL:
/// a node that lacks it checks its files with coreutils' `sha256sum`.
fn path_without_openssl() -> tempfile::TempDir {
    let bin = tempfile::tempdir().unwrap();
    for p in [
        "sh",
        "mktemp",
        "mkdir",
        "head",
        "stat",
        "ln",
        "cp",
        "chown",
        "chmod",
        "sha256sum",
        "sync",
        "mv",
        "awk",
        "flock",
        "dirname",
        "id",
        "rm",
        "cat",
    ] {
        let found = std::process::Command::new("sh")
            .args(["-c", &format!("command -v {p}")])
            .output()
            .unwrap();
        let path = String::from_utf8(found.stdout).unwrap();
        std::os::unix::fs::symlink(path.trim(), bin.path().join(p)).unwrap();
    }
    bin
}

/// Every file of a batch is checked (in one program for all of them) with
/// or without OpenSSL: a blob linked into place, a blob copied, bytes; and
/// a copy whose blob was altered in the store is refused, naming it.
#[tokio::test]
async fn a_batch_is_checked_with_or_without_openssl() {
    let bin = path_without_openssl();
    for path in [None, Some(bin.path().display().to_string())] {
        let dir = tempfile::tempdir().unwrap();
        let t = LocalTransport::new("n1");
        let store = dir.path().join("store");
        std::fs::create_dir_all(&store).unwrap();
        let linked: Vec<u8> = (0..50_000u32).map(|i| (i % 251) as u8).collect();
        // Over a megabyte in all: OpenSSL checks the batch where it is
        // found (see big_sums).
        let copied = b"copied binary".repeat(100_000);
        let (size_l, sum_l) = ops::size_and_sha256(&linked);
        let (size_c, sum_c) = ops::size_and_sha256(&copied);
        std::fs::write(store.join(&sum_l), &linked).unwrap();
        std::fs::write(store.join(&sum_c), &copied).unwrap();
        let at = |rel: &str| dir.path().join(rel).display().to_string();
        let (size_d, sum_d) = ops::size_and_sha256(b"x = 1\n");
        let mut stdin = format!("L 0755 root:root {size_l} {sum_l} {}\n", at("bin/l")).into_bytes();
        stdin.extend(format!("B 0755 root:root {size_c} {sum_c} {}\n", at("bin/c")).bytes());
        stdin.extend(format!("D 0644 root:root {size_d} {sum_d} {}\n", at("etc/d")).bytes());
        stdin.extend(b"x = 1\n");
        let body = match &path {
            Some(p) => format!("PATH={p}\n{}", ops::PUT_ALL),
            None => ops::PUT_ALL.to_string(),
        };
        let cache = at("cache/sha256");
        let run = |stdin: Vec<u8>| {
            Script::new("write", &body)
                .args([store.display().to_string(), cache.clone()])
                .stdin(stdin)
        };
        let o = t.run(run(stdin.clone())).await.unwrap();
        assert!(o.success(), "{path:?}: {}", o.stderr_str());
        assert_eq!(std::fs::read(at("bin/l")).unwrap(), linked);
        assert_eq!(std::fs::read(at("bin/c")).unwrap(), copied);
        assert_eq!(std::fs::read(at("etc/d")).unwrap(), b"x = 1\n");
        let cached = std::fs::read_to_string(&cache).unwrap();
        for (sum, p) in [(&sum_l, "bin/l"), (&sum_c, "bin/c"), (&sum_d, "etc/d")] {
            let line = cached
                .lines()
                .find(|l| l.ends_with(&format!(" {sum} {}", at(p))))
                .unwrap_or_else(|| panic!("{path:?}: {p} in {cached}"));
            let m = std::fs::metadata(at(p)).unwrap();
            use std::os::unix::fs::MetadataExt as _;
            assert!(
                line.starts_with(&format!("{} ", m.size()))
                    && line.contains(&format!(" {} ", m.ino())),
                "{line}"
            );
        }
        // The copied blob altered in the store: nothing of the batch is
        // installed.
        std::fs::write(store.join(&sum_c), b"altered").unwrap();
        std::fs::write(at("etc/d"), "old").unwrap();
        let o = t.run(run(stdin)).await.unwrap();
        assert_eq!(o.status, ops::PUT_MISMATCH, "{path:?}: {}", o.stderr_str());
        let err = o.stderr_str();
        assert!(
            err.contains(&format!("refusing to install {}", at("bin/c")))
                && err.contains("from the blob store"),
            "{path:?}: {err}"
        );
        assert_eq!(std::fs::read(at("etc/d")).unwrap(), b"old");
        assert_eq!(names(&dir.path().join("etc")), ["d"]);
    }
}

/// Reload, enable and the starts in one round trip: every unit enabled in
/// one call, started in order; the first that fails stops the rest and is
/// named.
#[tokio::test]
async fn units_are_enabled_then_started_in_order_until_one_fails() {
    let bin = tempfile::tempdir().unwrap();
    let log = bin.path().join("log");
    let fake = format!(
        "#!/bin/sh\necho \"$*\" >> {}\n[ \"$*\" != \"start b\" ] && [ \"$*\" != \"start --no-block b\" ]\n",
        log.display()
    );
    let systemctl = bin.path().join("systemctl");
    std::fs::write(&systemctl, fake).unwrap();
    std::fs::set_permissions(&systemctl, std::fs::Permissions::from_mode(0o755)).unwrap();
    let t = LocalTransport::new("n1");
    let body = format!("PATH={}:$PATH\n{}", bin.path().display(), ops::START);
    for (mode, start) in [("block", "start"), ("no-block", "start --no-block")] {
        std::fs::write(&log, "").unwrap();
        let o = t
            .run(Script::new("start", &body).args(["reload", mode, "a", "b", "c"]))
            .await
            .unwrap();
        assert_eq!(o.status, ops::START_FAILED, "{}", o.stderr_str());
        assert_eq!(o.stdout_str().trim(), "b");
        assert_eq!(
            std::fs::read_to_string(&log).unwrap(),
            format!("daemon-reload\nenable --no-reload a b c\n{start} a\n{start} b\n")
        );
    }
    std::fs::write(&log, "").unwrap();
    let o = t
        .run(Script::new("start", &body).args(["-", "block", "a"]))
        .await
        .unwrap();
    assert!(o.success(), "{}", o.stderr_str());
    assert_eq!(
        std::fs::read_to_string(&log).unwrap(),
        "enable --no-reload a\nstart a\n"
    );
}

/// Steps in one round trip: in order, each its own shell; the first that
/// fails stops the rest and is named with its status and words.
#[tokio::test]
async fn steps_run_in_order_until_one_fails_and_it_is_named() {
    let dir = tempfile::tempdir().unwrap();
    let t = LocalTransport::new("n1");
    let log = dir.path().join("log").display().to_string();
    let first = format!("set -e; echo one >> {log}; x=1");
    let second =
        format!("[ -z \"${{x:-}}\" ] && echo two >> {log} && echo 'no route' >&2 && exit 3");
    let third = format!("echo three >> {log}");
    let steps = [
        ("first", first.as_str()),
        ("second", second.as_str()),
        ("third", third.as_str()),
    ];
    let e = ops::run_steps(&t, &steps).await.unwrap_err().to_string();
    assert_eq!(e, "n1: `second` exited with status 3: no route");
    assert_eq!(std::fs::read_to_string(&log).unwrap(), "one\ntwo\n");
    ops::run_steps(&t, &[("first", first.as_str()), ("third", third.as_str())])
        .await
        .unwrap();
    assert_eq!(
        std::fs::read_to_string(&log).unwrap(),
        "one\ntwo\none\nthree\n"
    );
}

/// Parts in one round trip: each its own shell with its own arguments
/// (spaces, quotes, `$` and a tenth argument kept as given); only the part
/// that reads the input gets it; files written and their mode set between
/// steps; the first that fails stops the rest and is named alone.
#[tokio::test]
async fn parts_run_in_order_with_their_arguments_and_one_input() {
    use std::os::unix::fs::MetadataExt;
    let dir = tempfile::tempdir().unwrap();
    let t = LocalTransport::new("n1");
    let log = dir.path().join("log").display().to_string();
    let meta = std::fs::metadata(dir.path()).unwrap();
    let owner = format!("{}:{}", meta.uid(), meta.gid());
    let file = dir.path().join("etc/a.conf").display().to_string();
    let step = |name: &str, body: String| ops::Part::step(name, &body);
    let args: Vec<String> = ["a b", "$x", "'q\"", "", "5", "6", "7", "8", "9", "ten", "*"]
        .iter()
        .map(|s| s.to_string())
        .collect();
    let with_args = ops::Part {
        args: args.clone(),
        ..step(
            "args",
            format!("printf '<%s>' \"$@\" >> {log}; echo >> {log}"),
        )
    };
    let (put, input) = ops::put_all_part(
        &[ops::PutFile {
            path: file.clone(),
            mode: 0o600,
            owner: owner.clone(),
            source: ops::Source::Bytes(b"x = 1\n".to_vec()),
        }],
        &dir.path().join("store").display().to_string(),
        None,
    )
    .unwrap();
    let parts = vec![
        step("first", format!("[ -z \"$(cat)\" ] && echo one >> {log}")),
        with_args.clone(),
        put,
        ops::Part::chmod(&file, 0o640, &owner),
        step("after", format!("[ -z \"$(cat)\" ] && cat {file} >> {log}")),
    ];
    ops::run_parts(&t, parts, input.clone()).await.unwrap();
    assert_eq!(
        std::fs::read_to_string(&log).unwrap(),
        "one\n<a b><$x><'q\"><><5><6><7><8><9><ten><*>\nx = 1\n"
    );
    let mode = std::fs::metadata(&file).unwrap().permissions().mode() & 0o7777;
    assert_eq!(mode, 0o640);

    std::fs::write(&log, "").unwrap();
    let parts = vec![
        with_args,
        step(
            "fails",
            format!("echo two >> {log}; echo 'no route' >&2; exit 3"),
        ),
        step("never", format!("echo three >> {log}")),
    ];
    let e = ops::run_parts(&t, parts, Vec::new())
        .await
        .unwrap_err()
        .to_string();
    assert_eq!(e, "n1: `fails` exited with status 3: no route");
    assert!(std::fs::read_to_string(&log).unwrap().ends_with("two\n"));
    // A cut-short upload in the middle is named as the write it was.
    let (put, mut input) = ops::put_all_part(
        &[ops::PutFile {
            path: file.clone(),
            mode: 0o600,
            owner,
            source: ops::Source::Bytes(b"y = 2\n".to_vec()),
        }],
        &dir.path().join("store").display().to_string(),
        None,
    )
    .unwrap();
    input.truncate(input.len() - 2);
    let parts = vec![step("first", "true".into()), put];
    let e = ops::run_parts(&t, parts, input)
        .await
        .unwrap_err()
        .to_string();
    assert!(
        e.starts_with(&format!("n1: `write {file}` exited with status 4")),
        "{e}"
    );
    assert_eq!(std::fs::read_to_string(&file).unwrap(), "x = 1\n");
}

/// A script and arguments far over the kernel's 128 KiB limit on one
/// argument (the hosts and pod routes steps of a few thousand nodes) run
/// as a small one does, with `$0`, their arguments and their input; in
/// a round trip of parts, a large part keeps its `set -e`, and the part
/// after it runs.
#[tokio::test]
async fn scripts_over_the_argument_limit_run_whole() {
    let t = LocalTransport::new("n1");
    let routes: String = (0..6000)
        .map(|i| {
            format!(
                "route replace 10.{}.{}.0/24 via 10.77.0.{}\n",
                i / 256,
                i % 256,
                i % 250
            )
        })
        .collect();
    let body = format!(
        "routes='{routes}'\n\
         printf '%s|%s|%s|' \"$0\" \"$#\" \"$(printf '%s' \"$routes\" | wc -l)\"\n\
         printf '%s|' \"$1\" \"${{#2}}\" \"$3\"\ncat\n"
    );
    assert!(body.len() > 256 * 1024, "{}", body.len());
    let out = t
        .run_ok(
            Script::new("large", &body)
                .args([
                    "it's \"quoted\"\n".to_string(),
                    "x".repeat(200_000),
                    String::new(),
                ])
                .stdin(b"the input\n".to_vec()),
        )
        .await
        .unwrap();
    assert_eq!(
        out.stdout_str(),
        "kubeforge|3|6000|it's \"quoted\"\n|200000||the input\n"
    );

    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("log").display().to_string();
    let large = |name: &str, tail: &str| ops::Part {
        args: vec!["y".repeat(100_000)],
        ..ops::Part::step(name, &format!("routes='{routes}'\nset -e\n{tail}"))
    };
    let parts = vec![
        large("first", &format!("echo \"${{#1}}\" >> {log}")),
        ops::Part {
            input: true,
            ..large("second", &format!("cat >> {log}"))
        },
    ];
    ops::run_parts(&t, parts, b"input\n".to_vec())
        .await
        .unwrap();
    assert_eq!(std::fs::read_to_string(&log).unwrap(), "100000\ninput\n");
    let parts = vec![
        large("stops", &format!("false\necho not reached >> {log}")),
        ops::Part::step("never", &format!("echo never >> {log}")),
    ];
    let e = ops::run_parts(&t, parts, Vec::new()).await.unwrap_err();
    assert!(
        e.to_string()
            .starts_with("n1: `stops` exited with status 1"),
        "{e}"
    );
    assert_eq!(std::fs::read_to_string(&log).unwrap(), "100000\ninput\n");
}
