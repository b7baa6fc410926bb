//! Scraping a strata server's metrics endpoint (`--metrics-address`) the way Prometheus
//! does, and reading samples from the text format.

use std::io::{Read, Write};
use std::path::Path;

/// One scrape of a metrics endpoint.
pub struct Scrape {
    /// The page as served.
    pub text: String,
}

impl Scrape {
    pub fn unix(path: &Path) -> Scrape {
        let s = std::os::unix::net::UnixStream::connect(path)
            .unwrap_or_else(|e| panic!("connect {}: {e}", path.display()));
        Scrape::get(s)
    }

    pub fn tcp(port: u16) -> Scrape {
        let s = std::net::TcpStream::connect(("127.0.0.1", port))
            .unwrap_or_else(|e| panic!("connect 127.0.0.1:{port}: {e}"));
        Scrape::get(s)
    }

    /// `GET /metrics` over HTTP/1.0 (the server closes the connection after the answer).
    fn get<S: Read + Write>(mut s: S) -> Scrape {
        s.write_all(b"GET /metrics HTTP/1.0\r\nHost: localhost\r\n\r\n")
            .expect("send request");
        let mut answer = String::new();
        s.read_to_string(&mut answer).expect("read answer");
        let (head, body) = answer
            .split_once("\r\n\r\n")
            .unwrap_or_else(|| panic!("not an HTTP answer: {answer:?}"));
        assert!(head.starts_with("HTTP/1.0 200"), "{head}");
        assert!(
            head.to_ascii_lowercase()
                .contains("content-type: text/plain; version=0.0.4"),
            "{head}"
        );
        Scrape {
            text: body.to_string(),
        }
    }

    /// The value of the sample `name` whose labels include `labels`.
    pub fn value(&self, name: &str, labels: &[(&str, &str)]) -> Option<f64> {
        self.text.lines().find_map(|line| {
            if line.starts_with('#') {
                return None;
            }
            let (series, value) = line.rsplit_once(' ')?;
            let (series_name, series_labels) = match series.split_once('{') {
                Some((n, rest)) => (n, rest.strip_suffix('}')?),
                None => (series, ""),
            };
            if series_name != name {
                return None;
            }
            let have: Vec<(&str, &str)> = series_labels
                .split("\",")
                .filter(|p| !p.is_empty())
                .filter_map(|p| {
                    let (k, v) = p.split_once("=\"")?;
                    Some((k, v.trim_end_matches('"')))
                })
                .collect();
            labels
                .iter()
                .all(|l| have.contains(l))
                .then(|| value.parse().ok())
                .flatten()
        })
    }

    pub fn assert_positive(&self, name: &str, labels: &[(&str, &str)]) {
        match self.value(name, labels) {
            Some(v) if v > 0.0 => {}
            other => panic!("{name}{labels:?} is {other:?}, want > 0 in\n{}", self.text),
        }
    }
}
