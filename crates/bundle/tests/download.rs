//! Building bundles from a release bucket served on 127.0.0.1 (no other
//! network traffic) and from local files.

#![allow(clippy::unwrap_used)]

use kubeforge_bundle::{
    download, from_local, Arch, BundleError, Client, EtcdRelease, Local, Release, MANIFEST,
    SERVER_BINARIES,
};
use sha2::{Digest, Sha256};
use std::io::{BufRead, BufReader, Write};
use std::net::TcpListener;
use std::os::unix::fs::PermissionsExt as _;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

const K8S: &str = "1.31.4";
const ETCD: &str = "3.5.16";

fn sha(data: &[u8]) -> String {
    Sha256::digest(data)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// A GET-only HTTP/1.1 server for the files below `root`, one connection at
/// a time, `Connection: close`. Returns the base URL and the request log.
fn serve(root: PathBuf) -> (String, Arc<Mutex<Vec<String>>>) {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    let log = Arc::new(Mutex::new(Vec::new()));
    let seen = log.clone();
    std::thread::spawn(move || {
        for conn in listener.incoming() {
            let Ok(mut conn) = conn else { continue };
            let mut reader = BufReader::new(conn.try_clone().unwrap());
            let mut request = String::new();
            if reader.read_line(&mut request).is_err() {
                continue;
            }
            loop {
                let mut line = String::new();
                match reader.read_line(&mut line) {
                    Ok(0) | Err(_) => break,
                    Ok(_) if line == "\r\n" || line == "\n" => break,
                    Ok(_) => {}
                }
            }
            let mut parts = request.split_whitespace();
            let (method, target) = (parts.next().unwrap_or(""), parts.next().unwrap_or(""));
            seen.lock().unwrap().push(format!("{method} {target}"));
            let file = (!target.contains(".."))
                .then(|| root.join(target.trim_start_matches('/')))
                .filter(|p| p.is_file());
            let (status, body) = match (method, file) {
                ("GET", Some(p)) => ("200 OK", std::fs::read(p).unwrap()),
                ("GET", None) => ("404 Not Found", b"not found\n".to_vec()),
                _ => ("405 Method Not Allowed", Vec::new()),
            };
            let head = format!(
                "HTTP/1.1 {status}\r\nContent-Length: {}\r\nContent-Type: application/octet-stream\r\nConnection: close\r\n\r\n",
                body.len()
            );
            let _ = conn.write_all(head.as_bytes());
            let _ = conn.write_all(&body);
        }
    });
    (format!("http://{addr}/release"), log)
}

/// A release bucket for amd64 (and an etcd release) below `root`.
fn bucket(root: &Path) {
    let dir = root.join(format!("release/v{K8S}/bin/linux/amd64"));
    std::fs::create_dir_all(&dir).unwrap();
    for name in SERVER_BINARIES {
        let data = format!("#!/bin/sh\necho {name} {K8S}\n").repeat(5000);
        std::fs::write(dir.join(name), &data).unwrap();
        // The release bucket publishes the bare hex digest.
        std::fs::write(dir.join(format!("{name}.sha256")), sha(data.as_bytes())).unwrap();
    }
    let etcd_dir = root.join(format!("etcd/v{ETCD}"));
    std::fs::create_dir_all(&etcd_dir).unwrap();
    let top = format!("etcd-v{ETCD}-linux-amd64");
    let tarball = format!("{top}.tar.gz");
    let gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    let mut tar = tar::Builder::new(gz);
    for (name, data) in [
        ("README.md", "etcd\n".to_string()),
        ("etcd", format!("etcd {ETCD}\n")),
        ("etcdctl", format!("etcdctl {ETCD}\n")),
        ("etcdutl", format!("etcdutl {ETCD}\n")),
    ] {
        let mut h = tar::Header::new_gnu();
        h.set_size(data.len() as u64);
        h.set_mode(0o755);
        h.set_cksum();
        tar.append_data(&mut h, format!("{top}/{name}"), data.as_bytes())
            .unwrap();
    }
    let bytes = tar.into_inner().unwrap().finish().unwrap();
    std::fs::write(etcd_dir.join(&tarball), &bytes).unwrap();
    std::fs::write(
        etcd_dir.join("SHA256SUMS"),
        format!(
            "{}  etcd-v{ETCD}-darwin-amd64.zip\n{}  {tarball}\n",
            sha(b"other"),
            sha(&bytes)
        ),
    )
    .unwrap();
}

fn release(base: &str, arch: Arch, etcd: bool) -> Release {
    Release {
        version: K8S.into(),
        arch,
        base_url: base.into(),
        etcd: etcd.then(|| EtcdRelease {
            version: ETCD.into(),
            base_url: base.replace("/release", "/etcd"),
        }),
    }
}

fn entries(dir: &Path) -> Vec<String> {
    let mut v: Vec<String> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    v.sort();
    v
}

#[test]
fn downloads_a_bundle_load_bundle_accepts() {
    let srv = tempfile::tempdir().unwrap();
    bucket(srv.path());
    let (base, log) = serve(srv.path().to_path_buf());
    let work = tempfile::tempdir().unwrap();
    let out = work.path().join("bundle");
    let mut fetched = Vec::new();
    let built = download(
        &release(&base, Arch::Amd64, true),
        &Client::without_proxy(),
        &out,
        &mut |u| fetched.push(u.to_string()),
    )
    .unwrap();
    assert_eq!(built.dir, out);
    assert_eq!(built.files.len(), 9);
    assert_eq!(entries(work.path()), ["bundle"], "no temporary left");
    let loaded = kubeforge_bundle::load(&out).unwrap();
    let mut names: Vec<&str> = SERVER_BINARIES.to_vec();
    names.extend(["etcd", "etcdctl", "etcdutl"]);
    names.sort();
    assert_eq!(loaded.files.keys().collect::<Vec<_>>(), names);
    for f in &built.files {
        assert_eq!(loaded.files[&f.name].1, f.sha256);
        let mode = std::fs::metadata(out.join(&f.name))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o755, "{}", f.name);
    }
    assert_eq!(
        std::fs::read_to_string(out.join("etcd")).unwrap(),
        format!("etcd {ETCD}\n")
    );
    // etcdutl (restores snapshots) comes along when the tarball holds it.
    assert_eq!(
        std::fs::read_to_string(out.join("etcdutl")).unwrap(),
        format!("etcdutl {ETCD}\n")
    );
    let manifest = std::fs::read_to_string(out.join(MANIFEST)).unwrap();
    assert_eq!(manifest.lines().count(), 9);
    assert!(fetched
        .iter()
        .any(|u| u.ends_with(&format!("/v{K8S}/bin/linux/amd64/kubelet.sha256"))));
    let log = log.lock().unwrap();
    assert!(log.iter().all(|l| l.starts_with("GET /")), "{log:?}");
    assert_eq!(log.len(), 6 * 2 + 2, "{log:?}");
}

