//! `stead objects`: listing a data directory made by the real runtime, with
//! the real binary.

mod common;

use std::ffi::OsStr;
use std::path::Path;

use common::{Account, FAR_ALARM_MS, FAR_ALARM_TEXT, Filled, fill, object_path, runtime, stead};

/// One row of the table: type, id, size, alarm, last write, name.
#[derive(Debug)]
struct Row {
    type_name: String,
    id: String,
    size: String,
    alarm: String,
    last_write: String,
    name: String,
}

fn objects(dir: &Path, extra: &[&str]) -> common::Run {
    let mut args = vec![OsStr::new("objects"), dir.as_os_str()];
    args.extend(extra.iter().map(OsStr::new));
    stead(args)
}

/// The rows of a table listing (which must succeed), header checked.
fn rows(dir: &Path, extra: &[&str]) -> Vec<Row> {
    let run = objects(dir, extra);
    let lines = run.ok().lines().collect::<Vec<_>>();
    if lines.is_empty() {
        return Vec::new();
    }
    let header: Vec<&str> = lines[0].split_whitespace().collect();
    assert_eq!(header, ["TYPE", "ID", "SIZE", "ALARM", "LAST", "WRITE", "NAME"], "{}", lines[0]);
    lines[1..]
        .iter()
        .map(|line| {
            let cells: Vec<&str> = line.split_whitespace().collect();
            Row {
                type_name: cells[0].into(),
                id: cells[1].into(),
                size: format!("{} {}", cells[2], cells[3]),
                alarm: cells[4].into(),
                last_write: cells[5].into(),
                name: cells[6..].join(" "),
            }
        })
        .collect()
}

fn ids(rows: &[Row]) -> Vec<(&str, &str)> {
    rows.iter().map(|row| (row.type_name.as_str(), row.id.as_str())).collect()
}

