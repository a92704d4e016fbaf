//! One turn at a time per object; objects run in parallel and call each other.

#![allow(missing_docs)] // test objects are exercised, not documented

use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use common::Counter;
use stead::{Context, Runtime, durable_object};

mod common;

static IN_TURN: AtomicUsize = AtomicUsize::new(0);
static MAX_IN_TURN: AtomicUsize = AtomicUsize::new(0);

/// Records how many of its turns overlap, across `.await` points.
pub struct Exclusive;

#[durable_object]
impl Exclusive {
    pub async fn new(_ctx: Context) -> Self {
        Exclusive
    }

    pub async fn slow(&mut self) {
        let now = IN_TURN.fetch_add(1, Ordering::SeqCst) + 1;
        MAX_IN_TURN.fetch_max(now, Ordering::SeqCst);
        tokio::time::sleep(Duration::from_millis(1)).await;
        tokio::task::yield_now().await;
        IN_TURN.fetch_sub(1, Ordering::SeqCst);
    }
}

static MIXED_IN_TURN: AtomicUsize = AtomicUsize::new(0);
static MIXED_MAX_IN_TURN: AtomicUsize = AtomicUsize::new(0);

/// Plain and `async` methods on one object: plain ones run in their
/// callers' tasks, waiting ones move to drain tasks; turns must never overlap.
pub struct Mixed {
    calls: u64,
}

fn enter_mixed() {
    let now = MIXED_IN_TURN.fetch_add(1, Ordering::SeqCst) + 1;
    MIXED_MAX_IN_TURN.fetch_max(now, Ordering::SeqCst);
}

#[durable_object]
impl Mixed {
    pub async fn new(_ctx: Context) -> Self {
        Mixed { calls: 0 }
    }

    pub fn quick(&mut self) -> u64 {
        enter_mixed();
        self.calls += 1;
        MIXED_IN_TURN.fetch_sub(1, Ordering::SeqCst);
        self.calls
    }

    pub async fn waiting(&mut self) -> u64 {
        enter_mixed();
        tokio::task::yield_now().await;
        tokio::time::sleep(Duration::from_micros(200)).await;
        self.calls += 1;
        MIXED_IN_TURN.fetch_sub(1, Ordering::SeqCst);
        self.calls
    }

    pub fn calls(&self) -> u64 {
        self.calls
    }
}

/// Sums what it is told through a counter it calls.
pub struct Forwarder {
    ctx: Context,
}

#[durable_object]
impl Forwarder {
    pub async fn new(ctx: Context) -> Self {
        Forwarder { ctx }
    }

    pub async fn forward(&mut self, counter: String, by: u64) -> stead::Result<u64> {
        let counters = self.ctx.namespace::<Counter>();
        let id = counters.id_from_name(&counter);
        counters.stub(&id).increment(by).await
    }
}

