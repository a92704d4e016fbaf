//! `stead objects <data_dir>`: the objects of a node's data directory, one
//! line each, in order of type then id. (`stead objects --postgres` lists
//! a PostgreSQL cluster's directory instead: `cluster_objects.rs`.)
//!
//! Rows are printed as the directory is walked (a data directory may hold
//! millions of objects), so the name, the only column of unknown width,
//! comes last. An object that cannot be read (active in a running node, or
//! a foreign file) is listed with a marker instead of failing the listing.

use std::io::Write;
use std::ops::ControlFlow;
use std::path::PathBuf;
use std::time::Duration;

use serde::Serialize;

use crate::data_dir::{DataDir, ObjectFile};
use crate::error::{Error, Result};
use crate::format::{human_size, one_line, unix_millis, unix_millis_utc, utc_seconds};
use crate::note;
use crate::object_db::ObjectDb;
use crate::progress::Progress;

/// The arguments of `stead objects`.
#[derive(clap::Args)]
pub(crate) struct Args {
    /// The node's data directory (what it was given with `.data_dir(...)`).
    #[arg(required_unless_present = "postgres")]
    data_dir: Option<PathBuf>,
    /// Lists the directory of a PostgreSQL cluster instead (type, id,
    /// owner, epoch, whether the owner is alive, name): its database, as
    /// the nodes are given it with `.postgres(..)`.
    #[arg(long, value_name = "CONNINFO", conflicts_with_all = ["data_dir", "with_alarm"])]
    pub(crate) postgres: Option<String>,
    /// Only objects of this type (its name in ids and storage: the type's
    /// name, or the one given with `#[durable_object(name = "...")]`).
    #[arg(long = "type", value_name = "TYPE")]
    pub(crate) type_name: Option<String>,
    /// Only objects that have an alarm set (not with `--postgres`: alarms
    /// live in the nodes' storage).
    #[arg(long)]
    with_alarm: bool,
    /// Only objects whose name (given to `id_from_name`) contains TEXT.
    #[arg(long, value_name = "TEXT")]
    pub(crate) name: Option<String>,
    /// With `--postgres`: only objects that node NODE owns.
    #[arg(long, value_name = "NODE")]
    pub(crate) owner: Option<String>,
    /// At most N objects.
    #[arg(long, value_name = "N")]
    pub(crate) limit: Option<usize>,
    /// One JSON object per line instead of a table.
    #[arg(long)]
    pub(crate) json: bool,
    /// With `--postgres`: how long PostgreSQL may take to accept the
    /// connection and to answer each query [default: 5s].
    #[arg(long, value_name = "DURATION", value_parser = crate::postgres::parse_timeout)]
    pub(crate) timeout: Option<Duration>,
}

/// What could be read of one object.
enum State {
    Readable {
        name: Option<String>,
        alarm: Option<i64>,
    },
    /// Locked by the node that has the object in memory.
    Active,
    /// Not a stead object database.
    Foreign(String),
    /// Another failure, said in full.
    Unreadable(String),
}

/// Lists the objects of `args.data_dir` (or, with `--postgres`, of a
/// cluster's directory) on `out`.
pub(crate) fn run(args: Args, out: &mut impl Write) -> Result<()> {
    let data_dir = match (&args.postgres, &args.data_dir) {
        (Some(conninfo), _) => return crate::cluster_objects::run(conninfo, &args, out),
        (None, Some(data_dir)) => {
            // Checked here: clap lets a positional argument satisfy `requires`.
            for (given, option) in [(args.owner.is_some(), "--owner"), (args.timeout.is_some(), "--timeout")]
            {
                if given {
                    return Err(Error::Usage(format!(
                        "`{option}` applies to a PostgreSQL cluster's directory: give `--postgres <CONNINFO>` \
                         instead of a data directory"
                    )));
                }
            }
            data_dir
        }
        // clap requires one of them.
        (None, None) => unreachable!("clap requires a data directory or `--postgres`"),
    };
    let dir = DataDir::open(data_dir)?;
    let types = match &args.type_name {
        Some(type_name) => {
            dir.check_type(type_name)?;
            vec![type_name.clone()]
        }
        None => dir.types()?,
    };
    let filtering = args.with_alarm || args.name.is_some();
    let table = Table { type_width: types.iter().map(|t| t.chars().count()).max().unwrap_or(0).max(4) };
    let mut progress = Progress::new("objects");
    let mut listed = 0usize;
    let mut unjudged = 0usize;
    let mut strays = Vec::new();
    if args.limit != Some(0) {
        dir.walk(
            &types,
            |file| {
                progress.tick(&file.type_name);
                let state = read(&file);
                if filtering {
                    match &state {
                        State::Readable { name, alarm } => {
                            let name_matches = match &args.name {
                                Some(part) => {
                                    name.as_deref().is_some_and(|name| name.contains(part.as_str()))
                                }
                                None => true,
                            };
                            if !name_matches || (args.with_alarm && alarm.is_none()) {
                                return Ok(ControlFlow::Continue(()));
                            }
                        }
                        _ => {
                            unjudged += 1;
                            return Ok(ControlFlow::Continue(()));
                        }
                    }
                }
                progress.suspend(|| -> Result<()> {
                    if args.json {
                        json_row(out, &file, &state)
                    } else {
                        if listed == 0 {
                            table.header(out)?;
                        }
                        table.row(out, &file, &state)
                    }
                })?;
                match &state {
                    State::Foreign(what) => progress.suspend(|| {
                        note(format_args!("{} is not a stead object database ({what})", file.path.display()))
                    }),
                    State::Unreadable(why) => progress.suspend(|| note(format_args!("{why}"))),
                    State::Readable { .. } | State::Active => {}
                }
                listed += 1;
                Ok(if args.limit.is_some_and(|limit| listed >= limit) {
                    ControlFlow::Break(())
                } else {
                    ControlFlow::Continue(())
                })
            },
            |stray| strays.push(stray.to_path_buf()),
        )?;
    }
    drop(progress);
    for stray in strays {
        note(format_args!(
            "skipped {}: it is not an object database of the data directory's layout",
            stray.display()
        ));
    }
    if unjudged > 0 {
        note(format_args!(
            "left out {unjudged} object(s) that could not be read (active in a running node, or not stead \
             databases), as --name and --with-alarm cannot be checked for them"
        ));
    }
    if listed == 0 && !args.json {
        let what = if filtering || args.limit == Some(0) { "match" } else { "are stored there" };
        note(format_args!("no objects {what} ({})", dir.root().display()));
    }
    Ok(())
}

