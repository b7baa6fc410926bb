//! The one error type the plugins return, mapped to the gRPC codes containerd's `errdefs`
//! uses: containerd branches on these codes (NotFound means "create it", AlreadyExists means
//! "someone else did", Unavailable means "retry", Unimplemented means "try the next plugin"),
//! so the code matters more than the text.

use std::fmt;

/// containerd's error classes (`github.com/containerd/errdefs`), one per gRPC code it maps to.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum ErrorKind {
    InvalidArgument,
    NotFound,
    AlreadyExists,
    FailedPrecondition,
    OutOfRange,
    Unavailable,
    Unimplemented,
    Aborted,
    Canceled,
    DeadlineExceeded,
    PermissionDenied,
    ResourceExhausted,
    DataLoss,
    Internal,
    Unknown,
}

impl ErrorKind {
    /// The gRPC code containerd's `errgrpc.ToGRPC` gives this class.
    pub fn code(self) -> tonic::Code {
        use tonic::Code;
        match self {
            ErrorKind::InvalidArgument => Code::InvalidArgument,
            ErrorKind::NotFound => Code::NotFound,
            ErrorKind::AlreadyExists => Code::AlreadyExists,
            ErrorKind::FailedPrecondition => Code::FailedPrecondition,
            ErrorKind::OutOfRange => Code::OutOfRange,
            ErrorKind::Unavailable => Code::Unavailable,
            ErrorKind::Unimplemented => Code::Unimplemented,
            ErrorKind::Aborted => Code::Aborted,
            ErrorKind::Canceled => Code::Cancelled,
            ErrorKind::DeadlineExceeded => Code::DeadlineExceeded,
            ErrorKind::PermissionDenied => Code::PermissionDenied,
            ErrorKind::ResourceExhausted => Code::ResourceExhausted,
            ErrorKind::DataLoss => Code::DataLoss,
            ErrorKind::Internal => Code::Internal,
            ErrorKind::Unknown => Code::Unknown,
        }
    }

    /// The class containerd's `errgrpc.ToNative` makes of a gRPC code, so errors coming back
    /// from containerd (or from another strata plugin) keep their meaning.
    pub fn from_code(code: tonic::Code) -> Self {
        use tonic::Code;
        match code {
            Code::InvalidArgument => ErrorKind::InvalidArgument,
            Code::NotFound => ErrorKind::NotFound,
            Code::AlreadyExists => ErrorKind::AlreadyExists,
            Code::FailedPrecondition => ErrorKind::FailedPrecondition,
            Code::OutOfRange => ErrorKind::OutOfRange,
            Code::Unavailable => ErrorKind::Unavailable,
            Code::Unimplemented => ErrorKind::Unimplemented,
            Code::Aborted => ErrorKind::Aborted,
            Code::Cancelled => ErrorKind::Canceled,
            Code::DeadlineExceeded => ErrorKind::DeadlineExceeded,
            Code::PermissionDenied => ErrorKind::PermissionDenied,
            Code::ResourceExhausted => ErrorKind::ResourceExhausted,
            Code::DataLoss => ErrorKind::DataLoss,
            Code::Internal => ErrorKind::Internal,
            Code::Ok | Code::Unknown | Code::Unauthenticated => ErrorKind::Unknown,
        }
    }

    /// errdefs' own wording, which containerd appends to messages (`...: not found`).
    pub fn as_str(self) -> &'static str {
        match self {
            ErrorKind::InvalidArgument => "invalid argument",
            ErrorKind::NotFound => "not found",
            ErrorKind::AlreadyExists => "already exists",
            ErrorKind::FailedPrecondition => "failed precondition",
            ErrorKind::OutOfRange => "out of range",
            ErrorKind::Unavailable => "unavailable",
            ErrorKind::Unimplemented => "not implemented",
            ErrorKind::Aborted => "aborted",
            ErrorKind::Canceled => "canceled",
            ErrorKind::DeadlineExceeded => "deadline exceeded",
            ErrorKind::PermissionDenied => "permission denied",
            ErrorKind::ResourceExhausted => "resource exhausted",
            ErrorKind::DataLoss => "data loss",
            ErrorKind::Internal => "internal",
            ErrorKind::Unknown => "unknown",
        }
    }
}

