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
