//! OCI image archives (index.json, oci-layout, blobs/sha256/...) that `ctr images import` accepts.
//!
//! The layout follows mkimage.py: the config and manifest are compact JSON with sorted keys,
//! the index carries the reference both as `org.opencontainers.image.ref.name` and as
//! `io.containerd.image.name` (which `ctr images import` registers as the image name as is),
//! and every file in the archive has a fixed mtime, so the same layers give the same bytes.

use std::collections::{BTreeMap, HashSet};
use std::fs;
use std::io::{self, BufWriter, Write};
use std::path::Path;

use serde_json::json;

use crate::layer::Layer;
use crate::tarw::{Header, TarFormat, TarWriter};
use crate::tree::Tree;

const OCI_MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";
const OCI_CONFIG: &str = "application/vnd.oci.image.config.v1+json";
const OCI_INDEX: &str = "application/vnd.oci.image.index.v1+json";
const DOCKER_MANIFEST: &str = "application/vnd.docker.distribution.manifest.v2+json";
const DOCKER_CONFIG: &str = "application/vnd.docker.container.image.v1+json";

/// `created` of configs and history: the same instant as [`crate::DEFAULT_MTIME`].
pub const CREATED: &str = "2023-11-14T22:13:20Z";

/// The OCI architecture name of the machine running the tests (the busybox fixture copies the
/// host's binary, so the image has to claim the host's platform for `ctr run`).
pub fn host_architecture() -> &'static str {
    match std::env::consts::ARCH {
        "x86_64" => "amd64",
        "aarch64" => "arm64",
        "x86" => "386",
        "powerpc64" if cfg!(target_endian = "little") => "ppc64le",
        "powerpc64" => "ppc64",
        "loongarch64" => "loong64",
        other => other,
    }
}

/// Collects layers and config settings for an [`Image`].
#[derive(Clone, Debug)]
pub struct ImageBuilder {
    name: String,
    layers: Vec<Layer>,
    env: Vec<String>,
    cmd: Option<Vec<String>>,
    entrypoint: Option<Vec<String>>,
    working_dir: String,
    labels: BTreeMap<String, String>,
    architecture: String,
    os: String,
    created_by: String,
    docker: bool,
}

impl ImageBuilder {
    /// `name` is the full reference containerd will know the image by, e.g.
    /// `localhost/test/foo:latest`.
    pub fn new(name: impl Into<String>) -> ImageBuilder {
        ImageBuilder {
            name: name.into(),
            layers: Vec::new(),
            env: vec!["PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin".into()],
            cmd: None,
            entrypoint: None,
            working_dir: "/".into(),
            labels: BTreeMap::new(),
            architecture: host_architecture().into(),
            os: "linux".into(),
            created_by: "strata-testkit".into(),
            docker: false,
        }
    }

    pub fn layer(mut self, layer: Layer) -> Self {
        self.layers.push(layer);
        self
    }

    pub fn layers(mut self, layers: impl IntoIterator<Item = Layer>) -> Self {
        self.layers.extend(layers);
        self
    }

    /// Adds `KEY=value` to the environment, replacing an earlier value of the same key.
    pub fn env(mut self, kv: impl Into<String>) -> Self {
        let kv = kv.into();
        let key = kv.split('=').next().unwrap_or_default().to_string();
        self.env
            .retain(|e| e.split('=').next() != Some(key.as_str()));
        self.env.push(kv);
        self
    }

    pub fn cmd<S: Into<String>>(mut self, args: impl IntoIterator<Item = S>) -> Self {
        self.cmd = Some(args.into_iter().map(Into::into).collect());
        self
    }

    pub fn entrypoint<S: Into<String>>(mut self, args: impl IntoIterator<Item = S>) -> Self {
        self.entrypoint = Some(args.into_iter().map(Into::into).collect());
        self
    }

    pub fn working_dir(mut self, dir: impl Into<String>) -> Self {
        self.working_dir = dir.into();
        self
    }

    pub fn label(mut self, key: impl Into<String>, value: impl Into<String>) -> Self {
        self.labels.insert(key.into(), value.into());
        self
    }

    pub fn platform(mut self, os: impl Into<String>, architecture: impl Into<String>) -> Self {
        self.os = os.into();
        self.architecture = architecture.into();
        self
    }

    /// History entries read `<created_by>: <layer comment>`.
    pub fn created_by(mut self, created_by: impl Into<String>) -> Self {
        self.created_by = created_by.into();
        self
    }

    /// Docker schema 2 manifest and config media types, and Docker layer media types.
    pub fn docker(mut self) -> Self {
        self.docker = true;
        self
    }

