//! Eviction: objects idle for `idle_timeout` leave memory.
//!
//! An object leaves memory between `idle_timeout` and `idle_timeout` plus one
//! sweep period after its last turn (a quarter of the timeout, at least
//! 5 ms, at most 15 s); its storage stays, and the next call constructs it
//! again. Activations record the sweep count when they go idle, so a turn
//! reads no clock.
//!
//! A sweep drops instances (the user's `Drop`, which may be slow, or panic:
//! the panic is caught and logged) and closes databases (a checkpoint, run
//! on a sync thread when the runtime has them, which the sweep waits for):
//! it runs on tokio's blocking threads, so that neither holds up the turns
//! of other objects. A call that reaches an object while it closes waits
//! for the close (see `HostedType::evict_idle`).

use std::sync::Weak;
use std::time::Duration;

use super::objects::Objects;

/// Sweeps for idle objects until the runtime is gone or shut down.
pub(crate) async fn evict_idle_objects(objects: Weak<Objects>) {
    let Some(idle_timeout) = objects.upgrade().map(|live| live.host().config().idle_timeout) else {
        return;
    };
    let tick = (idle_timeout / 4).clamp(Duration::from_millis(5), Duration::from_secs(15));
    // One idle since before sweep `now - ticks` has been idle for at least
    // `ticks` periods.
    let ticks = idle_timeout.as_nanos().div_ceil(tick.as_nanos());
    let ticks = u64::try_from(ticks).unwrap_or(u64::MAX);
    loop {
        tokio::time::sleep(tick).await;
        let Some(live) = objects.upgrade() else {
            return;
        };
        let lifecycle = live.host().lifecycle();
        if lifecycle.is_closed() {
            return;
        }
        let idle_before = lifecycle.next_sweep().saturating_sub(ticks);
        // A sweep that fails to finish (its thread panicked) is followed by
        // the next one all the same.
        let _ = tokio::task::spawn_blocking(move || live.evict_idle(idle_before)).await;
    }
}
