//! What the layers below the user's entry points need from the process:
//! the settings, the lifecycle (running, draining for shutdown, closed), the
//! tokio runtime that runs turns, the storage root and the watchdog.
//!
//! A [`Host`] is passed down instead of the `Runtime`, so that the objects
//! (`local/`), the network (`cluster/`) and storage never reach up into the
//! user-facing types. Cloning is cheap.

use std::future::Future;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::time::Duration;

use crate::error::{Error, Result};
use crate::id::ObjectId;
use crate::limits::Limits;
use crate::local::watchdog::Watchdog;
use crate::observe::Observe;
use crate::storage::StorageRoot;

/// The settings the lower layers read.
#[derive(Debug, Clone)]
pub(crate) struct Config {
    /// How long an object may stay idle before it is evicted.
    pub(crate) idle_timeout: Duration,
    /// How many calls may wait in one object's mailbox.
    pub(crate) mailbox_capacity: usize,
    /// The delay before the first retry of a failed alarm.
    pub(crate) alarm_retry_delay: Duration,
    /// How long a caller waits for a reply (and for a stream to open).
    pub(crate) call_timeout: Duration,
    /// How long `shutdown` may take.
    pub(crate) shutdown_timeout: Duration,
    /// The memory bounds.
    pub(crate) limits: Limits,
    /// A pause in the middle of opening a stub's stream (tests only: see
    /// `RuntimeBuilder::stream_open_pause_for_tests`).
    pub(crate) stream_open_pause: Option<Duration>,
}

tokio::task_local! {
    /// Set while a turn runs, so that calls made by objects are still
    /// accepted while the runtime drains for shutdown.
    pub(crate) static IN_TURN: ();
}

/// Whether the current task is running a turn.
pub(crate) fn in_turn() -> bool {
    IN_TURN.try_with(|_| ()).is_ok()
}

/// The process as the lower layers see it.
#[derive(Clone)]
pub(crate) struct Host {
    inner: Arc<HostInner>,
}

struct HostInner {
    config: Config,
    names: Names,
    lifecycle: Lifecycle,
    handle: tokio::runtime::Handle,
    storage: Arc<StorageRoot>,
    watchdog: Arc<Watchdog>,
    observe: Observe,
    /// Whether this process may act for its objects on its own (fire their
    /// alarms): in a PostgreSQL cluster, only while its lease holds. Set by
    /// the cluster layer; unset, it always may.
    fence: std::sync::OnceLock<Fence>,
}

/// Says whether the process may act for its objects now, or why not.
pub(crate) type Fence = Box<dyn Fn() -> crate::error::Result<()> + Send + Sync>;

impl Host {
    pub(crate) fn new(
        config: Config,
        handle: tokio::runtime::Handle,
        storage: StorageRoot,
        observe: Observe,
    ) -> Self {
        let inner = HostInner {
            config,
            names: Names::default(),
            lifecycle: Lifecycle::default(),
            handle,
            storage: Arc::new(storage),
            watchdog: Arc::default(),
            observe,
            fence: std::sync::OnceLock::new(),
        };
        Host { inner: Arc::new(inner) }
    }

    /// Sets what [`check_fence`](Self::check_fence) asks (once).
    pub(crate) fn set_fence(&self, fence: Fence) {
        let _ = self.inner.fence.set(fence);
    }

    /// Whether this process may act for its objects on its own now (fire
    /// their alarms); in a PostgreSQL cluster, not once it fenced itself.
    pub(crate) fn check_fence(&self) -> crate::error::Result<()> {
        self.inner.fence.get().map_or(Ok(()), |fence| fence())
    }

    pub(crate) fn config(&self) -> &Config {
        &self.inner.config
    }

    /// The names of recently named objects.
    pub(crate) fn names(&self) -> &Names {
        &self.inner.names
    }

    pub(crate) fn storage(&self) -> &Arc<StorageRoot> {
        &self.inner.storage
    }

    pub(crate) fn watchdog(&self) -> &Arc<Watchdog> {
        &self.inner.watchdog
    }

