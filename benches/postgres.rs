//! Placing objects: the first call to a new object on a node, in a static
//! cluster (the node is the coordinator: its directory is in its own
//! SQLite) and in a PostgreSQL cluster (one claim in PostgreSQL), next to a
//! bare tokio-postgres `INSERT` round trip against the same server, which
//! is what a PostgreSQL placement cannot beat.
//!
//! Starts its own throw-away PostgreSQL (`fsync` off, on loopback).
//!
//! Replicated writes (groups `replicated_write` and `replicated_throughput`):
//! a turn that writes a changed 100-byte value on a node whose storage is
//! replicated in PostgreSQL (the reply waits for PostgreSQL's commit of the
//! turn's WAL frames), next to a bare tokio-postgres upsert of such a value
//! against the same server (`fsync` on, `synchronous_commit` on): one
//! caller, then 64 callers over 1,000 objects (64 connections for the
//! baseline).
//!
//! Group `upsert_after_client_work` is no target: the baseline's upsert
//! with 0, 10 and 20 µs of work in the caller before each request (a busy
//! wait), as a turn works between PostgreSQL's answer and its next entry.
//! On a VM whose idle cores halt, that pause changes where the kernel runs
//! PostgreSQL's backend, and the round trip's own time with it (see the
//! README, "Performance").
//!
//! `cargo bench --bench postgres`

#![allow(missing_docs)] // benchmark objects are measured, not documented

use std::sync::Arc;
use std::time::Duration;

mod common;

use common::{Counter, Register, in_task, value};
use criterion::{Criterion, criterion_group, criterion_main};
use stead::Runtime;
use stead_pgtemp::TempPostgres;

fn placement(c: &mut Criterion) {
    let tokio = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap();
    let pg = TempPostgres::start().unwrap();
    let dir = tempfile::tempdir().unwrap();
    let tls = dir.path().join("tls");
    let addr = std::net::UdpSocket::bind("127.0.0.1:0").unwrap().local_addr().unwrap();

    let (static_node, postgres_node, client, insert) = tokio.block_on(async {
        let identity = |name: &str| stead::tls::dev_identity(&tls, name).unwrap();
        let static_node = Runtime::builder()
            .node("ohio")
            .peer("ohio", addr)
            .secret("benchmark cluster secret")
            .tls(identity("ohio"))
            .in_memory()
            .host::<Counter>()
            .build()
            .await
            .unwrap();
        let postgres_node = Runtime::builder()
            .node("seoul")
            .postgres(pg.conninfo())
            .listen("127.0.0.1:0".parse().unwrap())
            .secret("benchmark cluster secret")
            .tls(identity("seoul"))
            .in_memory()
            .host::<Counter>()
            .build()
            .await
            .unwrap();
        let (client, connection) =
            tokio_postgres::connect(&pg.conninfo(), tokio_postgres::NoTls).await.unwrap();
        tokio::spawn(connection);
        client
            .batch_execute(
                "CREATE TABLE baseline (type text NOT NULL, id bytea NOT NULL, owner text NOT NULL, \
                 PRIMARY KEY (type, id))",
            )
            .await
            .unwrap();
        let insert =
            client.prepare("INSERT INTO baseline (type, id, owner) VALUES ($1, $2, $3)").await.unwrap();
        (static_node, postgres_node, Arc::new(client), insert)
    });

    let mut group = c.benchmark_group("placement");
    group.measurement_time(Duration::from_secs(5)).warm_up_time(Duration::from_secs(1));
    for (name, rt) in [("stead_static", &static_node), ("stead_postgres", &postgres_node)] {
        group.bench_function(name, |b| {
            b.iter_custom(|iters| {
                let counters = rt.namespace::<Counter>();
                in_task(&tokio, iters, move || {
                    // A new object each time: its first call places it.
                    counters.stub(&counters.unique_id()).increment(1)
                })
            })
        });
    }
    group.bench_function("postgres_insert", |b| {
        b.iter_custom(|iters| {
            let (client, insert) = (client.clone(), insert.clone());
            in_task(&tokio, iters, move || {
                let (client, insert) = (client.clone(), insert.clone());
                async move {
                    let mut id = [0u8; 32];
                    getrandom::fill(&mut id).unwrap();
                    client.execute(&insert, &[&"Counter", &id.as_slice(), &"seoul"]).await.unwrap();
                }
            })
        })
    });
    group.finish();
    tokio.block_on(async {
        static_node.shutdown().await.unwrap();
        postgres_node.shutdown().await.unwrap();
    });
}

/// Concurrent callers of `replicated_throughput`.
const CALLERS: usize = 64;
/// Objects of `replicated_throughput`.
const OBJECTS: usize = 1000;

/// Runs `iters` operations, `op(caller, seq)`, from `callers` tasks at
/// once; returns the elapsed time.
fn concurrently<F, Fut>(tokio: &tokio::runtime::Runtime, iters: u64, callers: usize, op: F) -> Duration
where
    F: Fn(usize, u64) -> Fut + Send + Sync + Clone + 'static,
    Fut: std::future::Future<Output = ()> + Send,
{
    let next = Arc::new(std::sync::atomic::AtomicU64::new(0));
    tokio.block_on(async move {
        let start = std::time::Instant::now();
        let tasks: Vec<_> = (0..callers)
            .map(|caller| {
                let (next, op) = (next.clone(), op.clone());
                tokio::spawn(async move {
                    loop {
                        let seq = next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                        if seq >= iters {
                            break;
                        }
                        op(caller, seq).await;
                    }
                })
            })
            .collect();
        for task in tasks {
            task.await.unwrap();
        }
        start.elapsed()
    })
}