async fn runtime() -> Runtime {
    Runtime::builder()
        .in_memory()
        .host::<Counter>()
        .host::<Exclusive>()
        .host::<Forwarder>()
        .host::<Mixed>()
        .build()
        .await
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn eight_tasks_of_a_thousand_increments_give_exactly_eight_thousand() {
    let rt = runtime().await;
    let ns = rt.namespace::<Counter>();
    let id = ns.id_from_name("shared");
    let tasks: Vec<_> = (0..8)
        .map(|_| {
            let stub = ns.stub(&id);
            tokio::spawn(async move {
                for _ in 0..1_000 {
                    stub.increment(1).await.unwrap();
                }
            })
        })
        .collect();
    for task in tasks {
        task.await.unwrap();
    }
    assert_eq!(ns.stub(&id).get().await.unwrap(), 8_000);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn an_object_never_runs_two_turns_at_once_even_across_awaits() {
    let rt = runtime().await;
    let ns = rt.namespace::<Exclusive>();
    let id = ns.unique_id();
    let tasks: Vec<_> = (0..4)
        .map(|_| {
            let stub = ns.stub(&id);
            tokio::spawn(async move {
                for _ in 0..25 {
                    stub.slow().await.unwrap();
                }
            })
        })
        .collect();
    for task in tasks {
        task.await.unwrap();
    }
    assert_eq!(MAX_IN_TURN.load(Ordering::SeqCst), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn distinct_objects_keep_distinct_state() {
    let rt = runtime().await;
    let ns = rt.namespace::<Counter>();
    let tasks: Vec<_> = (0..100u64)
        .map(|i| {
            let stub = ns.stub(&ns.id_from_name(&format!("counter-{i}")));
            tokio::spawn(async move {
                for _ in 0..=i {
                    stub.increment(1).await.unwrap();
                }
            })
        })
        .collect();
    for task in tasks {
        task.await.unwrap();
    }
    for i in 0..100u64 {
        let stub = ns.stub(&ns.id_from_name(&format!("counter-{i}")));
        assert_eq!(stub.get().await.unwrap(), i + 1);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn objects_call_other_objects_through_their_context() {
    let rt = runtime().await;
    let forwarders = rt.namespace::<Forwarder>();
    let forwarder = forwarders.stub(&forwarders.id_from_name("f"));
    assert_eq!(forwarder.forward("target".into(), 5).await.unwrap().unwrap(), 5);
    assert_eq!(forwarder.forward("target".into(), 2).await.unwrap().unwrap(), 7);
    let counters = rt.namespace::<Counter>();
    assert_eq!(counters.stub(&counters.id_from_name("target")).get().await.unwrap(), 7);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn plain_and_waiting_methods_from_many_tasks_never_overlap_and_all_run() {
    let rt = runtime().await;
    let ns = rt.namespace::<Mixed>();
    let id = ns.unique_id();
    let tasks: Vec<_> = (0..8)
        .map(|task| {
            let stub = ns.stub(&id);
            tokio::spawn(async move {
                for call in 0..200 {
                    if (task + call) % 5 == 0 {
                        stub.waiting().await.unwrap();
                    } else {
                        // Some futures are dropped unawaited: their calls still run.
                        let quick = stub.quick();
                        if call % 7 != 0 {
                            quick.await.unwrap();
                        }
                    }
                }
            })
        })
        .collect();
    for task in tasks {
        task.await.unwrap();
    }
    assert_eq!(ns.stub(&id).calls().await.unwrap(), 8 * 200);
    assert_eq!(MIXED_MAX_IN_TURN.load(Ordering::SeqCst), 1);
}

/// Stores a changed value in every turn: each turn's commit needs a sync.
pub struct Ledger {
    ctx: Context,
}

#[durable_object]
impl Ledger {
    pub async fn new(ctx: Context) -> Self {
        Ledger { ctx }
    }

    pub fn put(&mut self, seq: u64) -> stead::Result<()> {
        self.ctx.storage().put("last", &seq)
    }
}

/// Sixty-four callers keep one durable object busy until it has run a
/// hundred turns per caller: every caller must have completed at least a
/// tenth of that share while the others were calling. (A drain task whose
/// mailbox never empties used to keep its worker to itself: a caller queued
/// behind it on that worker ran again only once all the others had stopped,
/// having completed one call.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sixty_four_callers_on_one_durable_object_all_complete_calls() {
    const CALLERS: usize = 64;
    let dir = tempfile::tempdir().unwrap();
    let rt = Runtime::builder().data_dir(dir.path()).host::<Ledger>().build().await.unwrap();
    let ns = rt.namespace::<Ledger>();
    let id = ns.id_from_name("busy");
    let total = std::sync::Arc::new(AtomicUsize::new(0));
    let tasks: Vec<_> = (0..CALLERS)
        .map(|_| {
            let (stub, total) = (ns.stub(&id), total.clone());
            tokio::spawn(async move {
                let mut mine = 0u64;
                while total.fetch_add(1, Ordering::SeqCst) < CALLERS * 100 {
                    stub.put(mine).await.unwrap().unwrap();
                    mine += 1;
                }
                mine
            })
        })
        .collect();
    let mut completed = Vec::new();
    for task in tasks {
        completed.push(task.await.unwrap());
    }
    assert!(
        completed.iter().all(|&calls| calls >= 10),
        "every caller completes calls while the others call; calls per caller: {completed:?}"
    );
    rt.shutdown().await.unwrap();
}

/// A task that calls idle objects in a loop runs every turn in its own
/// poll, with no await that waits: it must still yield its worker, as it
/// would on any tokio resource, so that a task queued behind it runs. (It
/// did not: on one worker the other task ran only once the loop ended, and
/// with 64 callers on 1,000 objects calls waited seconds.)
#[tokio::test(flavor = "current_thread")]
async fn a_task_calling_idle_objects_in_a_loop_lets_other_tasks_run() {
    const CALLS: u64 = 10_000;
    let rt = Runtime::builder().in_memory().host::<Counter>().build().await.unwrap();
    let (looping, calls) = spawn_looping_caller(&rt, CALLS as usize);
    // Queued behind the loop on the only worker.
    let seen = tokio::spawn({
        let calls = calls.clone();
        async move { calls.load(Ordering::SeqCst) }
    });
    let seen = seen.await.unwrap();
    looping.await.unwrap();
    assert!(seen < CALLS as usize, "the other task ran only after all {seen} calls");
    rt.shutdown().await.unwrap();
}

/// A task whose calls run their turns in its own poll yields its worker at
/// its next call, not after 128 of them: with many callers always ready,
/// one that has yielded waits for a round of the others' polls, and 128
/// turns a poll made that round take up to 280 ms (see
/// `INLINE_REPLY_BUDGET` in `local/drive.rs`).
#[tokio::test(flavor = "current_thread")]
async fn a_task_calling_objects_in_a_loop_yields_at_its_next_call() {
    const CALLS: usize = 2_000;
    let rt = Runtime::builder().in_memory().host::<Counter>().build().await.unwrap();
    let (looping, calls) = spawn_looping_caller(&rt, CALLS);
    // Runs whenever the looping task yields: counts its calls in between.
    let watcher = tokio::spawn(async move {
        let (mut last, mut most) = (0, 0);
        while last < CALLS {
            let now = calls.load(Ordering::SeqCst);
            most = most.max(now - last);
            last = now;
            tokio::task::yield_now().await;
        }
        most
    });
    looping.await.unwrap();
    let most = watcher.await.unwrap();
    // One call a poll; a few between two runs of the watcher if it was
    // not woken in every round (with one unit a reply: 128 and more).
    assert!((1..=8).contains(&most), "{most} calls between two runs of the other task");
    rt.shutdown().await.unwrap();
}

/// Spawns a task that makes `calls` calls to ten idle `Counter` objects of
/// `rt` in a loop, and the count of the calls it made so far.
fn spawn_looping_caller(
    rt: &Runtime,
    calls: usize,
) -> (tokio::task::JoinHandle<()>, std::sync::Arc<AtomicUsize>) {
    let ns = rt.namespace::<Counter>();
    let stubs: Vec<_> = (0..10).map(|i| ns.stub(&ns.id_from_name(&format!("c{i}")))).collect();
    let made = std::sync::Arc::new(AtomicUsize::new(0));
    let looping = tokio::spawn({
        let made = made.clone();
        async move {
            for i in 0..calls {
                stubs[i % stubs.len()].increment(1).await.unwrap();
                made.fetch_add(1, Ordering::SeqCst);
            }
        }
    });
    (looping, made)
}
