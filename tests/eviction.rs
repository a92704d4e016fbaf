//! Eviction: an idle object leaves memory and closes its database; the next
//! call constructs it again from storage.

#![allow(missing_docs)] // test objects are exercised, not documented

use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use stead::{Context, Error, Runtime, durable_object};

static CONSTRUCTED: AtomicUsize = AtomicUsize::new(0);

pub struct Cached {
    ctx: Context,
    /// Read once in the constructor, kept in memory, written through.
    value: u64,
    leaked: Option<Context>,
}

#[durable_object]
impl Cached {
    pub async fn new(ctx: Context) -> Self {
        CONSTRUCTED.fetch_add(1, Ordering::SeqCst);
        let value = ctx.storage().get("value").unwrap().unwrap_or(0);
        Cached { ctx, value, leaked: None }
    }

    pub fn add(&mut self, n: u64) -> stead::Result<u64> {
        self.value += n;
        self.ctx.storage().put("value", &self.value)?;
        Ok(self.value)
    }

    /// Hands a clone of its context to a task that outlives the object.
    pub fn leak_context(&mut self) {
        self.leaked = Some(self.ctx.clone());
        let ctx = self.ctx.clone();
        tokio::spawn(async move {
            tokio::time::sleep(Duration::from_millis(300)).await;
            let result = ctx.storage().get::<u64>("value");
            *LATE_RESULT.lock().unwrap() = Some(result);
        });
    }
}

static LATE_RESULT: std::sync::Mutex<Option<stead::Result<Option<u64>>>> = std::sync::Mutex::new(None);

/// An in-memory runtime and a stub of a fresh `Cached` object.
async fn in_memory_with_idle_timeout(idle: Duration) -> (Runtime, CachedStub) {
    let rt = Runtime::builder().in_memory().idle_timeout(idle).host::<Cached>().build().await.unwrap();
    let ns = rt.namespace::<Cached>();
    let cached = ns.stub(&ns.unique_id());
    (rt, cached)
}

