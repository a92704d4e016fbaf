//! `stead show`: one object's storage and read-only SQL, with the real
//! binary on a data directory made by the real runtime.

mod common;

use std::ffi::OsStr;
use std::path::Path;
use std::time::{Duration, Instant};

use common::{Account, fill, object_path, read_db, runtime, stead, stead_in};
use stead::Runtime;
use stead::rusqlite::Connection;
use stead::rusqlite::config::DbConfig;

fn show(dir: &Path, type_name: &str, id: &str, extra: &[&str]) -> common::Run {
    show_in(None, dir, type_name, id, extra)
}

fn show_in(cwd: Option<&Path>, dir: &Path, type_name: &str, id: &str, extra: &[&str]) -> common::Run {
    let mut args = vec![OsStr::new("show"), dir.as_os_str(), OsStr::new(type_name), OsStr::new(id)];
    args.extend(extra.iter().map(OsStr::new));
    stead_in(cwd, args)
}

/// The size of a stored value, read from the database itself.
fn stored_len(dir: &Path, id: &str, key: &str) -> i64 {
    read_db(
        &object_path(dir, "Account", id),
        &format!("SELECT length(value) FROM _stead_kv WHERE key = '{key}'"),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn show_prints_the_name_alarm_keys_and_value_sizes_of_a_stopped_object() {
    let dir = tempfile::tempdir().unwrap();
    let filled = fill(dir.path()).await;
    let (balance, profile) =
        (stored_len(dir.path(), &filled.alice, "balance"), stored_len(dir.path(), &filled.alice, "profile"));
    assert!((1000..1010).contains(&profile), "a 1000-byte value and its length prefix: {profile}");

    let run = show(dir.path(), "Account", &filled.alice, &[]);
    let text = run.ok();
    let field = |label: &str| {
        let line = text.lines().find(|line| line.starts_with(label)).unwrap_or_else(|| panic!("{text}"));
        line[label.len()..].trim().to_string()
    };
    assert_eq!(field("type"), "Account");
    assert_eq!(field("id"), filled.alice);
    assert_eq!(field("name"), "alice");
    assert_eq!(field("alarm"), "2100-01-01T00:00:00.000Z");
    assert_eq!(field("keys"), format!("2, with {} of values", human(balance + profile)));
    let keys: Vec<(i64, &str)> = text
        .lines()
        .skip_while(|line| !line.trim_start().starts_with("BYTES"))
        .skip(1)
        .map(|line| {
            let (bytes, key) = line.trim_start().split_once("  ").unwrap();
            (bytes.parse().unwrap(), key)
        })
        .collect();
    assert_eq!(keys, [(balance, "balance"), (profile, "profile")]);
    assert_eq!(run.stderr, "");

    // Reading left no file behind and disturbed nothing: the object comes
    // back in a node with its data.
    let path = object_path(dir.path(), "Account", &filled.alice);
    assert!(!common::companion(&path, "-shm").exists(), "no -shm file left beside the database");
    let rt = runtime(dir.path()).await;
    let accounts = rt.namespace::<Account>();
    let stub = accounts.stub(&accounts.id_from_str(&filled.alice).unwrap());
    assert_eq!(stub.get("profile".into()).await.unwrap().unwrap(), Some(vec![7; 1000]));
    stub.put("after".into(), vec![1]).await.unwrap().unwrap();
    rt.shutdown().await.unwrap();
    assert!(show(dir.path(), "Account", &filled.alice, &[]).ok().contains("  after\n"));
}

/// What `human_size` shows for a small total.
fn human(bytes: i64) -> String {
    if bytes < 1024 { format!("{bytes} B") } else { format!("{:.1} KiB", bytes as f64 / 1024.0) }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn show_lists_the_objects_own_sql_tables_and_sql_prints_rows_as_tsv() {
    let dir = tempfile::tempdir().unwrap();
    let filled = fill(dir.path()).await;
    let text = show(dir.path(), "Account", &filled.unnamed, &[]).ok().to_string();
    assert!(text.lines().any(|line| line == "name        -"), "{text}");
    assert!(text.lines().any(|line| line == "sql tables  notes (2 rows)"), "{text}");

    let run = show(
        dir.path(),
        "Account",
        &filled.unnamed,
        &["--sql", "SELECT rowid, text FROM notes ORDER BY rowid"],
    );
    assert_eq!(run.ok(), "rowid\ttext\n1\tfirst\n2\tsecond\n");
    let balance = stored_len(dir.path(), &filled.bob, "balance");
    let run = show(
        dir.path(),
        "Account",
        &filled.bob,
        &["--sql", "SELECT key, length(value) AS bytes FROM _stead_kv"],
    );
    assert_eq!(run.ok(), format!("key\tbytes\nbalance\t{balance}\n"));
    let run =
        show(dir.path(), "Account", &filled.bob, &["--sql", "SELECT NULL AS n, x'00ff' AS b, 1.5 AS r"]);
    assert_eq!(run.ok(), "n\tb\tr\nNULL\tx'00ff'\t1.5\n");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sql_refuses_every_statement_that_could_write_and_changes_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let filled = fill(dir.path()).await;
    let path = object_path(dir.path(), "Account", &filled.unnamed);
    let before = std::fs::read(&path).unwrap();
    for sql in [
        "DELETE FROM _stead_kv",
        "INSERT INTO notes (text) VALUES ('third')",
        "UPDATE _stead_meta SET value = 0",
        "CREATE TABLE t (x)",
        "DROP TABLE notes",
        "CREATE TEMP TABLE t (x)",
        "PRAGMA user_version = 5",
        "VACUUM",
        "SELECT 1; DELETE FROM _stead_kv",
    ] {
        let run = show(dir.path(), "Account", &filled.unnamed, &["--sql", sql]);
        let error = run.failed();
        assert!(error.contains("`--sql` runs read-only queries only"), "{sql}: {error}");
        assert_eq!(run.stdout, "", "{sql}");
    }
    // ATTACH counts as read-only for SQLite (it writes no database), and is
    // refused by the connection: it must not create a file.
    let cwd = tempfile::tempdir().unwrap();
    let run = show_in(
        Some(cwd.path()),
        dir.path(),
        "Account",
        &filled.unnamed,
        &["--sql", "ATTACH 'x.sqlite' AS x"],
    );
    assert!(run.failed().contains("could not run the query on"), "{}", run.stderr);
    assert!(!cwd.path().join("x.sqlite").exists());

    assert_eq!(std::fs::read(&path).unwrap(), before, "the database is unchanged");
    assert_eq!(read_db::<i64>(&path, "SELECT count(*) FROM notes"), 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn show_says_clearly_that_an_active_object_is_locked_and_reads_the_others() {
    let dir = tempfile::tempdir().unwrap();
    let filled = fill(dir.path()).await;
    let rt = runtime(dir.path()).await;
    let accounts = rt.namespace::<Account>();
    let alice = accounts.stub(&accounts.id_from_str(&filled.alice).unwrap());
    alice.put("while-active".into(), vec![1, 2, 3]).await.unwrap().unwrap();

    let expected = format!(
        "stead: error: object `Account` {} is active in a running node (its database is locked); stop the \
         node or wait until the object is evicted, then retry",
        filled.alice
    );
    assert_eq!(show(dir.path(), "Account", &filled.alice, &[]).failed(), expected);
    assert_eq!(show(dir.path(), "Account", &filled.alice, &["--sql", "SELECT 1"]).failed(), expected);
    // Only objects in memory are locked: bob, in the same data directory, is not.
    assert!(show(dir.path(), "Account", &filled.bob, &[]).ok().contains("  balance\n"));

    // The node was not disturbed, and once it stops the object is readable.
    alice.put("still".into(), vec![4]).await.unwrap().unwrap();
    rt.shutdown().await.unwrap();
    let text = show(dir.path(), "Account", &filled.alice, &[]).ok().to_string();
    assert!(text.contains("  while-active\n") && text.contains("  still\n"), "{text}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn show_refuses_a_malformed_id_an_unknown_type_and_a_missing_object_in_one_line() {
    let dir = tempfile::tempdir().unwrap();
    let filled = fill(dir.path()).await;
    let run = show(dir.path(), "Account", "abc", &[]);
    assert_eq!(
        run.failed(),
        "stead: error: `abc` is not an object id: it has 3 characters (an id is 64 hex digits, as `stead \
         objects` shows them)"
    );
    let not_hex = format!("{}z", &filled.alice[..63]);
    assert!(
        show(dir.path(), "Account", &not_hex, &[]).failed().contains("'z' at position 64 is not a hex digit")
    );

    let run = show(dir.path(), "account", &filled.alice, &[]);
    assert!(run.failed().contains("there are no objects of type `account`"), "{}", run.stderr);
    assert!(run.stderr.contains("`Account`, `Ledger`"), "{}", run.stderr);

    let absent = "0".repeat(64);
    let run = show(dir.path(), "Account", &absent, &[]);
    assert!(
        run.failed().starts_with(&format!("stead: error: there is no object {absent} of type `Account` in ")),
        "{}",
        run.stderr
    );
    // An id is accepted in capitals too.
    assert!(
        show(dir.path(), "Account", &filled.alice.to_uppercase(), &[]).ok().contains("name        alice")
    );

    let missing = dir.path().join("nowhere");
    assert!(show(&missing, "Account", &filled.alice, &[]).failed().contains("there is no data directory at"));
    // Usage errors are clap's, with its own exit status.
    assert_eq!(stead(["show"]).code, Some(2));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_evicted_object_is_read_while_its_node_runs() {
    let dir = tempfile::tempdir().unwrap();
    let filled = fill(dir.path()).await;
    let rt = Runtime::builder()
        .data_dir(dir.path())
        .secret(common::SECRET)
        .idle_timeout(Duration::from_millis(300))
        .host::<Account>()
        .build()
        .await
        .unwrap();
    let accounts = rt.namespace::<Account>();
    let alice = accounts.stub(&accounts.id_from_str(&filled.alice).unwrap());
    alice.put("before-eviction".into(), vec![1, 2]).await.unwrap().unwrap();
    let deadline = Instant::now() + Duration::from_secs(10);
    while rt.open_databases() > 0 {
        assert!(Instant::now() < deadline, "alice was not evicted");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let text = show(dir.path(), "Account", &filled.alice, &[]).ok().to_string();
    assert!(text.contains("  before-eviction\n"), "{text}");
    // The node activates her again as usual.
    alice.put("after-eviction".into(), vec![3]).await.unwrap().unwrap();
    rt.shutdown().await.unwrap();
    assert!(show(dir.path(), "Account", &filled.alice, &[]).ok().contains("  after-eviction\n"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn show_reads_writes_still_in_the_wal_of_a_node_that_stopped_abruptly() {
    let dir = tempfile::tempdir().unwrap();
    let filled = fill(dir.path()).await;
    // A node killed before it evicted the object leaves its last turns in the
    // WAL (closing without a checkpoint leaves the same files).
    let path = object_path(dir.path(), "Account", &filled.bob);
    let conn = Connection::open(&path).unwrap();
    conn.set_db_config(DbConfig::SQLITE_DBCONFIG_NO_CKPT_ON_CLOSE, true).unwrap();
    conn.execute_batch("PRAGMA locking_mode = EXCLUSIVE; PRAGMA journal_mode = WAL;").unwrap();
    conn.execute("INSERT INTO _stead_kv (key, value) VALUES ('in-the-wal', x'010203')", []).unwrap();
    drop(conn);
    let wal = std::fs::metadata(common::companion(&path, "-wal")).unwrap().len();
    assert!(wal > 0, "the write is in the WAL only");

    let text = show(dir.path(), "Account", &filled.bob, &[]).ok().to_string();
    assert!(text.contains("         3  in-the-wal\n"), "{text}");
    assert!(text.contains(&format!("WAL {wal} B)")), "{text}");
    let json = stead([OsStr::new("objects"), dir.path().as_os_str(), OsStr::new("--json")]);
    let bob = json.ok().lines().find(|line| line.contains(&filled.bob)).unwrap().to_string();
    assert!(bob.contains(&format!(r#""wal_bytes":{wal}"#)), "{bob}");
}
