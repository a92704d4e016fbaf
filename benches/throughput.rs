//! Durable throughput: 64 concurrent callers, each turn writing a changed
//! 100-byte value to one of N objects (N = 1, 100, 1,000), reported by
//! criterion as time per turn (its inverse is turns per second), with the
//! callers' p50 and p99 latency printed after each run.
//!
//! Beside stead (`stead_full`: the default `Durability::Full`, a reply
//! means fsynced; `stead_normal`), in the same group and run:
//! - `rusqlite_threads`: the same writes from 16 threads straight into one
//!   SQLite database per object (WAL, `synchronous = FULL`), no runtime;
//! - `postgres_on` / `postgres_off`: single-row upserts from 64 tokio-postgres
//!   connections into a throw-away local PostgreSQL server started by this
//!   benchmark, `synchronous_commit` on / off (skipped, with a message, when
//!   no PostgreSQL binaries are found).
//!
//! `cargo bench --bench throughput` (one object count: append `-- /100`).

#![allow(missing_docs)] // benchmark objects are measured, not documented

use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

mod common;

use common::{Register, value};

use criterion::{BenchmarkId, Criterion, criterion_group, criterion_main};
use stead::rusqlite::{Connection, params};
use stead::{Durability, DurableObject, Runtime};

/// Concurrent callers.
const CALLERS: usize = 64;
/// Threads of the `rusqlite_threads` baseline.
const THREADS: usize = 16;

/// Every caller's latency of one benchmark, for p50 and p99.
#[derive(Default, Clone)]
struct Latencies(Arc<Mutex<Vec<Duration>>>);

impl Latencies {
    fn add(&self, mut samples: Vec<Duration>) {
        self.0.lock().unwrap().append(&mut samples);
    }

    /// Prints p50 and p99, and forgets the samples.
    fn report(&self, name: &str) {
        let mut samples = std::mem::take(&mut *self.0.lock().unwrap());
        if samples.is_empty() {
            return;
        }
        samples.sort_unstable();
        let at = |q: f64| samples[((samples.len() - 1) as f64 * q) as usize];
        eprintln!(
            "{name}: latency p50 {:?}, p99 {:?}, max {:?} ({} calls)",
            at(0.50),
            at(0.99),
            samples[samples.len() - 1],
            samples.len()
        );
    }
}

/// Runs `iters` operations from `callers` tasks at once, each taking the
/// next sequence number; returns the elapsed time.
fn concurrently<F, Fut>(
    tokio: &tokio::runtime::Runtime,
    iters: u64,
    callers: usize,
    latencies: &Latencies,
    op: F,
) -> Duration
where
    F: Fn(usize, u64) -> Fut + Send + Sync + Clone + 'static,
    Fut: std::future::Future<Output = ()> + Send,
{
    let next = Arc::new(AtomicU64::new(0));
    let latencies = latencies.clone();
    tokio.block_on(async move {
        let start = Instant::now();
        let tasks: Vec<_> = (0..callers)
            .map(|caller| {
                let (next, op, latencies) = (next.clone(), op.clone(), latencies.clone());
                tokio::spawn(async move {
                    let mut samples = Vec::new();
                    loop {
                        let seq = next.fetch_add(1, Ordering::Relaxed);
                        if seq >= iters {
                            break;
                        }
                        let began = Instant::now();
                        op(caller, seq).await;
                        samples.push(began.elapsed());
                    }
                    latencies.add(samples);
                })
            })
            .collect();
        for task in tasks {
            task.await.unwrap();
        }
        start.elapsed()
    })
}

/// Which object a write goes to: spread over all, no two callers in step.
fn object_of(caller: usize, seq: u64, objects: usize) -> usize {
    (seq as usize).wrapping_mul(7919).wrapping_add(caller) % objects
}

fn stead(c: &mut Criterion, tokio: &tokio::runtime::Runtime, objects: usize, durability: Durability) {
    let name = match durability {
        Durability::Full => "stead_full",
        _ => "stead_normal",
    };
    let dir = tempfile::tempdir().unwrap();
    let rt = tokio.block_on(async {
        Runtime::builder()
            .data_dir(dir.path())
            .durability(durability)
            .host::<Register>()
            .build()
            .await
            .unwrap()
    });
    let ns = rt.namespace::<Register>();
    let stubs: Arc<Vec<<Register as DurableObject>::Stub>> =
        Arc::new((0..objects).map(|i| ns.stub(&ns.id_from_name(&format!("r{i}")))).collect());
    // Every object exists, its database open, before the clock starts.
    tokio.block_on(async {
        for (i, stub) in stubs.iter().enumerate() {
            stub.put(value(i as u64)).await.unwrap().unwrap();
        }
    });
    let latencies = Latencies::default();
    let mut group = c.benchmark_group("durable_throughput");
    group.bench_function(BenchmarkId::new(name, objects), |b| {
        b.iter_custom(|iters| {
            let stubs = stubs.clone();
            concurrently(tokio, iters, CALLERS, &latencies, move |caller, seq| {
                let stub = stubs[object_of(caller, seq, objects)].clone();
                async move { stub.put(value(seq)).await.unwrap().unwrap() }
            })
        })
    });
    group.finish();
    latencies.report(&format!("{name}/{objects}"));
    tokio.block_on(rt.shutdown()).unwrap();
}

