//! In-process calls: stead next to the plain tokio pattern it replaces (a
//! task owning the state, asked through an mpsc channel with a oneshot reply).
//!
//! `cargo bench --bench local`

#![allow(missing_docs)] // benchmark objects are measured, not documented

use std::future::Future;
use std::time::Duration;

mod common;

use common::{Counter, in_task};
use criterion::{Criterion, criterion_group, criterion_main};
use stead::Runtime;
use tokio::sync::{mpsc, oneshot};

/// The baseline: a task that owns a counter and answers asks.
fn spawn_counter_task() -> mpsc::Sender<(u64, oneshot::Sender<u64>)> {
    let (tx, mut rx) = mpsc::channel::<(u64, oneshot::Sender<u64>)>(4096);
    tokio::spawn(async move {
        let mut value = 0u64;
        while let Some((by, reply)) = rx.recv().await {
            value += by;
            let _ = reply.send(value);
        }
    });
    tx
}

/// Asks the task: sends at once (as a stub does), then awaits the answer.
fn ask(tx: &mpsc::Sender<(u64, oneshot::Sender<u64>)>, by: u64) -> impl Future<Output = u64> + Send + use<> {
    let (reply, answer) = oneshot::channel();
    let sent = tx.try_send((by, reply));
    async move {
        sent.unwrap();
        answer.await.unwrap()
    }
}

fn local(c: &mut Criterion) {
    let tokio = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap();
    let (stub, tx) = tokio.block_on(async {
        let rt = Runtime::builder().in_memory().host::<Counter>().build().await.unwrap();
        let ns = rt.namespace::<Counter>();
        let stub = ns.stub(&ns.id_from_name("bench"));
        stub.increment(0).await.unwrap();
        (stub, spawn_counter_task())
    });

    let mut group = c.benchmark_group("local_call");
    group.measurement_time(Duration::from_secs(3)).warm_up_time(Duration::from_secs(1));
    group.bench_function("stead", |b| {
        b.iter_custom(|iters| {
            let stub = stub.clone();
            in_task(&tokio, iters, move || stub.increment(1))
        })
    });
    group.bench_function("tokio_oneshot", |b| {
        b.iter_custom(|iters| {
            let tx = tx.clone();
            in_task(&tokio, iters, move || ask(&tx, 1))
        })
    });
    group.finish();

    let mut group = c.benchmark_group("local_pipelined");
    group.measurement_time(Duration::from_secs(4)).warm_up_time(Duration::from_secs(1)).sample_size(20);
    group.bench_function("stead", |b| {
        b.iter_custom(|iters| {
            let stub = stub.clone();
            in_task(&tokio, iters, move || {
                let calls: Vec<_> = (0..1_000).map(|_| stub.increment(1)).collect();
                async move {
                    for call in calls {
                        call.await.unwrap();
                    }
                }
            })
        })
    });
    group.bench_function("tokio_oneshot", |b| {
        b.iter_custom(|iters| {
            let tx = tx.clone();
            in_task(&tokio, iters, move || {
                let tx = tx.clone();
                async move {
                    let mut answers = Vec::with_capacity(1_000);
                    for _ in 0..1_000 {
                        let (reply, answer) = oneshot::channel();
                        tx.send((1, reply)).await.unwrap();
                        answers.push(answer);
                    }
                    for answer in answers {
                        answer.await.unwrap();
                    }
                }
            })
        })
    });
    group.finish();
}

criterion_group!(benches, local);
criterion_main!(benches);
