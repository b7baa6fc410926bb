//! A private container registry: Debian's `docker-registry` (CNCF distribution) on a free
//! 127.0.0.1 port over plain HTTP (`ctr ... --plain-http`), its storage in a test's dir. It
//! writes an access-log line per request (combined log format) to its log, which
//! [`Registry::requests`] parses, so a test can tell what a pull fetched.

use std::fs::File;
use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use strata_testkit::image::Image;

use crate::error::{Error, Result};
use crate::logs;

/// How long the registry gets to listen after start.
pub const START_TIMEOUT: Duration = Duration::from_secs(30);
/// Bound on one HTTP exchange with the registry.
const HTTP_TIMEOUT: Duration = Duration::from_secs(60);

/// A running `docker-registry`; killed when dropped.
#[derive(Debug)]
pub struct Registry {
    child: Child,
    address: String,
    log: PathBuf,
}

/// One request from the registry's access log.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Request {
    pub method: String,
    /// The request target, e.g. `/v2/strata/busybox/blobs/sha256:...`.
    pub path: String,
    pub status: u16,
}

impl Request {
    /// A GET of blob `digest` (`sha256:...`) of any repository.
    pub fn is_blob_get(&self, digest: &str) -> bool {
        self.method == "GET" && self.path.ends_with(&format!("/blobs/{digest}"))
    }

    /// A GET or HEAD of a manifest of any repository.
    pub fn is_manifest(&self) -> bool {
        self.path.contains("/manifests/")
    }

    /// The access-log line `HOST - - [DATE] "METHOD PATH PROTO" STATUS SIZE "REF" "AGENT"`;
    /// `None` for any other line (the registry's own log).
    pub fn parse(line: &str) -> Option<Request> {
        let (_, rest) = line.split_once("] \"")?;
        let (request, rest) = rest.split_once('"')?;
        let mut words = request.split(' ');
        let method = words.next()?.to_string();
        let path = words.next()?.to_string();
        if !words.next()?.starts_with("HTTP/") {
            return None;
        }
        let status = rest.split_whitespace().next()?.parse().ok()?;
        Some(Request {
            method,
            path,
            status,
        })
    }
}

impl Registry {
    /// Starts the registry with its config, storage and log in `dir` (`registry.yml`,
    /// `registry-data/`, `registry.log`) and waits until it accepts connections.
    pub fn start(dir: &Path) -> Result<Registry> {
        let port = TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .map_err(|e| Error::io("finding a free port", e))?
            .port();
        let address = format!("127.0.0.1:{port}");
        let config = dir.join("registry.yml");
        let text = format!(
            "version: 0.1\nlog:\n  level: info\n  accesslog:\n    disabled: false\nstorage:\n  \
             filesystem:\n    rootdirectory: {}\n  delete:\n    enabled: true\nhttp:\n  addr: \
             {address}\n",
            dir.join("registry-data").display()
        );
        std::fs::write(&config, text)
            .map_err(|e| Error::io(format!("writing {}", config.display()), e))?;
        let log = dir.join("registry.log");
        let out =
            File::create(&log).map_err(|e| Error::io(format!("creating {}", log.display()), e))?;
        let err = out
            .try_clone()
            .map_err(|e| Error::io(format!("duplicating {}", log.display()), e))?;
        let child = Command::new("docker-registry")
            .arg("serve")
            .arg(&config)
            .stdin(Stdio::null())
            .stdout(out)
            .stderr(err)
            .spawn()
            .map_err(|e| {
                Error::io(
                    "starting docker-registry (apt-get install docker-registry)",
                    e,
                )
            })?;
        let mut registry = Registry {
            child,
            address,
            log,
        };
        let deadline = Instant::now() + START_TIMEOUT;
        while TcpStream::connect(&registry.address).is_err() {
            let exited = registry.child.try_wait().ok().flatten();
            if exited.is_some() || Instant::now() >= deadline {
                return Err(Error::new(format!(
                    "docker-registry did not listen on {} ({})\n{}",
                    registry.address,
                    exited.map_or("timed out".to_string(), |s| format!("exited: {s}")),
                    registry.log_tail(40)
                )));
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        Ok(registry)
    }

    /// `127.0.0.1:PORT`, the host part of image references.
    pub fn address(&self) -> &str {
        &self.address
    }

    pub fn log_path(&self) -> &Path {
        &self.log
    }

    pub fn log_tail(&self, lines: usize) -> String {
        logs::titled_tail("docker-registry", &self.log, lines)
    }

    /// Every request answered so far, oldest first. The registry logs a request once it has
    /// answered it: a client that has read the answer may be a moment ahead of the log.
    pub fn requests(&self) -> Vec<Request> {
        logs::read_all(&self.log)
            .lines()
            .filter_map(Request::parse)
            .collect()
    }

    /// [`requests`](Self::requests) once the log has stood still for 300 ms (at most 5 s),
    /// so that it has caught up with what clients were answered.
    pub fn settled_requests(&self) -> Vec<Request> {
        let mut last = self.requests();
        let mut still_since = Instant::now();
        let deadline = Instant::now() + Duration::from_secs(5);
        while still_since.elapsed() < Duration::from_millis(300) && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(50));
            let now = self.requests();
            if now.len() != last.len() {
                last = now;
                still_since = Instant::now();
            }
        }
        last
    }

