//! What the CLI tests share: the test objects, a data directory filled by the
//! real runtime, and a way to run the real `stead` binary.

#![allow(dead_code)] // each test file uses its own part
// Remote methods are `pub` by definition, even in a private module.
#![allow(unreachable_pub)]

use std::ffi::OsStr;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant, UNIX_EPOCH};

use stead::rusqlite::{self, Connection};
use stead::{AlarmInfo, Context, Runtime, durable_object};

/// 2100-01-01T00:00:00Z: an alarm that never fires during a test.
pub const FAR_ALARM_MS: u64 = 4_102_444_800_000;
pub const FAR_ALARM_TEXT: &str = "2100-01-01T00:00:00Z";

/// An object with keys, an alarm and SQL tables of its own.
pub struct Account {
    ctx: Context,
}

#[durable_object]
impl Account {
    pub async fn new(ctx: Context) -> Self {
        Account { ctx }
    }

    pub fn put(&mut self, key: String, value: Vec<u8>) -> stead::Result<()> {
        self.ctx.storage().put(&key, &value)
    }

    pub fn get(&self, key: String) -> stead::Result<Option<Vec<u8>>> {
        self.ctx.storage().get(&key)
    }

    pub fn set_alarm_at(&mut self, unix_ms: u64) -> stead::Result<()> {
        self.ctx.storage().set_alarm(UNIX_EPOCH + Duration::from_millis(unix_ms))
    }

    /// The size of a value as stored (encoded), to compare with the CLI's.
    pub fn stored_len(&self, key: String) -> stead::Result<i64> {
        self.ctx.storage().sql(|conn| {
            conn.query_row("SELECT length(value) FROM _stead_kv WHERE key = ?1", [key], |row| row.get(0))
        })
    }

    pub fn add_note(&mut self, text: String) -> stead::Result<()> {
        self.ctx.storage().sql(|conn| {
            conn.execute("CREATE TABLE IF NOT EXISTS notes (text TEXT NOT NULL)", [])?;
            conn.execute("INSERT INTO notes (text) VALUES (?1)", [text]).map(drop)
        })
    }

    #[alarm]
    async fn alarm(&mut self, _info: AlarmInfo) {}
}

/// A second type, so that listings have more than one.
pub struct Ledger {
    ctx: Context,
}

#[durable_object]
impl Ledger {
    pub async fn new(ctx: Context) -> Self {
        Ledger { ctx }
    }

    pub fn record(&mut self, entry: String) -> stead::Result<()> {
        self.ctx.storage().put("last", &entry)
    }
}

pub const SECRET: &str = "the secret of the CLI tests";

/// A runtime on `dir` hosting the test types.
pub async fn runtime(dir: &Path) -> Runtime {
    Runtime::builder().data_dir(dir).secret(SECRET).host::<Account>().host::<Ledger>().build().await.unwrap()
}

/// The objects `fill` stores, by id (64 hex digits).
pub struct Filled {
    /// Named "alice": keys `balance` and `profile` (1000 bytes), an alarm.
    pub alice: String,
    /// Named "bob": key `balance`, no alarm.
    pub bob: String,
    /// A unique id: a key and an SQL table `notes` with two rows.
    pub unnamed: String,
    /// A `Ledger` named "books".
    pub books: String,
}

/// Fills `dir` with objects through the real runtime, then stops it.
pub async fn fill(dir: &Path) -> Filled {
    let rt = runtime(dir).await;
    let accounts = rt.namespace::<Account>();
    let alice = accounts.id_from_name("alice");
    let stub = accounts.stub(&alice);
    stub.put("balance".into(), 100u64.to_le_bytes().to_vec()).await.unwrap().unwrap();
    stub.put("profile".into(), vec![7; 1000]).await.unwrap().unwrap();
    stub.set_alarm_at(FAR_ALARM_MS).await.unwrap().unwrap();
    let bob = accounts.id_from_name("bob");
    accounts.stub(&bob).put("balance".into(), vec![1]).await.unwrap().unwrap();
    let unnamed = accounts.unique_id();
    let stub = accounts.stub(&unnamed);
    stub.put("kind".into(), b"unnamed".to_vec()).await.unwrap().unwrap();
    stub.add_note("first".into()).await.unwrap().unwrap();
    stub.add_note("second".into()).await.unwrap().unwrap();
    let ledgers = rt.namespace::<Ledger>();
    let books = ledgers.id_from_name("books");
    ledgers.stub(&books).record("opening".into()).await.unwrap().unwrap();
    rt.shutdown().await.unwrap();
    let filled = Filled {
        alice: alice.to_string(),
        bob: bob.to_string(),
        unnamed: unnamed.to_string(),
        books: books.to_string(),
    };
    // The runtime keeps the name of an object made with `id_from_name` in
    // `_stead_meta`; written here as it writes it, so that these tests do
    // not depend on which version of the runtime made the files.
    store_name(dir, "Account", &filled.alice, "alice");
    store_name(dir, "Account", &filled.bob, "bob");
    store_name(dir, "Ledger", &filled.books, "books");
    filled
}

