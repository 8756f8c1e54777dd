//! Container image archives in a bundle: `--image` puts them into
//! `images/` with their manifest lines, a nameless archive is refused, and
//! the bundle reader accepts `images/` and no other sub-directory.
#![allow(clippy::unwrap_used)]

use kubeforge_bundle::{from_local, Local, MANIFEST};
use sha2::{Digest, Sha256};
use std::path::{Path, PathBuf};

fn sha(data: &[u8]) -> String {
    Sha256::digest(data)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

fn tar_of(files: &[(&str, &[u8])]) -> Vec<u8> {
    let mut b = tar::Builder::new(Vec::new());
    for (name, data) in files {
        let mut h = tar::Header::new_ustar();
        h.set_size(data.len() as u64);
        h.set_mode(0o644);
        b.append_data(&mut h, name, *data).unwrap();
    }
    b.into_inner().unwrap()
}

/// An OCI image layout whose one manifest has these annotations.
fn oci(annotations: &str) -> Vec<u8> {
    let index = format!(
        r#"{{"schemaVersion":2,"manifests":[{{"mediaType":"application/vnd.oci.image.manifest.v1+json","digest":"sha256:00","size":2,"annotations":{annotations}}}]}}"#
    );
    tar_of(&[
        ("oci-layout", br#"{"imageLayoutVersion":"1.0.0"}"#),
        ("index.json", index.as_bytes()),
        ("blobs/sha256/00", b"{}"),
    ])
}

fn docker(repo_tags: &str) -> Vec<u8> {
    let manifest = format!(r#"[{{"Config":"c.json","RepoTags":{repo_tags},"Layers":["l.tar"]}}]"#);
    tar_of(&[
        ("c.json", b"{}"),
        ("l.tar", &[0u8; 1024]),
        ("manifest.json", manifest.as_bytes()),
    ])
}

fn write(dir: &Path, name: &str, data: &[u8]) -> PathBuf {
    std::fs::create_dir_all(dir).unwrap();
    let p = dir.join(name);
    std::fs::write(&p, data).unwrap();
    p
}

#[test]
fn image_archives_go_into_images_with_their_names() {
    let work = tempfile::tempdir().unwrap();
    let src = work.path().join("src");
    let kubelet = write(&src, "kubelet", b"kubelet binary\n");
    let pause = write(
        &src,
        "pause.tar",
        &oci(
            r#"{"io.containerd.image.name":"lab.local/pause:3.10","org.opencontainers.image.ref.name":"3.10"}"#,
        ),
    );
    let busybox = write(&src, "busybox.tar", &docker(r#"["busybox:1"]"#));
    let out = work.path().join("bundle");
    let built = from_local(
        &Local {
            dir: None,
            files: vec![kubelet],
            images: vec![pause.clone(), busybox],
        },
        &out,
    )
    .unwrap();
    let names: Vec<(&str, Vec<String>)> = built
        .files
        .iter()
        .map(|f| (f.name.as_str(), f.image_names.clone()))
        .collect();
    assert_eq!(
        names,
        [
            (
                "images/busybox.tar",
                vec!["docker.io/library/busybox:1".to_string()]
            ),
            ("images/pause.tar", vec!["lab.local/pause:3.10".to_string()]),
            ("kubelet", vec![]),
        ]
    );
    let manifest = std::fs::read_to_string(out.join(MANIFEST)).unwrap();
    let pause_sha = sha(&std::fs::read(&pause).unwrap());
    assert!(
        manifest.contains(&format!("{pause_sha}  images/pause.tar\n")),
        "{manifest}"
    );
    assert_eq!(
        std::fs::read(out.join("images/pause.tar")).unwrap(),
        std::fs::read(&pause).unwrap()
    );

    // The reader takes images/ apart from the binaries, names and all.
    let loaded = kubeforge_bundle::load(&out).unwrap();
    assert_eq!(loaded.files.keys().collect::<Vec<_>>(), ["kubelet"]);
    let images: Vec<(&str, &[String], &str)> = loaded
        .images
        .iter()
        .map(|i| (i.file.as_str(), i.names.as_slice(), i.sha256.as_str()))
        .collect();
    assert_eq!(images.len(), 2);
    assert_eq!(
        images[1],
        (
            "pause.tar",
            &["lab.local/pause:3.10".to_string()][..],
            pause_sha.as_str()
        )
    );
    assert_eq!(loaded.images[1].path, out.join("images/pause.tar"));

    // --from a bundle takes its images/ too, checked against its SHA256SUMS.
    let again = work.path().join("again");
    let rebuilt = from_local(
        &Local {
            dir: Some(out.clone()),
            ..Default::default()
        },
        &again,
    )
    .unwrap();
    assert_eq!(rebuilt.files, built.files);
    std::fs::write(out.join("images/busybox.tar"), docker(r#"["busybox:2"]"#)).unwrap();
    let msg = from_local(
        &Local {
            dir: Some(out.clone()),
            ..Default::default()
        },
        &work.path().join("third"),
    )
    .unwrap_err()
    .to_string();
    assert!(msg.contains("images/busybox.tar: sha256 is"), "{msg}");
    assert!(!work.path().join("third").exists());
}

#[test]
fn a_nameless_or_misnamed_archive_is_refused_and_nothing_is_written() {
    let work = tempfile::tempdir().unwrap();
    let src = work.path().join("src");
    let nameless = write(
        &src,
        "nameless.tar",
        &oci(r#"{"org.opencontainers.image.ref.name":"1"}"#),
    );
    let out = work.path().join("bundle");
    let msg = from_local(
        &Local {
            images: vec![nameless.clone()],
            ..Default::default()
        },
        &out,
    )
    .unwrap_err()
    .to_string();
    assert!(
        msg.starts_with(&format!(
            "{}: the archive names no image",
            nameless.display()
        )),
        "{msg}"
    );
    assert!(msg.contains("help: save the image with its name"), "{msg}");
    assert!(msg.contains("nothing was written"), "{msg}");
    assert!(!out.exists());

    let untagged = write(&src, "untagged.tar", &docker("[]"));
    let msg = from_local(
        &Local {
            images: vec![untagged],
            ..Default::default()
        },
        &out,
    )
    .unwrap_err()
    .to_string();
    assert!(msg.contains("its manifest.json has no RepoTags"), "{msg}");

    let misnamed = write(
        &src,
        "pause.oci",
        &oci(r#"{"io.containerd.image.name":"a/b:1"}"#),
    );
    let msg = from_local(
        &Local {
            images: vec![misnamed],
            ..Default::default()
        },
        &out,
    )
    .unwrap_err()
    .to_string();
    assert!(
        msg.contains("`pause.oci` is not an image archive name"),
        "{msg}"
    );
    assert!(msg.contains("NAME.tar"), "{msg}");

    let not_an_image = write(&src, "kubelet.tar", &tar_of(&[("kubelet", b"x")]));
    let msg = from_local(
        &Local {
            images: vec![not_an_image],
            ..Default::default()
        },
        &out,
    )
    .unwrap_err()
    .to_string();
    assert!(msg.contains("neither an OCI image layout"), "{msg}");
    assert!(!out.exists());
    assert_eq!(
        std::fs::read_dir(work.path()).unwrap().count(),
        1,
        "only src/"
    );
}

/// A hand-written bundle directory with this manifest.
fn bundle_with(files: &[(&str, &[u8])]) -> (tempfile::TempDir, PathBuf) {
    let work = tempfile::tempdir().unwrap();
    let dir = work.path().join("bundle");
    let mut sums = String::new();
    for (name, data) in files {
        let p = dir.join(name);
        std::fs::create_dir_all(p.parent().unwrap()).unwrap();
        std::fs::write(&p, data).unwrap();
        sums.push_str(&format!("{}  {name}\n", sha(data)));
    }
    std::fs::write(dir.join(MANIFEST), sums).unwrap();
    (work, dir)
}

#[test]
fn the_bundle_reader_allows_images_and_no_other_sub_directory() {
    let pause = oci(r#"{"io.containerd.image.name":"lab.local/pause:3.10"}"#);
    let (_w, dir) = bundle_with(&[("kubelet", b"k"), ("images/pause.tar", &pause)]);
    let loaded = kubeforge_bundle::load(&dir).unwrap();
    assert_eq!(loaded.images.len(), 1);
    assert_eq!(loaded.images[0].names, ["lab.local/pause:3.10"]);

    let (_w, dir) = bundle_with(&[("bin/kubelet", b"k")]);
    let msg = kubeforge_bundle::load(&dir).unwrap_err().to_string();
    assert!(
        msg.contains(
            "line 1: `bin/kubelet` is in a sub-directory; only images/ (image archives) may be"
        ),
        "{msg}"
    );

    let (_w, dir) = bundle_with(&[("images/sub/pause.tar", &pause)]);
    let msg = kubeforge_bundle::load(&dir).unwrap_err().to_string();
    assert!(
        msg.contains("`sub/pause.tar` is not an image archive name"),
        "{msg}"
    );

    let (_w, dir) = bundle_with(&[("images/pause.tar", &oci("{}"))]);
    let msg = kubeforge_bundle::load(&dir).unwrap_err().to_string();
    assert!(
        msg.contains("images/pause.tar: the archive names no image"),
        "{msg}"
    );

    // A replaced archive is refused like a replaced binary.
    let (_w, dir) = bundle_with(&[("images/pause.tar", &pause)]);
    std::fs::write(dir.join("images/pause.tar"), docker(r#"["x:1"]"#)).unwrap();
    let msg = kubeforge_bundle::load(&dir).unwrap_err().to_string();
    assert!(
        msg.contains("refusing a corrupted or replaced file"),
        "{msg}"
    );
}

#[test]
fn checked_sums_are_remembered_and_a_replaced_file_is_still_refused() {
    let (w, dir) = bundle_with(&[("kubelet", b"kubelet-1"), ("etcd", b"etcd-1")]);
    let cache = w.path().join("state/bundle-sums");
    let first = kubeforge_bundle::load_cached(&dir, Some(&cache)).unwrap();
    let text = std::fs::read_to_string(&cache).unwrap();
    assert_eq!(text.lines().count(), 2, "{text}");
    let second = kubeforge_bundle::load_cached(&dir, Some(&cache)).unwrap();
    assert_eq!(first.files, second.files);
    // Replaced with other bytes of the same size: its change time moved, so
    // it is read again and refused.
    std::fs::write(dir.join("kubelet"), b"kubelet-2").unwrap();
    let msg = kubeforge_bundle::load_cached(&dir, Some(&cache))
        .unwrap_err()
        .to_string();
    assert!(
        msg.contains("refusing a corrupted or replaced file"),
        "{msg}"
    );
    // A forged cache line for a changed file does not help either: the key
    // no longer matches.
    let forged = text.replace(&sha(b"kubelet-1"), &sha(b"kubelet-2"));
    std::fs::write(&cache, forged).unwrap();
    assert!(kubeforge_bundle::load_cached(&dir, Some(&cache)).is_err());
}

#[test]
fn a_built_bundle_carries_its_files_compressed_for_the_wire_and_their_sums() {
    let work = tempfile::tempdir().unwrap();
    let src = work.path().join("src");
    let kubelet = write(&src, "kubelet", &b"kubelet binary\n".repeat(1000));
    let pause = write(
        &src,
        "pause.tar",
        &oci(r#"{"io.containerd.image.name":"lab.local/pause:3.10"}"#),
    );
    let out = work.path().join("bundle");
    let built = from_local(
        &Local {
            dir: None,
            files: vec![kubelet.clone()],
            images: vec![pause.clone()],
        },
        &out,
    )
    .unwrap();
    assert!(
        built.wire_size > 0 && built.wire_size < 15_000,
        "{}",
        built.wire_size
    );
    for (file, name) in [(&kubelet, "kubelet"), (&pause, "images/pause.tar")] {
        let data = std::fs::read(file).unwrap();
        let wire = kubeforge_bundle::wire::wire_file(&out, &sha(&data));
        assert_eq!(
            zstd::decode_all(&std::fs::read(&wire).unwrap()[..]).unwrap(),
            data,
            "{name}"
        );
    }
    let sums_file = out.join(".kubeforge/sums");
    let sums = std::fs::read_to_string(&sums_file).unwrap();
    let kubelet_sha = sha(&std::fs::read(&kubelet).unwrap());
    assert!(
        sums.lines()
            .any(|l| l.ends_with(&format!(" {kubelet_sha} kubelet"))),
        "{sums}"
    );
    assert_eq!(sums.lines().count(), 2, "{sums}");

    // The reader takes the bundle's sums as checked: a line with the
    // file's key is believed (here a forged sum, so it is refused without
    // reading the file)...
    let forged = sums.replace(&kubelet_sha, &sha(b"other"));
    std::fs::write(&sums_file, &forged).unwrap();
    let msg = kubeforge_bundle::load(&out).unwrap_err().to_string();
    assert!(
        msg.contains(&format!("has sha256 {}", sha(b"other"))),
        "{msg}"
    );
    // ...and a file changed since has another key, so it is read.
    let data = std::fs::read(out.join("kubelet")).unwrap();
    std::fs::remove_file(out.join("kubelet")).unwrap();
    std::fs::write(out.join("kubelet"), &data).unwrap();
    let loaded = kubeforge_bundle::load(&out).unwrap();
    assert_eq!(loaded.files["kubelet"].1, kubelet_sha);

    // `--from` a bundle takes its files, not what it keeps for apply.
    let again = from_local(
        &Local {
            dir: Some(out.clone()),
            ..Default::default()
        },
        &work.path().join("again"),
    )
    .unwrap();
    assert_eq!(again.files, built.files);
}
