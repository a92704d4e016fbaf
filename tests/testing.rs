//! The testing kit: isolated runtimes, alarms run now (with their retries),
//! instances reached in a turn, ids listed.

#![allow(missing_docs)] // test objects are exercised, not documented

use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, SystemTime};

use stead::testing::{self, ListedObject};
use stead::{AlarmInfo, Context, Error, MAX_ALARM_RETRIES, Runtime, durable_object};

pub struct Reminder {
    ctx: Context,
    /// Set by the constructor: which construction of this process this is.
    construction: u32,
    fired: u32,
    infos: Vec<AlarmInfo>,
}

static CONSTRUCTIONS: AtomicU32 = AtomicU32::new(0);

#[durable_object]
impl Reminder {
    pub async fn new(ctx: Context) -> Self {
        let fired = ctx.storage().get("fired").unwrap().unwrap_or(0);
        let construction = CONSTRUCTIONS.fetch_add(1, Ordering::SeqCst) + 1;
        Reminder { ctx, construction, fired, infos: Vec::new() }
    }

    /// Sets the alarm `secs` seconds ahead; the next `failures` runs of the
    /// handler fail (odd ones by panicking, even ones by returning an error).
    pub fn remind_in(&mut self, secs: u64, failures: u32) -> stead::Result<()> {
        let storage = self.ctx.storage();
        storage.put("failures", &failures)?;
        storage.set_alarm(SystemTime::now() + Duration::from_secs(secs))
    }

    pub fn fired(&self) -> u32 {
        self.fired
    }

    pub fn alarm_at(&self) -> stead::Result<Option<SystemTime>> {
        self.ctx.storage().get_alarm()
    }

    pub fn infos(&self) -> Vec<(u32, bool)> {
        self.infos.iter().map(|info| (info.retry_count, info.is_retry)).collect()
    }

    #[alarm]
    async fn alarm(&mut self, info: AlarmInfo) -> Result<(), String> {
        self.infos.push(info);
        let storage = self.ctx.storage();
        // Written before failing: a failed run's writes are rolled back.
        storage.put("attempted", &info.retry_count).map_err(|e| e.to_string())?;
        let failures: u32 = storage.get("failures").map_err(|e| e.to_string())?.unwrap_or(0);
        if info.retry_count < failures {
            if info.retry_count % 2 == 1 {
                panic!("the mail server is down (run {})", info.retry_count);
            }
            return Err(format!("the mail server said no (run {})", info.retry_count));
        }
        self.fired += 1;
        storage.put("fired", &self.fired).map_err(|e| e.to_string())
    }
}

/// A type without an alarm handler.
pub struct Note {
    ctx: Context,
    text: String,
}

#[durable_object]
impl Note {
    pub async fn new(ctx: Context) -> Self {
        Note { ctx, text: String::new() }
    }

    pub fn write(&mut self, text: String) -> stead::Result<()> {
        self.text = text;
        self.ctx.storage().put("text", &self.text)
    }

    pub fn read(&self) -> String {
        self.text.clone()
    }

    pub fn wipe(&mut self) -> stead::Result<()> {
        self.ctx.storage().delete_all()
    }

    pub fn touch_nothing(&self) {}
}

#[tokio::test]
async fn test_runtimes_share_nothing() {
    let one = testing::runtime().host::<Note>().build().await.unwrap();
    let two = testing::runtime().host::<Note>().build().await.unwrap();
    let (notes_one, notes_two) = (one.namespace::<Note>(), two.namespace::<Note>());
    let id = notes_one.id_from_name("shared name");
    assert_ne!(id, notes_two.id_from_name("shared name"), "each test runtime has a secret of its own");
    assert!(notes_two.id_from_str(&id.to_string()).is_err());
    notes_one.stub(&id).write("only in one".into()).await.unwrap().unwrap();
    let same_name = notes_two.stub(&notes_two.id_from_name("shared name"));
    assert_eq!(same_name.read().await.unwrap(), "");
    assert_eq!(testing::list_ids(&notes_two).unwrap().len(), 1, "only the object just read");
    one.shutdown().await.unwrap();
    two.shutdown().await.unwrap();
}

