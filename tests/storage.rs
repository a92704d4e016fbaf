//! Storage: the key-value API, SQL beside it, savepoints, the output gate,
//! persistence across restarts, and refusal of bad input.

#![allow(missing_docs)] // test objects are exercised, not documented

use std::path::Path;

use stead::{Context, Durability, Error, ListOptions, Runtime, durable_object};

pub struct Store {
    ctx: Context,
}

#[durable_object]
impl Store {
    pub async fn new(ctx: Context) -> Self {
        Store { ctx }
    }

    pub fn put(&mut self, key: String, value: String) -> stead::Result<()> {
        self.ctx.storage().put(&key, &value)
    }

    pub fn get(&self, key: String) -> stead::Result<Option<String>> {
        self.ctx.storage().get(&key)
    }

    pub fn delete(&mut self, key: String) -> stead::Result<bool> {
        self.ctx.storage().delete(&key)
    }

    pub fn put_many(&mut self, entries: Vec<(String, String)>) -> stead::Result<()> {
        self.ctx.storage().put_many(entries)
    }

    pub fn get_many(&self, keys: Vec<String>) -> stead::Result<Vec<(String, String)>> {
        Ok(self.ctx.storage().get_many(keys)?.into_iter().collect())
    }

    pub fn delete_many(&mut self, keys: Vec<String>) -> stead::Result<usize> {
        self.ctx.storage().delete_many(keys)
    }

    pub fn list(
        &self,
        options: (Option<String>, Option<String>, Option<String>, bool, Option<usize>),
    ) -> stead::Result<Vec<String>> {
        let (prefix, start, end, reverse, limit) = options;
        let options = ListOptions { prefix, start, end, reverse, limit };
        Ok(self.ctx.storage().list::<String>(options)?.into_iter().map(|(k, _)| k).collect())
    }

    pub fn delete_all(&mut self) -> stead::Result<()> {
        self.ctx.storage().delete_all()
    }

    /// Writes `a`, then in a savepoint writes `b` and fails, then writes `c`.
    pub fn savepoints(&mut self) -> stead::Result<String> {
        let storage = self.ctx.storage();
        storage.put("a", "1")?;
        let failed: stead::Result<()> = storage.transaction(|txn| {
            txn.put("b", "2")?;
            Err(Error::Storage("changed my mind".into()))
        });
        assert!(failed.is_err());
        storage.transaction(|txn| txn.put("c", "3"))?;
        Ok("done".into())
    }

    /// Puts, then panics: the put must not survive.
    pub fn put_then_panic(&mut self, key: String) {
        self.ctx.storage().put(&key, "doomed").unwrap();
        panic!("after writing {key}");
    }

    /// A user table beside the key-value pairs.
    pub fn add_row(&mut self, name: String) -> stead::Result<i64> {
        self.ctx.storage().sql(|conn| {
            conn.execute_batch("CREATE TABLE IF NOT EXISTS people (name TEXT NOT NULL)")?;
            conn.execute("INSERT INTO people (name) VALUES (?1)", [&name])?;
            conn.query_row("SELECT count(*) FROM people", [], |row| row.get(0))
        })
    }

    pub fn rows(&self) -> stead::Result<Vec<String>> {
        self.ctx.storage().sql(|conn| {
            let mut stmt = conn.prepare("SELECT name FROM people ORDER BY rowid")?;
            stmt.query_map([], |row| row.get(0))?.collect()
        })
    }

    pub fn commit_by_hand(&mut self) -> stead::Result<()> {
        self.ctx.storage().put("x", "y")?;
        self.ctx.storage().sql(|conn| conn.execute_batch("COMMIT"))
    }

    pub fn pragma(&self, name: String) -> stead::Result<String> {
        self.ctx
            .storage()
            .sql(|conn| {
                conn.query_row(&format!("PRAGMA {name}"), [], |row| {
                    row.get::<_, stead::rusqlite::types::Value>(0)
                })
            })
            .map(|value| format!("{value:?}"))
    }

    pub fn put_u64(&mut self, key: String, value: u64) -> stead::Result<()> {
        self.ctx.storage().put(&key, &value)
    }
}

async fn on_disk(dir: &Path) -> Runtime {
    Runtime::builder().data_dir(dir).host::<Store>().build().await.unwrap()
}

/// [`on_disk`] with `Durability::Normal`.
async fn on_disk_normal(dir: &Path) -> Runtime {
    Runtime::builder().data_dir(dir).durability(Durability::Normal).host::<Store>().build().await.unwrap()
}

