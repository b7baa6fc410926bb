//! containerd's request metadata: the `containerd-namespace` and `containerd-lease` headers.
//! A plugin reads them from incoming calls and forwards them on calls it makes back into
//! containerd, which rejects namespaced calls without them.

use tonic::metadata::{AsciiMetadataValue, MetadataMap};

use crate::error::{Error, Result};

/// The gRPC header containerd puts the namespace in (`namespaces.GRPCHeader`).
pub const NAMESPACE_HEADER: &str = "containerd-namespace";
/// The gRPC header containerd puts the lease in (`leases.GRPCHeader`).
pub const LEASE_HEADER: &str = "containerd-lease";

/// containerd's identifier length limit (`identifiers.Validate`).
const MAX_IDENTIFIER_LEN: usize = 76;

/// The containerd context of one request.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct RequestContext {
    pub namespace: Option<String>,
    pub lease: Option<String>,
}

impl RequestContext {
    /// Reads the headers of an incoming call. Invalid values are errors, not silently dropped,
    /// because acting in the wrong namespace is worse than failing.
    pub fn from_metadata(md: &MetadataMap) -> Result<Self> {
        let get = |name: &str| -> Result<Option<String>> {
            match md.get(name) {
                None => Ok(None),
                Some(v) => v.to_str().map(|s| Some(s.to_string())).map_err(|_| {
                    Error::invalid_argument(format!("header {name} is not valid ASCII"))
                }),
            }
        };
        let namespace = get(NAMESPACE_HEADER)?;
        if let Some(ns) = &namespace {
            validate_namespace(ns)?;
        }
        Ok(RequestContext {
            namespace,
            lease: get(LEASE_HEADER)?.filter(|l| !l.is_empty()),
        })
    }

    pub fn with_namespace(namespace: impl Into<String>) -> Self {
        RequestContext {
            namespace: Some(namespace.into()),
            lease: None,
        }
    }

    /// The namespace, or the error containerd itself gives when it is missing.
    pub fn require_namespace(&self) -> Result<&str> {
        self.namespace
            .as_deref()
            .ok_or_else(|| Error::failed_precondition("namespace is required"))
    }

    /// Copies the namespace and lease onto an outgoing request, and the current trace
    /// context when spans are exported ([`crate::rpc::inject_trace_context`]).
    pub fn apply<T>(&self, req: &mut tonic::Request<T>) -> Result<()> {
        let md = req.metadata_mut();
        crate::rpc::inject_trace_context(md);
        for (name, value) in [
            (NAMESPACE_HEADER, &self.namespace),
            (LEASE_HEADER, &self.lease),
        ] {
            if let Some(v) = value {
                let v: AsciiMetadataValue = v.parse().map_err(|_| {
                    Error::invalid_argument(format!("{name} value {v:?} is not a valid header"))
                })?;
                md.insert(name, v);
            }
        }
        Ok(())
    }

    /// A new outgoing request carrying this context.
    pub fn request<T>(&self, message: T) -> Result<tonic::Request<T>> {
        let mut req = tonic::Request::new(message);
        self.apply(&mut req)?;
        Ok(req)
    }
}

/// containerd's rule for namespace names (`identifiers.Validate`): alphanumerics separated by
/// single `.`, `_` or `-`, at most 76 characters.
pub fn validate_namespace(ns: &str) -> Result<()> {
    let invalid = |why: &str| Error::invalid_argument(format!("namespace {ns:?} {why}"));
    if ns.is_empty() {
        return Err(invalid("must not be empty"));
    }
    if ns.len() > MAX_IDENTIFIER_LEN {
        return Err(invalid(&format!(
            "is longer than {MAX_IDENTIFIER_LEN} characters"
        )));
    }
    let mut prev_sep = true;
    for c in ns.chars() {
        let sep = matches!(c, '.' | '_' | '-');
        if !(c.is_ascii_alphanumeric() || sep) || (sep && prev_sep) {
            return Err(invalid(
                "must match ^[A-Za-z0-9]+(?:[._-](?:[A-Za-z0-9]+))*$",
            ));
        }
        prev_sep = sep;
    }
    if prev_sep {
        return Err(invalid(
            "must match ^[A-Za-z0-9]+(?:[._-](?:[A-Za-z0-9]+))*$",
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::error::ErrorKind;

    #[test]
    fn reads_and_forwards_namespace_and_lease() {
        let mut md = MetadataMap::new();
        md.insert(NAMESPACE_HEADER, "k8s.io".parse().unwrap());
        md.insert(LEASE_HEADER, "lease-1".parse().unwrap());
        let ctx = RequestContext::from_metadata(&md).unwrap();
        assert_eq!(ctx.namespace.as_deref(), Some("k8s.io"));
        assert_eq!(ctx.lease.as_deref(), Some("lease-1"));

        let req = ctx.request(()).unwrap();
        assert_eq!(req.metadata().get(NAMESPACE_HEADER).unwrap(), "k8s.io");
        assert_eq!(req.metadata().get(LEASE_HEADER).unwrap(), "lease-1");
    }

    #[test]
    fn missing_namespace_is_reported_like_containerd() {
        let ctx = RequestContext::from_metadata(&MetadataMap::new()).unwrap();
        let err = ctx.require_namespace().unwrap_err();
        assert_eq!(err.kind(), ErrorKind::FailedPrecondition);
        assert_eq!(
            err.to_string(),
            "namespace is required: failed precondition"
        );
        assert!(ctx.request(()).unwrap().metadata().is_empty());
    }

    #[test]
    fn namespace_identifier_rules() {
        for ok in ["default", "k8s.io", "a-b_c.d", "A1", &"x".repeat(76)] {
            assert!(validate_namespace(ok).is_ok(), "{ok}");
        }
        for bad in ["", "-a", "a-", "a..b", "a/b", "ä", &"x".repeat(77)] {
            let err = validate_namespace(bad).unwrap_err();
            assert_eq!(err.kind(), ErrorKind::InvalidArgument, "{bad}");
        }
        let mut md = MetadataMap::new();
        md.insert(NAMESPACE_HEADER, "../etc".parse().unwrap());
        assert!(RequestContext::from_metadata(&md).is_err());
    }
}