/// Every object of `fill`, in the order the listing must have.
fn all_sorted(filled: &Filled) -> Vec<(&'static str, &str)> {
    let mut accounts = vec![filled.alice.as_str(), filled.bob.as_str(), filled.unnamed.as_str()];
    accounts.sort();
    let mut all: Vec<_> = accounts.into_iter().map(|id| ("Account", id)).collect();
    all.push(("Ledger", filled.books.as_str()));
    all
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn objects_lists_every_object_by_type_then_id_with_name_size_alarm_and_last_write() {
    let dir = tempfile::tempdir().unwrap();
    let filled = fill(dir.path()).await;
    let run = objects(dir.path(), &[]);
    assert_eq!(run.stderr, "", "nothing on stderr (no progress line in a pipe)");
    let rows = rows(dir.path(), &[]);
    assert_eq!(ids(&rows), all_sorted(&filled));
    let row = |id: &str| rows.iter().find(|row| row.id == id).unwrap();
    let alice = row(&filled.alice);
    assert_eq!((alice.name.as_str(), alice.alarm.as_str()), ("alice", FAR_ALARM_TEXT));
    assert_eq!((row(&filled.bob).name.as_str(), row(&filled.bob).alarm.as_str()), ("bob", "-"));
    assert_eq!(row(&filled.unnamed).name, "", "an object made with unique_id has no name");
    assert_eq!(row(&filled.books).name, "books");
    for row in &rows {
        // A database holds at least its header page and our two tables.
        assert!(row.size.ends_with(" KiB"), "{row:?}");
        assert!(is_utc_seconds(&row.last_write), "last write in UTC RFC 3339: {row:?}");
    }
}

/// `2026-05-01T12:00:00Z`.
fn is_utc_seconds(text: &str) -> bool {
    text.len() == 20 && text.ends_with('Z') && text.as_bytes()[10] == b'T'
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn objects_filters_by_type_alarm_name_and_limit() {
    let dir = tempfile::tempdir().unwrap();
    let filled = fill(dir.path()).await;
    let all = all_sorted(&filled);

    assert_eq!(ids(&rows(dir.path(), &["--type", "Ledger"])), [("Ledger", filled.books.as_str())]);
    assert_eq!(ids(&rows(dir.path(), &["--with-alarm"])), [("Account", filled.alice.as_str())]);
    let names: Vec<String> = rows(dir.path(), &["--name", "o"]).into_iter().map(|row| row.name).collect();
    assert_eq!(names, ["bob", "books"], "names containing `o`, in type then id order");
    assert_eq!(ids(&rows(dir.path(), &["--name", "ali", "--with-alarm"])).len(), 1);
    assert_eq!(ids(&rows(dir.path(), &["--type", "Account", "--name", "books"])), []);
    assert_eq!(ids(&rows(dir.path(), &["--limit", "2"])), all[..2]);

    let none = objects(dir.path(), &["--name", "nobody"]);
    assert_eq!(none.stdout, "");
    assert!(none.stderr.contains("no objects match"), "{}", none.stderr);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn objects_json_gives_one_object_per_line_with_exact_figures() {
    let dir = tempfile::tempdir().unwrap();
    let filled = fill(dir.path()).await;
    let run = objects(dir.path(), &["--json"]);
    let lines: Vec<serde_json::Value> =
        run.ok().lines().map(|line| serde_json::from_str(line).unwrap()).collect();
    assert_eq!(lines.len(), 4);
    let alice = lines.iter().find(|line| line["id"] == filled.alice.as_str()).unwrap();
    assert_eq!(alice["type"], "Account");
    assert_eq!(alice["state"], "ok");
    assert_eq!(alice["name"], "alice");
    assert_eq!(alice["alarm_unix_ms"], FAR_ALARM_MS);
    assert_eq!(alice["alarm"], "2100-01-01T00:00:00.000Z");
    let path = object_path(dir.path(), "Account", &filled.alice);
    assert_eq!(alice["db_bytes"], std::fs::metadata(&path).unwrap().len());
    assert_eq!(
        alice["size_bytes"].as_u64().unwrap(),
        alice["db_bytes"].as_u64().unwrap() + alice["wal_bytes"].as_u64().unwrap()
    );
    let unnamed = lines.iter().find(|line| line["id"] == filled.unnamed.as_str()).unwrap();
    assert!(unnamed["name"].is_null() && unnamed["alarm"].is_null(), "{unnamed}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_active_object_is_listed_with_a_marker_and_the_others_normally() {
    let dir = tempfile::tempdir().unwrap();
    let filled = fill(dir.path()).await;
    // A node with alice in memory: her database is locked while it runs.
    let rt = runtime(dir.path()).await;
    let accounts = rt.namespace::<Account>();
    let alice = accounts.id_from_str(&filled.alice).unwrap();
    assert!(accounts.stub(&alice).get("balance".into()).await.unwrap().unwrap().is_some());

    let listed = rows(dir.path(), &[]);
    assert_eq!(ids(&listed), all_sorted(&filled), "the listing goes on past the active object");
    for row in &listed {
        if row.id == filled.alice {
            assert_eq!(row.alarm, "?");
            assert_eq!(row.name, "[active in a running node: its database is locked]");
        } else {
            assert_ne!(row.alarm, "?", "{row:?}");
        }
    }
    let json = objects(dir.path(), &["--json"]);
    let alice_line = json.ok().lines().find(|line| line.contains(&filled.alice)).unwrap();
    assert!(alice_line.contains(r#""state":"active""#), "{alice_line}");

    // A filter on what cannot be read leaves the object out, and says so.
    let filtered = objects(dir.path(), &["--with-alarm"]);
    assert_eq!(filtered.ok(), "", "alice's alarm cannot be read while she is active");
    assert!(filtered.stderr.contains("left out 1 object(s) that could not be read"), "{}", filtered.stderr);

    rt.shutdown().await.unwrap();
    let alarmed = rows(dir.path(), &["--with-alarm"]);
    assert_eq!(ids(&alarmed), [("Account", filled.alice.as_str())], "readable again once the node stopped");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn foreign_and_stray_files_are_reported_without_failing_the_listing() {
    let dir = tempfile::tempdir().unwrap();
    fill(dir.path()).await;
    let foreign_id = "ab".repeat(32);
    let foreign = object_path(dir.path(), "Account", &foreign_id);
    std::fs::create_dir_all(foreign.parent().unwrap()).unwrap();
    stead::rusqlite::Connection::open(&foreign).unwrap().execute("CREATE TABLE t (x)", []).unwrap();
    let stray = dir.path().join("objects/Account/notes.txt");
    std::fs::write(&stray, "not an object").unwrap();

    let run = objects(dir.path(), &[]);
    let listing = run.ok();
    let foreign_row = listing.lines().find(|line| line.contains(&foreign_id)).unwrap();
    assert!(foreign_row.ends_with("[not a stead object database]"), "{foreign_row}");
    assert_eq!(listing.lines().count(), 1 + 4 + 1, "header, the four objects and the foreign file");
    assert!(run.stderr.contains(&format!("{} is not a stead object database", foreign.display())));
    assert!(run.stderr.contains("application id is 0x0"), "{}", run.stderr);
    assert!(run.stderr.contains(&format!("skipped {}", stray.display())), "{}", run.stderr);

    let show = stead(["show".as_ref(), dir.path().as_os_str(), "Account".as_ref(), foreign_id.as_ref()]);
    assert!(show.failed().contains("is not a stead object database"), "{}", show.stderr);
}

#[test]
fn objects_refuses_a_missing_or_foreign_data_directory_and_an_unknown_type() {
    let dir = tempfile::tempdir().unwrap();
    let missing = dir.path().join("nowhere");
    let run = objects(&missing, &[]);
    assert_eq!(run.failed(), format!("stead: error: there is no data directory at {}", missing.display()));

    let run = objects(dir.path(), &[]);
    assert!(run.failed().contains("is not a stead data directory"), "{}", run.stderr);

    // A node that stored nothing yet: an empty listing, not an error.
    std::fs::write(dir.path().join("secret"), "x").unwrap();
    let run = objects(dir.path(), &[]);
    assert_eq!(run.ok(), "");
    assert!(run.stderr.contains("no objects are stored there"), "{}", run.stderr);

    std::fs::create_dir_all(dir.path().join("objects/Account")).unwrap();
    let run = objects(dir.path(), &["--type", "Acount"]);
    assert_eq!(
        run.failed(),
        format!(
            "stead: error: there are no objects of type `Acount` in {}; the types there are `Account` \
             (names are case-sensitive)",
            dir.path().display()
        )
    );
}