#[tokio::test]
async fn run_alarm_runs_an_alarm_set_an_hour_ahead_at_once_and_only_once() {
    let rt = testing::runtime().host::<Reminder>().build().await.unwrap();
    let reminders = rt.namespace::<Reminder>();
    let stub = reminders.stub(&reminders.unique_id());
    assert!(!testing::run_alarm(&stub).await.unwrap(), "no alarm is set yet");

    stub.remind_in(3600, 0).await.unwrap().unwrap();
    assert!(stub.alarm_at().await.unwrap().unwrap().is_some());
    assert!(testing::run_alarm(&stub).await.unwrap(), "the alarm was set and ran");
    assert_eq!(stub.fired().await.unwrap(), 1);
    assert_eq!(stub.alarm_at().await.unwrap().unwrap(), None, "a run alarm is cleared");
    assert!(!testing::run_alarm(&stub).await.unwrap(), "nothing is left to run");
    assert_eq!(stub.infos().await.unwrap(), [(0, false)]);
    rt.shutdown().await.unwrap();
}

#[tokio::test]
async fn run_alarm_runs_in_order_with_the_calls_issued_around_it() {
    let rt = testing::runtime().host::<Reminder>().build().await.unwrap();
    let reminders = rt.namespace::<Reminder>();
    let stub = reminders.stub(&reminders.unique_id());
    // Issued in this order, awaited in another: the alarm set by the first
    // call is there when `run_alarm`'s turn comes, and the last call sees it ran.
    let set = stub.remind_in(3600, 0);
    let ran = testing::run_alarm(&stub);
    let fired = stub.fired();
    assert_eq!(fired.await.unwrap(), 1);
    assert!(ran.await.unwrap());
    set.await.unwrap().unwrap();
    rt.shutdown().await.unwrap();
}

#[tokio::test]
async fn a_failing_alarm_is_retried_by_run_alarm_with_its_retry_count_and_its_writes_rolled_back() {
    let rt = testing::runtime().host::<Reminder>().build().await.unwrap();
    let reminders = rt.namespace::<Reminder>();
    let stub = reminders.stub(&reminders.unique_id());
    stub.remind_in(3600, 2).await.unwrap().unwrap();

    let first = testing::run_alarm(&stub).await.unwrap_err();
    assert!(matches!(first, Error::AlarmFailed(_)), "{first:?}");
    let message = first.to_string();
    assert!(message.contains("the mail server said no (run 0)"), "{message}");
    assert!(message.contains(&format!("retry 1 of {MAX_ALARM_RETRIES}")), "{message}");
    assert!(stub.alarm_at().await.unwrap().unwrap().is_some(), "a failed alarm stays set");
    let attempted = testing::with_instance(&stub, |_, ctx| ctx.storage().get::<u32>("attempted")).await;
    assert_eq!(attempted.unwrap().unwrap(), None, "the failed run's writes were rolled back");

    let second = testing::run_alarm(&stub).await.unwrap_err();
    assert!(matches!(second, Error::Panicked(_)), "{second:?}");
    assert!(second.to_string().contains("the mail server is down (run 1)"), "{second}");
    assert!(second.to_string().contains(&format!("retry 2 of {MAX_ALARM_RETRIES}")), "{second}");

    assert!(testing::run_alarm(&stub).await.unwrap(), "the second retry succeeds");
    assert!(!testing::run_alarm(&stub).await.unwrap());
    // The panic dropped the instance: the runs this instance saw are the last.
    assert_eq!(stub.infos().await.unwrap(), [(2, true)]);
    assert_eq!(stub.fired().await.unwrap(), 1);
    rt.shutdown().await.unwrap();
}