impl fmt::Display for ErrorKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// An error with its containerd class and a message saying what failed and why, rendered as
/// containerd renders wrapped errdefs errors: `snapshot "x" does not exist: not found`.
#[derive(Debug, thiserror::Error)]
#[error("{message}: {kind}")]
pub struct Error {
    kind: ErrorKind,
    message: String,
    #[source]
    source: Option<Box<dyn std::error::Error + Send + Sync + 'static>>,
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

macro_rules! constructors {
    ($($name:ident => $kind:ident),* $(,)?) => {
        $(
            #[doc = concat!("An error of class [`ErrorKind::", stringify!($kind), "`].")]
            pub fn $name(message: impl Into<String>) -> Self {
                Self::new(ErrorKind::$kind, message)
            }
        )*
    };
}

impl Error {
    pub fn new(kind: ErrorKind, message: impl Into<String>) -> Self {
        Error {
            kind,
            message: message.into(),
            source: None,
        }
    }

    constructors! {
        invalid_argument => InvalidArgument,
        not_found => NotFound,
        already_exists => AlreadyExists,
        failed_precondition => FailedPrecondition,
        out_of_range => OutOfRange,
        unavailable => Unavailable,
        unimplemented => Unimplemented,
        aborted => Aborted,
        internal => Internal,
    }

    /// Keeps `source` as the cause, so logs show the whole chain while the gRPC message stays
    /// readable.
    pub fn with_source(
        mut self,
        source: impl Into<Box<dyn std::error::Error + Send + Sync + 'static>>,
    ) -> Self {
        self.source = Some(source.into());
        self
    }

    pub fn kind(&self) -> ErrorKind {
        self.kind
    }

    pub fn message(&self) -> &str {
        &self.message
    }

    pub fn is(&self, kind: ErrorKind) -> bool {
        self.kind == kind
    }

    /// Wraps an I/O error met while doing `what`, classed by what the OS said.
    pub fn io(what: impl Into<String>, err: std::io::Error) -> Self {
        use std::io::ErrorKind as Io;
        let kind = match err.kind() {
            Io::NotFound => ErrorKind::NotFound,
            Io::AlreadyExists => ErrorKind::AlreadyExists,
            Io::InvalidInput | Io::InvalidData => ErrorKind::InvalidArgument,
            Io::PermissionDenied => ErrorKind::PermissionDenied,
            Io::StorageFull | Io::QuotaExceeded => ErrorKind::ResourceExhausted,
            Io::Interrupted | Io::TimedOut => ErrorKind::Aborted,
            _ => ErrorKind::Internal,
        };
        let message = format!("{}: {err}", what.into());
        Error::new(kind, message).with_source(err)
    }

    /// The error a gRPC peer (containerd, another strata plugin) answered with.
    pub fn from_status(status: &tonic::Status) -> Self {
        Error::new(
            ErrorKind::from_code(status.code()),
            status.message().to_string(),
        )
    }