fn list(
    prefix: Option<&str>,
    start: Option<&str>,
    end: Option<&str>,
    reverse: bool,
    limit: Option<usize>,
) -> (Option<String>, Option<String>, Option<String>, bool, Option<usize>) {
    (prefix.map(String::from), start.map(String::from), end.map(String::from), reverse, limit)
}

#[tokio::test]
async fn put_get_and_delete_round_trip() {
    let dir = tempfile::tempdir().unwrap();
    let rt = on_disk(dir.path()).await;
    let ns = rt.namespace::<Store>();
    let store = ns.stub(&ns.unique_id());
    assert_eq!(store.get("k".into()).await.unwrap().unwrap(), None);
    store.put("k".into(), "v1".into()).await.unwrap().unwrap();
    assert_eq!(store.get("k".into()).await.unwrap().unwrap(), Some("v1".into()));
    store.put("k".into(), "v2".into()).await.unwrap().unwrap();
    assert_eq!(store.get("k".into()).await.unwrap().unwrap(), Some("v2".into()));
    assert!(store.delete("k".into()).await.unwrap().unwrap());
    assert!(!store.delete("k".into()).await.unwrap().unwrap());
    assert_eq!(store.get("k".into()).await.unwrap().unwrap(), None);
    rt.shutdown().await.unwrap();
}

/// Both modes commit into the WAL without SQLite syncing it. With `Full`
/// SQLite syncs nothing at all (`synchronous = OFF`): the runtime syncs the
/// WAL itself, on its sync threads, before a reply leaves, and checkpoints
/// there (see `storage/wal.rs`); with `Normal`, SQLite syncs around its
/// checkpoints (`synchronous = NORMAL`).
#[tokio::test]
async fn object_databases_use_wal_and_sqlite_never_syncs_a_commit() {
    for durability in [stead::Durability::Full, stead::Durability::Normal] {
        let dir = tempfile::tempdir().unwrap();
        let rt = Runtime::builder()
            .data_dir(dir.path())
            .durability(durability)
            .host::<Store>()
            .build()
            .await
            .unwrap();
        let ns = rt.namespace::<Store>();
        let store = ns.stub(&ns.unique_id());
        let mode = store.pragma("journal_mode".into()).await.unwrap().unwrap();
        assert!(mode.to_lowercase().contains("wal"), "journal_mode is {mode}");
        let sync = store.pragma("synchronous".into()).await.unwrap().unwrap();
        let expected = if durability == stead::Durability::Full { '0' } else { '1' };
        assert!(sync.contains(expected), "synchronous is {sync} for {durability:?}, expected {expected}");
    }
}

/// With `Full`, the sync a reply waits for runs on a sync thread, not on
/// the tokio worker that ran the turn.
#[cfg(target_os = "linux")]
#[tokio::test]
async fn full_durability_syncs_on_sync_threads() {
    let dir = tempfile::tempdir().unwrap();
    let rt = Runtime::builder().data_dir(dir.path()).host::<Store>().build().await.unwrap();
    let ns = rt.namespace::<Store>();
    let store = ns.stub(&ns.unique_id());
    store.put("k".into(), "v".into()).await.unwrap().unwrap();
    let names: Vec<String> = std::fs::read_dir("/proc/self/task")
        .unwrap()
        .filter_map(|task| std::fs::read_to_string(task.ok()?.path().join("comm")).ok())
        .map(|name| name.trim().to_string())
        .collect();
    assert!(names.iter().any(|name| name == "stead-sync"), "threads: {names:?}");
    rt.shutdown().await.unwrap();
}

#[tokio::test]
async fn many_keys_at_once() {
    let rt = Runtime::builder().in_memory().host::<Store>().build().await.unwrap();
    let ns = rt.namespace::<Store>();
    let store = ns.stub(&ns.unique_id());
    let entries: Vec<_> = (0..10).map(|i| (format!("k{i}"), format!("v{i}"))).collect();
    store.put_many(entries).await.unwrap().unwrap();
    let got = store.get_many(vec!["k1".into(), "k5".into(), "missing".into()]).await.unwrap().unwrap();
    assert_eq!(got, vec![("k1".to_string(), "v1".to_string()), ("k5".to_string(), "v5".to_string())]);
    let deleted = store.delete_many(vec!["k1".into(), "k2".into(), "missing".into()]).await.unwrap().unwrap();
    assert_eq!(deleted, 2);
    assert_eq!(store.get("k1".into()).await.unwrap().unwrap(), None);
    assert_eq!(store.get("k3".into()).await.unwrap().unwrap(), Some("v3".into()));
}