#[test]
fn a_corrupted_binary_is_refused_and_nothing_is_left() {
    let srv = tempfile::tempdir().unwrap();
    bucket(srv.path());
    let victim = srv
        .path()
        .join(format!("release/v{K8S}/bin/linux/amd64/kube-scheduler"));
    let published = std::fs::read_to_string(victim.with_extension("sha256")).unwrap();
    std::fs::write(&victim, b"#!/bin/sh\necho evil\n").unwrap();
    let (base, _) = serve(srv.path().to_path_buf());
    let work = tempfile::tempdir().unwrap();
    let out = work.path().join("bundle");
    let err = download(
        &release(&base, Arch::Amd64, false),
        &Client::without_proxy(),
        &out,
        &mut |_| {},
    )
    .unwrap_err();
    assert!(matches!(err, BundleError::Mismatch { .. }), "{err:?}");
    let msg = err.to_string();
    assert!(msg.contains("kube-scheduler"), "{msg}");
    assert!(msg.contains(&published), "{msg}");
    assert!(msg.contains(&sha(b"#!/bin/sh\necho evil\n")), "{msg}");
    assert!(!out.exists(), "output directory created");
    assert!(
        entries(work.path()).is_empty(),
        "{:?}",
        entries(work.path())
    );
}

#[test]
fn a_corrupted_etcd_tarball_is_refused() {
    let srv = tempfile::tempdir().unwrap();
    bucket(srv.path());
    let tarball = srv
        .path()
        .join(format!("etcd/v{ETCD}/etcd-v{ETCD}-linux-amd64.tar.gz"));
    std::fs::write(&tarball, b"not a tarball").unwrap();
    let (base, _) = serve(srv.path().to_path_buf());
    let work = tempfile::tempdir().unwrap();
    let out = work.path().join("bundle");
    let msg = download(
        &release(&base, Arch::Amd64, true),
        &Client::without_proxy(),
        &out,
        &mut |_| {},
    )
    .unwrap_err()
    .to_string();
    assert!(msg.contains("etcd-v3.5.16-linux-amd64.tar.gz"), "{msg}");
    assert!(msg.contains("SHA256SUMS"), "{msg}");
    assert!(entries(work.path()).is_empty());
}

