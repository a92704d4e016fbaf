//! Storage: a turn that writes one 100-byte value, next to the same write
//! done with rusqlite directly (same file layout, same pragmas); and the first
//! call to an object whose database exists, next to opening that database
//! and reading the key with rusqlite.
//!
//! Every write stores a value that differs from the one before (a counter in
//! its first bytes): SQLite commits a rewrite of an unchanged row without
//! writing or syncing its WAL, which would measure no durable work at all.
//!
//! `cargo bench --bench storage`

#![allow(missing_docs)] // benchmark objects are measured, not documented

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

mod common;

use common::in_task;
use criterion::{Criterion, criterion_group, criterion_main};
use stead::rusqlite::{Connection, params};
use stead::{Context, Durability, ObjectId, Runtime, durable_object};

pub struct Writer {
    ctx: Context,
}

#[durable_object]
impl Writer {
    pub async fn new(ctx: Context) -> Self {
        Writer { ctx }
    }

    pub fn write(&mut self, value: Vec<u8>) -> stead::Result<()> {
        self.ctx.storage().put("k", &value)
    }

    pub fn read(&self) -> stead::Result<Option<Vec<u8>>> {
        self.ctx.storage().get("k")
    }
}

fn open_raw(path: &Path, synchronous: &str) -> Connection {
    let conn = Connection::open(path).unwrap();
    conn.execute_batch(&format!(
        "PRAGMA locking_mode = EXCLUSIVE; PRAGMA journal_mode = WAL; PRAGMA synchronous = {synchronous};"
    ))
    .unwrap();
    conn.execute_batch(
        "CREATE TABLE IF NOT EXISTS _stead_kv (key TEXT PRIMARY KEY NOT NULL, value BLOB NOT NULL) WITHOUT ROWID",
    )
    .unwrap();
    conn
}

fn object_path(root: &Path, id: &ObjectId) -> PathBuf {
    let hex = id.to_string();
    root.join("objects").join("Writer").join(&hex[..2]).join(format!("{hex}.sqlite"))
}

/// The `n`th value written: 100 bytes, different from the one before.
fn changed_value(n: u64) -> Vec<u8> {
    let mut value = vec![7u8; 100];
    value[..8].copy_from_slice(&n.to_le_bytes());
    value
}

fn durable_write(c: &mut Criterion) {
    let tokio = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap();
    let value = changed_value(0);
    let mut group = c.benchmark_group("durable_write");
    group.measurement_time(Duration::from_secs(4)).warm_up_time(Duration::from_secs(1)).sample_size(30);
    for (durability, synchronous, name) in
        [(Durability::Full, "FULL", "full"), (Durability::Normal, "NORMAL", "normal")]
    {
        let dir = tempfile::tempdir().unwrap();
        let stub = tokio.block_on(async {
            let rt = Runtime::builder()
                .data_dir(dir.path())
                .durability(durability)
                .host::<Writer>()
                .build()
                .await
                .unwrap();
            let ns = rt.namespace::<Writer>();
            let stub = ns.stub(&ns.id_from_name("bench"));
            stub.write(value.clone()).await.unwrap().unwrap();
            stub
        });
        let mut written = 0u64;
        group.bench_function(format!("stead_{name}"), |b| {
            b.iter_custom(|iters| {
                let stub = stub.clone();
                let first = written;
                written += iters;
                let mut n = first;
                in_task(&tokio, iters, move || {
                    n += 1;
                    stub.write(changed_value(n))
                })
            })
        });

        let raw_dir = tempfile::tempdir().unwrap();
        let conn = open_raw(&raw_dir.path().join("raw.sqlite"), synchronous);
        let mut n = 0u64;
        group.bench_function(format!("rusqlite_{name}"), |b| {
            b.iter(|| {
                n += 1;
                let value = changed_value(n);
                conn.execute_batch("BEGIN").unwrap();
                conn.prepare_cached("INSERT OR REPLACE INTO _stead_kv (key, value) VALUES (?1, ?2)")
                    .unwrap()
                    .execute(params!["k", value])
                    .unwrap();
                conn.execute_batch("COMMIT").unwrap();
            })
        });
    }
    group.finish();
}

/// Objects whose databases exist, each holding one key.
const COLD_OBJECTS: usize = 2_000;

fn cold_activation(c: &mut Criterion) {
    let tokio = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap();
    let dir = tempfile::tempdir().unwrap();
    let build =
        || Runtime::builder().data_dir(dir.path()).durability(Durability::Normal).host::<Writer>().build();
    let ids: Vec<ObjectId> = tokio.block_on(async {
        let rt = build().await.unwrap();
        let ns = rt.namespace::<Writer>();
        let ids: Vec<_> = (0..COLD_OBJECTS).map(|_| ns.unique_id()).collect();
        for id in &ids {
            ns.stub(id).write(vec![1u8; 100]).await.unwrap().unwrap();
        }
        rt.shutdown().await.unwrap();
        ids
    });

    let mut group = c.benchmark_group("cold_activation");
    group.measurement_time(Duration::from_secs(4)).warm_up_time(Duration::from_secs(1)).sample_size(20);
    group.bench_function("stead", |b| {
        b.to_async(&tokio).iter_custom(|iters| {
            let ids = &ids;
            async move {
                let mut measured = Duration::ZERO;
                let mut done = 0u64;
                while done < iters {
                    // A fresh runtime: every object in this chunk is cold.
                    let rt = build().await.unwrap();
                    let ns = rt.namespace::<Writer>();
                    let chunk = (iters - done).min(COLD_OBJECTS as u64) as usize;
                    let start = Instant::now();
                    for id in &ids[..chunk] {
                        ns.stub(id).read().await.unwrap().unwrap();
                    }
                    measured += start.elapsed();
                    rt.shutdown().await.unwrap();
                    done += chunk as u64;
                }
                measured
            }
        })
    });
    group.bench_function("rusqlite_open", |b| {
        let mut next = 0;
        b.iter(|| {
            let conn = open_raw(&object_path(dir.path(), &ids[next % COLD_OBJECTS]), "NORMAL");
            next += 1;
            let value: Vec<u8> = conn
                .query_row("SELECT value FROM _stead_kv WHERE key = ?1", ["k"], |row| row.get(0))
                .unwrap();
            value
        })
    });
    group.finish();
}

criterion_group!(benches, durable_write, cold_activation);
criterion_main!(benches);