    /// Uploads `image`'s layers, config and manifest as `REPO:TAG` through the registry API
    /// (monolithic uploads), without any containerd; returns the reference
    /// `127.0.0.1:PORT/REPO:TAG`.
    pub fn push(&self, repo: &str, tag: &str, image: &Image) -> Result<String> {
        let mut blobs: Vec<(String, Vec<u8>)> = Vec::new();
        for l in image.layers() {
            let data = l
                .blob
                .to_vec()
                .map_err(|e| Error::io(format!("reading layer {}", l.digest), e))?;
            blobs.push((l.digest.clone(), data));
        }
        blobs.push((image.config_digest(), image.config().to_vec()));
        for (digest, data) in &blobs {
            let started = self.http("POST", &format!("/v2/{repo}/blobs/uploads/"), &[], &[])?;
            if started.status != 202 {
                return Err(self.refused("starting an upload", &started));
            }
            let location = started
                .header("location")
                .ok_or_else(|| Error::new("the registry answered an upload without Location"))?;
            let path = strip_origin(location);
            let sep = if path.contains('?') { '&' } else { '?' };
            let put = self.http(
                "PUT",
                &format!("{path}{sep}digest={digest}"),
                &[("Content-Type", "application/octet-stream")],
                data,
            )?;
            if put.status != 201 {
                return Err(self.refused(&format!("uploading {digest}"), &put));
            }
        }
        let media_type = image.manifest_descriptor()["mediaType"]
            .as_str()
            .unwrap_or("application/vnd.oci.image.manifest.v1+json")
            .to_string();
        let put = self.http(
            "PUT",
            &format!("/v2/{repo}/manifests/{tag}"),
            &[("Content-Type", &media_type)],
            image.manifest(),
        )?;
        if put.status != 201 {
            return Err(self.refused("putting the manifest", &put));
        }
        Ok(format!("{}/{repo}:{tag}", self.address))
    }

    fn refused(&self, what: &str, answer: &Response) -> Error {
        Error::new(format!(
            "docker-registry refused {what}: HTTP {} {}\n{}",
            answer.status,
            String::from_utf8_lossy(&answer.body),
            self.log_tail(20)
        ))
    }

    /// One HTTP/1.1 exchange on a new connection: status, headers (names lowercase), body.
    fn http(
        &self,
        method: &str,
        target: &str,
        headers: &[(&str, &str)],
        body: &[u8],
    ) -> Result<Response> {
        let what = format!("{method} http://{}{target}", self.address);
        let io = |e| Error::io(&what, e);
        let mut stream = TcpStream::connect(&self.address).map_err(io)?;
        stream.set_read_timeout(Some(HTTP_TIMEOUT)).map_err(io)?;
        stream.set_write_timeout(Some(HTTP_TIMEOUT)).map_err(io)?;
        let mut head = format!(
            "{method} {target} HTTP/1.1\r\nHost: {}\r\nConnection: close\r\nContent-Length: {}\r\n",
            self.address,
            body.len()
        );
        for (k, v) in headers {
            head.push_str(&format!("{k}: {v}\r\n"));
        }
        head.push_str("\r\n");
        stream.write_all(head.as_bytes()).map_err(io)?;
        stream.write_all(body).map_err(io)?;
        let mut response = Vec::new();
        stream.read_to_end(&mut response).map_err(io)?;
        let split = response
            .windows(4)
            .position(|w| w == b"\r\n\r\n")
            .ok_or_else(|| Error::new(format!("{what}: no complete answer")))?;
        let head = String::from_utf8_lossy(&response[..split]).into_owned();
        let mut lines = head.lines();
        let status = lines
            .next()
            .and_then(|l| l.split_whitespace().nth(1))
            .and_then(|s| s.parse().ok())
            .ok_or_else(|| Error::new(format!("{what}: bad status line in {head:?}")))?;
        let headers = lines
            .filter_map(|l| l.split_once(':'))
            .map(|(k, v)| (k.trim().to_ascii_lowercase(), v.trim().to_string()))
            .collect();
        Ok(Response {
            status,
            headers,
            body: response[split + 4..].to_vec(),
        })
    }
}

/// An answer of [`Registry::http`].
struct Response {
    status: u16,
    /// (lowercase name, value)
    headers: Vec<(String, String)>,
    body: Vec<u8>,
}

impl Response {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
    }
}

/// `http://host:port/path?q` → `/path?q`; a path stays as it is.
fn strip_origin(location: &str) -> &str {
    match location.split_once("://") {
        Some((_, rest)) => rest.find('/').map_or("/", |i| &rest[i..]),
        None => location,
    }
}

impl Drop for Registry {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_access_log_lines() {
        let line = r#"127.0.0.1 - - [04/Dec/2026:10:00:00 +0000] "GET /v2/strata/fleet/blobs/sha256:ab HTTP/1.1" 200 1234 "" "containerd/v1.7.24""#;
        let r = Request::parse(line).unwrap();
        assert_eq!(r.method, "GET");
        assert_eq!(r.path, "/v2/strata/fleet/blobs/sha256:ab");
        assert_eq!(r.status, 200);
        assert!(r.is_blob_get("sha256:ab"));
        assert!(!r.is_blob_get("sha256:a"));
        assert!(!r.is_manifest());
        let app = r#"time="2026-12-04T10:00:00Z" level=info msg="response completed" http.request.method=GET http.request.uri="/v2/""#;
        assert_eq!(Request::parse(app), None);
    }

    #[test]
    fn strips_origins() {
        assert_eq!(
            strip_origin("http://127.0.0.1:5000/v2/a/blobs/uploads/u?_state=x"),
            "/v2/a/blobs/uploads/u?_state=x"
        );
        assert_eq!(
            strip_origin("/v2/a/blobs/uploads/u"),
            "/v2/a/blobs/uploads/u"
        );
    }
}
