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
