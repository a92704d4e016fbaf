//! `stead objects --postgres <conninfo>`: the directory of a PostgreSQL
//! cluster (`stead_objects`), one line per object, in order of type then
//! id: where each object lives (its owner node and placement epoch) and
//! whether that node holds its lease now, by PostgreSQL's clock.
//!
//! The directory is read in pages (by key, no transaction held open), and
//! rows are printed as they come: a cluster may have millions of objects.
//! Column widths come from the nodes' table (their names, the types they
//! host), so that no column depends on reading the whole directory first;
//! the name, of unknown width, comes last.

use std::io::Write;

use serde::Serialize;
use stead_runtime::inspect::{ClusterReader, ObjectFilter, ObjectRow};

use crate::error::Result;
use crate::format::{one_line, unix_millis_utc};
use crate::note;
use crate::objects::Args;
use crate::postgres::{DEFAULT_TIMEOUT, cluster_error, with_cluster};

/// Objects read per query.
const PAGE: usize = 1000;

/// Lists the objects of the cluster at `conninfo` that match `args`.
pub(crate) fn run(conninfo: &str, args: &Args, out: &mut impl Write) -> Result<()> {
    let timeout = args.timeout.unwrap_or(DEFAULT_TIMEOUT);
    with_cluster(conninfo, timeout, |reader| list(reader, args, out))
}

async fn list(reader: ClusterReader, args: &Args, out: &mut impl Write) -> Result<()> {
    let filter = ObjectFilter {
        type_name: args.type_name.clone(),
        owner: args.owner.clone(),
        name_contains: args.name.clone(),
    };
    let nodes = reader.nodes().await.map_err(cluster_error)?;
    let width = |texts: &mut dyn Iterator<Item = &String>, least: usize| {
        texts.map(|text| one_line(text).chars().count()).max().unwrap_or(0).max(least)
    };
    let table = Table {
        type_width: match &args.type_name {
            Some(type_name) => width(&mut std::iter::once(type_name), 4),
            None => width(&mut nodes.iter().flat_map(|node| &node.hosts), 4),
        },
        owner_width: width(&mut nodes.iter().map(|node| &node.name), 5),
    };
    let limit = args.limit.unwrap_or(usize::MAX);
    let mut listed = 0usize;
    let mut last: Option<ObjectRow> = None;
    while listed < limit {
        let want = PAGE.min(limit - listed);
        let page = reader.objects(&filter, last.as_ref(), want).await.map_err(cluster_error)?;
        for object in &page {
            if args.json {
                json_row(out, object)?;
            } else {
                if listed == 0 {
                    table.header(out)?;
                }
                table.row(out, object)?;
            }
            listed += 1;
        }
        if page.len() < want {
            break;
        }
        last = page.into_iter().last();
    }
    if listed == 0 && !args.json {
        empty(&reader, args).await?;
    }
    Ok(())
}

/// Says why nothing was listed.
async fn empty(reader: &ClusterReader, args: &Args) -> Result<()> {
    let filtering = args.name.is_some() || args.owner.is_some();
    if args.limit == Some(0) {
        note(format_args!("no objects listed (--limit 0)"));
    } else if let Some(type_name) = &args.type_name {
        // Most often a misspelt type: say which ones there are.
        let types = reader.types().await.map_err(cluster_error)?;
        let which = if filtering { "that match" } else { "in the cluster's directory" };
        if types.iter().any(|t| t == type_name) {
            note(format_args!("no objects of type `{}` {which}", one_line(type_name)));
        } else if types.is_empty() {
            note(format_args!(
                "no objects of type `{}`: the cluster's directory is empty",
                one_line(type_name)
            ));
        } else {
            let types: Vec<String> = types.iter().map(|t| format!("`{}`", one_line(t))).collect();
            note(format_args!(
                "no objects of type `{}` in the cluster's directory; its types are {}",
                one_line(type_name),
                types.join(", ")
            ));
        }
    } else if filtering {
        note(format_args!("no objects match"));
    } else {
        note(format_args!("no objects are placed in this cluster yet"));
    }
    Ok(())
}

/// The table's layout: every column but the last has a known width (a
/// longer value widens its row only).
struct Table {
    type_width: usize,
    owner_width: usize,
}

impl Table {
    fn header(&self, out: &mut impl Write) -> Result<()> {
        let (tw, ow) = (self.type_width, self.owner_width);
        writeln!(
            out,
            "{:<tw$}  {:<64}  {:<ow$}  {:>5}  {:<5}  NAME",
            "TYPE", "ID", "OWNER", "EPOCH", "ALIVE"
        )?;
        Ok(())
    }

    fn row(&self, out: &mut impl Write, object: &ObjectRow) -> Result<()> {
        let (tw, ow) = (self.type_width, self.owner_width);
        writeln!(
            out,
            "{:<tw$}  {:<64}  {:<ow$}  {:>5}  {:<5}  {}",
            one_line(&object.type_name),
            hex(&object.id),
            one_line(&object.owner),
            object.epoch,
            if object.owner_alive { "yes" } else { "no" },
            object.name.as_deref().map(one_line).unwrap_or_default()
        )?;
        Ok(())
    }
}

/// An id as `stead objects <data_dir>` and the runtime show it.
fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// One line of `--json`.
#[derive(Serialize)]
struct JsonRow<'a> {
    #[serde(rename = "type")]
    type_name: &'a str,
    id: String,
    name: Option<&'a str>,
    owner: &'a str,
    epoch: i64,
    /// Whether the owner holds its lease now, by PostgreSQL's clock.
    owner_alive: bool,
    /// When the object was placed (UTC, milliseconds).
    placed_at: Option<String>,
    placed_at_unix_ms: i64,
}

fn json_row(out: &mut impl Write, object: &ObjectRow) -> Result<()> {
    let row = JsonRow {
        type_name: &object.type_name,
        id: hex(&object.id),
        name: object.name.as_deref(),
        owner: &object.owner,
        epoch: object.epoch,
        owner_alive: object.owner_alive,
        placed_at: unix_millis_utc(object.created_at_unix_ms),
        placed_at_unix_ms: object.created_at_unix_ms,
    };
    serde_json::to_writer(&mut *out, &row).map_err(std::io::Error::from)?;
    writeln!(out)?;
    Ok(())
}