#[tokio::test]
async fn an_alarm_that_always_fails_is_dropped_after_its_last_retry() {
    let rt = testing::runtime().host::<Reminder>().build().await.unwrap();
    let reminders = rt.namespace::<Reminder>();
    let stub = reminders.stub(&reminders.unique_id());
    stub.remind_in(3600, u32::MAX).await.unwrap().unwrap();
    for retry in 0..=MAX_ALARM_RETRIES {
        let err = testing::run_alarm(&stub).await.unwrap_err();
        if retry < MAX_ALARM_RETRIES {
            assert!(err.to_string().contains(&format!("retry {} of", retry + 1)), "{err}");
        } else {
            assert!(err.to_string().contains("the alarm was dropped"), "{err}");
        }
    }
    assert_eq!(stub.alarm_at().await.unwrap().unwrap(), None);
    assert!(!testing::run_alarm(&stub).await.unwrap(), "a dropped alarm is gone");
    assert_eq!(stub.fired().await.unwrap(), 0);
    rt.shutdown().await.unwrap();
}

#[tokio::test]
async fn run_alarm_says_what_to_do_when_it_cannot_run() {
    let rt = testing::runtime().host::<Note>().build().await.unwrap();
    let notes = rt.namespace::<Note>();
    let err = testing::run_alarm(&notes.stub(&notes.unique_id())).await.unwrap_err();
    assert!(matches!(err, Error::Config(_)), "{err:?}");
    assert!(err.to_string().contains("`Note` has no alarm handler"), "{err}");

    let reminders = rt.namespace::<Reminder>();
    let err = testing::run_alarm(&reminders.stub(&reminders.unique_id())).await.unwrap_err();
    assert!(matches!(err, Error::NotHosted(_)), "{err:?}");
    rt.shutdown().await.unwrap();

    // A runtime that delivers alarms by itself would race `run_alarm`.
    let rt = Runtime::builder().in_memory().host::<Reminder>().build().await.unwrap();
    let reminders = rt.namespace::<Reminder>();
    let err = testing::run_alarm(&reminders.stub(&reminders.unique_id())).await.unwrap_err();
    assert!(matches!(err, Error::Config(_)), "{err:?}");
    assert!(err.to_string().contains("stead::testing::runtime()"), "{err}");
    rt.shutdown().await.unwrap();
}

#[tokio::test]
async fn with_instance_constructs_an_object_not_yet_constructed() {
    let rt = testing::runtime().host::<Reminder>().build().await.unwrap();
    let reminders = rt.namespace::<Reminder>();
    let stub = reminders.stub(&reminders.unique_id());
    let before = CONSTRUCTIONS.load(Ordering::SeqCst);
    let construction = testing::with_instance(&stub, |reminder, ctx| {
        assert_eq!(ctx.id(), reminder.ctx.id(), "the object's own context");
        reminder.fired = 41;
        reminder.construction
    })
    .await
    .unwrap();
    assert!(construction > before, "the constructor ran for the closure");
    // The instance the closure changed is the one the next call reaches.
    assert_eq!(stub.fired().await.unwrap(), 41);
    let again = testing::with_instance(&stub, |reminder, _| reminder.construction).await.unwrap();
    assert_eq!(again, construction, "constructed once");
    rt.shutdown().await.unwrap();
}

#[tokio::test]
async fn with_instance_on_a_constructed_object_sees_its_state_and_its_writes_commit() {
    let rt = testing::runtime().host::<Note>().build().await.unwrap();
    let notes = rt.namespace::<Note>();
    let stub = notes.stub(&notes.unique_id());
    stub.write("first".into()).await.unwrap().unwrap();
    let seen = testing::with_instance(&stub, |note, ctx| {
        let stored = ctx.storage().get::<String>("text").unwrap();
        ctx.storage().put("text", "from the test").unwrap();
        (note.text.clone(), stored)
    })
    .await
    .unwrap();
    assert_eq!(seen, ("first".to_string(), Some("first".to_string())));
    let stored = testing::with_instance(&stub, |_, ctx| ctx.storage().get::<String>("text")).await.unwrap();
    assert_eq!(stored.unwrap().as_deref(), Some("from the test"), "the closure's write was committed");
    rt.shutdown().await.unwrap();
}