#[tokio::test]
async fn list_honours_prefix_start_end_reverse_and_limit() {
    let rt = Runtime::builder().in_memory().host::<Store>().build().await.unwrap();
    let ns = rt.namespace::<Store>();
    let store = ns.stub(&ns.unique_id());
    let keys = ["a", "user:1", "user:2", "user:3", "user;", "users", "z"];
    store.put_many(keys.iter().map(|k| (k.to_string(), "v".to_string())).collect()).await.unwrap().unwrap();

    let all = store.list(list(None, None, None, false, None)).await.unwrap().unwrap();
    assert_eq!(all, keys);
    let users = store.list(list(Some("user:"), None, None, false, None)).await.unwrap().unwrap();
    assert_eq!(users, ["user:1", "user:2", "user:3"]);
    let range = store.list(list(None, Some("user:2"), Some("users"), false, None)).await.unwrap().unwrap();
    assert_eq!(range, ["user:2", "user:3", "user;"]);
    let reversed = store.list(list(Some("user:"), None, None, true, Some(2))).await.unwrap().unwrap();
    assert_eq!(reversed, ["user:3", "user:2"]);
    let limited = store.list(list(None, Some("b"), None, false, Some(1))).await.unwrap().unwrap();
    assert_eq!(limited, ["user:1"]);
    let nothing = store.list(list(Some("nope"), None, None, false, None)).await.unwrap().unwrap();
    assert!(nothing.is_empty());
}

#[tokio::test]
async fn list_options_have_builder_methods() {
    let options = ListOptions::default().prefix("p").start("s").end("e").reverse(true).limit(3);
    assert_eq!(
        options,
        ListOptions {
            prefix: Some("p".into()),
            start: Some("s".into()),
            end: Some("e".into()),
            reverse: true,
            limit: Some(3)
        }
    );
}

#[tokio::test]
async fn a_savepoint_that_fails_rolls_back_only_its_own_writes() {
    let rt = Runtime::builder().in_memory().host::<Store>().build().await.unwrap();
    let ns = rt.namespace::<Store>();
    let store = ns.stub(&ns.unique_id());
    store.savepoints().await.unwrap().unwrap();
    assert_eq!(store.get("a".into()).await.unwrap().unwrap(), Some("1".into()));
    assert_eq!(store.get("b".into()).await.unwrap().unwrap(), None);
    assert_eq!(store.get("c".into()).await.unwrap().unwrap(), Some("3".into()));
}

#[tokio::test]
async fn a_panicking_turn_leaves_no_writes() {
    let dir = tempfile::tempdir().unwrap();
    let rt = on_disk(dir.path()).await;
    let ns = rt.namespace::<Store>();
    let store = ns.stub(&ns.unique_id());
    store.put("kept".into(), "yes".into()).await.unwrap().unwrap();
    let err = store.put_then_panic("doomed".into()).await.unwrap_err();
    assert!(matches!(err, Error::Panicked(_)), "{err}");
    assert_eq!(store.get("doomed".into()).await.unwrap().unwrap(), None);
    assert_eq!(store.get("kept".into()).await.unwrap().unwrap(), Some("yes".into()));
}

#[tokio::test]
async fn sql_tables_live_beside_the_key_value_pairs() {
    let dir = tempfile::tempdir().unwrap();
    let rt = on_disk(dir.path()).await;
    let ns = rt.namespace::<Store>();
    let id = ns.unique_id();
    let store = ns.stub(&id);
    store.put("k".into(), "v".into()).await.unwrap().unwrap();
    assert_eq!(store.add_row("ada".into()).await.unwrap().unwrap(), 1);
    assert_eq!(store.add_row("grace".into()).await.unwrap().unwrap(), 2);
    rt.shutdown().await.unwrap();

    let rt = on_disk(dir.path()).await;
    let store = rt.namespace::<Store>().stub(&id);
    assert_eq!(store.rows().await.unwrap().unwrap(), ["ada", "grace"]);
    assert_eq!(store.get("k".into()).await.unwrap().unwrap(), Some("v".into()));
}

#[tokio::test]
async fn committing_by_hand_inside_sql_is_refused_and_rolled_back() {
    let rt = Runtime::builder().in_memory().host::<Store>().build().await.unwrap();
    let ns = rt.namespace::<Store>();
    let store = ns.stub(&ns.unique_id());
    let Err(Error::Storage(message)) = store.commit_by_hand().await.unwrap() else { panic!() };
    assert!(message.contains("COMMIT"), "{message}");
    // The object keeps working afterwards.
    store.put("after".into(), "ok".into()).await.unwrap().unwrap();
    assert_eq!(store.get("after".into()).await.unwrap().unwrap(), Some("ok".into()));
}

