//! Remote calls over loopback: stead (QUIC with mutual TLS, a client-only
//! runtime calling an object on a node) next to a raw quinn request/response
//! over the same TLS endpoint (one bi-stream per request, same payload) and
//! next to tarpc over TCP with bincode.
//!
//! `cargo bench --bench remote`

#![allow(missing_docs)] // benchmark objects are measured, not documented

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

mod common;

use common::{Counter, in_task};
use criterion::{Criterion, criterion_group, criterion_main};
use futures::{StreamExt, future};
use stead::Runtime;
use stead_transport::Endpoint;
use stead_transport::frame::{MAX_FRAME_LEN, read_frame, write_frame};
use tarpc::server::{BaseChannel, Channel};
use tarpc::tokio_serde::formats::Bincode;

#[tarpc::service]
trait CounterService {
    async fn increment(by: u64) -> u64;
}

#[derive(Clone)]
struct TarpcCounter(Arc<AtomicU64>);

impl CounterService for TarpcCounter {
    async fn increment(self, _: tarpc::context::Context, by: u64) -> u64 {
        self.0.fetch_add(by, Ordering::SeqCst) + by
    }
}

/// Runs `calls` calls made by `call`, with up to `window` in flight (all of
/// them polled, so lazy clients send as soon as there is room).
async fn windowed<F: Future>(calls: usize, window: usize, call: impl FnMut(usize) -> F) {
    futures::stream::iter(0..calls).map(call).buffered(window).for_each(|_| future::ready(())).await;
}

/// The raw baseline's server: answers each stream's one frame with 8 bytes.
async fn serve_raw(endpoint: Endpoint) {
    while let Some(incoming) = endpoint.accept().await {
        let endpoint = endpoint.clone();
        tokio::spawn(async move {
            let Ok(conn) = endpoint.establish(incoming).await else { return };
            while let Ok((mut send, mut recv)) = conn.accept_bi().await {
                tokio::spawn(async move {
                    if let Ok(Some(request)) = read_frame(&mut recv, MAX_FRAME_LEN).await {
                        let by = u64::from_le_bytes(request[..8].try_into().unwrap_or_default());
                        let _ = write_frame(&mut send, &(by + 1).to_le_bytes()).await;
                        let _ = send.finish();
                    }
                });
            }
        });
    }
}

async fn raw_call(conn: &stead_transport::Connection, payload: &[u8]) -> u64 {
    let (mut send, mut recv) = conn.open_bi().await.unwrap();
    write_frame(&mut send, payload).await.unwrap();
    send.finish().unwrap();
    let reply = read_frame(&mut recv, MAX_FRAME_LEN).await.unwrap().unwrap();
    u64::from_le_bytes(reply[..8].try_into().unwrap())
}

fn free_addr() -> SocketAddr {
    std::net::UdpSocket::bind("127.0.0.1:0").unwrap().local_addr().unwrap()
}

fn remote(c: &mut Criterion) {
    let tokio = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap();
    let dir = tempfile::tempdir().unwrap();
    let tls = dir.path().join("tls");
    let node_addr = free_addr();

    let (stub, _node, _client, raw, tarpc_client) = tokio.block_on(async {
        let identity = |name: &str| stead::tls::dev_identity(&tls, name).unwrap();
        let node = Runtime::builder()
            .node("ohio")
            .peer("ohio", node_addr)
            .secret("benchmark cluster secret")
            .tls(identity("ohio"))
            .in_memory()
            .host::<Counter>()
            .build()
            .await
            .unwrap();
        let client = Runtime::builder()
            .client()
            .peer("ohio", node_addr)
            .secret("benchmark cluster secret")
            .tls(identity("client"))
            .in_memory()
            .build()
            .await
            .unwrap();
        let ns = client.namespace::<Counter>();
        let stub = ns.stub(&ns.id_from_name("bench"));
        stub.increment(0).await.unwrap();

        let raw_server = Endpoint::bind(&identity("raw"), Some(free_addr())).unwrap();
        let raw_addr = raw_server.local_addr().unwrap();
        tokio::spawn(serve_raw(raw_server));
        let raw_client = Endpoint::bind(&identity("raw-client"), None).unwrap();
        let raw = raw_client.connect(raw_addr, "raw").await.unwrap();

        let listener = tarpc::serde_transport::tcp::listen("127.0.0.1:0", Bincode::default).await.unwrap();
        let tarpc_addr = listener.local_addr();
        let server = TarpcCounter(Arc::default());
        tokio::spawn(
            listener
                .filter_map(|accepted| future::ready(accepted.ok()))
                .map(BaseChannel::with_defaults)
                .map(move |channel| {
                    channel.execute(server.clone().serve()).for_each(|response| async {
                        tokio::spawn(response);
                    })
                })
                .buffer_unordered(64)
                .for_each(|_| async {}),
        );
        let transport = tarpc::serde_transport::tcp::connect(tarpc_addr, Bincode::default).await.unwrap();
        let tarpc_client = CounterServiceClient::new(tarpc::client::Config::default(), transport).spawn();
        (stub, node, client, (raw_client, raw), tarpc_client)
    });
    let payload = 1u64.to_le_bytes();

    let mut group = c.benchmark_group("remote_call");
    group.measurement_time(Duration::from_secs(4)).warm_up_time(Duration::from_secs(1));
    group.bench_function("stead", |b| {
        b.iter_custom(|iters| {
            let stub = stub.clone();
            in_task(&tokio, iters, move || stub.increment(1))
        })
    });
    group.bench_function("quinn_raw", |b| {
        b.iter_custom(|iters| {
            let conn = raw.1.clone();
            in_task(&tokio, iters, move || {
                let conn = conn.clone();
                async move { raw_call(&conn, &payload).await }
            })
        })
    });
    group.bench_function("tarpc", |b| {
        b.iter_custom(|iters| {
            let client = tarpc_client.clone();
            in_task(&tokio, iters, move || {
                let client = client.clone();
                async move { client.increment(tarpc::context::current(), 1).await.unwrap() }
            })
        })
    });
    group.finish();

    let mut group = c.benchmark_group("remote_pipelined");
    group.measurement_time(Duration::from_secs(5)).warm_up_time(Duration::from_secs(1)).sample_size(20);
    group.bench_function("stead", |b| b.to_async(&tokio).iter(|| windowed(1_000, 64, |_| stub.increment(1))));
    group.bench_function("quinn_raw", |b| {
        b.to_async(&tokio).iter(|| windowed(1_000, 64, |_| raw_call(&raw.1, &payload)))
    });
    group.bench_function("tarpc", |b| {
        b.to_async(&tokio)
            .iter(|| windowed(1_000, 64, |_| tarpc_client.increment(tarpc::context::current(), 1)))
    });
    group.finish();
}

criterion_group!(benches, remote);
criterion_main!(benches);
