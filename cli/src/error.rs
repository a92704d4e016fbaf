//! The command's one error type: each variant's message is a full sentence
//! with the offending value, printed on one line of stderr.

use std::path::PathBuf;

/// What went wrong, said so that the user knows what to do.
#[derive(Debug, thiserror::Error)]
pub(crate) enum Error {
    /// The data directory does not exist.
    #[error("there is no data directory at {0}")]
    NoDataDir(PathBuf),

    /// The path exists but holds nothing a stead node writes.
    #[error("{0} is not a stead data directory (it has no `objects` directory, `secret` or `alarms.sqlite`)")]
    NotADataDir(PathBuf),

    /// No object of this type was ever stored in the data directory.
    #[error("there are no objects of type `{type_name}` in {data_dir}; {known}")]
    UnknownType { type_name: String, data_dir: PathBuf, known: String },

    /// An id that is not 64 hex digits.
    #[error("`{id}` is not an object id: {reason} (an id is 64 hex digits, as `stead objects` shows them)")]
    MalformedId { id: String, reason: String },

    /// The object's database does not exist.
    #[error("there is no object {id} of type `{type_name}` in {data_dir} (no file {path})")]
    NoSuchObject { type_name: String, id: String, data_dir: PathBuf, path: PathBuf },

    /// The object's database is locked by the node that has it in memory.
    #[error(
        "object `{type_name}` {id} is active in a running node (its database is locked); stop the node \
         or wait until the object is evicted, then retry"
    )]
    Active { type_name: String, id: String },

    /// A file where an object database should be that is not one of ours.
    #[error("{path} is not a stead object database ({what})")]
    Foreign { path: PathBuf, what: String },

    /// SQLite failed.
    #[error("could not {doing} {path}: {source}")]
    Sqlite { doing: &'static str, path: PathBuf, source: rusqlite::Error },

    /// `--sql` was given a statement that could write.
    #[error(
        "`--sql` runs read-only queries only, and this statement could write: {0} (use a SELECT, or a \
         PRAGMA that only reads)"
    )]
    NotReadOnly(String),

    /// A file system operation failed.
    #[error("cannot {doing} {path}: {source}")]
    Io { doing: &'static str, path: PathBuf, source: std::io::Error },

    /// A node or client name that cannot name a cluster member.
    #[error("`{name}` cannot name a {kind}: {reason}")]
    BadName { kind: &'static str, name: String, reason: &'static str },

    /// An output file exists: certificates and keys are never overwritten.
    #[error(
        "{0} already exists; move it away or choose another `--out` directory (files are never overwritten)"
    )]
    Exists(PathBuf),

    /// The CA that should sign a certificate is missing or unusable.
    #[error("{0}")]
    Ca(String),

    /// rcgen refused to make a certificate.
    #[error("could not make the certificate: {0}")]
    Certificate(#[from] rcgen::Error),

    /// Options that do not go together (where clap cannot tell).
    #[error("{0}")]
    Usage(String),

    /// Reading a PostgreSQL cluster failed: unreachable, not a stead
    /// cluster, newer tables than this build knows, a refused query.
    #[error("{0}")]
    Cluster(String),

    /// Writing the command's output failed (a closed pipe is not reported).
    #[error("cannot write the output: {0}")]
    Output(#[from] std::io::Error),
}

/// The command's result.
pub(crate) type Result<T, E = Error> = std::result::Result<T, E>;
