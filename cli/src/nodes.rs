//! `stead nodes --postgres <conninfo>`: the nodes of a PostgreSQL cluster,
//! one line each, in order of name, as `stead_nodes` says: whether each
//! holds its lease now and until when, both by PostgreSQL's clock (the one
//! that judges leases), never this machine's.

use std::io::Write;
use std::time::Duration;

use serde::Serialize;
use stead_runtime::inspect::NodeRow;

use crate::error::Result;
use crate::format::{one_line, unix_millis, unix_millis_utc, utc_seconds};
use crate::note;
use crate::postgres::{DEFAULT_TIMEOUT, cluster_error, parse_timeout, signed_millis, with_cluster};

/// The arguments of `stead nodes`.
#[derive(clap::Args)]
pub(crate) struct Args {
    /// The cluster's PostgreSQL database, as its nodes are given it with
    /// `.postgres(..)` (`host=db.internal user=stead dbname=stead`).
    #[arg(long, value_name = "CONNINFO")]
    postgres: String,
    /// How long PostgreSQL may take to accept the connection and to answer
    /// each query [default: 5s].
    #[arg(long, value_name = "DURATION", value_parser = parse_timeout)]
    timeout: Option<Duration>,
    /// One JSON object per line instead of a table.
    #[arg(long)]
    json: bool,
}

/// Lists the nodes of the cluster at `args.postgres` on `out`.
pub(crate) fn run(args: Args, out: &mut impl Write) -> Result<()> {
    let nodes = with_cluster(&args.postgres, args.timeout.unwrap_or(DEFAULT_TIMEOUT), |reader| async move {
        reader.nodes().await.map_err(cluster_error)
    })?;
    if nodes.is_empty() {
        if !args.json {
            note(format_args!("no node has joined this cluster yet"));
        }
        return Ok(());
    }
    if args.json {
        for node in &nodes {
            json_row(out, node)?;
        }
        return Ok(());
    }
    let name_width = nodes.iter().map(|n| one_line(&n.name).chars().count()).max().unwrap_or(0).max(4);
    let addr_width = nodes.iter().map(|n| one_line(&n.addr).chars().count()).max().unwrap_or(0).max(7);
    writeln!(
        out,
        "{:<name_width$}  {:<addr_width$}  {:<5}  {:>11}  {:<TIME_WIDTH$}  {:>LEFT_WIDTH$}  HOSTS",
        "NAME", "ADDRESS", "ALIVE", "INCARNATION", "LEASE UNTIL", "LEASE LEFT"
    )?;
    for node in &nodes {
        let lease_until = unix_millis(node.lease_until_unix_ms)
            .map_or_else(|| format!("{} (Unix ms)", node.lease_until_unix_ms), utc_seconds);
        let hosts: Vec<String> = node.hosts.iter().map(|h| one_line(h)).collect();
        writeln!(
            out,
            "{:<name_width$}  {:<addr_width$}  {:<5}  {:>11}  {:<TIME_WIDTH$}  {:>LEFT_WIDTH$}  {}",
            one_line(&node.name),
            one_line(&node.addr),
            if node.alive { "yes" } else { "no" },
            node.incarnation,
            lease_until,
            signed_millis(node.lease_left_ms),
            hosts.join(", ")
        )?;
    }
    Ok(())
}

/// The width of a time to the second ("2026-05-01T12:00:00Z").
const TIME_WIDTH: usize = 20;
/// The width of the lease's time left ("-59.9s", "2h 46m 40s").
const LEFT_WIDTH: usize = 10;

/// One line of `--json`.
#[derive(Serialize)]
struct JsonRow<'a> {
    name: &'a str,
    addr: &'a str,
    alive: bool,
    incarnation: i64,
    /// UTC, with milliseconds, by PostgreSQL's clock.
    lease_until: Option<String>,
    lease_until_unix_ms: i64,
    /// Negative once the lease lapsed.
    lease_left_ms: i64,
    started_at: Option<String>,
    started_at_unix_ms: i64,
    hosts: &'a [String],
}

fn json_row(out: &mut impl Write, node: &NodeRow) -> Result<()> {
    let row = JsonRow {
        name: &node.name,
        addr: &node.addr,
        alive: node.alive,
        incarnation: node.incarnation,
        lease_until: unix_millis_utc(node.lease_until_unix_ms),
        lease_until_unix_ms: node.lease_until_unix_ms,
        lease_left_ms: node.lease_left_ms,
        started_at: unix_millis_utc(node.started_at_unix_ms),
        started_at_unix_ms: node.started_at_unix_ms,
        hosts: &node.hosts,
    };
    serde_json::to_writer(&mut *out, &row).map_err(std::io::Error::from)?;
    writeln!(out)?;
    Ok(())
}
