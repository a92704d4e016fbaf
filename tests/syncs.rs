//! Where object databases and the alarm index are synced: with
//! `Durability::Full`, every `fsync` and `fdatasync` of a file under
//! `objects/`, and of the alarm index once it exists (with `Normal`, of a
//! file under `objects/`), runs on a sync thread
//! (`stead-sync`), never on a thread that runs turns — not when a new
//! database is created, not when a WAL is checkpointed, not when the pool
//! closes a database to make room, not when an object is evicted, not when
//! a turn sets an alarm.
//!
//! The test binary runs itself under `strace -f` as the child (the ignored
//! test `child_creates_writes_and_closes`, selected with an environment
//! variable) and matches each sync the child made to the name of the thread
//! that made it. Without `strace` (or where it may not trace), the test
//! says so and passes.

#![cfg(target_os = "linux")]
#![allow(missing_docs)] // test objects are exercised, not documented

use std::collections::HashMap;
use std::path::Path;
use std::process::Command;

use stead::{Context, Durability, Runtime, durable_object};

const DIR_VAR: &str = "STEAD_SYNCS_TEST_DIR";
/// `normal` for `Durability::Normal` (else `Full`).
const DURABILITY_VAR: &str = "STEAD_SYNCS_TEST_DURABILITY";

/// The file the child syncs once its runtime is built.
const BUILT: &str = "built";

/// New objects the child creates (each written twice).
const NEW_OBJECTS: usize = 40;

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

    /// Sets the alarm an hour ahead (the alarm index's entry is written
    /// before the turn commits, and synced before its reply leaves).
    pub fn remind(&mut self) -> stead::Result<()> {
        self.ctx.storage().set_alarm(std::time::SystemTime::now() + std::time::Duration::from_secs(3600))
    }

    #[alarm]
    async fn alarm(&mut self, _info: stead::AlarmInfo) {}

    /// Writes `n` values of 4,000 bytes: about `n` WAL pages.
    pub fn fill(&mut self, round: u32, n: u32) -> stead::Result<()> {
        let value = "x".repeat(4000);
        self.ctx.storage().put_many((0..n).map(|i| (format!("fill:{round}:{i}"), value.clone())))
    }
}

/// The child: creates objects and writes to them with at most 8 databases
/// open (so the pool closes databases on turn threads), fills one object's
/// WAL far past every checkpoint threshold, shuts down (evicting every
/// object), and prints each of its threads as `thread <tid> <name>`.
#[test]
#[ignore = "run by `full_durability_never_syncs_on_a_turn_thread` as a child process"]
fn child_creates_writes_and_closes() {
    let Ok(dir) = std::env::var(DIR_VAR) else { return };
    let tokio = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap();
    tokio.block_on(async {
        let durability = match std::env::var(DURABILITY_VAR).as_deref() {
            Ok("normal") => Durability::Normal,
            _ => Durability::Full,
        };
        let rt = Runtime::builder()
            .data_dir(Path::new(&dir))
            .durability(durability)
            .max_open_databases(8)
            .host::<Store>()
            .build()
            .await
            .unwrap();
        // Creating the alarm index syncs on the thread that builds the
        // runtime; a sync of this file marks the end of that in the trace.
        std::fs::File::create(Path::new(&dir).join(BUILT)).unwrap().sync_all().unwrap();
        let ns = rt.namespace::<Store>();
        for i in 0..NEW_OBJECTS {
            let store = ns.stub(&ns.id_from_name(&format!("store-{i}")));
            store.put("a".into(), "1".into()).await.unwrap().unwrap();
            store.put("b".into(), "2".into()).await.unwrap().unwrap();
        }
        let big = ns.stub(&ns.id_from_name("big"));
        for round in 0..12 {
            big.fill(round, 100).await.unwrap().unwrap();
        }
        // Past the alarm index's checkpoint interval (256 batches).
        for i in 0..300 {
            let store = ns.stub(&ns.id_from_name(&format!("store-{}", i % NEW_OBJECTS)));
            store.remind().await.unwrap().unwrap();
        }
        rt.shutdown().await.unwrap();
    });
    for task in std::fs::read_dir("/proc/self/task").unwrap() {
        let task = task.unwrap();
        let name = std::fs::read_to_string(task.path().join("comm")).unwrap_or_default();
        println!("thread {} {}", task.file_name().to_string_lossy(), name.trim());
    }
}

/// One sync seen by `strace`: the thread and the file.
struct Sync {
    tid: String,
    path: String,
}