/// Runs `iters` upserts of a changed value into one row on the first
/// connection, one after the other, each after `work` of busy waiting in
/// the caller (none for the baseline); returns the elapsed time.
fn upserts_one_by_one(
    tokio: &tokio::runtime::Runtime,
    clients: &Arc<Vec<tokio_postgres::Client>>,
    upsert: &Arc<Vec<tokio_postgres::Statement>>,
    iters: u64,
    work: Duration,
) -> Duration {
    let (clients, upsert) = (clients.clone(), upsert.clone());
    let mut seq = 0;
    in_task(tokio, iters, move || {
        seq += 1;
        let (clients, upsert) = (clients.clone(), upsert.clone());
        async move {
            if !work.is_zero() {
                let started = std::time::Instant::now();
                while started.elapsed() < work {
                    std::hint::spin_loop();
                }
            }
            clients[0].execute(&upsert[0], &[&0i32, &value(seq)]).await.unwrap()
        }
    })
}

fn replicated(c: &mut Criterion) {
    let tokio = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap();
    let pg = TempPostgres::start_durable().unwrap();
    let dir = tempfile::tempdir().unwrap();
    let (node, clients, upsert) = tokio.block_on(async {
        let node = Runtime::builder()
            .node("ohio")
            .postgres(pg.conninfo())
            .listen("127.0.0.1:0".parse().unwrap())
            .secret("benchmark cluster secret")
            .tls(stead::tls::dev_identity(&dir.path().join("tls"), "ohio").unwrap())
            .data_dir(dir.path().join("data"))
            .host::<Register>()
            .build()
            .await
            .unwrap();
        let mut clients = Vec::new();
        for _ in 0..CALLERS {
            let (client, connection) =
                tokio_postgres::connect(&pg.conninfo(), tokio_postgres::NoTls).await.unwrap();
            tokio::spawn(connection);
            clients.push(client);
        }
        clients[0]
            .batch_execute("CREATE TABLE registers (id integer PRIMARY KEY, value bytea NOT NULL)")
            .await
            .unwrap();
        let mut upsert = Vec::new();
        for client in &clients {
            upsert.push(
                client
                    .prepare(
                        "INSERT INTO registers (id, value) VALUES ($1, $2) \
                         ON CONFLICT (id) DO UPDATE SET value = excluded.value",
                    )
                    .await
                    .unwrap(),
            );
        }
        (node, Arc::new(clients), Arc::new(upsert))
    });
    let registers = node.namespace::<Register>();
    let ids: Arc<Vec<_>> = Arc::new((0..OBJECTS).map(|_| registers.unique_id()).collect());
    // Every object placed and written once before measuring.
    concurrently(&tokio, OBJECTS as u64, CALLERS, {
        let (registers, ids) = (registers.clone(), ids.clone());
        move |_, seq| {
            let stub = registers.stub(&ids[seq as usize]);
            async move { stub.put(value(seq)).await.unwrap().unwrap() }
        }
    });

    let mut group = c.benchmark_group("replicated_write");
    group.measurement_time(Duration::from_secs(5)).warm_up_time(Duration::from_secs(1));
    group.bench_function("stead_postgres", |b| {
        let stub = registers.stub(&ids[0]);
        b.iter_custom(|iters| {
            let stub = stub.clone();
            let mut seq = 0;
            in_task(&tokio, iters, move || {
                seq += 1;
                let call = stub.put(value(seq));
                async move { call.await.unwrap().unwrap() }
            })
        })
    });
    group.bench_function("postgres_upsert", |b| {
        b.iter_custom(|iters| upserts_one_by_one(&tokio, &clients, &upsert, iters, Duration::ZERO))
    });
    group.finish();

    // Not a target: the baseline's round trip when its caller works
    // between an answer and its next request, as a turn does.
    let mut group = c.benchmark_group("upsert_after_client_work");
    group.sample_size(10).measurement_time(Duration::from_secs(3)).warm_up_time(Duration::from_secs(1));
    for work in [0u64, 10, 20] {
        group.bench_function(format!("postgres_upsert/{work}us"), |b| {
            b.iter_custom(|iters| {
                upserts_one_by_one(&tokio, &clients, &upsert, iters, Duration::from_micros(work))
            })
        });
    }
    group.finish();

    let mut group = c.benchmark_group("replicated_throughput");
    group.sample_size(10).measurement_time(Duration::from_secs(5)).warm_up_time(Duration::from_secs(1));
    group.bench_function("stead_postgres", |b| {
        b.iter_custom(|iters| {
            let (registers, ids) = (registers.clone(), ids.clone());
            concurrently(&tokio, iters, CALLERS, move |caller, seq| {
                let object = (seq as usize).wrapping_mul(7919).wrapping_add(caller) % OBJECTS;
                let call = registers.stub(&ids[object]).put(value(seq));
                async move { call.await.unwrap().unwrap() }
            })
        })
    });
    group.bench_function("postgres_upsert", |b| {
        b.iter_custom(|iters| {
            let (clients, upsert) = (clients.clone(), upsert.clone());
            concurrently(&tokio, iters, CALLERS, move |caller, seq| {
                let (clients, upsert) = (clients.clone(), upsert.clone());
                async move {
                    let object = ((seq as usize).wrapping_mul(7919).wrapping_add(caller) % OBJECTS) as i32;
                    clients[caller].execute(&upsert[caller], &[&object, &value(seq)]).await.unwrap();
                }
            })
        })
    });
    group.finish();
    tokio.block_on(async { node.shutdown().await.unwrap() });
}

criterion_group!(benches, placement, replicated);
criterion_main!(benches);