    pub(crate) fn lifecycle(&self) -> &Lifecycle {
        &self.inner.lifecycle
    }

    /// What the runtime records: spans' node name, metrics.
    pub(crate) fn observe(&self) -> &Observe {
        &self.inner.observe
    }

    /// Makes this runtime's tokio runtime the current one until the guard
    /// is dropped (for turns run in a caller's task).
    pub(crate) fn enter(&self) -> tokio::runtime::EnterGuard<'_> {
        self.inner.handle.enter()
    }

    pub(crate) fn spawn<F>(&self, future: F)
    where
        F: Future<Output = ()> + Send + 'static,
    {
        self.inner.handle.spawn(future);
    }

    /// Runs `f` on one of the runtime's blocking threads (user `Drop`s may
    /// be slow) and waits for it.
    pub(crate) async fn run_blocking(&self, f: impl FnOnce() + Send + 'static) {
        let _ = self.inner.handle.spawn_blocking(f).await;
    }

    /// Fails when the runtime no longer takes this call: it is closed, or
    /// draining for shutdown and the call does not come from a turn.
    pub(crate) fn check_accepting(&self) -> Result<()> {
        let lifecycle = &self.inner.lifecycle;
        if lifecycle.is_closed() {
            return Err(Error::Unavailable("the runtime has been shut down".into()));
        }
        if lifecycle.is_closing() && !in_turn() {
            return Err(Error::Unavailable("the runtime is shutting down and takes no new calls".into()));
        }
        Ok(())
    }
}

/// Whether the runtime takes calls, what is still in progress (turns,
/// deliveries, replies to other processes), and the coarse clock by which
/// idleness is measured.
pub(crate) struct Lifecycle {
    closing: AtomicBool,
    closed: AtomicBool,
    /// Told once `closed` is set (for served streams to finish).
    closed_signal: tokio::sync::watch::Sender<bool>,
    busy: AtomicUsize,
    /// Messages being delivered to a mailbox right now.
    sending: AtomicUsize,
    /// Calls from other processes whose reply is not written yet.
    replying: AtomicUsize,
    /// Streams of other processes being served.
    serving: AtomicUsize,
    /// Eviction sweeps so far.
    sweeps: AtomicU64,
}

impl Default for Lifecycle {
    fn default() -> Self {
        Lifecycle {
            closing: AtomicBool::new(false),
            closed: AtomicBool::new(false),
            closed_signal: tokio::sync::watch::Sender::new(false),
            busy: AtomicUsize::new(0),
            sending: AtomicUsize::new(0),
            replying: AtomicUsize::new(0),
            serving: AtomicUsize::new(0),
            sweeps: AtomicU64::new(0),
        }
    }
}

/// Counts one thing in progress while it lives (see [`Lifecycle::sending`]
/// and [`Lifecycle::replying`]).
pub(crate) struct InProgress<'a>(&'a AtomicUsize);

impl Drop for InProgress<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::SeqCst);
    }
}

/// Like [`InProgress`], owning its host, for a task to keep.
pub(crate) struct Tracked {
    host: Host,
    counter: fn(&Lifecycle) -> &AtomicUsize,
}

impl Tracked {
    fn new(host: &Host, counter: fn(&Lifecycle) -> &AtomicUsize) -> Self {
        counter(&host.inner.lifecycle).fetch_add(1, Ordering::SeqCst);
        Tracked { host: host.clone(), counter }
    }
}

impl Drop for Tracked {
    fn drop(&mut self) {
        (self.counter)(&self.host.inner.lifecycle).fetch_sub(1, Ordering::SeqCst);
    }
}

impl Host {
    /// Counts a call from another process until its reply is written.
    pub(crate) fn replying(&self) -> Tracked {
        Tracked::new(self, |lifecycle| &lifecycle.replying)
    }

    /// Counts a stream served to another process until it has ended.
    pub(crate) fn serving(&self) -> Tracked {
        Tracked::new(self, |lifecycle| &lifecycle.serving)
    }
}

