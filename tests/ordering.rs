//! E-order: calls issued through one stub (and its clones) are delivered in
//! the order they were issued, whenever their futures are awaited.

#![allow(missing_docs)] // test objects are exercised, not documented

use stead::{Context, Runtime, durable_object};

pub struct Log {
    seen: Vec<u64>,
}

#[durable_object]
impl Log {
    pub async fn new(_ctx: Context) -> Self {
        Log { seen: Vec::new() }
    }

    pub async fn record(&mut self, n: u64) -> usize {
        // Yield inside the turn: another call must still not interleave.
        tokio::task::yield_now().await;
        self.seen.push(n);
        self.seen.len()
    }

    pub fn seen(&self) -> Vec<u64> {
        self.seen.clone()
    }
}

async fn runtime() -> Runtime {
    Runtime::builder().in_memory().host::<Log>().build().await.unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn calls_through_one_stub_arrive_in_issue_order_even_awaited_in_reverse() {
    let rt = runtime().await;
    let ns = rt.namespace::<Log>();
    let log = ns.stub(&ns.unique_id());
    let pending: Vec<_> = (0..1_000).map(|n| log.record(n)).collect();
    for (i, call) in pending.into_iter().enumerate().rev() {
        assert_eq!(call.await.unwrap(), i + 1);
    }
    assert_eq!(log.seen().await.unwrap(), (0..1_000).collect::<Vec<_>>());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn calls_whose_futures_are_never_awaited_are_still_delivered_in_order() {
    let rt = runtime().await;
    let ns = rt.namespace::<Log>();
    let log = ns.stub(&ns.unique_id());
    for n in 0..100 {
        drop(log.record(n));
    }
    assert_eq!(log.seen().await.unwrap(), (0..100).collect::<Vec<_>>());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn clones_of_a_stub_share_one_order() {
    let rt = runtime().await;
    let ns = rt.namespace::<Log>();
    let first = ns.stub(&ns.unique_id());
    let second = first.clone();
    let pending: Vec<_> =
        (0..200).map(|n| if n % 2 == 0 { first.record(n) } else { second.record(n) }).collect();
    for call in pending.into_iter().rev() {
        call.await.unwrap();
    }
    assert_eq!(second.seen().await.unwrap(), (0..200).collect::<Vec<_>>());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn calls_spawned_onto_other_tasks_keep_the_order_in_which_they_were_issued() {
    let rt = runtime().await;
    let ns = rt.namespace::<Log>();
    let log = ns.stub(&ns.unique_id());
    let tasks: Vec<_> = (0..300).map(|n| tokio::spawn(log.record(n))).collect();
    for task in tasks.into_iter().rev() {
        task.await.unwrap().unwrap();
    }
    assert_eq!(log.seen().await.unwrap(), (0..300).collect::<Vec<_>>());
}

/// Checks a stub's calls, in issue order: once one failed, none after it
/// ran (no gap followed by a later success), and what ran is the log.
fn assert_no_gap(results: &[stead::Result<usize>], log: &[u64]) {
    let first_failed = results.iter().position(|r| r.is_err()).expect("the test must overload the mailbox");
    for (n, later) in results.iter().enumerate().skip(first_failed) {
        let Err(err) = later else { panic!("call {n} ran after call {first_failed} was refused: a gap") };
        assert!(err.is_retryable(), "{err}");
    }
    let ran: Vec<u64> = (0..first_failed as u64).collect();
    assert_eq!(log, ran, "the object ran exactly the calls before the first refusal");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn after_a_call_is_refused_no_later_call_of_the_stub_runs() {
    let rt = Runtime::builder().in_memory().mailbox_capacity(2).host::<Log>().build().await.unwrap();
    let ns = rt.namespace::<Log>();
    let id = ns.unique_id();
    let stub = ns.stub(&id);
    // Issued while the object drains: some find its mailbox full, and
    // room again after.
    let mut calls = Vec::new();
    for n in 0..500 {
        calls.push(tokio::spawn(stub.record(n)));
        if n % 8 == 0 {
            tokio::task::yield_now().await;
        }
    }
    let mut results = Vec::new();
    for call in calls {
        results.push(call.await.unwrap());
    }
    let log = ns.stub(&id).seen().await.unwrap();
    assert_no_gap(&results, &log);
    let later = stub.record(1_000).await.unwrap_err();
    assert!(later.to_string().contains("make a new stub"), "{later}");
}