    pub fn build(self) -> io::Result<Image> {
        let mut layers = self.layers;
        if self.docker {
            layers = layers.into_iter().map(Layer::docker).collect();
        }
        let diff_ids: Vec<&str> = layers.iter().map(|l| l.diff_id.as_str()).collect();
        let mut cfg = serde_json::Map::new();
        cfg.insert("Env".into(), json!(self.env));
        cfg.insert("WorkingDir".into(), json!(self.working_dir));
        if let Some(cmd) = &self.cmd {
            cfg.insert("Cmd".into(), json!(cmd));
        }
        if let Some(ep) = &self.entrypoint {
            cfg.insert("Entrypoint".into(), json!(ep));
        }
        if !self.labels.is_empty() {
            cfg.insert("Labels".into(), json!(self.labels));
        }
        let history: Vec<serde_json::Value> = layers
            .iter()
            .map(|l| {
                let by = if l.comment.is_empty() {
                    self.created_by.clone()
                } else {
                    format!("{}: {}", self.created_by, l.comment)
                };
                json!({"created": CREATED, "created_by": by})
            })
            .collect();
        let config = json!({
            "architecture": self.architecture,
            "os": self.os,
            "created": CREATED,
            "config": cfg,
            "rootfs": {"type": "layers", "diff_ids": diff_ids},
            "history": history,
        });
        let config = to_json(&config)?;
        let (manifest_type, config_type) = if self.docker {
            (DOCKER_MANIFEST, DOCKER_CONFIG)
        } else {
            (OCI_MANIFEST, OCI_CONFIG)
        };
        let manifest = json!({
            "schemaVersion": 2,
            "mediaType": manifest_type,
            "config": {
                "mediaType": config_type,
                "digest": crate::sha256_digest(&config),
                "size": config.len(),
            },
            "layers": layers.iter().map(Layer::descriptor).collect::<Vec<_>>(),
        });
        let manifest = to_json(&manifest)?;
        let index = json!({
            "schemaVersion": 2,
            "mediaType": OCI_INDEX,
            "manifests": [{
                "mediaType": manifest_type,
                "digest": crate::sha256_digest(&manifest),
                "size": manifest.len(),
                "platform": {"architecture": self.architecture, "os": self.os},
                "annotations": {
                    "org.opencontainers.image.ref.name": self.name,
                    "io.containerd.image.name": self.name,
                },
            }],
        });
        let index = to_json(&index)?;
        Ok(Image {
            name: self.name,
            layers,
            config,
            manifest,
            index,
            manifest_type,
        })
    }
}

fn to_json(v: &serde_json::Value) -> io::Result<Vec<u8>> {
    // serde_json's map is ordered by key, so this is Python's sort_keys + compact separators.
    serde_json::to_vec(v).map_err(io::Error::other)
}

/// A built image: its layers, config and manifest, ready to be written as an archive.
#[derive(Clone, Debug)]
pub struct Image {
    /// The reference `ctr images import` registers, e.g. `localhost/bench/busybox:gzip`.
    pub name: String,
    layers: Vec<Layer>,
    config: Vec<u8>,
    manifest: Vec<u8>,
    index: Vec<u8>,
    manifest_type: &'static str,
}

/// containerd's chain IDs: `chain[0] = diff_ids[0]`,
/// `chain[i] = sha256(chain[i-1] + " " + diff_ids[i])`.
pub fn chain_ids(diff_ids: &[String]) -> Vec<String> {
    let mut out: Vec<String> = Vec::with_capacity(diff_ids.len());
    for d in diff_ids {
        let next = match out.last() {
            None => d.clone(),
            Some(prev) => crate::sha256_digest(format!("{prev} {d}").as_bytes()),
        };
        out.push(next);
    }
    out
}

impl Image {
    pub fn builder(name: impl Into<String>) -> ImageBuilder {
        ImageBuilder::new(name)
    }

    /// The layers, bottom first, each with its descriptor data and source changes.
    pub fn layers(&self) -> &[Layer] {
        &self.layers
    }

    pub fn config(&self) -> &[u8] {
        &self.config
    }

    pub fn manifest(&self) -> &[u8] {
        &self.manifest
    }

    pub fn index(&self) -> &[u8] {
        &self.index
    }

    pub fn config_digest(&self) -> String {
        crate::sha256_digest(&self.config)
    }

    pub fn manifest_digest(&self) -> String {
        crate::sha256_digest(&self.manifest)
    }

    /// The manifest's descriptor (what containerd's image record points at).
    pub fn manifest_descriptor(&self) -> serde_json::Value {
        json!({
            "mediaType": self.manifest_type,
            "digest": self.manifest_digest(),
            "size": self.manifest.len(),
        })
    }