/// The database file of an object.
pub fn object_path(dir: &Path, type_name: &str, id: &str) -> PathBuf {
    dir.join("objects").join(type_name).join(&id[..2]).join(format!("{id}.sqlite"))
}

fn store_name(dir: &Path, type_name: &str, id: &str, name: &str) {
    let conn = Connection::open(object_path(dir, type_name, id)).unwrap();
    conn.execute("INSERT OR REPLACE INTO _stead_meta (name, value) VALUES ('name', ?1)", [name]).unwrap();
    conn.query_row("PRAGMA wal_checkpoint(TRUNCATE)", [], |_| Ok(())).unwrap();
}

/// Reads one value of an object's database directly (for checks).
pub fn read_db<T: rusqlite::types::FromSql>(path: &Path, sql: &str) -> T {
    Connection::open(path).unwrap().query_row(sql, [], |row| row.get(0)).unwrap()
}

/// What a run of the binary gave.
pub struct Run {
    pub code: Option<i32>,
    pub stdout: String,
    pub stderr: String,
}

impl Run {
    /// Asserts success and returns stdout.
    pub fn ok(&self) -> &str {
        assert_eq!(self.code, Some(0), "stead failed:\n{}{}", self.stdout, self.stderr);
        &self.stdout
    }

    /// Asserts a failure with one line on stderr, and returns that line.
    pub fn failed(&self) -> &str {
        assert_eq!(self.code, Some(1), "stead should have failed:\n{}{}", self.stdout, self.stderr);
        assert_eq!(self.stderr.lines().count(), 1, "one line of error: {}", self.stderr);
        assert!(!self.stderr.contains("panicked"), "{}", self.stderr);
        self.stderr.trim_end()
    }

    /// The lines of stdout.
    pub fn lines(&self) -> Vec<&str> {
        self.stdout.lines().collect()
    }
}

/// Runs the real `stead` binary with `args` (in `cwd`, if given), killing it
/// if it takes more than a minute.
pub fn stead<I, S>(args: I) -> Run
where
    I: IntoIterator<Item = S>,
    S: AsRef<OsStr>,
{
    stead_in(None, args)
}

/// Like `stead`, in directory `cwd`.
pub fn stead_in<I, S>(cwd: Option<&Path>, args: I) -> Run
where
    I: IntoIterator<Item = S>,
    S: AsRef<OsStr>,
{
    let mut command = Command::new(env!("CARGO_BIN_EXE_stead"));
    command.args(args).stdin(Stdio::null()).stdout(Stdio::piped()).stderr(Stdio::piped());
    if let Some(cwd) = cwd {
        command.current_dir(cwd);
    }
    let mut child = command.spawn().unwrap();
    let deadline = Instant::now() + Duration::from_secs(60);
    // Read both pipes on threads, so that a large output cannot block the
    // child while we wait for it.
    let mut stdout = child.stdout.take().unwrap();
    let mut stderr = child.stderr.take().unwrap();
    let out = std::thread::spawn(move || read_all(&mut stdout));
    let err = std::thread::spawn(move || read_all(&mut stderr));
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
        if Instant::now() > deadline {
            child.kill().unwrap();
            let _ = child.wait();
            panic!("stead did not finish within a minute");
        }
        std::thread::sleep(Duration::from_millis(10));
    };
    let output = Output { status, stdout: out.join().unwrap(), stderr: err.join().unwrap() };
    Run {
        code: output.status.code(),
        stdout: String::from_utf8(output.stdout).unwrap(),
        stderr: String::from_utf8(output.stderr).unwrap(),
    }
}

fn read_all(pipe: &mut impl std::io::Read) -> Vec<u8> {
    let mut bytes = Vec::new();
    pipe.read_to_end(&mut bytes).unwrap();
    bytes
}

/// The path of a database's companion file (`-wal`, `-shm`).
pub fn companion(db: &Path, suffix: &str) -> PathBuf {
    let mut path = db.as_os_str().to_owned();
    path.push(suffix);
    PathBuf::from(path)
}