#[tokio::test]
async fn values_and_ids_survive_a_restart_on_the_same_data_dir() {
    let dir = tempfile::tempdir().unwrap();
    let rt = on_disk(dir.path()).await;
    let ns = rt.namespace::<Store>();
    let unique = ns.unique_id();
    let named = ns.id_from_name("alice");
    ns.stub(&unique).put("k".into(), "unique".into()).await.unwrap().unwrap();
    ns.stub(&named).put("k".into(), "named".into()).await.unwrap().unwrap();
    let text = unique.to_string();
    rt.shutdown().await.unwrap();

    let rt = on_disk(dir.path()).await;
    let ns = rt.namespace::<Store>();
    let parsed = ns.id_from_str(&text).expect("an id minted before the restart is accepted after it");
    assert_eq!(parsed, unique);
    assert_eq!(ns.id_from_name("alice"), named);
    assert_eq!(ns.stub(&parsed).get("k".into()).await.unwrap().unwrap(), Some("unique".into()));
    assert_eq!(ns.stub(&named).get("k".into()).await.unwrap().unwrap(), Some("named".into()));
}

#[tokio::test]
async fn delete_all_empties_the_storage_which_stays_usable() {
    let dir = tempfile::tempdir().unwrap();
    let rt = on_disk(dir.path()).await;
    let ns = rt.namespace::<Store>();
    let id = ns.unique_id();
    let store = ns.stub(&id);
    store.put("a".into(), "1".into()).await.unwrap().unwrap();
    store.add_row("ada".into()).await.unwrap().unwrap();
    store.delete_all().await.unwrap().unwrap();
    assert_eq!(store.get("a".into()).await.unwrap().unwrap(), None);
    assert!(store.rows().await.unwrap().is_err(), "the user's tables are gone too");
    store.put("b".into(), "2".into()).await.unwrap().unwrap();
    assert_eq!(store.get("b".into()).await.unwrap().unwrap(), Some("2".into()));

    // Emptied and left empty, the database file is removed on eviction.
    store.delete_all().await.unwrap().unwrap();
    rt.shutdown().await.unwrap();
    let file = object_file(dir.path(), &id, "");
    assert!(!file.exists(), "{} should have been removed", file.display());
}

#[tokio::test]
async fn an_active_objects_database_is_its_runtimes_alone_and_is_left_tidy_on_eviction() {
    let dir = tempfile::tempdir().unwrap();
    let rt = on_disk(dir.path()).await;
    let ns = rt.namespace::<Store>();
    let id = ns.unique_id();
    ns.stub(&id).put("k".into(), "v".into()).await.unwrap().unwrap();
    let file = object_file(dir.path(), &id, "");
    let with_suffix = |suffix: &str| object_file(dir.path(), &id, suffix);

    // While the object is active, no other connection may read or write.
    let foreign = stead::rusqlite::Connection::open(&file).unwrap();
    foreign.busy_timeout(std::time::Duration::ZERO).unwrap();
    let count = |conn: &stead::rusqlite::Connection| {
        conn.query_row("SELECT count(*) FROM _stead_kv", [], |row| row.get::<_, i64>(0))
    };
    let locked = count(&foreign).unwrap_err();
    assert!(locked.to_string().contains("locked"), "{locked}");
    assert!(!with_suffix("-shm").exists(), "exclusive locking needs no shared-memory file");

    // Evicted, the database is checkpointed (the file alone holds the
    // write), its WAL file kept for the next activation, and it is anyone's
    // to read.
    rt.shutdown().await.unwrap();
    assert!(std::fs::metadata(with_suffix("-wal")).unwrap().len() > 0, "the WAL file is kept at its size");
    let alone = dir.path().join("alone.sqlite");
    std::fs::copy(&file, &alone).unwrap();
    assert_eq!(count(&stead::rusqlite::Connection::open(&alone).unwrap()).unwrap(), 1);
    assert_eq!(count(&foreign).unwrap(), 1);
}