fn open_sqlite(path: &Path) -> Connection {
    let conn = Connection::open(path).unwrap();
    conn.execute_batch(
        "PRAGMA locking_mode = EXCLUSIVE; PRAGMA synchronous = FULL; PRAGMA journal_mode = WAL;
         CREATE TABLE IF NOT EXISTS kv (key TEXT PRIMARY KEY NOT NULL, value BLOB NOT NULL) WITHOUT ROWID;",
    )
    .unwrap();
    conn
}

fn rusqlite_threads(c: &mut Criterion, objects: usize) {
    let dir = tempfile::tempdir().unwrap();
    let dbs: Arc<Vec<Mutex<Connection>>> = Arc::new(
        (0..objects).map(|i| Mutex::new(open_sqlite(&dir.path().join(format!("{i}.sqlite"))))).collect(),
    );
    let write = |conn: &Connection, seq: u64| {
        conn.prepare_cached("INSERT OR REPLACE INTO kv (key, value) VALUES ('v', ?1)")
            .unwrap()
            .execute(params![value(seq)])
            .unwrap();
    };
    for (i, db) in dbs.iter().enumerate() {
        write(&db.lock().unwrap(), i as u64);
    }
    let latencies = Latencies::default();
    let mut group = c.benchmark_group("durable_throughput");
    group.bench_function(BenchmarkId::new("rusqlite_threads", objects), |b| {
        b.iter_custom(|iters| {
            let next = Arc::new(AtomicU64::new(0));
            let start = Instant::now();
            std::thread::scope(|scope| {
                for caller in 0..THREADS {
                    let (next, dbs, latencies) = (next.clone(), dbs.clone(), latencies.clone());
                    scope.spawn(move || {
                        let mut samples = Vec::new();
                        loop {
                            let seq = next.fetch_add(1, Ordering::Relaxed);
                            if seq >= iters {
                                break;
                            }
                            let began = Instant::now();
                            write(&dbs[object_of(caller, seq, objects)].lock().unwrap(), seq);
                            samples.push(began.elapsed());
                        }
                        latencies.add(samples);
                    });
                }
            });
            start.elapsed()
        })
    });
    group.finish();
    latencies.report(&format!("rusqlite_threads/{objects}"));
}

/// Single-row upserts from one tokio-postgres connection per caller, with
/// `synchronous_commit` on (a commit waits for its WAL flush) or off.
fn postgres(
    c: &mut Criterion,
    tokio: &tokio::runtime::Runtime,
    conninfo: &str,
    objects: usize,
    synchronous_commit: bool,
) {
    let name = if synchronous_commit { "postgres_on" } else { "postgres_off" };
    let setting = if synchronous_commit { "on" } else { "off" };
    let table = format!("registers_{objects}");
    let clients = tokio.block_on(async {
        let mut clients = Vec::new();
        for _ in 0..CALLERS {
            let (client, connection) =
                tokio_postgres::connect(conninfo, tokio_postgres::NoTls).await.unwrap();
            tokio::spawn(connection);
            client.batch_execute(&format!("SET synchronous_commit = {setting}")).await.unwrap();
            clients.push(client);
        }
        clients[0]
            .batch_execute(&format!(
                "CREATE TABLE IF NOT EXISTS {table} (id integer PRIMARY KEY, value bytea NOT NULL)"
            ))
            .await
            .unwrap();
        let mut prepared = Vec::new();
        for client in clients {
            let upsert = client
                .prepare(&format!(
                    "INSERT INTO {table} (id, value) VALUES ($1, $2) \
                     ON CONFLICT (id) DO UPDATE SET value = excluded.value"
                ))
                .await
                .unwrap();
            prepared.push((client, upsert));
        }
        for i in 0..objects {
            let (client, upsert) = &prepared[0];
            client.execute(upsert, &[&(i as i32), &value(i as u64)]).await.unwrap();
        }
        Arc::new(prepared)
    });
    let latencies = Latencies::default();
    let mut group = c.benchmark_group("durable_throughput");
    group.bench_function(BenchmarkId::new(name, objects), |b| {
        b.iter_custom(|iters| {
            let clients = clients.clone();
            concurrently(tokio, iters, CALLERS, &latencies, move |caller, seq| {
                let clients = clients.clone();
                async move {
                    let (client, upsert) = &clients[caller];
                    let id = object_of(caller, seq, objects) as i32;
                    client.execute(upsert, &[&id, &value(seq)]).await.unwrap();
                }
            })
        })
    });
    group.finish();
    latencies.report(&format!("{name}/{objects}"));
}

fn durable_throughput(c: &mut Criterion) {
    let tokio = tokio::runtime::Builder::new_multi_thread().enable_all().build().unwrap();
    let pg = match stead_pgtemp::TempPostgres::start_durable() {
        Ok(pg) => Some(pg),
        Err(err) => {
            eprintln!("no PostgreSQL baselines: {err}");
            None
        }
    };
    for objects in [1, 100, 1000] {
        stead(c, &tokio, objects, Durability::Full);
        stead(c, &tokio, objects, Durability::Normal);
        rusqlite_threads(c, objects);
        if let Some(pg) = &pg {
            postgres(c, &tokio, &pg.conninfo(), objects, true);
            postgres(c, &tokio, &pg.conninfo(), objects, false);
        }
    }
}

criterion_group! {
    name = benches;
    config = Criterion::default()
        .sample_size(10)
        .warm_up_time(Duration::from_secs(1))
        .measurement_time(Duration::from_secs(5));
    targets = durable_throughput
}
criterion_main!(benches);
