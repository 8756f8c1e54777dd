//! Container images for the lab, built here: no registry is reachable
//! from the lab, so the tests make their own images as OCI image layout
//! tar files (what `ctr images import` reads). Each holds one layer with
//! Debian's static busybox (`/bin/busybox`, package busybox-static, which
//! tests/setup.sh installs) and its applets as symlinks, and is named by
//! the `io.containerd.image.name` annotation. The archives are
//! byte-for-byte reproducible.

use serde_json::json;
use sha2::{Digest, Sha256};
use std::io::Write as _;
use std::path::Path;

/// Where Debian's busybox-static installs busybox.
pub const BUSYBOX: &str = "/bin/busybox";

/// The applets linked in `/bin` of every image.
pub const APPLETS: [&str; 14] = [
    "sh", "echo", "cat", "sleep", "hostname", "nc", "ls", "true", "false", "ps", "id", "wget",
    "httpd", "mkdir",
];

fn sha256_hex(bytes: &[u8]) -> String {
    Sha256::digest(bytes)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// The OCI architecture name of this machine (the nodes share its kernel
/// and run its busybox).
pub fn oci_arch() -> &'static str {
    match std::env::consts::ARCH {
        "x86_64" => "amd64",
        "aarch64" => "arm64",
        "arm" => "arm",
        "riscv64" => "riscv64",
        "powerpc64" => "ppc64le",
        "s390x" => "s390x",
        other => other,
    }
}

fn header(kind: tar::EntryType, mode: u32, size: u64) -> tar::Header {
    let mut h = tar::Header::new_ustar();
    h.set_entry_type(kind);
    h.set_mode(mode);
    h.set_size(size);
    h.set_mtime(0);
    h.set_uid(0);
    h.set_gid(0);
    h
}

/// The layer: `/bin/busybox`, its applets, and the directories a
/// container's mounts need.
fn layer(busybox: &[u8]) -> std::io::Result<Vec<u8>> {
    let mut b = tar::Builder::new(Vec::new());
    for (dir, mode) in [
        ("bin/", 0o755),
        ("dev/", 0o755),
        ("etc/", 0o755),
        ("proc/", 0o555),
        ("sys/", 0o555),
        ("tmp/", 0o1777),
    ] {
        let mut h = header(tar::EntryType::Directory, mode, 0);
        b.append_data(&mut h, dir, std::io::empty())?;
    }
    let mut h = header(tar::EntryType::Regular, 0o755, busybox.len() as u64);
    b.append_data(&mut h, "bin/busybox", busybox)?;
    for applet in APPLETS {
        let mut h = header(tar::EntryType::Symlink, 0o777, 0);
        b.append_link(&mut h, format!("bin/{applet}"), "busybox")?;
    }
    b.into_inner()
}

fn gzip(data: &[u8]) -> std::io::Result<Vec<u8>> {
    let mut gz = flate2::GzBuilder::new()
        .mtime(0)
        .write(Vec::new(), flate2::Compression::default());
    gz.write_all(data)?;
    gz.finish()
}

