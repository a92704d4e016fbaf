//! The one error type of stead.

use serde::{Deserialize, Serialize};

/// `Result` with stead's [`Error`] as its default error type.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Everything that can go wrong when calling or hosting a durable object.
///
/// Each variant carries a full sentence that names the offending value and,
/// where there is one, what to do next. Errors travel between nodes, so every
/// variant holds plain data ([`Serialize`] + [`Deserialize`]).
///
/// Match on the variant to decide what to do, and use
/// [`is_retryable`](Error::is_retryable) to decide whether trying the same call
/// again later can succeed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error, Serialize, Deserialize)]
#[non_exhaustive]
pub enum Error {
    /// An object id was malformed or was minted by another namespace or cluster.
    #[error("invalid object id: {0}")]
    InvalidId(String),
    /// The object's type is not hosted by the runtime that was asked to run it.
    #[error("{0}")]
    NotHosted(String),
    /// The object's constructor returned an error or panicked. The next call
    /// runs the constructor again.
    #[error("{0}")]
    ConstructorFailed(String),
    /// The method (or alarm handler) panicked. Its writes were rolled back and
    /// the instance was dropped; the next call constructs a fresh one.
    #[error("{0}")]
    Panicked(String),
    /// The object's mailbox was full; the call was not delivered. Retryable.
    #[error("{0}")]
    Overloaded(String),
    /// The stub lost its connection to the object; the call may or may not
    /// have run. Retryable with a new stub.
    #[error("{0}")]
    Disconnected(String),
    /// The object cannot be reached right now (its node is down, or the
    /// runtime is shutting down). Retryable.
    #[error("{0}")]
    Unavailable(String),
    /// The call did not complete in time. Retryable.
    #[error("{0}")]
    Timeout(String),
    /// The object's storage failed (I/O, corruption, a constraint).
    #[error("{0}")]
    Storage(String),
    /// A value could not be encoded or decoded.
    #[error("{0}")]
    Codec(String),
    /// The caller and the object disagree on a method's signature (different
    /// builds of the object's type).
    #[error("{0}")]
    Incompatible(String),
    /// The network transport failed.
    #[error("{0}")]
    Transport(String),
    /// The runtime was configured wrongly.
    #[error("invalid configuration: {0}")]
    Config(String),
    /// An alarm handler returned an error (reported by
    /// `stead::testing::run_alarm`; the runtime retries the alarm with
    /// backoff, as it does for alarms that come due by themselves).
    #[error("{0}")]
    AlarmFailed(String),
}

impl Error {
    /// The error for a call to a type that this runtime (or node) does not host.
    pub(crate) fn not_hosted(type_name: &str) -> Self {
        Error::NotHosted(format!(
            "durable object type `{type_name}` is not hosted by this runtime; register it with \
             `Runtime::builder().host::<{type_name}>()`"
        ))
    }

    /// Whether this error breaks the order of the stub it came through: the
    /// call was refused (`Overloaded`) or lost (`Disconnected`), so later
    /// calls through the same stub must not run after the gap.
    pub(crate) fn breaks_order(&self) -> bool {
        matches!(self, Error::Overloaded(_) | Error::Disconnected(_))
    }

    /// The error for a call made after `self` broke its stub's order: the
    /// same kind, saying why this call was not sent.
    pub(crate) fn after_break(&self) -> Error {
        let why = |earlier: &str| {
            format!(
                "this call was not run because an earlier call through the same stub failed ({earlier}); \
                 the calls of a stub run in order, with no gaps, so every later call fails too: make a \
                 new stub to go on"
            )
        };
        match self {
            Error::Overloaded(earlier) => Error::Overloaded(why(earlier)),
            other => Error::Disconnected(why(&other.to_string())),
        }
    }

    /// Whether the same call may succeed if it is tried again later.
    ///
    /// `Overloaded`, `Disconnected`, `Unavailable` and `Timeout` are
    /// retryable; everything else fails the same way again.
    pub fn is_retryable(&self) -> bool {
        matches!(
            self,
            Error::Overloaded(_) | Error::Disconnected(_) | Error::Unavailable(_) | Error::Timeout(_)
        )
    }
}

impl From<stead_transport::CodecError> for Error {
    fn from(err: stead_transport::CodecError) -> Self {
        Error::Codec(err.to_string())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_transient_errors_are_retryable() {
        assert!(Error::Overloaded("x".into()).is_retryable());
        assert!(Error::Disconnected("x".into()).is_retryable());
        assert!(Error::Unavailable("x".into()).is_retryable());
        assert!(Error::Timeout("x".into()).is_retryable());
        assert!(!Error::Panicked("x".into()).is_retryable());
        assert!(!Error::InvalidId("x".into()).is_retryable());
        assert!(!Error::Incompatible("x".into()).is_retryable());
    }
}
