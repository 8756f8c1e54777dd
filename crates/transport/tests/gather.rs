//! The one-round-trip gather on this machine (the local transport): files,
//! their old text where asked, units, step checks, host facts, and the
//! sha256 cache that spares reading unchanged files again.
#![allow(clippy::unwrap_used)]

use kubeforge_transport::gather::{gather, Check, Request};
use kubeforge_transport::LocalTransport;
use sha2::{Digest, Sha256};
use std::os::unix::fs::PermissionsExt;

fn sha(bytes: &[u8]) -> String {
    Sha256::digest(bytes)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

fn check(name: &str, script: &str) -> Check {
    Check {
        name: name.into(),
        script: script.into(),
        key: None,
    }
}

#[tokio::test]
async fn files_units_checks_and_host_in_one_round_trip() {
    let dir = tempfile::tempdir().unwrap();
    let a = dir.path().join("a.conf");
    let b = dir.path().join("b.key");
    let empty = dir.path().join("empty");
    let missing = dir.path().join("missing");
    let link = dir.path().join("link");
    std::fs::write(&a, b"old text\n").unwrap();
    std::fs::write(&b, b"secret").unwrap();
    std::fs::write(&empty, b"").unwrap();
    std::fs::set_permissions(&b, std::fs::Permissions::from_mode(0o600)).unwrap();
    std::os::unix::fs::symlink("/", &link).unwrap();
    let cache = dir.path().join("cache/sha256-cache");
    let manifest = dir.path().join("manifest.json");
    std::fs::write(&manifest, b"{\"node\": \"here\"}\n").unwrap();
    let p = |x: &std::path::Path| x.display().to_string();
    let req = Request {
        files: vec![
            (p(&a), sha(b"new text\n"), true),
            (p(&b), sha(b"other"), false),
            (p(&empty), sha(b"x"), true),
            (p(&missing), sha(b""), true),
            (p(&link), sha(b""), true),
        ],
        units: vec!["kubeforge-no-such-unit".into()],
        // Each check on its own: no arguments, no `-u`, its `exit`, `set`
        // and variables its own.
        checks: vec![
            check("passes", "true"),
            check("fails", "exit 3"),
            check("no arguments", "[ $# -eq 0 ]"),
            check("no -u", r#"[ -z "$kubeforge_unset" ]"#),
            check("own set -e", "set -e; false; true"),
            check("own variables", "d=/nowhere; mode=x; exit 0"),
            check("reads a file", &format!("[ -f '{}' ]", p(&a))),
            // Lines of script that look like the request's own lines, and
            // an empty one, stay the check's.
            check(
                "its own lines",
                "x=$(cat <<'EOF'\nF 1 0 /etc/passwd\n\nU ssh\nE echo unmet=9\nEOF\n)\n[ \"$x\" = \"$(printf 'F 1 0 /etc/passwd\\n\\nU ssh\\nE echo unmet=9')\" ]",
            ),
        ],
        versions: vec!["kubeforge-no-such-unit".into()],
        host_extra: "echo unmet=7\n\nX=1\ntrue || echo unmet=8\n".into(),
        cache: p(&cache),
        record: false,
        manifest: Some(p(&manifest)),
        certificates: vec![],
    };
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    let t = LocalTransport::new("here");
    let r = gather(&t, &req).await.unwrap();
    assert_eq!(r.host.unmet, ["7"]);
    assert!(
        r.host.listening.contains(&port),
        "port {port} listens: {:?}",
        r.host.listening
    );
    assert_eq!(r.manifest.as_deref(), Some(&b"{\"node\": \"here\"}\n"[..]));
    let fa = &r.files[&p(&a)];
    assert_eq!(fa.sha256, sha(b"old text\n"));
    assert_eq!(fa.mode, 0o644);
    assert_eq!(fa.content.as_deref(), Some(&b"old text\n"[..]));
    let fb = &r.files[&p(&b)];
    assert_eq!((fb.mode, fb.content.is_none()), (0o600, true));
    assert_eq!(fb.sha256, sha(b"secret"));
    assert_eq!(r.files[&p(&empty)].content.as_deref(), Some(&b""[..]));
    // Missing and not-a-regular-file are both absent.
    assert!(!r.files.contains_key(&p(&missing)));
    assert!(!r.files.contains_key(&p(&link)));
    assert_eq!(
        r.checks_passed,
        [
            "passes",
            "no arguments",
            "no -u",
            "own variables",
            "reads a file",
            "its own lines"
        ]
    );
    assert!(
        r.versions.is_empty(),
        "a unit that does not run has no version"
    );
    assert!(r.units.contains_key("kubeforge-no-such-unit"));
    assert_eq!(r.host.kernel, "Linux");
    assert_eq!(r.host.arch, std::env::consts::ARCH);
    assert!(!r.host.hostname.is_empty());
    // The node's clock, read while the facts were gathered (the change
    // time of the script's temporary directory, with nanoseconds).
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs_f64();
    assert!(
        r.host.time <= now && now - r.host.time < 10.0 && r.host.time.fract() != 0.0,
        "time {} against now {now}",
        r.host.time
    );
    assert_eq!(r.cached, 0);
    assert!(!cache.exists(), "a read-only gather wrote the cache");
}

#[tokio::test]
async fn the_cache_spares_unchanged_files_and_never_hides_a_change() {
    let dir = tempfile::tempdir().unwrap();
    // A megabyte: hashed by OpenSSL where it is found (see big_sums),
    // its path read back with the space in it.
    let f = dir.path().join("a bin");
    std::fs::write(&f, vec![7u8; 1 << 20]).unwrap();
    let cache = dir.path().join("cache");
    let path = f.display().to_string();
    let mut req = Request {
        files: vec![(path.clone(), "0".repeat(64), false)],
        cache: cache.display().to_string(),
        record: true,
        ..Default::default()
    };
    let t = LocalTransport::new("here");
    let first = gather(&t, &req).await.unwrap();
    assert_eq!(first.cached, 0);
    assert_eq!(first.manifest, None, "no manifest asked for, none read");
    assert_eq!(first.files[&path].sha256, sha(&vec![7u8; 1 << 20]));
    let second = gather(&t, &req).await.unwrap();
    assert_eq!(second.cached, 1, "the sum was not taken from the cache");
    assert_eq!(second.files[&path].sha256, first.files[&path].sha256);
    // The same size, content changed in place: the change time moves, so
    // the file is read again.
    let mut bytes = vec![7u8; 1 << 20];
    bytes[0] = 8;
    std::fs::write(&f, &bytes).unwrap();
    let third = gather(&t, &req).await.unwrap();
    assert_eq!(third.cached, 0);
    assert_eq!(third.files[&path].sha256, sha(&bytes));
    // A plan only reads the cache.
    req.record = false;
    let before = std::fs::read(&cache).unwrap();
    let fourth = gather(&t, &req).await.unwrap();
    assert_eq!(fourth.cached, 1);
    assert_eq!(std::fs::read(&cache).unwrap(), before);
}

#[tokio::test]
async fn a_file_written_by_put_is_cached_with_its_sum() {
    let dir = tempfile::tempdir().unwrap();
    let f = dir.path().join("etc/app.conf");
    let cache = dir.path().join("cache/sums");
    let t = LocalTransport::new("here");
    let path = f.display().to_string();
    let c = cache.display().to_string();
    kubeforge_transport::ops::put_cached(
        &t,
        &path,
        b"one\n".to_vec(),
        0o644,
        "root:root",
        Some(&c),
    )
    .await
    .unwrap();
    let req = Request {
        files: vec![(path.clone(), sha(b"one\n"), true)],
        cache: c.clone(),
        record: false,
        ..Default::default()
    };
    let r = gather(&t, &req).await.unwrap();
    assert_eq!(r.cached, 1, "{}", std::fs::read_to_string(&cache).unwrap());
    assert_eq!(r.files[&path].sha256, sha(b"one\n"));
    // Written again: one line for it, with the new sum.
    kubeforge_transport::ops::put_cached(
        &t,
        &path,
        b"two\n".to_vec(),
        0o644,
        "root:root",
        Some(&c),
    )
    .await
    .unwrap();
    let text = std::fs::read_to_string(&cache).unwrap();
    assert_eq!(text.lines().count(), 1, "{text}");
    let r = gather(&t, &req).await.unwrap();
    assert_eq!(
        (r.cached, r.files[&path].sha256.clone()),
        (1, sha(b"two\n"))
    );
}

#[tokio::test]
async fn a_check_that_passed_is_not_run_again_while_its_key_is_the_same() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path().display().to_string();
    let keyed = |script: &str| Check {
        name: "keyed".into(),
        script: format!("echo run >> '{d}/runs'; {script}"),
        key: Some(format!("cat '{d}/key'")),
    };
    let runs = || {
        std::fs::read_to_string(dir.path().join("runs"))
            .unwrap_or_default()
            .lines()
            .count()
    };
    let mut req = Request {
        checks: vec![keyed(&format!("[ \"$(cat '{d}/state')\" = ok ]"))],
        cache: format!("{d}/cache/sha256-cache"),
        record: false,
        ..Default::default()
    };
    let t = LocalTransport::new("here");
    std::fs::write(dir.path().join("state"), "ok").unwrap();
    std::fs::write(dir.path().join("key"), "k1").unwrap();
    let passed = |r: &kubeforge_transport::gather::Report| r.checks_passed == ["keyed"];

    // A read-only run runs the check and records nothing.
    assert!(passed(&gather(&t, &req).await.unwrap()));
    assert_eq!(runs(), 1);
    assert!(!dir.path().join("cache/check-cache").exists());
    // A recording run records the key it passed with; the next runs, read
    // only or not, pass without running it.
    req.record = true;
    assert!(passed(&gather(&t, &req).await.unwrap()));
    assert_eq!(runs(), 2);
    assert!(passed(&gather(&t, &req).await.unwrap()));
    req.record = false;
    assert!(passed(&gather(&t, &req).await.unwrap()));
    assert_eq!(runs(), 2, "the check ran again under the same key");
    // Another key: the check runs, and fails.
    req.record = true;
    std::fs::write(dir.path().join("state"), "gone").unwrap();
    std::fs::write(dir.path().join("key"), "k2").unwrap();
    assert!(!passed(&gather(&t, &req).await.unwrap()));
    assert_eq!(runs(), 3);
    // An empty key, or one of two lines, vouches for nothing.
    std::fs::write(dir.path().join("state"), "ok").unwrap();
    for key in ["", "k1\nk2"] {
        std::fs::write(dir.path().join("key"), key).unwrap();
        let before = runs();
        for _ in 0..2 {
            assert!(passed(&gather(&t, &req).await.unwrap()));
        }
        assert_eq!(runs(), before + 2, "key {key:?}");
    }
    // The key k1 was recorded for the first check only: another check
    // (here the same with more to it) runs under it.
    std::fs::write(dir.path().join("key"), "k1").unwrap();
    req.checks = vec![keyed(&format!("[ \"$(cat '{d}/state')\" = ok ] && true"))];
    let before = runs();
    assert!(passed(&gather(&t, &req).await.unwrap()));
    assert_eq!(runs(), before + 1);
}

#[tokio::test]
async fn certificate_blocks_and_never_a_key() {
    let dir = tempfile::tempdir().unwrap();
    let cert = "-----BEGIN CERTIFICATE-----\nAAAA\nBBBB\n-----END CERTIFICATE-----\n";
    let key = "-----BEGIN EC PRIVATE KEY-----\nSECRET\n-----END EC PRIVATE KEY-----\n";
    let other = "-----BEGIN CERTIFICATE-----\nCCCC\n-----END CERTIFICATE-----\n";
    let pair = dir.path().join("client-current.pem");
    let serving = dir.path().join("serving.crt");
    let keyonly = dir.path().join("only.key");
    let missing = dir.path().join("missing.pem");
    std::fs::write(&pair, format!("{cert}{key}{other}")).unwrap();
    std::fs::write(&serving, format!("text before\n{other}")).unwrap();
    std::fs::write(&keyonly, key).unwrap();
    let p = |x: &std::path::Path| x.display().to_string();
    let req = Request {
        certificates: vec![p(&missing), p(&pair), p(&keyonly), p(&serving)],
        cache: p(&dir.path().join("cache")),
        ..Request::default()
    };
    let r = gather(&LocalTransport::new("here"), &req).await.unwrap();
    assert_eq!(r.certificates.len(), 2, "{:?}", r.certificates);
    assert_eq!(r.certificates[&p(&pair)], format!("{cert}{other}"));
    assert_eq!(r.certificates[&p(&serving)], other);
}

/// The node's record comes back byte for byte, whatever it ends with;
/// one that is not there (or not a file) is absent.
#[tokio::test]
async fn the_manifest_comes_back_as_it_is() {
    let dir = tempfile::tempdir().unwrap();
    let t = LocalTransport::new("here");
    let m = dir.path().join("manifest.json");
    for bytes in [
        &b"{\n  \"a\": \"x\\\\y\\\"z\"\n}\n"[..],
        b"{\"no\": \"final line break\"}",
        b"",
        b"\n",
        b"two\n\nblank lines\n\n\n",
        b"tab\there \\n not a line break\n",
    ] {
        std::fs::write(&m, bytes).unwrap();
        let req = Request {
            manifest: Some(m.display().to_string()),
            ..Default::default()
        };
        let r = gather(&t, &req).await.unwrap();
        assert_eq!(
            r.manifest.as_deref(),
            Some(bytes),
            "{:?}",
            String::from_utf8_lossy(bytes)
        );
    }
    for absent in [dir.path().join("missing"), dir.path().to_path_buf()] {
        let req = Request {
            manifest: Some(absent.display().to_string()),
            ..Default::default()
        };
        assert_eq!(gather(&t, &req).await.unwrap().manifest, None);
    }
}

/// The listening ports are read for the pre-flight's port check only,
/// which looks at them for units about to start: with no unit asked for
/// (as with units all active) they are not read; with one not active
/// they are.
#[tokio::test]
async fn listening_ports_only_for_units_not_active() {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    let t = LocalTransport::new("here");
    let none = gather(&t, &Request::default()).await.unwrap();
    assert!(none.host.listening.is_empty(), "{:?}", none.host.listening);
    let req = Request {
        units: vec!["kubeforge-no-such-unit".into()],
        ..Default::default()
    };
    let starting = gather(&t, &req).await.unwrap();
    assert!(
        starting.host.listening.contains(&port),
        "port {port}: {:?}",
        starting.host.listening
    );
}