/// Reads the name and alarm of one object.
fn read(file: &ObjectFile) -> State {
    let read = ObjectDb::open(&file.path, &file.type_name, &file.id)
        .and_then(|db| Ok(State::Readable { name: db.name()?, alarm: db.alarm()? }));
    match read {
        Ok(state) => state,
        Err(Error::Active { .. }) => State::Active,
        Err(Error::Foreign { what, .. }) => State::Foreign(what),
        Err(other) => State::Unreadable(other.to_string()),
    }
}

/// The table's layout: every column but the last has a known width.
struct Table {
    type_width: usize,
}

/// The width of a size ("1023.9 KiB").
const SIZE_WIDTH: usize = 10;
/// The width of a time to the second ("2026-05-01T12:00:00Z").
const TIME_WIDTH: usize = 20;

impl Table {
    fn header(&self, out: &mut impl Write) -> Result<()> {
        let tw = self.type_width;
        writeln!(
            out,
            "{:<tw$}  {:<64}  {:>SIZE_WIDTH$}  {:<TIME_WIDTH$}  {:<TIME_WIDTH$}  NAME",
            "TYPE", "ID", "SIZE", "ALARM", "LAST WRITE"
        )?;
        Ok(())
    }

    fn row(&self, out: &mut impl Write, file: &ObjectFile, state: &State) -> Result<()> {
        let (alarm, name) = match state {
            State::Readable { name, alarm } => (
                alarm.map_or_else(|| "-".to_string(), |millis| alarm_text(millis, utc_seconds)),
                name.as_deref().map(one_line).unwrap_or_default(),
            ),
            State::Active => ("?".into(), "[active in a running node: its database is locked]".into()),
            State::Foreign(_) => ("?".into(), "[not a stead object database]".into()),
            State::Unreadable(_) => ("?".into(), "[unreadable]".into()),
        };
        let tw = self.type_width;
        writeln!(
            out,
            "{:<tw$}  {}  {:>SIZE_WIDTH$}  {:<TIME_WIDTH$}  {:<TIME_WIDTH$}  {}",
            one_line(&file.type_name),
            file.id,
            human_size(file.db_bytes + file.wal_bytes),
            alarm,
            utc_seconds(file.last_write),
            name
        )?;
        Ok(())
    }
}

/// An alarm time, or the raw value when it cannot be a time.
fn alarm_text(millis: i64, format: impl Fn(std::time::SystemTime) -> String) -> String {
    unix_millis(millis).map_or_else(|| format!("{millis} (Unix ms)"), format)
}

/// One line of `--json`.
#[derive(Serialize)]
struct JsonRow<'a> {
    #[serde(rename = "type")]
    type_name: &'a str,
    id: &'a str,
    /// `ok`, `active`, `foreign` or `unreadable`; name and alarm are known
    /// only when `ok`.
    state: &'static str,
    name: Option<&'a str>,
    alarm: Option<String>,
    alarm_unix_ms: Option<i64>,
    size_bytes: u64,
    db_bytes: u64,
    wal_bytes: u64,
    last_write: String,
    error: Option<&'a str>,
}

fn json_row(out: &mut impl Write, file: &ObjectFile, state: &State) -> Result<()> {
    let mut row = JsonRow {
        type_name: &file.type_name,
        id: &file.id,
        state: "ok",
        name: None,
        alarm: None,
        alarm_unix_ms: None,
        size_bytes: file.db_bytes + file.wal_bytes,
        db_bytes: file.db_bytes,
        wal_bytes: file.wal_bytes,
        last_write: utc_seconds(file.last_write),
        error: None,
    };
    match state {
        State::Readable { name, alarm } => {
            row.name = name.as_deref();
            row.alarm = alarm.and_then(unix_millis_utc);
            row.alarm_unix_ms = *alarm;
        }
        State::Active => row.state = "active",
        State::Foreign(what) => (row.state, row.error) = ("foreign", Some(what.as_str())),
        State::Unreadable(why) => (row.state, row.error) = ("unreadable", Some(why.as_str())),
    }
    serde_json::to_writer(&mut *out, &row).map_err(std::io::Error::from)?;
    writeln!(out)?;
    Ok(())
}
