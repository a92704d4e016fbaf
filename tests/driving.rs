//! Who runs a turn: the caller's own task when the object is idle, a drain
//! task otherwise; either way every queued call runs, and a started turn
//! runs to completion.

#![allow(missing_docs)] // test objects are exercised, not documented

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::Duration;

use stead::{Context, ObjectId, Runtime, durable_object};

/// How many `mark` turns ran, per object (a side channel that does not need a call).
static MARKS: Mutex<Option<HashMap<ObjectId, u64>>> = Mutex::new(None);

fn marks(id: ObjectId) -> u64 {
    MARKS.lock().unwrap().as_ref().and_then(|m| m.get(&id).copied()).unwrap_or(0)
}

pub struct Probe {
    ctx: Context,
}

#[durable_object]
impl Probe {
    pub async fn new(ctx: Context) -> Self {
        Probe { ctx }
    }

    pub fn mark(&mut self) {
        *MARKS.lock().unwrap().get_or_insert_with(HashMap::new).entry(self.ctx.id()).or_insert(0) += 1;
    }

    /// The thread the turn runs on.
    pub fn thread(&self) -> String {
        format!("{:?}", std::thread::current().id())
    }

    /// Waits, then writes: a turn that cannot finish in one poll.
    pub async fn slow_put(&mut self, value: u64) -> stead::Result<()> {
        tokio::time::sleep(Duration::from_millis(50)).await;
        self.ctx.storage().put("value", &value)
    }

    pub fn value(&self) -> stead::Result<Option<u64>> {
        self.ctx.storage().get("value")
    }

    /// Uses a timer and a spawned task, as methods may.
    pub async fn nap(&mut self) -> u64 {
        tokio::time::sleep(Duration::from_millis(5)).await;
        tokio::spawn(async { 7 }).await.unwrap()
    }
}

async fn runtime() -> Runtime {
    Runtime::builder().in_memory().host::<Probe>().build().await.unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_call_to_an_idle_object_runs_in_the_callers_own_task() {
    let rt = runtime().await;
    let ns = rt.namespace::<Probe>();
    let stub = ns.stub(&ns.unique_id());
    for _ in 0..100 {
        // Nothing yields between reading the thread and the call's first
        // poll, so a turn run by another task could only match by chance.
        let here = format!("{:?}", std::thread::current().id());
        assert_eq!(stub.thread().await.unwrap(), here);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_call_whose_future_is_kept_but_never_polled_still_runs() {
    let rt = runtime().await;
    let ns = rt.namespace::<Probe>();
    let id = ns.unique_id();
    let kept = ns.stub(&id).mark();
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert_eq!(marks(id), 1, "the watchdog gives an undriven call a task");
    assert_eq!(kept.await, Ok(()), "and its reply waits for the caller");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_later_call_runs_the_earlier_unpolled_ones_first() {
    let rt = runtime().await;
    let ns = rt.namespace::<Probe>();
    let id = ns.unique_id();
    let stub = ns.stub(&id);
    let first = stub.mark();
    let second = stub.mark();
    stub.thread().await.unwrap();
    assert_eq!(marks(id), 2);
    assert_eq!((first.await, second.await), (Ok(()), Ok(())));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_turn_that_waits_finishes_even_if_its_caller_gives_up() {
    let rt = runtime().await;
    let ns = rt.namespace::<Probe>();
    let stub = ns.stub(&ns.unique_id());
    // The caller starts the turn, then stops waiting in the middle of it.
    let gave_up = tokio::time::timeout(Duration::from_millis(5), stub.slow_put(42)).await;
    assert!(gave_up.is_err());
    assert_eq!(stub.value().await.unwrap().unwrap(), Some(42), "the turn ran to completion");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_caller_on_another_executor_still_runs_turns_on_the_objects_runtime() {
    let rt = runtime().await;
    let ns = rt.namespace::<Probe>();
    let stub = ns.stub(&ns.unique_id());
    // A plain thread with a non-tokio executor: the method's timer and
    // spawned task must still find the object's runtime.
    let answer = std::thread::spawn(move || futures::executor::block_on(stub.nap())).join().unwrap();
    assert_eq!(answer.unwrap(), 7);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_runs_calls_whose_futures_are_kept_but_not_polled() {
    let rt = runtime().await;
    let ns = rt.namespace::<Probe>();
    let id = ns.unique_id();
    let kept = ns.stub(&id).mark();
    rt.shutdown().await.unwrap();
    assert_eq!(marks(id), 1);
    drop(kept);
}