#[tokio::test]
async fn a_closure_that_panics_is_rolled_back_and_its_instance_dropped() {
    let rt = testing::runtime().host::<Note>().build().await.unwrap();
    let notes = rt.namespace::<Note>();
    let stub = notes.stub(&notes.unique_id());
    stub.write("kept".into()).await.unwrap().unwrap();
    let err = testing::with_instance(&stub, |note, ctx| {
        note.text = "lost".into();
        ctx.storage().put("text", "lost").unwrap();
        panic!("the test's closure gave up");
    })
    .await
    .unwrap_err();
    assert!(matches!(err, Error::Panicked(_)), "{err:?}");
    assert!(err.to_string().contains("the test's closure gave up"), "{err}");
    assert_eq!(stub.read().await.unwrap(), "", "a fresh instance, whose constructor reads nothing");
    let stored = testing::with_instance(&stub, |_, ctx| ctx.storage().get::<String>("text")).await.unwrap();
    assert_eq!(stored.unwrap().as_deref(), Some("kept"));
    rt.shutdown().await.unwrap();
}

#[tokio::test]
async fn with_instance_runs_in_order_with_the_calls_issued_around_it() {
    let rt = testing::runtime().host::<Note>().build().await.unwrap();
    let notes = rt.namespace::<Note>();
    let stub = notes.stub(&notes.unique_id());
    let before = stub.write("before".into());
    let seen = testing::with_instance(&stub, |note, _| note.text.clone());
    let after = stub.write("after".into());
    after.await.unwrap().unwrap();
    assert_eq!(seen.await.unwrap(), "before");
    before.await.unwrap().unwrap();
    rt.shutdown().await.unwrap();
}

#[tokio::test]
async fn list_ids_lists_the_objects_with_storage_with_their_names() {
    let rt = testing::runtime().idle_timeout(Duration::from_millis(40)).host::<Note>().build().await.unwrap();
    let notes = rt.namespace::<Note>();
    assert_eq!(testing::list_ids(&notes).unwrap(), []);

    let named = notes.id_from_name("shopping list");
    notes.stub(&named).touch_nothing().await.unwrap();
    let unnamed = notes.unique_id();
    notes.stub(&unnamed).write("x".into()).await.unwrap().unwrap();
    let untouched = notes.unique_id();
    notes.stub(&untouched).touch_nothing().await.unwrap();
    let wiped = notes.unique_id();
    notes.stub(&wiped).write("y".into()).await.unwrap().unwrap();
    notes.stub(&wiped).wipe().await.unwrap().unwrap();

    let mut expected = vec![
        ListedObject { id: named, name: Some("shopping list".into()) },
        ListedObject { id: unnamed, name: None },
        ListedObject { id: wiped, name: None },
    ];
    expected.sort();
    assert_eq!(testing::list_ids(&notes).unwrap(), expected, "in memory: the objects with storage");

    // Evicted, their databases closed: still listed, the named one by the
    // name it stored; the wiped one is gone with its emptied database.
    while rt.active_objects() > 0 {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    expected.retain(|listed| listed.id != wiped);
    assert_eq!(testing::list_ids(&notes).unwrap(), expected, "evicted: the objects with storage");
    rt.shutdown().await.unwrap();
}

#[tokio::test]
async fn the_kit_refuses_a_stub_that_reaches_its_object_through_a_cluster() {
    let tls = tempfile::tempdir().unwrap();
    let identity = stead::tls::dev_identity(tls.path(), "worker").unwrap();
    // A client: every stub routes through the cluster (nothing is sent here).
    let rt = Runtime::builder()
        .client()
        .peer("ohio", "127.0.0.1:9".parse().unwrap())
        .secret("a secret of at least sixteen bytes")
        .tls(identity)
        .in_memory()
        .build()
        .await
        .unwrap();
    let notes = rt.namespace::<Note>();
    let stub = notes.stub(&notes.unique_id());
    let err = testing::with_instance(&stub, |note, _| note.text.clone()).await.unwrap_err();
    assert!(matches!(err, Error::Config(_)), "{err:?}");
    assert!(err.to_string().contains("routes through a cluster"), "{err}");
    let reminders = rt.namespace::<Reminder>();
    let err = testing::run_alarm(&reminders.stub(&reminders.unique_id())).await.unwrap_err();
    assert!(matches!(err, Error::Config(_)), "{err:?}");
    rt.shutdown().await.unwrap();
}