    pub fn diff_ids(&self) -> Vec<String> {
        self.layers.iter().map(|l| l.diff_id.clone()).collect()
    }

    /// The chain IDs of the layers; the last one names the snapshot the image unpacks to.
    pub fn chain_ids(&self) -> Vec<String> {
        chain_ids(&self.diff_ids())
    }

    /// The root filesystem the image should unpack to: every layer applied in order with OCI
    /// whiteout semantics. The root's own metadata and the mtimes of directories whose
    /// content changed after their last entry are unknown (`None`) and not compared.
    pub fn expected_tree(&self) -> io::Result<Tree> {
        let mut tree = Tree::new();
        for l in &self.layers {
            match l.source_changes() {
                Some(c) => tree.apply_changes(c)?,
                None => tree.apply_changes(&l.changes()?)?,
            }
        }
        Ok(tree)
    }

    /// Writes the image as an OCI archive (a tar) at `path`, via a temporary file renamed
    /// into place so a reader never sees half an archive.
    pub fn write_archive(&self, path: &Path) -> io::Result<()> {
        let mut tmp = path.as_os_str().to_owned();
        tmp.push(".tmp");
        let tmp = std::path::PathBuf::from(tmp);
        let ctx =
            |e: io::Error| io::Error::new(e.kind(), format!("writing {}: {e}", path.display()));
        let file = fs::File::create(&tmp).map_err(ctx)?;
        let result = self
            .write_archive_to(BufWriter::with_capacity(1 << 20, file))
            .and_then(|w| w.into_inner().map_err(|e| e.into_error()))
            .and_then(|f| f.sync_all());
        if let Err(e) = result {
            let _ = fs::remove_file(&tmp);
            return Err(ctx(e));
        }
        fs::rename(&tmp, path).map_err(ctx)
    }