/// A new object database has pages of 1 KiB (a small write then costs a
/// quarter of the WAL bytes of SQLite's default 4 KiB); a database made
/// with another page size keeps it and works as before.
#[tokio::test]
async fn a_new_database_has_1_kib_pages_and_an_older_one_keeps_its_own() {
    let dir = tempfile::tempdir().unwrap();
    let path = |id: &stead::ObjectId| object_file(dir.path(), id, "");
    let page_size = |id: &stead::ObjectId| {
        let conn = stead::rusqlite::Connection::open(path(id)).unwrap();
        conn.query_row("PRAGMA page_size", [], |row| row.get::<_, i64>(0)).unwrap()
    };
    let rt = on_disk(dir.path()).await;
    let ns = rt.namespace::<Store>();
    let (new, older) = (ns.unique_id(), ns.unique_id());
    std::fs::create_dir_all(path(&older).parent().unwrap()).unwrap();
    let made = stead::rusqlite::Connection::open(path(&older)).unwrap();
    made.execute_batch("PRAGMA page_size = 4096; PRAGMA journal_mode = WAL;").unwrap();
    drop(made);
    let value = "x".repeat(3000);
    for id in [&new, &older] {
        for i in 0..100 {
            ns.stub(id).put(format!("k{i:03}"), value.clone()).await.unwrap().unwrap();
        }
    }
    rt.shutdown().await.unwrap();
    assert_eq!(page_size(&new), 1024);
    assert_eq!(page_size(&older), 4096);

    let rt = on_disk(dir.path()).await;
    let ns = rt.namespace::<Store>();
    for id in [&new, &older] {
        assert_eq!(ns.stub(id).get("k099".into()).await.unwrap().unwrap(), Some(value.clone()));
    }
    rt.shutdown().await.unwrap();
}

/// A WAL keeps its size: it is checkpointed every 256 KiB and when its
/// object is evicted, then overwritten from its start, never truncated to
/// nothing, so that commits do not grow it (see `storage/wal.rs`).
#[tokio::test]
async fn a_wal_keeps_its_size_across_checkpoints_and_activations() {
    let dir = tempfile::tempdir().unwrap();
    let rt = on_disk(dir.path()).await;
    let ns = rt.namespace::<Store>();
    let id = ns.unique_id();
    let value = "x".repeat(3000);
    // A page or more per turn: past the checkpoint interval several times.
    for i in 0..300 {
        ns.stub(&id).put(format!("k{i:03}"), value.clone()).await.unwrap().unwrap();
    }
    let wal = object_file(dir.path(), &id, "-wal");
    let len = || std::fs::metadata(&wal).unwrap().len();
    let working = len();
    // At least a checkpoint interval of 256 pages of 1 KiB; at most the
    // size a WAL is cut back to.
    assert!((256 * 1024..=512 * 1024).contains(&working), "the WAL is {working} bytes");
    rt.shutdown().await.unwrap();
    assert_eq!(len(), working, "eviction keeps the WAL at its size");

    let rt = on_disk(dir.path()).await;
    let ns = rt.namespace::<Store>();
    // Fewer pages than the checkpoint interval: written over the old ones.
    let small = "y".repeat(100);
    for i in 0..20 {
        ns.stub(&id).put(format!("again{i}"), small.clone()).await.unwrap().unwrap();
    }
    assert_eq!(len(), working, "the next activation overwrites the WAL");
    let store = ns.stub(&id);
    assert_eq!(store.get("k000".into()).await.unwrap().unwrap(), Some(value.clone()));
    assert_eq!(store.get("k299".into()).await.unwrap().unwrap(), Some(value));
    assert_eq!(store.get("again19".into()).await.unwrap().unwrap(), Some(small));
    rt.shutdown().await.unwrap();
}

/// With `Durability::Full` a young WAL is kept written with zeros ahead of
/// its last commit, so that the syncs of the next commits overwrite rather
/// than append (see `storage/wal.rs`); the zeros are not read as frames.
/// With `Normal`, whose commits do not sync, the WAL just grows.
#[tokio::test]
async fn a_young_full_wal_is_written_ahead_with_zeros_that_are_never_read_as_commits() {
    let dir = tempfile::tempdir().unwrap();
    let rt = on_disk(dir.path()).await;
    let ns = rt.namespace::<Store>();
    let id = ns.unique_id();
    for i in 0..5 {
        ns.stub(&id).put(format!("k{i}"), "v".repeat(100)).await.unwrap().unwrap();
    }
    let wal = std::fs::read(object_file(dir.path(), &id, "-wal")).unwrap();
    // Five commits of a page or two of 1 KiB, and 32-64 KiB of zeros.
    assert!((32 * 1024..=80 * 1024).contains(&wal.len()), "the WAL is {} bytes", wal.len());
    assert!(wal[wal.len() - 16 * 1024..].iter().all(|byte| *byte == 0), "the WAL ends in zeros");

    // The files as a crash would leave them, opened by another runtime
    // (with the same secret, which minted the id).
    let copy = tempfile::tempdir().unwrap();
    std::fs::copy(dir.path().join("secret"), copy.path().join("secret")).unwrap();
    for suffix in ["", "-wal"] {
        let to = object_file(copy.path(), &id, suffix);
        std::fs::create_dir_all(to.parent().unwrap()).unwrap();
        std::fs::copy(object_file(dir.path(), &id, suffix), to).unwrap();
    }
    let after_crash = on_disk(copy.path()).await;
    let store = after_crash.namespace::<Store>().stub(&id);
    for i in 0..5 {
        assert_eq!(store.get(format!("k{i}")).await.unwrap().unwrap(), Some("v".repeat(100)));
    }
    store.put("k5".into(), "w".into()).await.unwrap().unwrap();
    assert_eq!(store.get("k5".into()).await.unwrap().unwrap(), Some("w".into()));
    after_crash.shutdown().await.unwrap();
    rt.shutdown().await.unwrap();

    let normal = tempfile::tempdir().unwrap();
    let rt = on_disk_normal(normal.path()).await;
    let ns = rt.namespace::<Store>();
    let id = ns.unique_id();
    for i in 0..5 {
        ns.stub(&id).put(format!("k{i}"), "v".repeat(100)).await.unwrap().unwrap();
    }
    let len = std::fs::metadata(object_file(normal.path(), &id, "-wal")).unwrap().len();
    assert!(len < 16 * 1024, "a Normal WAL is not written ahead: {len} bytes");
    rt.shutdown().await.unwrap();
}