/// The syncs in `strace -f -y -o` output: lines such as
/// `1234 fdatasync(7</dir/objects/T/ab/ab...sqlite-wal>) = 0` (or
/// `<unfinished ...>`; the resumed half names no file and is skipped).
fn syncs(trace: &str) -> Vec<Sync> {
    trace
        .lines()
        .filter_map(|line| {
            let (tid, call) = line.split_once(' ')?;
            let call = call.trim_start();
            let args = call.strip_prefix("fsync(").or_else(|| call.strip_prefix("fdatasync("))?;
            let path = args.split_once('<')?.1.split_once('>')?.0;
            Some(Sync { tid: tid.to_string(), path: path.to_string() })
        })
        .collect()
}

#[test]
fn full_durability_never_syncs_on_a_turn_thread() {
    never_syncs_on_a_turn_thread("full");
}

/// With `Normal`, commits do not sync; a new database's first commit,
/// checkpoints and closes do, on the sync threads too. (SQLite used to
/// sync a new database as it made it, and run its own checkpoints in the
/// commit that reached 1,000 pages, on the turn's thread.) The alarm index
/// is the exception: with `Normal` nothing syncs it but SQLite's own
/// checkpoints, every 1,000 pages, in the batch of `set_alarm`s that
/// reaches them.
#[test]
fn normal_durability_never_syncs_on_a_turn_thread() {
    never_syncs_on_a_turn_thread("normal");
}

fn never_syncs_on_a_turn_thread(durability: &str) {
    let dir = tempfile::tempdir().unwrap();
    let trace = dir.path().join("strace.out");
    let data = dir.path().join("data");
    let run = Command::new("strace")
        .args(["-f", "-y", "-e", "trace=fsync,fdatasync", "-o"])
        .arg(&trace)
        .arg(std::env::current_exe().unwrap())
        .args(["--exact", "child_creates_writes_and_closes", "--ignored", "--nocapture", "--test-threads=1"])
        .env(DIR_VAR, &data)
        .env(DURABILITY_VAR, durability)
        .output();
    let output = match run {
        Ok(output) if output.status.success() => output,
        Ok(output) => {
            let stderr = String::from_utf8_lossy(&output.stderr);
            if stderr.contains("ptrace") || stderr.contains("Operation not permitted") {
                eprintln!("strace may not trace here, skipped: {stderr}");
                return;
            }
            panic!("the child failed: {stderr}\n{}", String::from_utf8_lossy(&output.stdout));
        }
        Err(err) => {
            eprintln!("strace is not installed ({err}), skipped");
            return;
        }
    };
    let threads: HashMap<String, String> = String::from_utf8_lossy(&output.stdout)
        .lines()
        .filter_map(|line| {
            let mut words = line.strip_prefix("thread ")?.splitn(2, ' ');
            Some((words.next()?.to_string(), words.next().unwrap_or("").to_string()))
        })
        .collect();
    let objects = data.join("objects").to_string_lossy().into_owned();
    let index = data.join("alarms.sqlite").to_string_lossy().into_owned();
    let syncs = syncs(&std::fs::read_to_string(&trace).unwrap());
    let built = syncs.iter().position(|sync| sync.path.ends_with(BUILT)).expect("the child marks its start");
    let mut counts: HashMap<(&str, &str), usize> = HashMap::new();
    let mut elsewhere = Vec::new();
    let ours = |sync: &&Sync| sync.path.starts_with(&objects) || sync.path.starts_with(&index);
    for (n, sync) in syncs.iter().enumerate().filter(|(_, sync)| ours(sync)) {
        let thread = threads.get(&sync.tid).map_or("(exited)", String::as_str);
        let kind = if sync.path.starts_with(&index) {
            "alarm index"
        } else if sync.path.ends_with("-wal") {
            "wal"
        } else if sync.path.ends_with(".sqlite") {
            "database"
        } else if sync.path.ends_with("-journal") {
            "journal"
        } else {
            "directory"
        };
        *counts.entry((thread, kind)).or_default() += 1;
        let creating_the_index = kind == "alarm index" && n < built;
        let exempt = creating_the_index || (kind == "alarm index" && durability == "normal");
        if thread != "stead-sync" && !exempt {
            elsewhere.push(format!("{thread} ({}): {}", sync.tid, sync.path));
        }
    }
    let mut counts: Vec<_> = counts.into_iter().collect();
    counts.sort();
    eprintln!(
        "syncs under objects/ and of the alarm index for {} new objects, by thread and file: {counts:?}",
        NEW_OBJECTS + 1
    );
    assert!(counts.iter().any(|((thread, _), _)| *thread == "stead-sync"), "no sync seen at all: {counts:?}");
    assert!(
        elsewhere.is_empty(),
        "{} syncs ran outside the sync threads, the first: {:#?}",
        elsewhere.len(),
        &elsewhere[..elsewhere.len().min(10)]
    );
}
