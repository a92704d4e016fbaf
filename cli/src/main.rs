//! `stead`: the command-line tool of the stead durable-object framework.
//!
//! - `stead objects <data_dir>` lists the objects of a node's data directory
//!   (type, id, size, alarm, last write, name), with filters;
//! - `stead objects --postgres <conninfo>` lists the directory of a
//!   PostgreSQL cluster (type, id, owner, epoch, whether the owner is
//!   alive, name), and `stead nodes --postgres <conninfo>` its nodes (name,
//!   address, alive, lease, hosted types), both read-only;
//! - `stead show <data_dir> <type> <id>` prints a stopped or evicted
//!   object's keys and the sizes of their values, or runs a read-only SQL
//!   query on its database (`--sql`);
//! - `stead certs ca|node|client` issues a cluster's certificates.
//!
//! Databases are only ever opened read-only. An object that is in memory in
//! a running node has its database locked by that node: the tool says so
//! instead of reading it. Errors are one line on stderr and a non-zero exit
//! status.

mod certs;
mod cluster_objects;
mod data_dir;
mod error;
mod format;
mod nodes;
mod object_db;
mod objects;
mod postgres;
mod progress;
mod show;

use std::io::Write;
use std::process::ExitCode;

use clap::{Parser, Subcommand};

use crate::error::Error;

/// Inspect stead data directories and clusters, and issue cluster
/// certificates.
#[derive(Parser)]
#[command(name = "stead", version)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Lists the objects of a node's data directory: type, id, size, alarm,
    /// last write and name, in order of type then id; or, with
    /// `--postgres`, of a PostgreSQL cluster's directory: type, id, owner,
    /// epoch, whether the owner is alive, and name.
    Objects(objects::Args),
    /// Lists the nodes of a PostgreSQL cluster: name, address, whether it
    /// holds its lease (by PostgreSQL's clock), until when, and the types it
    /// hosts.
    Nodes(nodes::Args),
    /// Prints an object's storage (name, alarm, keys and the sizes of their
    /// values), or runs a read-only SQL query on it. The object must not be
    /// active in a running node.
    Show(show::Args),
    /// Issues a cluster's certificates: its CA, its nodes' and its clients'.
    Certs {
        #[command(subcommand)]
        command: certs::Command,
    },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let stdout = std::io::stdout();
    let mut out = stdout.lock();
    let result = match cli.command {
        Command::Objects(args) => objects::run(args, &mut out),
        Command::Nodes(args) => nodes::run(args, &mut out),
        Command::Show(args) => show::run(args, &mut out),
        Command::Certs { command } => certs::run(command, &mut out),
    };
    match result.and_then(|()| Ok(out.flush()?)) {
        Ok(()) => ExitCode::SUCCESS,
        // The reader went away (`stead objects dir | head`): nothing to say.
        Err(Error::Output(err)) if err.kind() == std::io::ErrorKind::BrokenPipe => ExitCode::SUCCESS,
        Err(err) => {
            let _ = writeln!(std::io::stderr(), "stead: error: {err}");
            ExitCode::FAILURE
        }
    }
}

/// Prints a line on stderr, prefixed with the command's name. Never fails:
/// a closed stderr only loses the message.
pub(crate) fn note(message: std::fmt::Arguments<'_>) {
    let _ = writeln!(std::io::stderr(), "stead: {message}");
}