/// With `Durability::Normal` a WAL is checkpointed every 1,000 pages of
/// 1 KiB (on a sync thread) and keeps its size while open, up to 4 MiB; closing the
/// database cuts it back to 512 KiB, like a `Full` one.
#[tokio::test]
async fn a_normal_wal_is_checkpointed_while_open_and_cut_back_when_closed() {
    let dir = tempfile::tempdir().unwrap();
    let rt = on_disk_normal(dir.path()).await;
    let ns = rt.namespace::<Store>();
    let id = ns.unique_id();
    let value = "x".repeat(3000);
    // A page or more per turn: past the checkpoint interval twice.
    for i in 0..2200 {
        ns.stub(&id).put(format!("k{i:04}"), value.clone()).await.unwrap().unwrap();
    }
    let wal = object_file(dir.path(), &id, "-wal");
    let len = || std::fs::metadata(&wal).unwrap().len();
    let open = len();
    assert!((1000 * 1024..=4 << 20).contains(&open), "the open WAL is {open} bytes");
    rt.shutdown().await.unwrap();
    assert!(len() <= 512 * 1024, "closing cuts the WAL back: {} bytes", len());

    let rt = on_disk_normal(dir.path()).await;
    let ns = rt.namespace::<Store>();
    let store = ns.stub(&id);
    assert_eq!(store.get("k0000".into()).await.unwrap().unwrap(), Some(value.clone()));
    assert_eq!(store.get("k2199".into()).await.unwrap().unwrap(), Some(value));
    rt.shutdown().await.unwrap();
}

#[tokio::test]
async fn an_overlong_key_is_a_clear_error() {
    let rt = Runtime::builder().in_memory().host::<Store>().build().await.unwrap();
    let ns = rt.namespace::<Store>();
    let store = ns.stub(&ns.unique_id());
    let Err(Error::Storage(message)) = store.put("k".repeat(2049), "v".into()).await.unwrap() else {
        panic!()
    };
    assert!(message.contains("2048") && message.contains("2049"), "{message}");
    store.put("k".repeat(2048), "v".into()).await.unwrap().unwrap();
}

#[tokio::test]
async fn a_value_read_as_the_wrong_type_is_a_codec_error() {
    let rt = Runtime::builder().in_memory().host::<Store>().build().await.unwrap();
    let ns = rt.namespace::<Store>();
    let store = ns.stub(&ns.unique_id());
    store.put_u64("n".into(), u64::MAX).await.unwrap().unwrap();
    let err = store.get("n".into()).await.unwrap().unwrap_err();
    assert!(matches!(err, Error::Codec(_)), "{err}");
}

#[tokio::test]
async fn a_corrupt_or_foreign_file_fails_only_its_own_object() {
    let dir = tempfile::tempdir().unwrap();
    let rt = on_disk(dir.path()).await;
    let ns = rt.namespace::<Store>();
    let corrupt = ns.unique_id();
    let foreign = ns.unique_id();
    let healthy = ns.unique_id();
    let path = |id: &stead::ObjectId| object_file(dir.path(), id, "");
    for id in [&corrupt, &foreign] {
        std::fs::create_dir_all(path(id).parent().unwrap()).unwrap();
    }
    std::fs::write(path(&corrupt), b"this is not an sqlite database, just some bytes.......").unwrap();
    let other = stead::rusqlite::Connection::open(path(&foreign)).unwrap();
    other.execute_batch("CREATE TABLE invoices (n INTEGER)").unwrap();
    drop(other);

    for id in [&corrupt, &foreign] {
        let Err(Error::Storage(message)) = ns.stub(id).get("k".into()).await.unwrap() else { panic!() };
        assert!(message.contains(&id.to_string()), "{message}");
    }
    ns.stub(&healthy).put("k".into(), "fine".into()).await.unwrap().unwrap();
    assert_eq!(ns.stub(&healthy).get("k".into()).await.unwrap().unwrap(), Some("fine".into()));
}

