//! `stead show <data_dir> <type> <id>`: one stopped or evicted object's
//! storage: its name, alarm, keys with the sizes of their values (values
//! are encoded by the runtime's codec; their contents are not shown), and
//! its own SQL tables. `--sql "<query>"` runs one read-only statement on the
//! object's database and prints its rows as TSV.

use std::io::Write;
use std::path::PathBuf;

use crate::data_dir::{DataDir, parse_id};
use crate::error::Result;
use crate::format::{human_size, one_line, unix_millis_utc, utc_seconds};
use crate::object_db::ObjectDb;

/// The arguments of `stead show`.
#[derive(clap::Args)]
pub(crate) struct Args {
    /// The node's data directory (what it was given with `.data_dir(...)`).
    data_dir: PathBuf,
    /// The object's type, as `stead objects` lists it.
    #[arg(value_name = "TYPE")]
    type_name: String,
    /// The object's id: 64 hex digits.
    id: String,
    /// Runs this read-only SQL statement on the object's database instead,
    /// and prints its rows as tab-separated values under a header line.
    /// Keys and values are in the table `_stead_kv(key, value)`.
    #[arg(long, value_name = "QUERY")]
    sql: Option<String>,
}

/// Shows the object named by `args` on `out`.
pub(crate) fn run(args: Args, out: &mut impl Write) -> Result<()> {
    let id = parse_id(&args.id)?;
    let dir = DataDir::open(&args.data_dir)?;
    let found = dir.object(&args.type_name, &id)?;
    let db = ObjectDb::open(&found.path, &found.type_name, &found.id)?;
    // Sizes and times again, now that no node can write (the open database
    // keeps nodes out): before, the object may still have been active.
    let file = dir.object(&args.type_name, &id)?;
    if let Some(sql) = &args.sql {
        db.query(sql, out)?;
        return Ok(());
    }
    let name = db.name()?;
    let alarm = db.alarm()?;
    let field = |out: &mut dyn Write, label: &str, value: &str| writeln!(out, "{label:<11} {value}");
    field(out, "type", &one_line(&file.type_name))?;
    field(out, "id", &file.id)?;
    field(out, "name", name.as_deref().map(one_line).as_deref().unwrap_or("-"))?;
    field(out, "file", &file.path.display().to_string())?;
    field(
        out,
        "size",
        &format!(
            "{} (database {} B, WAL {} B)",
            human_size(file.db_bytes + file.wal_bytes),
            file.db_bytes,
            file.wal_bytes
        ),
    )?;
    let alarm_text = match alarm {
        Some(millis) => unix_millis_utc(millis).unwrap_or_else(|| format!("{millis} (Unix ms)")),
        None => "-".into(),
    };
    field(out, "alarm", &alarm_text)?;
    field(out, "last write", &utc_seconds(file.last_write))?;
    let tables = db.user_tables()?;
    if !tables.is_empty() {
        let listed: Vec<String> =
            tables.iter().map(|(table, rows)| format!("{} ({rows} rows)", one_line(table))).collect();
        field(out, "sql tables", &listed.join(", "))?;
    }
    let (keys, bytes) = db.key_totals()?;
    field(out, "keys", &format!("{keys}, with {} of values", human_size(bytes)))?;
    if keys > 0 {
        writeln!(out)?;
        writeln!(out, "{:>10}  KEY", "BYTES")?;
        db.keys(|key, size| Ok(writeln!(out, "{size:>10}  {}", one_line(key))?))?;
    }
    Ok(())
}
