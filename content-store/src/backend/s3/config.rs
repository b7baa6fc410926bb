//! The `[content.s3]` table, and the object store client built from it. Secrets never sit in
//! the config: keys come from the standard `AWS_*` environment or from a credentials file the
//! config names (AWS's shared-credentials format), so `--print-config` has nothing to hide.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use object_store::aws::AmazonS3Builder;
use object_store::{ClientOptions, ObjectStore, RetryConfig};
use serde::{Deserialize, Serialize};
use strata_common::{Error, Result};

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct S3Config {
    /// `http(s)://host:port` of an S3-compatible service; empty: AWS itself (or `AWS_ENDPOINT`).
    pub endpoint: String,
    pub region: String,
    pub bucket: String,
    /// Prepended to every key, so several fleets (or stores) can share one bucket.
    pub prefix: String,
    /// `endpoint/bucket/key` instead of `bucket.endpoint/key` (MinIO, Garage, Ceph RGW).
    pub path_style: bool,
    /// Plain HTTP is refused unless asked for here.
    pub allow_http: bool,
    /// AWS shared-credentials file (`aws_access_key_id`, `aws_secret_access_key`, optional
    /// `aws_session_token`); without it the `AWS_*` environment is used.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub credentials_file: Option<PathBuf>,
    /// The section of `credentials_file` to read.
    pub profile: String,
    /// This node's name in the bucket's reference markers; empty: a random id made once and
    /// kept in `<root>/node-id`. Must differ between nodes sharing a prefix.
    pub node_id: String,
    /// Local cache of blobs read or written, evicting the least recently read beyond this
    /// (0: no limit).
    pub cache_max_bytes: u64,
    pub request_timeout_secs: u64,
    pub connect_timeout_secs: u64,
    pub max_retries: usize,
    /// Give up retrying a request after this long; every call stays bounded.
    pub retry_timeout_secs: u64,
    /// Blobs at least this large are uploaded in parts, several at once.
    pub multipart_threshold_bytes: u64,
    pub part_bytes: u64,
    pub upload_concurrency: usize,
    /// Ranged GETs of `part_bytes` kept in flight while a blob is read into the cache.
    pub read_ahead: usize,
    /// A blob no node references is deleted from the bucket this long after its last
    /// reference went (see content-store/README.md, "Garbage collection across nodes").
    pub gc_grace_secs: u64,
    /// How often this node looks for such blobs (0: never; another node must then).
    pub gc_interval_secs: u64,
}

impl Default for S3Config {
    fn default() -> Self {
        S3Config {
            endpoint: String::new(),
            region: "us-east-1".into(),
            bucket: String::new(),
            prefix: String::new(),
            path_style: false,
            allow_http: false,
            credentials_file: None,
            profile: "default".into(),
            node_id: String::new(),
            cache_max_bytes: 0,
            request_timeout_secs: 30,
            connect_timeout_secs: 5,
            max_retries: 3,
            retry_timeout_secs: 30,
            multipart_threshold_bytes: 32 << 20,
            part_bytes: 8 << 20,
            upload_concurrency: 4,
            read_ahead: 4,
            gc_grace_secs: 3600,
            gc_interval_secs: 300,
        }
    }
}

/// Keys read from a credentials file.
#[derive(Clone, PartialEq, Eq)]
pub struct Credentials {
    pub access_key_id: String,
    pub secret_access_key: String,
    pub session_token: Option<String>,
}

impl std::fmt::Debug for Credentials {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Credentials")
            .field("access_key_id", &self.access_key_id)
            .finish_non_exhaustive()
    }
}

/// Parses AWS's INI credentials format and returns `profile`'s keys.
pub fn parse_credentials(text: &str, profile: &str) -> Option<Credentials> {
    let mut section = String::new();
    let (mut id, mut secret, mut token) = (None, None, None);
    for line in text.lines() {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') || line.starts_with(';') {
            continue;
        }
        if let Some(name) = line.strip_prefix('[').and_then(|l| l.strip_suffix(']')) {
            section = name.trim().to_string();
            continue;
        }
        if section != profile {
            continue;
        }
        let Some((k, v)) = line.split_once('=') else {
            continue;
        };
        let v = v.trim().to_string();
        match k.trim() {
            "aws_access_key_id" => id = Some(v),
            "aws_secret_access_key" => secret = Some(v),
            "aws_session_token" => token = Some(v),
            _ => {}
        }
    }
    Some(Credentials {
        access_key_id: id?,
        secret_access_key: secret?,
        session_token: token,
    })
}

