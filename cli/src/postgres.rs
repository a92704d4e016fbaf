//! Reading a PostgreSQL cluster: the connection options both `stead nodes`
//! and `stead objects --postgres` take, and the runtime's read-only view of
//! the cluster's tables (`stead_runtime::inspect`), driven on a small tokio
//! runtime of the command's own.

use std::future::Future;
use std::time::Duration;

use stead_runtime::inspect::ClusterReader;

use crate::error::{Error, Result};

/// How long PostgreSQL may take, by default, to accept the connection and
/// to answer each query: long enough for a loaded server, short enough that
/// an unreachable one is reported at once.
pub(crate) const DEFAULT_TIMEOUT: Duration = Duration::from_secs(5);

/// Runs `work` with a read-only connection to the cluster's tables at
/// `conninfo`, checked to be stead's, of a version this build knows.
pub(crate) fn with_cluster<T, F>(
    conninfo: &str,
    timeout: Duration,
    work: impl FnOnce(ClusterReader) -> F,
) -> Result<T>
where
    F: Future<Output = Result<T>>,
{
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|source| Error::Io { doing: "start", path: "the tokio runtime".into(), source })?;
    runtime.block_on(async {
        let reader = ClusterReader::connect(conninfo, timeout).await.map_err(cluster_error)?;
        work(reader).await
    })
}

/// The runtime's error as one of the command's: its message, which says
/// what to do, without the runtime's framing.
pub(crate) fn cluster_error(err: stead_runtime::Error) -> Error {
    use stead_runtime::Error as E;
    match err {
        E::Config(message) | E::Unavailable(message) | E::Storage(message) => Error::Cluster(message),
        other => Error::Cluster(other.to_string()),
    }
}

/// A duration given on the command line (`5s`, `500ms`, `1m`).
pub(crate) fn parse_timeout(text: &str) -> Result<Duration, String> {
    let timeout =
        humantime::parse_duration(text).map_err(|e| format!("{e} (write it like `5s` or `500ms`)"))?;
    if timeout.is_zero() {
        return Err("a timeout of zero would fail every query; give at least `1ms`".into());
    }
    Ok(timeout)
}

/// A signed duration in milliseconds, short: `7.2s`, `3m 2s`, `-41.0s`.
pub(crate) fn signed_millis(millis: i64) -> String {
    let sign = if millis < 0 { "-" } else { "" };
    let magnitude = millis.unsigned_abs();
    if magnitude < 60_000 {
        format!("{sign}{:.1}s", magnitude as f64 / 1000.0)
    } else {
        format!("{sign}{}", humantime::format_duration(Duration::from_secs(magnitude / 1000)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_are_short_and_keep_their_sign() {
        assert_eq!(signed_millis(7_240), "7.2s");
        assert_eq!(signed_millis(0), "0.0s");
        assert_eq!(signed_millis(-41_000), "-41.0s");
        assert_eq!(signed_millis(182_400), "3m 2s");
        assert_eq!(signed_millis(-3_600_000), "-1h");
    }

    #[test]
    fn timeouts_are_durations_and_never_zero() {
        assert_eq!(parse_timeout("500ms"), Ok(Duration::from_millis(500)));
        assert!(parse_timeout("0s").is_err());
        assert!(parse_timeout("soon").unwrap_err().contains("`5s`"));
    }
}
