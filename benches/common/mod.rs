//! What the benchmark files share.

#![allow(dead_code)] // each benchmark file uses its own part

use std::future::Future;
use std::time::{Duration, Instant};

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