    /// The archive streamed into `w`: `oci-layout`, `index.json`, the layer blobs, the
    /// config and the manifest, in mkimage.py's order.
    pub fn write_archive_to<W: Write>(&self, w: W) -> io::Result<W> {
        let mut tw = TarWriter::new(w, TarFormat::Pax);
        let file = |tw: &mut TarWriter<W>, name: &str, data: &[u8]| {
            tw.append(
                &archive_header(name.as_bytes(), b'0', 0o644, data.len() as u64),
                &mut &data[..],
            )
        };
        file(&mut tw, "oci-layout", br#"{"imageLayoutVersion":"1.0.0"}"#)?;
        file(&mut tw, "index.json", &self.index)?;
        tw.append(&archive_header(b"blobs/", b'5', 0o755, 0), &mut io::empty())?;
        tw.append(
            &archive_header(b"blobs/sha256/", b'5', 0o755, 0),
            &mut io::empty(),
        )?;
        let mut seen = HashSet::new();
        for l in &self.layers {
            if !seen.insert(l.digest.clone()) {
                continue;
            }
            let name = blob_path(&l.digest);
            tw.append(
                &archive_header(name.as_bytes(), b'0', 0o644, l.size),
                &mut l.blob.open()?,
            )?;
        }
        for data in [&self.config, &self.manifest] {
            file(&mut tw, &blob_path(&crate::sha256_digest(data)), data)?;
        }
        tw.finish()
    }

    pub fn archive_bytes(&self) -> io::Result<Vec<u8>> {
        self.write_archive_to(Vec::new())
    }
}

fn blob_path(digest: &str) -> String {
    match digest.split_once(':') {
        Some((alg, hex)) => format!("blobs/{alg}/{hex}"),
        None => format!("blobs/sha256/{digest}"),
    }
}

fn archive_header(name: &[u8], typeflag: u8, mode: u32, size: u64) -> Header<'_> {
    Header {
        name,
        typeflag,
        mode,
        uid: 0,
        gid: 0,
        size,
        mtime: crate::DEFAULT_MTIME,
        mtime_nanos: 0,
        linkname: b"",
        devmajor: 0,
        devminor: 0,
        pax: &[],
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::Compression;
    use crate::layer::read_raw;
    use crate::tree::*;

    fn test_image(c: Compression) -> Image {
        let l1 = Layer::new(crate::tree![dir("etc", 0o755), file("etc/a", "1")], c).unwrap();
        let l2 = Layer::new(crate::tree![remove("etc/a"), file("etc/b", "2")], c)
            .unwrap()
            .with_comment("second");
        ImageBuilder::new("localhost/test/img:latest")
            .layer(l1)
            .layer(l2)
            .cmd(["/bin/sh"])
            .env("FOO=bar")
            .build()
            .unwrap()
    }

    #[test]
    fn archive_is_a_consistent_oci_layout() {
        let img = test_image(Compression::Gzip);
        let archive = img.archive_bytes().unwrap();
        let entries = read_raw(&archive[..]).unwrap();
        let get = |name: &str| {
            entries
                .iter()
                .find(|e| e.name == name.as_bytes())
                .unwrap_or_else(|| panic!("{name} missing"))
                .data
                .clone()
        };
        let names: Vec<String> = entries
            .iter()
            .map(|e| String::from_utf8_lossy(&e.name).into_owned())
            .collect();
        assert_eq!(
            &names[..4],
            ["oci-layout", "index.json", "blobs/", "blobs/sha256/"]
        );
        assert_eq!(names.len(), 4 + 2 + 2);
        let index: serde_json::Value = serde_json::from_slice(&get("index.json")).unwrap();
        let m = &index["manifests"][0];
        assert_eq!(
            m["annotations"]["io.containerd.image.name"],
            "localhost/test/img:latest"
        );
        assert_eq!(
            m["annotations"]["org.opencontainers.image.ref.name"],
            "localhost/test/img:latest"
        );
        assert_eq!(m["platform"]["architecture"], host_architecture());
        let mdigest = m["digest"].as_str().unwrap();
        assert_eq!(mdigest, img.manifest_digest());
        let manifest = get(&blob_path(mdigest));
        let manifest: serde_json::Value = serde_json::from_slice(&manifest).unwrap();
        let config = get(&blob_path(manifest["config"]["digest"].as_str().unwrap()));
        let config: serde_json::Value = serde_json::from_slice(&config).unwrap();
        assert_eq!(config["rootfs"]["diff_ids"], json!(img.diff_ids()));
        assert_eq!(config["config"]["Cmd"], json!(["/bin/sh"]));
        assert!(
            config["config"]["Env"]
                .as_array()
                .unwrap()
                .contains(&json!("FOO=bar"))
        );
        assert_eq!(config["history"][1]["created_by"], "strata-testkit: second");
        for (desc, layer) in manifest["layers"]
            .as_array()
            .unwrap()
            .iter()
            .zip(img.layers())
        {
            assert_eq!(desc, &layer.descriptor());
            let blob = get(&blob_path(desc["digest"].as_str().unwrap()));
            assert_eq!(crate::sha256_digest(&blob), layer.digest);
            assert_eq!(blob.len() as u64, layer.size);
            assert_eq!(
                desc["mediaType"],
                "application/vnd.oci.image.layer.v1.tar+gzip"
            );
        }
        // Determinism of the whole archive.
        assert_eq!(
            archive,
            test_image(Compression::Gzip).archive_bytes().unwrap()
        );
        assert_eq!(img.chain_ids().len(), 2);
        assert_eq!(img.chain_ids()[0], img.diff_ids()[0]);
    }

    #[test]
    fn expected_tree_merges_layers() {
        let img = test_image(Compression::Zstd);
        let t = img.expected_tree().unwrap();
        let paths: Vec<_> = t.paths().map(|p| p.display().to_string()).collect();
        assert_eq!(paths, ["etc", "etc/b"]);
        // The layer's own tree is what that layer alone unpacks to.
        assert!(img.layers()[0].tree().unwrap().contains("etc/a"));
    }

    #[test]
    fn write_archive_to_path_and_docker_types() {
        let dir = tempfile::tempdir().unwrap();
        let img = ImageBuilder::new("localhost/test/d:1")
            .layer(Layer::new(crate::tree![file("x", "y")], Compression::Gzip).unwrap())
            .docker()
            .build()
            .unwrap();
        let path = dir.path().join("d.tar");
        img.write_archive(&path).unwrap();
        assert_eq!(fs::read(&path).unwrap(), img.archive_bytes().unwrap());
        let manifest: serde_json::Value = serde_json::from_slice(img.manifest()).unwrap();
        assert_eq!(manifest["mediaType"], DOCKER_MANIFEST);
        assert_eq!(
            manifest["layers"][0]["mediaType"],
            "application/vnd.docker.image.rootfs.diff.tar.gzip"
        );
    }

    #[test]
    fn chain_ids_match_containerd() {
        // identity.ChainID: the first is the diff_id itself, then sha256("<parent> <diff_id>").
        let ids = vec![
            "sha256:d269e46475ec6f7d4b612a818969b9bb24176ded1e65d2db7810fedc1ee79837".to_string(),
            "sha256:4ece5b55fb8360749b0764eb2e5d9dcd5170bf79a49fe8d5a55657bba34762b3".to_string(),
        ];
        let chain = chain_ids(&ids);
        assert_eq!(chain[0], ids[0]);
        assert_eq!(
            chain[1],
            crate::sha256_digest(format!("{} {}", ids[0], ids[1]).as_bytes())
        );
    }
}
