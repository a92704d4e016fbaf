//! What the benchmark files share.

#![allow(dead_code)] // each benchmark file uses its own part
// Remote methods are `pub` by definition, even in a private module.
#![allow(unreachable_pub)]

use std::future::Future;
use std::time::{Duration, Instant};

use stead::{Context, durable_object};

/// The object the call benchmarks call: a counter in memory.
pub struct Counter {
    value: u64,
}

#[durable_object]
impl Counter {
    pub async fn new(_ctx: Context) -> Self {
        Counter { value: 0 }
    }

    pub fn increment(&mut self, by: u64) -> u64 {
        self.value += by;
        self.value
    }
}

/// The object the durable benchmarks write to: one value in storage.
pub struct Register {
    ctx: Context,
}

#[durable_object]
impl Register {
    pub async fn new(ctx: Context) -> Self {
        Register { ctx }
    }

    pub fn put(&mut self, value: Vec<u8>) -> stead::Result<()> {
        self.ctx.storage().put("v", &value)
    }
}

/// A 100-byte value that differs from the last (SQLite skips rewriting an
/// unchanged row, which would measure no durable work).
pub fn value(seq: u64) -> Vec<u8> {
    let mut value = vec![7u8; 100];
    value[..8].copy_from_slice(&seq.to_le_bytes());
    value
}

/// Measures `iters` runs of `op`, awaited one after another inside one
/// task of `tokio`: each call is made from a runtime worker, as the callers
/// of a stead object are, rather than from the benchmark thread through one
/// `block_on` per iteration (which would add a cross-thread hand-off to
/// every iteration of every async function, and none to a synchronous
/// baseline).
pub(crate) fn in_task<F, Fut>(tokio: &tokio::runtime::Runtime, iters: u64, mut op: F) -> Duration
where
    F: FnMut() -> Fut + Send + 'static,
    Fut: Future + Send,
{
    tokio.block_on(async move {
        tokio::spawn(async move {
            let start = Instant::now();
            for _ in 0..iters {
                op().await;
            }
            start.elapsed()
        })
        .await
        .unwrap()
    })
}
