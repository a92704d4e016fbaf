//! Alarms: they fire, retry after a failure with `is_retry`, survive a
//! restart, and are refused to types without a handler.

#![allow(missing_docs)] // test objects are exercised, not documented

use std::path::Path;
use std::sync::Mutex;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, SystemTime};

use stead::{AlarmInfo, Context, Durability, Error, ObjectId, Runtime, durable_object};

/// Every alarm run: which object, with what info, and whether it failed.
static RUNS: Mutex<Vec<(ObjectId, AlarmInfo)>> = Mutex::new(Vec::new());

fn runs_of(id: ObjectId) -> Vec<AlarmInfo> {
    RUNS.lock().unwrap().iter().filter(|(of, _)| *of == id).map(|(_, info)| *info).collect()
}

async fn wait_for_runs(id: ObjectId, n: usize) -> Vec<AlarmInfo> {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    loop {
        let runs = runs_of(id);
        if runs.len() >= n {
            return runs;
        }
        assert!(tokio::time::Instant::now() < deadline, "only {} of {n} alarm runs happened", runs.len());
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

pub struct Reminder {
    ctx: Context,
}

#[durable_object]
impl Reminder {
    pub async fn new(ctx: Context) -> Self {
        Reminder { ctx }
    }

    /// Sets the alarm `ms` milliseconds from now; `failures` runs fail first.
    pub fn remind_in(&mut self, ms: u64, failures: u32) -> stead::Result<()> {
        let storage = self.ctx.storage();
        storage.put("failures", &failures)?;
        storage.set_alarm(SystemTime::now() + Duration::from_millis(ms))
    }

    pub fn alarm_at(&self) -> stead::Result<Option<SystemTime>> {
        self.ctx.storage().get_alarm()
    }

    pub fn cancel(&mut self) -> stead::Result<()> {
        self.ctx.storage().delete_alarm()
    }

    /// Sets the alarm to now, keeps the object busy long enough for the
    /// scheduler to take the alarm, then steps the node's clock back.
    pub async fn alarm_now_then_step_clock_back(&mut self, back_ms: i64) -> stead::Result<()> {
        let storage = self.ctx.storage();
        storage.set_alarm(SystemTime::now())?;
        tokio::time::sleep(Duration::from_secs(1)).await;
        storage.step_alarm_clock_for_tests(-back_ms);
        Ok(())
    }

    pub fn fired(&self) -> stead::Result<u32> {
        Ok(self.ctx.storage().get::<u32>("fired")?.unwrap_or(0))
    }

    #[alarm]
    async fn alarm(&mut self, info: AlarmInfo) -> Result<(), String> {
        RUNS.lock().unwrap().push((self.ctx.id(), info));
        let storage = self.ctx.storage();
        let failures: u32 = storage.get("failures").map_err(|e| e.to_string())?.unwrap_or(0);
        if info.retry_count < failures {
            // Alternate the two ways a handler can fail.
            if info.retry_count.is_multiple_of(2) {
                panic!("alarm handler failure number {}", info.retry_count + 1);
            }
            return Err(format!("failure number {}", info.retry_count + 1));
        }
        let fired: u32 = storage.get("fired").map_err(|e| e.to_string())?.unwrap_or(0);
        storage.put("fired", &(fired + 1)).map_err(|e| e.to_string())
    }
}

pub struct NoHandler {
    ctx: Context,
}

#[durable_object]
impl NoHandler {
    pub async fn new(ctx: Context) -> Self {
        NoHandler { ctx }
    }

    pub fn try_alarm(&mut self) -> stead::Result<()> {
        self.ctx.storage().set_alarm(SystemTime::now())
    }
}

async fn runtime() -> Runtime {
    Runtime::builder()
        .in_memory()
        .alarm_retry_delay(Duration::from_millis(50))
        .host::<Reminder>()
        .host::<NoHandler>()
        .build()
        .await
        .unwrap()
}

#[tokio::test]
async fn an_alarm_fires_once_at_its_time_and_is_then_cleared() {
    let rt = runtime().await;
    let ns = rt.namespace::<Reminder>();
    let id = ns.unique_id();
    let reminder = ns.stub(&id);
    reminder.remind_in(500, 0).await.unwrap().unwrap();
    assert!(reminder.alarm_at().await.unwrap().unwrap().is_some());
    assert!(runs_of(id).is_empty(), "the alarm must not fire early");

    let runs = wait_for_runs(id, 1).await;
    assert_eq!(runs, [AlarmInfo { retry_count: 0, is_retry: false }]);
    assert_eq!(reminder.fired().await.unwrap().unwrap(), 1);
    assert_eq!(reminder.alarm_at().await.unwrap().unwrap(), None);
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert_eq!(runs_of(id).len(), 1, "a handled alarm does not fire again");
}

#[tokio::test]
async fn a_failing_handler_is_retried_with_is_retry_until_it_succeeds() {
    let rt = runtime().await;
    let ns = rt.namespace::<Reminder>();
    let id = ns.unique_id();
    let reminder = ns.stub(&id);
    reminder.remind_in(0, 2).await.unwrap().unwrap();
    let runs = wait_for_runs(id, 3).await;
    assert_eq!(
        runs,
        [
            AlarmInfo { retry_count: 0, is_retry: false },
            AlarmInfo { retry_count: 1, is_retry: true },
            AlarmInfo { retry_count: 2, is_retry: true },
        ]
    );
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    while reminder.fired().await.unwrap().unwrap() < 1 {
        assert!(tokio::time::Instant::now() < deadline);
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

#[tokio::test]
async fn a_handler_that_always_fails_is_given_up_after_six_retries() {
    let rt = runtime().await;
    let ns = rt.namespace::<Reminder>();
    let id = ns.unique_id();
    let reminder = ns.stub(&id);
    reminder.remind_in(0, 100).await.unwrap().unwrap();
    // 50 ms, then doubling: the seventh run comes about 3.2 s after the first.
    let runs = wait_for_runs(id, 7).await;
    assert_eq!(runs.last().unwrap().retry_count, stead::MAX_ALARM_RETRIES);
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(runs_of(id).len(), 7);
    assert_eq!(reminder.alarm_at().await.unwrap().unwrap(), None);
}

#[tokio::test]
async fn a_deleted_alarm_does_not_fire() {
    let rt = runtime().await;
    let ns = rt.namespace::<Reminder>();
    let id = ns.unique_id();
    let reminder = ns.stub(&id);
    reminder.remind_in(100, 0).await.unwrap().unwrap();
    reminder.cancel().await.unwrap().unwrap();
    assert_eq!(reminder.alarm_at().await.unwrap().unwrap(), None);
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(runs_of(id).is_empty());
}

#[tokio::test]
async fn an_alarm_survives_a_restart() {
    let dir = tempfile::tempdir().unwrap();
    let build = || Runtime::builder().data_dir(dir.path()).host::<Reminder>().build();
    let rt = build().await.unwrap();
    let ns = rt.namespace::<Reminder>();
    let id = ns.unique_id();
    ns.stub(&id).remind_in(400, 0).await.unwrap().unwrap();
    rt.shutdown().await.unwrap();
    drop(rt);
    assert!(runs_of(id).is_empty());

    // Nothing calls the object after the restart: the node's index finds it.
    let rt = build().await.unwrap();
    wait_for_runs(id, 1).await;
    assert_eq!(rt.namespace::<Reminder>().stub(&id).fired().await.unwrap().unwrap(), 1);
}

#[tokio::test]
async fn setting_an_alarm_without_a_handler_is_a_clear_error() {
    let rt = runtime().await;
    let ns = rt.namespace::<NoHandler>();
    let Err(Error::Config(message)) = ns.stub(&ns.unique_id()).try_alarm().await.unwrap() else { panic!() };
    assert!(message.contains("#[alarm]") && message.contains("NoHandler"), "{message}");
}

#[tokio::test]
async fn an_alarm_taken_just_before_the_clock_steps_back_still_runs() {
    let rt = runtime().await;
    let ns = rt.namespace::<Reminder>();
    let id = ns.unique_id();
    let reminder = ns.stub(&id);
    // The alarm's turn waits behind this call, which steps the clock back
    // an hour once the scheduler has taken the alarm.
    reminder.alarm_now_then_step_clock_back(3_600_000).await.unwrap().unwrap();
    wait_for_runs(id, 1).await;
    assert_eq!(reminder.fired().await.unwrap().unwrap(), 1);
}

/// The number of entries in the node's alarm index of `dir`.
fn index_entries(dir: &Path) -> i64 {
    let conn = stead::rusqlite::Connection::open(dir.join("alarms.sqlite")).unwrap();
    conn.query_row("SELECT count(*) FROM alarms", [], |row| row.get(0)).unwrap()
}

#[tokio::test]
async fn index_entries_whose_id_does_not_verify_are_removed_not_retried_forever() {
    let dir = tempfile::tempdir().unwrap();
    let build = |secret: &'static str| {
        Runtime::builder().data_dir(dir.path()).secret(secret).host::<Reminder>().build()
    };
    let rt = build("the first secret of this cluster").await.unwrap();
    let ns = rt.namespace::<Reminder>();
    ns.stub(&ns.unique_id()).remind_in(200, 0).await.unwrap().unwrap();
    rt.shutdown().await.unwrap();
    drop(rt);
    let conn = stead::rusqlite::Connection::open(dir.path().join("alarms.sqlite")).unwrap();
    conn.execute("INSERT INTO alarms (type, id, at, retries) VALUES ('Reminder', x'0102', 0, 0)", [])
        .unwrap();
    drop(conn);
    assert_eq!(index_entries(dir.path()), 2);

    // Under another secret, the first entry's id no longer verifies; the
    // second was never an id.
    let rt = build("another secret, after a rotation").await.unwrap();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while index_entries(dir.path()) > 0 {
        assert!(
            tokio::time::Instant::now() < deadline,
            "entries that can never be delivered stay in the index"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    rt.shutdown().await.unwrap();
}

#[tokio::test]
async fn with_normal_durability_an_alarm_whose_index_entry_was_lost_fires_once_its_object_is_used() {
    let dir = tempfile::tempdir().unwrap();
    let build =
        || Runtime::builder().data_dir(dir.path()).durability(Durability::Normal).host::<Reminder>().build();
    let rt = build().await.unwrap();
    let ns = rt.namespace::<Reminder>();
    let id = ns.unique_id();
    // Due well after the restart below, however slow the machine: an alarm
    // due during the first runtime's shutdown would fire there.
    ns.stub(&id).remind_in(2000, 0).await.unwrap().unwrap();
    rt.shutdown().await.unwrap();
    drop(rt);
    // A power loss kept the object's commit but not the index entry, which
    // was not synced.
    let conn = stead::rusqlite::Connection::open(dir.path().join("alarms.sqlite")).unwrap();
    conn.execute("DELETE FROM alarms", []).unwrap();
    drop(conn);

    let rt = build().await.unwrap();
    assert_eq!(rt.namespace::<Reminder>().stub(&id).fired().await.unwrap().unwrap(), 0);
    wait_for_runs(id, 1).await;
}

/// Alarm handlers running now, the most that ever ran at once, and how many
/// ran, for each of the crowd tests.
struct CrowdStats {
    running: AtomicUsize,
    most: AtomicUsize,
    ran: AtomicUsize,
}

static CROWDS: [CrowdStats; 2] = [const {
    CrowdStats { running: AtomicUsize::new(0), most: AtomicUsize::new(0), ran: AtomicUsize::new(0) }
}; 2];

/// One of a crowd of objects whose alarms come due at once.
pub struct Crowd {
    ctx: Context,
}

#[durable_object]
impl Crowd {
    pub async fn new(ctx: Context) -> Self {
        Crowd { ctx }
    }

    /// Joins crowd `crowd`, with an alarm an hour from now.
    pub fn join(&mut self, crowd: usize) -> stead::Result<()> {
        self.ctx.storage().put("crowd", &crowd)?;
        self.ctx.storage().set_alarm(SystemTime::now() + Duration::from_secs(3600))
    }

    /// Steps the node's clock `ms` forward.
    pub fn step_clock(&self, ms: i64) {
        self.ctx.storage().step_alarm_clock_for_tests(ms);
    }

    #[alarm]
    async fn alarm(&mut self, _info: AlarmInfo) -> Result<(), String> {
        let crowd: usize = self.ctx.storage().get("crowd").map_err(|e| e.to_string())?.unwrap_or(0);
        let stats = &CROWDS[crowd];
        let now = stats.running.fetch_add(1, Ordering::SeqCst) + 1;
        stats.most.fetch_max(now, Ordering::SeqCst);
        // Stay in the handler a moment, so that alarm turns delivered
        // together overlap.
        tokio::time::sleep(Duration::from_millis(2)).await;
        stats.running.fetch_sub(1, Ordering::SeqCst);
        stats.ran.fetch_add(1, Ordering::SeqCst);
        Ok(())
    }
}

/// `n` objects of crowd `crowd` set alarms for the same time, and the clock
/// jumps past it: every alarm runs (within `patience`, only to end a hang),
/// at most `MAX_ALARMS_IN_FLIGHT` at once.
async fn a_crowd_of_alarms_due_at_once(rt: Runtime, crowd: usize, n: usize, patience: Duration) {
    let ns = rt.namespace::<Crowd>();
    for _ in 0..n {
        ns.stub(&ns.unique_id()).join(crowd).await.unwrap().unwrap();
    }
    ns.stub(&ns.unique_id()).step_clock(2 * 3_600_000).await.unwrap();
    let stats = &CROWDS[crowd];
    let deadline = tokio::time::Instant::now() + patience;
    loop {
        let most = stats.most.load(Ordering::SeqCst);
        assert!(most <= stead::MAX_ALARMS_IN_FLIGHT, "{most} alarm handlers ran at once");
        let ran = stats.ran.load(Ordering::SeqCst);
        if ran == n {
            return;
        }
        assert!(tokio::time::Instant::now() < deadline, "only {ran} of {n} alarms ran");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test]
async fn alarms_due_at_once_are_delivered_a_bounded_number_at_a_time() {
    let rt = Runtime::builder().in_memory().host::<Crowd>().build().await.unwrap();
    a_crowd_of_alarms_due_at_once(rt, 0, 2_000, Duration::from_secs(120)).await;
}

/// Heavy: `cargo test --release --test alarms -- --ignored` (how long it
/// takes, on tmpfs and on disk: the README's "Tests").
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "heavy: 100,000 objects with a database file each"]
async fn a_hundred_thousand_alarms_due_at_once_are_delivered_a_bounded_number_at_a_time() {
    let dir = tempfile::tempdir().unwrap();
    let rt = Runtime::builder()
        .data_dir(dir.path())
        .durability(Durability::Normal)
        .host::<Crowd>()
        .build()
        .await
        .unwrap();
    a_crowd_of_alarms_due_at_once(rt, 1, 100_000, Duration::from_secs(4 * 3600)).await;
}