impl Lifecycle {
    /// Shutdown has begun: new calls from outside are refused.
    pub(crate) fn begin_closing(&self) {
        self.closing.store(true, Ordering::SeqCst);
    }

    /// Shutdown has run the queued turns: nothing is delivered to a mailbox
    /// any more, and served streams are told to finish.
    pub(crate) fn close(&self) {
        self.closed.store(true, Ordering::SeqCst);
        self.closed_signal.send_replace(true);
    }

    /// Resolves once [`close`](Self::close) has been called.
    pub(crate) fn closed(&self) -> impl std::future::Future<Output = ()> + Send + 'static {
        let mut signal = self.closed_signal.subscribe();
        async move {
            let _ = signal.wait_for(|closed| *closed).await;
        }
    }

    /// Counts a delivery to a mailbox while the guard lives, so that
    /// shutdown can wait for deliveries that began before it closed.
    pub(crate) fn sending(&self) -> InProgress<'_> {
        self.sending.fetch_add(1, Ordering::SeqCst);
        InProgress(&self.sending)
    }

    /// Whether streams of other processes are still being served.
    pub(crate) fn is_serving(&self) -> bool {
        self.serving.load(Ordering::SeqCst) > 0
    }

    /// Whether turns, deliveries or replies to other processes are still
    /// in progress.
    pub(crate) fn is_settling(&self) -> bool {
        self.is_busy() || self.sending.load(Ordering::SeqCst) > 0 || self.replying.load(Ordering::SeqCst) > 0
    }

    pub(crate) fn is_closing(&self) -> bool {
        self.closing.load(Ordering::Acquire)
    }

    pub(crate) fn is_closed(&self) -> bool {
        self.closed.load(Ordering::Acquire)
    }

    /// Some party took the right to run an activation's turns.
    pub(crate) fn turns_started(&self) {
        self.busy.fetch_add(1, Ordering::SeqCst);
    }

    /// A party gave the right to run an activation's turns back.
    pub(crate) fn turns_ended(&self) {
        self.busy.fetch_sub(1, Ordering::SeqCst);
    }

    /// Whether some party holds the right to run an activation's turns.
    pub(crate) fn is_busy(&self) -> bool {
        self.busy.load(Ordering::SeqCst) > 0
    }

    /// How many eviction sweeps have run: activations record it when they
    /// go idle (a clock that costs no system call per turn).
    pub(crate) fn sweep(&self) -> u64 {
        self.sweeps.load(Ordering::Relaxed)
    }

    /// Counts one more eviction sweep and returns its number.
    pub(crate) fn next_sweep(&self) -> u64 {
        self.sweeps.fetch_add(1, Ordering::Relaxed) + 1
    }
}

/// The names of objects whose ids this process made with `id_from_name`
/// (or was told of, checked, by a caller): the first activation of such an
/// object stores its name, so that it can be listed by name. At most
/// [`Names::CAPACITY`] are kept, the oldest forgotten first.
#[derive(Default)]
pub(crate) struct Names {
    inner: std::sync::Mutex<NamesInner>,
}

#[derive(Default)]
struct NamesInner {
    names: std::collections::HashMap<ObjectId, String>,
    order: std::collections::VecDeque<ObjectId>,
}

impl Names {
    /// How many names are kept.
    pub(crate) const CAPACITY: usize = 65_536;

    /// Remembers that object `id` is named `name`.
    pub(crate) fn remember(&self, id: ObjectId, name: &str) {
        let mut inner = crate::sync::lock(&self.inner);
        if inner.names.contains_key(&id) {
            return;
        }
        inner.names.insert(id, name.to_string());
        inner.order.push_back(id);
        while inner.order.len() > Names::CAPACITY {
            let Some(oldest) = inner.order.pop_front() else { break };
            inner.names.remove(&oldest);
        }
    }

    /// The name of object `id`, if known.
    pub(crate) fn get(&self, id: &ObjectId) -> Option<String> {
        crate::sync::lock(&self.inner).names.get(id).cloned()
    }
}
