//! Alarms: they fire, retry after a failure with `is_retry`, survive a
//! restart, and are refused to types without a handler.

#![allow(missing_docs)] // test objects are exercised, not documented

use std::sync::Mutex;
use std::time::{Duration, SystemTime};

use stead::{AlarmInfo, Context, Error, ObjectId, Runtime, durable_object};

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