/// Builds `out`: an OCI image layout tar of one busybox image named `name`
/// (a whole reference such as `lab.local/busybox:1`) whose command is
/// `cmd`, from the busybox binary at `busybox`.
pub fn busybox_image(busybox: &Path, name: &str, cmd: &[&str], out: &Path) -> Result<(), String> {
    let ctx = |what: &str| {
        let out = out.display().to_string();
        let what = what.to_string();
        move |e: std::io::Error| format!("building image {out}: {what}: {e}")
    };
    let bin = std::fs::read(busybox).map_err(|e| {
        format!(
            "reading {}: {e} (Debian's busybox-static installs it; tests/setup.sh does that)",
            busybox.display()
        )
    })?;
    let layer = layer(&bin).map_err(ctx("the layer"))?;
    let layer_gz = gzip(&layer).map_err(ctx("compressing the layer"))?;
    let config = serde_json::to_vec(&json!({
        "architecture": oci_arch(),
        "os": "linux",
        "config": { "Cmd": cmd, "Env": ["PATH=/bin"], "WorkingDir": "/" },
        "rootfs": { "type": "layers", "diff_ids": [format!("sha256:{}", sha256_hex(&layer))] },
    }))
    .map_err(|e| e.to_string())?;
    let manifest = serde_json::to_vec(&json!({
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "config": {
            "mediaType": "application/vnd.oci.image.config.v1+json",
            "digest": format!("sha256:{}", sha256_hex(&config)),
            "size": config.len(),
        },
        "layers": [{
            "mediaType": "application/vnd.oci.image.layer.v1.tar+gzip",
            "digest": format!("sha256:{}", sha256_hex(&layer_gz)),
            "size": layer_gz.len(),
        }],
    }))
    .map_err(|e| e.to_string())?;
    let tag = name
        .rsplit_once(':')
        .map(|(_, t)| t)
        .filter(|t| !t.contains('/'))
        .unwrap_or("latest");
    let index = serde_json::to_vec(&json!({
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.index.v1+json",
        "manifests": [{
            "mediaType": "application/vnd.oci.image.manifest.v1+json",
            "digest": format!("sha256:{}", sha256_hex(&manifest)),
            "size": manifest.len(),
            "annotations": {
                "io.containerd.image.name": name,
                "org.opencontainers.image.ref.name": tag,
            },
        }],
    }))
    .map_err(|e| e.to_string())?;
    let mut b = tar::Builder::new(Vec::new());
    let mut add = |path: String, data: &[u8]| {
        let mut h = header(tar::EntryType::Regular, 0o644, data.len() as u64);
        b.append_data(&mut h, path, data)
    };
    add("oci-layout".into(), br#"{"imageLayoutVersion":"1.0.0"}"#).map_err(ctx("oci-layout"))?;
    add("index.json".into(), &index).map_err(ctx("index.json"))?;
    for blob in [&layer_gz, &config, &manifest] {
        add(format!("blobs/sha256/{}", sha256_hex(blob)), blob).map_err(ctx("a blob"))?;
    }
    let archive = b.into_inner().map_err(ctx("the archive"))?;
    std::fs::write(out, archive).map_err(ctx("writing"))
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use std::collections::BTreeMap;
    use std::io::Read as _;

    fn files_of(tar_bytes: &[u8]) -> BTreeMap<String, Vec<u8>> {
        let mut out = BTreeMap::new();
        let mut a = tar::Archive::new(tar_bytes);
        for e in a.entries().unwrap() {
            let mut e = e.unwrap();
            let path = e.path().unwrap().display().to_string();
            let mut data = Vec::new();
            e.read_to_end(&mut data).unwrap();
            out.insert(path, data);
        }
        out
    }

    #[test]
    fn busybox_image_is_a_named_consistent_reproducible_oci_layout() {
        let dir = tempfile::tempdir().unwrap();
        let fake = dir.path().join("busybox");
        std::fs::write(&fake, b"\x7fELF not really busybox").unwrap();
        let out = dir.path().join("busybox.tar");
        busybox_image(&fake, "lab.local/busybox:1", &["/bin/sh"], &out).unwrap();

        let names = kubeforge_images::read_names(&out).unwrap();
        assert_eq!(names.format, kubeforge_images::Format::Oci);
        assert_eq!(names.names, ["lab.local/busybox:1"]);

        // Every descriptor points at a blob with that digest and size.
        let files = files_of(&std::fs::read(&out).unwrap());
        let blob = |d: &serde_json::Value| {
            let digest = d["digest"].as_str().unwrap();
            let hex = digest.strip_prefix("sha256:").unwrap();
            let data = &files[&format!("blobs/sha256/{hex}")];
            assert_eq!(sha256_hex(data), hex);
            assert_eq!(d["size"].as_u64().unwrap(), data.len() as u64);
            data.clone()
        };
        let index: serde_json::Value = serde_json::from_slice(&files["index.json"]).unwrap();
        let manifest: serde_json::Value =
            serde_json::from_slice(&blob(&index["manifests"][0])).unwrap();
        let config: serde_json::Value = serde_json::from_slice(&blob(&manifest["config"])).unwrap();
        assert_eq!(config["architecture"], oci_arch());
        assert_eq!(config["config"]["Cmd"], json!(["/bin/sh"]));
        let layer_gz = blob(&manifest["layers"][0]);
        let mut layer = Vec::new();
        flate2::read::GzDecoder::new(&layer_gz[..])
            .read_to_end(&mut layer)
            .unwrap();
        assert_eq!(
            config["rootfs"]["diff_ids"][0],
            format!("sha256:{}", sha256_hex(&layer))
        );
        let layer_files = files_of(&layer);
        assert_eq!(layer_files["bin/busybox"], b"\x7fELF not really busybox");
        assert!(layer_files.contains_key("bin/sh"));

        // The same input gives the same bytes.
        let again = dir.path().join("again.tar");
        busybox_image(&fake, "lab.local/busybox:1", &["/bin/sh"], &again).unwrap();
        assert_eq!(std::fs::read(&out).unwrap(), std::fs::read(&again).unwrap());
    }

    #[test]
    fn a_missing_busybox_says_where_it_comes_from() {
        let dir = tempfile::tempdir().unwrap();
        let err = busybox_image(
            &dir.path().join("none"),
            "x.local/y:1",
            &["/bin/sh"],
            &dir.path().join("o.tar"),
        )
        .unwrap_err();
        assert!(err.contains("busybox-static"), "{err}");
    }
}
