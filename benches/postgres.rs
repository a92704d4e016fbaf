//! Placing objects: the first call to a new object on a node, in a static
//! cluster (the node is the coordinator: its directory is in its own
//! SQLite) and in a PostgreSQL cluster (one claim in PostgreSQL), next to a
//! bare tokio-postgres `INSERT` round trip against the same server, which
//! is what a PostgreSQL placement cannot beat.
//!
//! Starts its own throw-away PostgreSQL (`fsync` off, on loopback).
//!
//! `cargo bench --bench postgres`

#![allow(missing_docs)] // benchmark objects are measured, not documented

use std::time::Duration;

mod common;

use common::{Counter, in_task};
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
        (static_node, postgres_node, std::sync::Arc::new(client), insert)
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

criterion_group!(benches, placement);
criterion_main!(benches);