    /// The full chain of causes, for logs.
    pub fn chain(&self) -> String {
        let mut out = self.to_string();
        let mut cur: Option<&(dyn std::error::Error + 'static)> = std::error::Error::source(self);
        while let Some(e) = cur {
            out.push_str(": ");
            out.push_str(&e.to_string());
            cur = e.source();
        }
        out
    }
}

/// The longest message an answer carries. It travels in the `grpc-message` trailer, and a
/// message quoting a request's 64 KiB key would overflow the peer's HTTP/2 header list limit
/// (16 KiB in hyper and tonic), turning the answer into a protocol error that has lost its code.
pub const MAX_STATUS_MESSAGE: usize = 4096;

impl From<Error> for tonic::Status {
    fn from(err: Error) -> Self {
        // containerd's errgrpc.ToGRPC sends err.Error(); its ToNative strips the class suffix
        // again when rebuilding the errdefs error, so the same shape round-trips.
        let code = err.kind.code();
        if err.message.len() + err.kind.as_str().len() + 2 <= MAX_STATUS_MESSAGE {
            return tonic::Status::new(code, err.to_string());
        }
        // Cut the message, not the class suffix, on a char boundary.
        let marker = format!("... ({} bytes cut)", err.message.len());
        let keep = MAX_STATUS_MESSAGE - err.kind.as_str().len() - 2 - marker.len();
        let mut end = keep.min(err.message.len());
        while !err.message.is_char_boundary(end) {
            end -= 1;
        }
        let head = err.message.get(..end).unwrap_or_default();
        tonic::Status::new(code, format!("{head}{marker}: {}", err.kind))
    }
}

impl From<tonic::Status> for Error {
    fn from(status: tonic::Status) -> Self {
        Error::from_status(&status)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tonic::Code;

    #[test]
    fn a_long_message_is_cut_to_fit_a_trailer_keeping_its_class() {
        let key = "é".repeat(40_000);
        let status = tonic::Status::from(Error::not_found(format!("snapshot {key:?}")));
        assert_eq!(status.code(), Code::NotFound);
        assert!(
            status.message().len() <= MAX_STATUS_MESSAGE,
            "{}",
            status.message().len()
        );
        assert!(status.message().starts_with("snapshot \"éé"));
        assert!(
            status.message().ends_with(" bytes cut): not found"),
            "{}",
            status.message()
        );
        let short = tonic::Status::from(Error::not_found("snapshot \"x\""));
        assert_eq!(short.message(), "snapshot \"x\": not found");
    }

    #[test]
    fn every_kind_maps_to_containerds_code() {
        let table = [
            (ErrorKind::InvalidArgument, Code::InvalidArgument),
            (ErrorKind::NotFound, Code::NotFound),
            (ErrorKind::AlreadyExists, Code::AlreadyExists),
            (ErrorKind::FailedPrecondition, Code::FailedPrecondition),
            (ErrorKind::OutOfRange, Code::OutOfRange),
            (ErrorKind::Unavailable, Code::Unavailable),
            (ErrorKind::Unimplemented, Code::Unimplemented),
            (ErrorKind::Aborted, Code::Aborted),
            (ErrorKind::Canceled, Code::Cancelled),
            (ErrorKind::DeadlineExceeded, Code::DeadlineExceeded),
            (ErrorKind::PermissionDenied, Code::PermissionDenied),
            (ErrorKind::ResourceExhausted, Code::ResourceExhausted),
            (ErrorKind::DataLoss, Code::DataLoss),
            (ErrorKind::Internal, Code::Internal),
            (ErrorKind::Unknown, Code::Unknown),
        ];
        for (kind, code) in table {
            let status: tonic::Status = Error::new(kind, "x").into();
            assert_eq!(status.code(), code, "{kind:?}");
            assert_eq!(ErrorKind::from_code(code), kind, "{code:?} round trip");
        }
    }

    #[test]
    fn message_says_what_and_class_like_errdefs() {
        let status: tonic::Status = Error::not_found("snapshot \"k\" does not exist").into();
        assert_eq!(status.code(), Code::NotFound);
        assert_eq!(status.message(), "snapshot \"k\" does not exist: not found");
        let e = Error::unimplemented("media type \"x\" is not supported");
        assert_eq!(
            e.to_string(),
            "media type \"x\" is not supported: not implemented"
        );
    }

    #[test]
    fn io_errors_keep_their_class_and_cause() {
        let e = Error::io(
            "open blob",
            std::io::Error::from(std::io::ErrorKind::NotFound),
        );
        assert!(e.is(ErrorKind::NotFound));
        assert!(e.message().starts_with("open blob: "));
        let e = Error::io("write", std::io::Error::other("disk on fire"));
        assert!(e.is(ErrorKind::Internal));
        assert!(e.chain().contains("disk on fire"));
    }

    #[test]
    fn status_from_a_peer_keeps_its_class() {
        let e: Error = tonic::Status::unavailable("ref x locked").into();
        assert!(e.is(ErrorKind::Unavailable));
        let e: Error = tonic::Status::unauthenticated("no").into();
        assert!(e.is(ErrorKind::Unknown));
    }
}