#[tokio::test]
async fn no_more_databases_are_open_than_the_cap() {
    let dir = tempfile::tempdir().unwrap();
    let rt =
        Runtime::builder().data_dir(dir.path()).max_open_databases(4).host::<Store>().build().await.unwrap();
    let ns = rt.namespace::<Store>();
    let ids: Vec<_> = (0..20).map(|_| ns.unique_id()).collect();
    for (i, id) in ids.iter().enumerate() {
        ns.stub(id).put("i".into(), i.to_string()).await.unwrap().unwrap();
        assert!(rt.open_databases() <= 4, "{} open", rt.open_databases());
    }
    for (i, id) in ids.iter().enumerate() {
        assert_eq!(ns.stub(id).get("i".into()).await.unwrap().unwrap(), Some(i.to_string()));
    }
    assert!(rt.open_databases() <= 4);
}

/// The database file of `Store` object `id` under data directory `dir`,
/// or the file SQLite keeps beside it under `suffix` (`-wal`, `-shm`).
fn object_file(dir: &Path, id: &stead::ObjectId, suffix: &str) -> std::path::PathBuf {
    let hex = id.to_string();
    dir.join("objects").join("Store").join(&hex[..2]).join(format!("{hex}.sqlite{suffix}"))
}

/// The name an object's database keeps, if any.
fn stored_name(dir: &Path, id: &stead::ObjectId) -> Option<String> {
    let conn = stead::rusqlite::Connection::open(object_file(dir, id, "")).unwrap();
    conn.query_row("SELECT value FROM _stead_meta WHERE name = 'name'", [], |row| row.get(0)).ok()
}

#[tokio::test]
async fn an_object_made_with_a_name_keeps_its_name_in_its_database() {
    let dir = tempfile::tempdir().unwrap();
    let rt = on_disk(dir.path()).await;
    let ns = rt.namespace::<Store>();
    let named = ns.id_from_name("alice's cart");
    ns.stub(&named).put("k".into(), "v".into()).await.unwrap().unwrap();
    let unnamed = ns.unique_id();
    ns.stub(&unnamed).put("k".into(), "v".into()).await.unwrap().unwrap();
    rt.shutdown().await.unwrap();
    assert_eq!(stored_name(dir.path(), &named).as_deref(), Some("alice's cart"));
    assert_eq!(stored_name(dir.path(), &unnamed), None);

    // Known from the name alone, in a later process too.
    let rt = on_disk(dir.path()).await;
    let ns = rt.namespace::<Store>();
    let id = ns.id_from_name("bob");
    let parsed = ns.id_from_str(&id.to_string()).unwrap();
    ns.stub(&parsed).put("k".into(), "v".into()).await.unwrap().unwrap();
    rt.shutdown().await.unwrap();
    assert_eq!(stored_name(dir.path(), &id).as_deref(), Some("bob"));
}

/// An argument that encodes but refuses to decode when it is 13.
#[derive(Debug, Clone, Copy, serde::Serialize, serde::Deserialize)]
#[serde(try_from = "u32", into = "u32")]
pub struct Fussy(u32);

impl TryFrom<u32> for Fussy {
    type Error = String;

    fn try_from(n: u32) -> Result<Self, String> {
        if n == 13 { Err("13 is refused on arrival".into()) } else { Ok(Fussy(n)) }
    }
}

impl From<Fussy> for u32 {
    fn from(fussy: Fussy) -> u32 {
        fussy.0
    }
}

/// Counts its constructions in storage and keeps the count in memory.
pub struct Counted {
    ctx: Context,
    constructions: u32,
}

#[durable_object]
impl Counted {
    pub async fn new(ctx: Context) -> Self {
        let constructions = ctx.storage().get::<u32>("constructions").unwrap().unwrap_or(0) + 1;
        ctx.storage().put("constructions", &constructions).unwrap();
        Counted { ctx, constructions }
    }

    pub fn take(&mut self, fussy: Fussy) -> u32 {
        fussy.0
    }

    /// The count in memory and the count in storage.
    pub fn constructions(&self) -> stead::Result<(u32, u32)> {
        Ok((self.constructions, self.ctx.storage().get("constructions")?.unwrap_or(0)))
    }