#[test]
fn a_missing_file_names_the_url() {
    let srv = tempfile::tempdir().unwrap();
    bucket(srv.path());
    let (base, _) = serve(srv.path().to_path_buf());
    let work = tempfile::tempdir().unwrap();
    let out = work.path().join("bundle");
    let err = download(
        &release(&base, Arch::Arm64, false),
        &Client::without_proxy(),
        &out,
        &mut |_| {},
    )
    .unwrap_err();
    let msg = err.to_string();
    let url = format!("{base}/v{K8S}/bin/linux/arm64/kube-apiserver.sha256");
    assert!(msg.contains(&url), "{msg}");
    assert!(msg.contains("404"), "{msg}");
    assert!(entries(work.path()).is_empty());
}

#[test]
fn refuses_a_non_empty_output_directory() {
    let work = tempfile::tempdir().unwrap();
    let out = work.path().join("bundle");
    std::fs::create_dir(&out).unwrap();
    std::fs::write(out.join("old"), b"x").unwrap();
    let src = work.path().join("src");
    std::fs::create_dir(&src).unwrap();
    std::fs::write(src.join("kubelet"), b"kubelet").unwrap();
    let msg = from_local(
        &Local {
            dir: Some(src),
            files: vec![],
            images: vec![],
        },
        &out,
    )
    .unwrap_err()
    .to_string();
    assert!(msg.contains("not empty"), "{msg}");
    assert_eq!(entries(&out), ["old"]);
}

fn local_tree(root: &Path) -> PathBuf {
    let src = root.join("downloads");
    std::fs::create_dir(&src).unwrap();
    let mut sums = String::new();
    for name in ["etcd", "kube-apiserver", "kubelet"] {
        let data = format!("{name} binary\n");
        std::fs::write(src.join(name), &data).unwrap();
        std::fs::set_permissions(src.join(name), std::fs::Permissions::from_mode(0o755)).unwrap();
        sums.push_str(&format!("{}  {name}\n", sha(data.as_bytes())));
    }
    std::fs::write(src.join(MANIFEST), sums).unwrap();
    src
}

#[test]
fn local_files_make_a_bundle() {
    let work = tempfile::tempdir().unwrap();
    let src = local_tree(work.path());
    let out = work.path().join("out/bundle");
    let built = from_local(
        &Local {
            dir: Some(src.clone()),
            files: vec![],
            images: vec![],
        },
        &out,
    )
    .unwrap();
    assert_eq!(built.files.len(), 3);
    let loaded = kubeforge_bundle::load(&out).unwrap();
    assert_eq!(
        loaded.files.keys().collect::<Vec<_>>(),
        ["etcd", "kube-apiserver", "kubelet"]
    );
    let mode = std::fs::metadata(out.join("kubelet"))
        .unwrap()
        .permissions()
        .mode();
    assert_eq!(mode & 0o777, 0o755);

    // --file, from a directory without SHA256SUMS.
    let loose = work.path().join("loose");
    std::fs::create_dir(&loose).unwrap();
    std::fs::write(loose.join("kube-proxy"), b"kube-proxy binary\n").unwrap();
    let out2 = work.path().join("bundle2");
    std::fs::create_dir(&out2).unwrap(); // an empty directory is fine
    let built = from_local(
        &Local {
            dir: None,
            files: vec![src.join("kubelet"), loose.join("kube-proxy")],
            images: vec![],
        },
        &out2,
    )
    .unwrap();
    assert_eq!(built.files.len(), 2);
    kubeforge_bundle::load(&out2).unwrap();
}

#[test]
fn local_files_are_checked_against_their_sha256sums() {
    let work = tempfile::tempdir().unwrap();
    let src = local_tree(work.path());
    std::fs::write(src.join("kube-apiserver"), b"replaced\n").unwrap();
    let out = work.path().join("bundle");
    let err = from_local(
        &Local {
            dir: Some(src.clone()),
            files: vec![],
            images: vec![],
        },
        &out,
    )
    .unwrap_err();
    assert!(matches!(err, BundleError::Mismatch { .. }), "{err:?}");
    let msg = err.to_string();
    assert!(msg.contains("kube-apiserver"), "{msg}");
    assert!(msg.contains(&sha(b"replaced\n")), "{msg}");
    assert!(!out.exists());
    assert_eq!(entries(work.path()), ["downloads"]);

    // A file the manifest does not list is refused too.
    std::fs::write(src.join("kube-apiserver"), b"kube-apiserver binary\n").unwrap();
    std::fs::write(src.join("kubectl"), b"kubectl\n").unwrap();
    let msg = from_local(
        &Local {
            dir: Some(src),
            files: vec![],
            images: vec![],
        },
        &out,
    )
    .unwrap_err()
    .to_string();
    assert!(msg.contains("kubectl is not listed"), "{msg}");
    assert!(!out.exists());
}
