//! Content digests (`<algorithm>:<hex>`), validated as containerd's `go-digest` does before a
//! digest is ever turned into a path.

use std::fmt;

use sha2::Digest as _;
use strata_common::{Error, Result};

/// A digest algorithm containerd accepts. Only sha256 is ever computed here (containerd's
/// `digest.Canonical`); the others are accepted so lookups of such digests answer NotFound
/// rather than InvalidArgument, as containerd's local store does.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Algorithm {
    Sha256,
    Sha384,
    Sha512,
}

impl Algorithm {
    pub fn as_str(self) -> &'static str {
        match self {
            Algorithm::Sha256 => "sha256",
            Algorithm::Sha384 => "sha384",
            Algorithm::Sha512 => "sha512",
        }
    }

    fn hex_len(self) -> usize {
        match self {
            Algorithm::Sha256 => 64,
            Algorithm::Sha384 => 96,
            Algorithm::Sha512 => 128,
        }
    }

    fn from_name(name: &str) -> Option<Self> {
        match name {
            "sha256" => Some(Algorithm::Sha256),
            "sha384" => Some(Algorithm::Sha384),
            "sha512" => Some(Algorithm::Sha512),
            _ => None,
        }
    }
}

/// A validated digest: the hex part is lowercase and exactly as long as the algorithm's
/// output, so it is safe to use as a file name.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Digest {
    algorithm: Algorithm,
    hex: String,
}

impl Digest {
    /// Parses `sha256:<64 lowercase hex>` (or sha384/sha512); anything else is InvalidArgument.
    pub fn parse(s: &str) -> Result<Digest> {
        let invalid =
            |why: &str| Error::invalid_argument(format!("{s:?} failed validation: {why}"));
        let (alg, hex) = s
            .split_once(':')
            .ok_or_else(|| invalid("invalid checksum digest format"))?;
        let algorithm =
            Algorithm::from_name(alg).ok_or_else(|| invalid("unsupported digest algorithm"))?;
        if hex.len() != algorithm.hex_len()
            || !hex
                .bytes()
                .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
        {
            return Err(invalid("invalid checksum digest length or characters"));
        }
        Ok(Digest {
            algorithm,
            hex: hex.to_owned(),
        })
    }

    /// The sha256 digest of a finished hash.
    pub fn from_sha256(hash: sha2::Sha256) -> Digest {
        Digest {
            algorithm: Algorithm::Sha256,
            hex: hex::encode(hash.finalize()),
        }
    }

    /// The sha256 digest of `data`.
    pub fn sha256_of(data: &[u8]) -> Digest {
        Digest::from_sha256(sha2::Sha256::new_with_prefix(data))
    }

    pub fn algorithm(&self) -> Algorithm {
        self.algorithm
    }

    /// The encoded (hex) part.
    pub fn hex(&self) -> &str {
        &self.hex
    }
}

impl fmt::Display for Digest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}", self.algorithm.as_str(), self.hex)
    }
}

impl std::str::FromStr for Digest {
    type Err = Error;
    fn from_str(s: &str) -> Result<Digest> {
        Digest::parse(s)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use strata_common::error::ErrorKind;

    #[test]
    fn parses_valid_and_rejects_the_rest() {
        let empty = "sha256:e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855";
        let d = Digest::parse(empty).unwrap();
        assert_eq!(d.to_string(), empty);
        assert_eq!(Digest::sha256_of(b""), d);
        assert!(Digest::parse(&format!("sha512:{}", "a".repeat(128))).is_ok());
        for bad in [
            "",
            "sha256",
            "sha256:",
            "md5:e3b0c44298fc1c149afbf4c8996fb924",
            "sha256:E3B0C44298FC1C149AFBF4C8996FB92427AE41E4649B934CA495991B7852B855",
            "sha256:../../../../etc/passwd0000000000000000000000000000000000000000",
            "sha256:e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b85",
            "sha512:e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855",
        ] {
            let e = Digest::parse(bad).unwrap_err();
            assert!(e.is(ErrorKind::InvalidArgument), "{bad}: {e}");
        }
    }
}