    /// Writes from a task of its own, and reports how that went.
    pub fn write_from_a_task(&self) {
        let ctx = self.ctx.clone();
        let report = LATE_WRITE.get_or_init(|| tokio::sync::watch::channel(None).0).clone();
        tokio::spawn(async move {
            let outcome = ctx.storage().put("from-a-task", &1u32);
            let _ = report.send(Some(outcome));
        });
    }

    pub fn written_by_the_task(&self) -> stead::Result<Option<u32>> {
        self.ctx.storage().get("from-a-task")
    }
}

type Report = tokio::sync::watch::Sender<Option<stead::Result<()>>>;
static LATE_WRITE: std::sync::OnceLock<Report> = std::sync::OnceLock::new();

#[tokio::test]
async fn arguments_that_fail_to_decode_after_the_constructor_ran_leave_memory_and_storage_in_step() {
    let rt = Runtime::builder().in_memory().host::<Counted>().build().await.unwrap();
    let ns = rt.namespace::<Counted>();
    let counted = ns.stub(&ns.unique_id());
    // The first call constructs the object, then its argument fails to decode.
    let err = counted.take(Fussy(13)).await.unwrap_err();
    assert!(matches!(&err, Error::Codec(m) if m.contains("13 is refused")), "{err:?}");
    let (in_memory, in_storage) = counted.constructions().await.unwrap().unwrap();
    assert_eq!(in_memory, in_storage, "the instance's memory and its storage disagree");
    assert_eq!(counted.take(Fussy(7)).await.unwrap(), 7);
}

#[tokio::test]
async fn storage_used_from_a_task_the_object_spawned_is_refused_with_a_clear_error() {
    let rt = Runtime::builder().in_memory().host::<Counted>().build().await.unwrap();
    let ns = rt.namespace::<Counted>();
    let counted = ns.stub(&ns.unique_id());
    let mut report = LATE_WRITE.get_or_init(|| tokio::sync::watch::channel(None).0).subscribe();
    counted.write_from_a_task().await.unwrap();
    let outcome = tokio::time::timeout(std::time::Duration::from_secs(10), report.wait_for(Option::is_some))
        .await
        .expect("the task never reported")
        .unwrap()
        .clone()
        .unwrap();
    let Err(Error::Storage(message)) = &outcome else { panic!("expected a Storage error, got {outcome:?}") };
    assert!(message.contains("outside a turn") && message.contains("stub"), "{message}");
    assert_eq!(counted.written_by_the_task().await.unwrap().unwrap(), None);
}

/// Panics when dropped after a turn that panicked.
pub struct DropBomb {
    ctx: Context,
}

#[durable_object]
impl DropBomb {
    pub async fn new(ctx: Context) -> Self {
        DropBomb { ctx }
    }

    pub fn put(&mut self, key: String) -> stead::Result<()> {
        self.ctx.storage().put(&key, "yes")
    }

    pub fn get(&self, key: String) -> stead::Result<Option<String>> {
        self.ctx.storage().get(&key)
    }

    /// Writes, then panics; dropping the instance then panics too.
    pub fn put_then_panic(&mut self, key: String) {
        self.ctx.storage().put(&key, "doomed").unwrap();
        panic!("the method panicked");
    }
}

impl Drop for DropBomb {
    fn drop(&mut self) {
        if std::thread::panicking() {
            return;
        }
        panic!("the Drop panicked too");
    }
}

#[tokio::test]
async fn an_instance_whose_drop_panics_after_a_failed_turn_leaves_no_transaction_open() {
    let dir = tempfile::tempdir().unwrap();
    let rt = Runtime::builder().data_dir(dir.path()).host::<DropBomb>().build().await.unwrap();
    let ns = rt.namespace::<DropBomb>();
    let id = ns.unique_id();
    let bomb = ns.stub(&id);
    let err = bomb.put_then_panic("doomed".into()).await.unwrap_err();
    assert!(matches!(&err, Error::Panicked(m) if m.contains("the method panicked")), "{err:?}");
    bomb.put("kept".into()).await.unwrap().unwrap();
    rt.shutdown().await.unwrap();
    drop(rt);

    let rt = Runtime::builder().data_dir(dir.path()).host::<DropBomb>().build().await.unwrap();
    let bomb = rt.namespace::<DropBomb>().stub(&id);
    assert_eq!(bomb.get("doomed".into()).await.unwrap().unwrap(), None, "the failed turn's write survived");
    assert_eq!(bomb.get("kept".into()).await.unwrap().unwrap(), Some("yes".into()));
}