impl S3Config {
    /// Checks what the server cannot run without.
    pub fn validate(&self) -> Result<()> {
        let bad = |why: String| Err(Error::invalid_argument(format!("[content.s3] {why}")));
        if self.bucket.is_empty() {
            return bad("bucket is required".into());
        }
        if self.endpoint.starts_with("http://") && !self.allow_http {
            return bad(format!(
                "endpoint {} is plain HTTP; set allow_http = true to allow it",
                self.endpoint
            ));
        }
        if self.part_bytes < 5 << 20 {
            return bad("part_bytes must be at least 5 MiB (S3's smallest part)".into());
        }
        if self.upload_concurrency == 0 || self.read_ahead == 0 {
            return bad("upload_concurrency and read_ahead must be at least 1".into());
        }
        if self
            .node_id
            .chars()
            .any(|c| !(c.is_ascii_alphanumeric() || "-_.".contains(c)))
        {
            return bad(format!(
                "node_id {:?} may hold only letters, digits, '-', '_' and '.'",
                self.node_id
            ));
        }
        Ok(())
    }

    /// What error messages call the store: endpoint and bucket.
    pub fn describe(&self) -> String {
        let endpoint = if self.endpoint.is_empty() {
            format!("s3.{}.amazonaws.com", self.region)
        } else {
            self.endpoint.clone()
        };
        format!("{endpoint} bucket {}", self.bucket)
    }

    /// The bound on one whole call, retries included: a dead store answers with an error
    /// after this, never a hang.
    pub fn call_timeout(&self) -> Duration {
        Duration::from_secs(self.retry_timeout_secs + self.request_timeout_secs + 5)
    }

    /// The object store client: `AWS_*` environment first, then this table on top.
    pub fn build(&self) -> Result<Arc<dyn ObjectStore>> {
        self.validate()?;
        let mut b = AmazonS3Builder::from_env()
            .with_region(&self.region)
            .with_bucket_name(&self.bucket)
            .with_virtual_hosted_style_request(!self.path_style)
            .with_allow_http(self.allow_http)
            .with_client_options(
                ClientOptions::new()
                    .with_allow_http(self.allow_http)
                    .with_timeout(Duration::from_secs(self.request_timeout_secs))
                    .with_connect_timeout(Duration::from_secs(self.connect_timeout_secs)),
            )
            .with_retry(RetryConfig {
                max_retries: self.max_retries,
                retry_timeout: Duration::from_secs(self.retry_timeout_secs),
                ..RetryConfig::default()
            });
        if !self.endpoint.is_empty() {
            b = b.with_endpoint(&self.endpoint);
        }
        if let Some(path) = &self.credentials_file {
            let c = read_credentials(path, &self.profile)?;
            b = b
                .with_access_key_id(c.access_key_id)
                .with_secret_access_key(c.secret_access_key);
            if let Some(t) = c.session_token {
                b = b.with_token(t);
            }
        }
        let store = b.build().map_err(|e| {
            Error::invalid_argument(format!("object store {}: {e}", self.describe()))
        })?;
        Ok(Arc::new(store))
    }
}

fn read_credentials(path: &Path, profile: &str) -> Result<Credentials> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| Error::io(format!("read credentials file {}", path.display()), e))?;
    parse_credentials(&text, profile).ok_or_else(|| {
        Error::invalid_argument(format!(
            "credentials file {}: profile [{profile}] lacks aws_access_key_id or \
             aws_secret_access_key",
            path.display()
        ))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn credentials_file_profiles() {
        let text = "[default]\naws_access_key_id = A\naws_secret_access_key=B\n\n\
                    # other\n[ci]\naws_access_key_id = C\naws_secret_access_key = D\n\
                    aws_session_token = T\n";
        let d = parse_credentials(text, "default").unwrap();
        assert_eq!(
            (d.access_key_id.as_str(), d.secret_access_key.as_str()),
            ("A", "B")
        );
        assert_eq!(d.session_token, None);
        let c = parse_credentials(text, "ci").unwrap();
        assert_eq!(c.session_token.as_deref(), Some("T"));
        assert!(parse_credentials(text, "nope").is_none());
        assert!(!format!("{c:?}").contains('D'), "secrets stay out of Debug");
    }

    #[test]
    fn validation() {
        let ok = S3Config {
            bucket: "b".into(),
            endpoint: "https://s3.example".into(),
            ..S3Config::default()
        };
        ok.validate().unwrap();
        let plain = S3Config {
            endpoint: "http://127.0.0.1:3900".into(),
            ..ok.clone()
        };
        let e = plain.validate().unwrap_err();
        assert!(e.message().contains("allow_http"), "{e}");
        S3Config {
            allow_http: true,
            ..plain
        }
        .validate()
        .unwrap();
        assert!(S3Config::default().validate().is_err(), "bucket required");
        let bad_node = S3Config {
            node_id: "a/b".into(),
            ..ok
        };
        assert!(bad_node.validate().is_err());
    }
}
