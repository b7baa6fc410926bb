//! Looking into an S3 bucket from a test (what strata-content's `s3` backend left there),
//! through object_store, the client strata-content itself uses.

use std::time::Duration;

use futures::TryStreamExt;
use object_store::aws::{AmazonS3, AmazonS3Builder};
use object_store::path::Path as ObjectPath;
use object_store::{ClientOptions, ObjectStore, WriteMultipart};

use crate::error::{Error, Result};
use crate::garage::GarageCluster;

/// One bucket of an S3-compatible store, path-style.
#[derive(Debug)]
pub struct Bucket {
    store: AmazonS3,
    describe: String,
}

impl Bucket {
    pub fn new(
        endpoint: &str,
        region: &str,
        bucket: &str,
        access_key_id: &str,
        secret_access_key: &str,
    ) -> Result<Bucket> {
        let describe = format!("{endpoint} bucket {bucket}");
        let store = AmazonS3Builder::new()
            .with_endpoint(endpoint)
            .with_region(region)
            .with_bucket_name(bucket)
            .with_access_key_id(access_key_id)
            .with_secret_access_key(secret_access_key)
            .with_allow_http(true)
            .with_virtual_hosted_style_request(false)
            .with_client_options(
                ClientOptions::new()
                    .with_allow_http(true)
                    .with_timeout(Duration::from_secs(30))
                    .with_connect_timeout(Duration::from_secs(5)),
            )
            .build()
            .map_err(|e| Error::new(format!("object store {describe}: {e}")))?;
        Ok(Bucket { store, describe })
    }

    /// The cluster's bucket through node `node`'s S3 endpoint, with the cluster's key.
    pub fn garage(cluster: &GarageCluster, node: usize) -> Result<Bucket> {
        Bucket::new(
            &cluster.endpoint(node),
            cluster.region(),
            cluster.bucket(),
            cluster.access_key_id(),
            cluster.secret_access_key(),
        )
    }

    /// Every key below `prefix` (`a/b/` or `a/b`: the keys under `a/b/`), sorted.
    pub async fn list_keys(&self, prefix: &str) -> Result<Vec<String>> {
        let prefix = ObjectPath::from(prefix);
        let mut keys: Vec<String> = self
            .store
            .list(Some(&prefix))
            .map_ok(|meta| meta.location.to_string())
            .try_collect()
            .await
            .map_err(|e| Error::new(format!("listing {prefix} in {}: {e}", self.describe)))?;
        keys.sort();
        Ok(keys)
    }

    /// Every object below `prefix` as (key, `last-modified e-tag`), sorted: a blob uploaded
    /// again under the same key shows as another version.
    pub async fn list_versions(&self, prefix: &str) -> Result<Vec<(String, String)>> {
        let prefix = ObjectPath::from(prefix);
        let mut objects: Vec<(String, String)> = self
            .store
            .list(Some(&prefix))
            .map_ok(|meta| {
                let version = format!("{} {:?}", meta.last_modified, meta.e_tag);
                (meta.location.to_string(), version)
            })
            .try_collect()
            .await
            .map_err(|e| Error::new(format!("listing {prefix} in {}: {e}", self.describe)))?;
        objects.sort();
        Ok(objects)
    }

    /// Whether object `key` exists (a HEAD).
    pub async fn exists(&self, key: &str) -> Result<bool> {
        match self.store.head(&ObjectPath::from(key)).await {
            Ok(_) => Ok(true),
            Err(object_store::Error::NotFound { .. }) => Ok(false),
            Err(e) => Err(Error::new(format!("HEAD {key} in {}: {e}", self.describe))),
        }
    }

    /// Stores `data` as object `key` (one PUT).
    pub async fn put(&self, key: &str, data: Vec<u8>) -> Result<()> {
        self.store
            .put(&ObjectPath::from(key), data.into())
            .await
            .map(drop)
            .map_err(|e| Error::new(format!("PUT {key} in {}: {e}", self.describe)))
    }

    /// Stores `data` as object `key` in a multipart upload of `part` bytes per part, up to
    /// `concurrency` parts in flight: what strata-content's commit does with a large blob,
    /// without strata in between.
    pub async fn put_multipart(
        &self,
        key: &str,
        data: &[u8],
        part: usize,
        concurrency: usize,
    ) -> Result<()> {
        let err = |e: object_store::Error| {
            Error::new(format!("multipart PUT {key} in {}: {e}", self.describe))
        };
        let upload = self
            .store
            .put_multipart(&ObjectPath::from(key))
            .await
            .map_err(err)?;
        let mut w = WriteMultipart::new_with_chunk_size(upload, part);
        for chunk in data.chunks(part) {
            w.wait_for_capacity(concurrency).await.map_err(err)?;
            w.write(chunk);
        }
        w.finish().await.map(drop).map_err(err)
    }

    /// [`list_keys`](Self::list_keys) from synchronous code (not from inside a tokio runtime).
    pub fn keys(&self, prefix: &str) -> Result<Vec<String>> {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .map_err(|e| Error::io("starting a tokio runtime", e))?;
        rt.block_on(self.list_keys(prefix))
    }
}