async fn wait_until_evicted(rt: &Runtime) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    while rt.active_objects() > 0 {
        assert!(tokio::time::Instant::now() < deadline, "the idle object was never evicted");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

#[tokio::test]
async fn an_evicted_object_is_constructed_again_with_its_state() {
    for in_memory in [false, true] {
        let dir = tempfile::tempdir().unwrap();
        let builder = Runtime::builder().idle_timeout(Duration::from_millis(50)).host::<Cached>();
        let builder = if in_memory { builder.in_memory() } else { builder.data_dir(dir.path()) };
        let rt = builder.build().await.unwrap();
        let ns = rt.namespace::<Cached>();
        let cached = ns.stub(&ns.unique_id());
        assert_eq!(cached.add(2).await.unwrap().unwrap(), 2);
        assert_eq!(rt.open_databases(), 1);
        let before = CONSTRUCTED.load(Ordering::SeqCst);
        wait_until_evicted(&rt).await;
        assert_eq!(rt.open_databases(), 0, "eviction closes the database");
        assert_eq!(cached.add(3).await.unwrap().unwrap(), 5, "in_memory: {in_memory}");
        assert!(CONSTRUCTED.load(Ordering::SeqCst) > before, "the constructor ran again");
    }
}

#[tokio::test]
async fn an_object_in_use_is_not_evicted() {
    let (rt, cached) = in_memory_with_idle_timeout(Duration::from_secs(1)).await;
    for _ in 0..20 {
        cached.add(1).await.unwrap().unwrap();
        tokio::time::sleep(Duration::from_millis(20)).await;
        assert_eq!(rt.active_objects(), 1);
    }
}

#[tokio::test]
async fn a_context_kept_after_eviction_gets_a_clear_storage_error() {
    let (rt, cached) = in_memory_with_idle_timeout(Duration::from_millis(30)).await;
    cached.leak_context().await.unwrap();
    wait_until_evicted(&rt).await;
    tokio::time::sleep(Duration::from_millis(400)).await;
    let late = LATE_RESULT.lock().unwrap().take().expect("the task ran");
    let Err(Error::Storage(message)) = late else { panic!("expected a Storage error, got {late:?}") };
    assert!(message.contains("evicted"), "{message}");
}

#[tokio::test]
async fn shutdown_evicts_everything_and_closes_every_database() {
    let dir = tempfile::tempdir().unwrap();
    let rt = Runtime::builder().data_dir(dir.path()).host::<Cached>().build().await.unwrap();
    let ns = rt.namespace::<Cached>();
    for i in 0..10 {
        ns.stub(&ns.id_from_name(&i.to_string())).add(i).await.unwrap().unwrap();
    }
    assert_eq!(rt.active_objects(), 10);
    rt.shutdown().await.unwrap();
    assert_eq!(rt.active_objects(), 0);
    assert_eq!(rt.open_databases(), 0);
}

/// For each object, how many of its instances have begun to drop.
static DROPS_BEGUN: std::sync::Mutex<Vec<stead::ObjectId>> = std::sync::Mutex::new(Vec::new());

/// How long a `SlowDrop` instance takes to drop.
const SLOW_DROP: Duration = Duration::from_millis(100);

fn drops_begun(id: stead::ObjectId) -> usize {
    DROPS_BEGUN.lock().unwrap().iter().filter(|of| **of == id).count()
}

/// Waits until more than `before` instances of `id` have begun to drop.
async fn wait_for_a_drop(id: stead::ObjectId, before: usize) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while drops_begun(id) <= before {
        assert!(tokio::time::Instant::now() < deadline, "the idle object was never evicted");
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
}

/// An object whose instances take long to drop: eviction is still busy
/// with one when the next call arrives.
pub struct SlowDrop {
    ctx: Context,
    value: u64,
}

#[durable_object]
impl SlowDrop {
    pub async fn new(ctx: Context) -> Self {
        let value = ctx.storage().get("value").unwrap().unwrap_or(0);
        SlowDrop { ctx, value }
    }

    pub fn add(&mut self, n: u64) -> stead::Result<u64> {
        self.value += n;
        self.ctx.storage().put("value", &self.value)?;
        Ok(self.value)
    }

    /// Empties the storage (its file is then removed on eviction).
    pub fn reset(&mut self) -> stead::Result<()> {
        self.ctx.storage().delete_all()?;
        self.value = 0;
        Ok(())
    }

    pub fn stored(&self) -> stead::Result<u64> {
        Ok(self.ctx.storage().get("value")?.unwrap_or(0))
    }
}

impl Drop for SlowDrop {
    fn drop(&mut self) {
        DROPS_BEGUN.lock().unwrap().push(self.ctx.id());
        std::thread::sleep(SLOW_DROP);
    }
}

async fn slow_drop_runtime(dir: &std::path::Path, in_memory: bool) -> Runtime {
    let builder = Runtime::builder().idle_timeout(Duration::from_millis(20)).host::<SlowDrop>();
    let builder = if in_memory { builder.in_memory() } else { builder.data_dir(dir) };
    builder.build().await.unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_call_that_arrives_while_the_evicted_instance_still_drops_loses_no_write() {
    for in_memory in [true, false] {
        let dir = tempfile::tempdir().unwrap();
        let rt = slow_drop_runtime(dir.path(), in_memory).await;
        let ns = rt.namespace::<SlowDrop>();
        let id = ns.unique_id();
        let object = ns.stub(&id);
        // Counted before each call: its instance may be evicted (20 ms
        // idle) before the caller runs again on a busy machine.
        let mut before = drops_begun(id);
        assert_eq!(object.add(1).await.unwrap().unwrap(), 1);
        for expected in 2..=4 {
            // The call lands while eviction is dropping the instance.
            wait_for_a_drop(id, before).await;
            before = drops_begun(id);
            let value = object.add(1).await.unwrap();
            assert_eq!(value.unwrap(), expected, "in_memory: {in_memory}");
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_write_made_while_an_emptied_object_closes_survives_its_next_eviction() {
    let dir = tempfile::tempdir().unwrap();
    let rt = slow_drop_runtime(dir.path(), false).await;
    let ns = rt.namespace::<SlowDrop>();
    let id = ns.unique_id();
    let object = ns.stub(&id);
    object.add(5).await.unwrap().unwrap();
    // Counted before each call, as above.
    let before = drops_begun(id);
    object.reset().await.unwrap().unwrap();
    // Closing the emptied database removes its file; the call must not be
    // left writing to a removed file.
    wait_for_a_drop(id, before).await;
    let before = drops_begun(id);
    assert_eq!(object.add(1).await.unwrap().unwrap(), 1);
    wait_for_a_drop(id, before).await;
    assert_eq!(object.stored().await.unwrap().unwrap(), 1, "the write went to a removed file");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_object_with_a_slow_drop_evicted_while_calls_keep_coming_never_loses_a_write() {
    for in_memory in [true, false] {
        let dir = tempfile::tempdir().unwrap();
        let rt = slow_drop_runtime(dir.path(), in_memory).await;
        let ns = rt.namespace::<SlowDrop>();
        let id = ns.unique_id();
        let object = ns.stub(&id);
        for expected in 1..=20 {
            let value = object.add(1).await.unwrap();
            assert_eq!(value.unwrap(), expected, "in_memory: {in_memory}");
            // Pauses around the idle timeout, so that some calls find the
            // object active, some idle, and some being evicted.
            tokio::time::sleep(Duration::from_millis(expected % 4 * 15)).await;
        }
        assert!(drops_begun(id) > 0, "the object was never evicted: the test proved nothing");
    }
}

static PANICKY_DROPS: AtomicUsize = AtomicUsize::new(0);

/// An object whose instances panic when dropped.
pub struct PanickyDrop {
    _ctx: Context,
}

#[durable_object]
impl PanickyDrop {
    pub async fn new(ctx: Context) -> Self {
        PanickyDrop { _ctx: ctx }
    }

    pub fn ping(&self) -> u32 {
        1
    }
}

impl Drop for PanickyDrop {
    fn drop(&mut self) {
        PANICKY_DROPS.fetch_add(1, Ordering::SeqCst);
        panic!("a user's Drop panicked");
    }
}

#[tokio::test]
async fn an_instance_whose_drop_panics_does_not_stop_eviction() {
    let rt = Runtime::builder()
        .in_memory()
        .idle_timeout(Duration::from_millis(20))
        .host::<PanickyDrop>()
        .build()
        .await
        .unwrap();
    let ns = rt.namespace::<PanickyDrop>();
    for round in 1..=3 {
        assert_eq!(ns.stub(&ns.unique_id()).ping().await.unwrap(), 1);
        wait_until_evicted(&rt).await;
        assert_eq!(PANICKY_DROPS.load(Ordering::SeqCst), round, "eviction dropped the instance");
    }
}
