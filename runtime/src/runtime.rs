//! The runtime: configuration, the registry of hosted types, and shutdown.

use std::collections::HashMap;
use std::fmt;
use std::future::Future;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Weak};
use std::time::Duration;

use crate::activation::{HostedType, in_turn};
use crate::alarm::{self, AlarmIndex};
use crate::cluster::{Cluster, ClusterConfig};
use crate::drive::Watchdog;
use crate::error::{Error, Result};
use crate::id::IdKeys;
use crate::namespace::Namespace;
use crate::object::DurableObject;
use crate::remote;
use crate::secret;
use crate::storage::{Location, OpenDatabases, StorageRoot};

/// How long an idle object stays in memory unless configured otherwise.
pub const DEFAULT_IDLE_TIMEOUT: Duration = Duration::from_secs(60);

/// How many calls may wait in one object's mailbox unless configured otherwise.
pub const DEFAULT_MAILBOX_CAPACITY: usize = 4096;

/// How many object databases may be open at once unless configured otherwise.
pub const DEFAULT_MAX_OPEN_DATABASES: usize = 1024;

/// The delay before the first retry of a failed alarm unless configured otherwise.
pub const DEFAULT_ALARM_RETRY_DELAY: Duration = Duration::from_secs(2);

/// How far a reply is allowed to run ahead of the disk.
///
/// Every turn's writes are committed before its reply is released (the
/// *output gate*); durability says what "committed" means.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Durability {
    /// A reply means the turn's writes are on disk: the commit is fsynced
    /// first. Survives a process crash and a power loss. The default.
    #[default]
    Full,
    /// A reply means the turn's writes are in the operating system's hands:
    /// they survive a crash of the process, but a power loss or kernel crash
    /// may lose the last turns. Commits are much cheaper (no fsync per turn).
    Normal,
}

/// The settings a runtime was built with.
#[derive(Debug, Clone)]
pub(crate) struct Config {
    pub(crate) idle_timeout: Duration,
    pub(crate) mailbox_capacity: usize,
    pub(crate) alarm_retry_delay: Duration,
}

/// Registers one hosted type once the secret is known.
type MakeHostedType = fn(&[u8; 32]) -> HostedType;

/// Builds a [`Runtime`]; start with [`Runtime::builder`].
///
/// ```no_run
/// # async fn demo() -> stead_runtime::Result<()> {
/// use std::time::Duration;
/// use stead_runtime::{Durability, Runtime};
///
/// let rt = Runtime::builder()
///     .data_dir("./data")
///     .idle_timeout(Duration::from_secs(30))
///     .durability(Durability::Full)
///     // .host::<Counter>()
///     .build()
///     .await?;
/// # Ok(()) }
/// ```
#[must_use = "a builder does nothing until `build` is awaited"]
pub struct RuntimeBuilder {
    data_dir: Option<PathBuf>,
    in_memory: bool,
    secret: Option<Vec<u8>>,
    idle_timeout: Duration,
    mailbox_capacity: usize,
    durability: Durability,
    max_open_databases: usize,
    alarm_retry_delay: Duration,
    hosts: Vec<(&'static str, MakeHostedType)>,
    cluster: ClusterConfig,
}

impl RuntimeBuilder {
    /// Keeps object storage (and the cluster secret, unless one is given)
    /// under `path`, which is created if missing.
    pub fn data_dir(mut self, path: impl Into<PathBuf>) -> Self {
        self.data_dir = Some(path.into());
        self
    }

    /// Keeps object storage in memory only: it vanishes on shutdown. For
    /// tests and examples.
    pub fn in_memory(mut self) -> Self {
        self.in_memory = true;
        self
    }

    /// The cluster secret from which ids are derived (at least 16 bytes).
    ///
    /// Every node of a cluster must use the same secret. Without one, a
    /// runtime with a `data_dir` reads (or on first start creates) the file
    /// `secret` in it; an in-memory runtime draws a random one.
    pub fn secret(mut self, secret: impl AsRef<[u8]>) -> Self {
        self.secret = Some(secret.as_ref().to_vec());
        self
    }

    /// How long an object may stay idle before it is evicted from memory
    /// (default 60 s). Its storage stays; the next call constructs it again.
    pub fn idle_timeout(mut self, timeout: Duration) -> Self {
        self.idle_timeout = timeout;
        self
    }

    /// How many calls may wait in one object's mailbox (default 4096); a
    /// call beyond that fails at once with `Overloaded`.
    pub fn mailbox_capacity(mut self, capacity: usize) -> Self {
        self.mailbox_capacity = capacity;
        self
    }

    /// When a turn's writes count as committed (default [`Durability::Full`]).
    pub fn durability(mut self, durability: Durability) -> Self {
        self.durability = durability;
        self
    }

    /// How many object databases may be open at once (default 1024); the
    /// one opened longest ago is closed to make room, and reopened on its
    /// next use. Each open database holds three file descriptors.
    pub fn max_open_databases(mut self, max: usize) -> Self {
        self.max_open_databases = max;
        self
    }

    /// The delay before the first retry of a failed alarm handler (default
    /// 2 s); each further retry waits twice as long, up to 6 retries.
    pub fn alarm_retry_delay(mut self, delay: Duration) -> Self {
        self.alarm_retry_delay = delay;
        self
    }

    /// Makes this process the cluster node `name`: it hosts objects and
    /// listens for other nodes. `name` must be in the peer list.
    pub fn node(mut self, name: impl Into<String>) -> Self {
        self.cluster.node = Some(name.into());
        self
    }

    /// Makes this process a client of the cluster: it hosts nothing and
    /// calls objects on the nodes (Cloudflare's "Worker").
    pub fn client(mut self) -> Self {
        self.cluster.client = true;
        self
    }

    /// Where this node listens (default: its own address in the peer list).
    pub fn listen(mut self, addr: SocketAddr) -> Self {
        self.cluster.listen = Some(addr);
        self
    }

    /// Adds node `name` at `addr` to the cluster's peer list. Every process
    /// of the cluster must list the same nodes in the same order; the first
    /// is the coordinator, which keeps the directory of placements.
    pub fn peer(mut self, name: impl Into<String>, addr: SocketAddr) -> Self {
        self.cluster.peers.push((name.into(), addr));
        self
    }

    /// The TLS identity this process presents: a certificate signed by the
    /// cluster's CA. Peers without one are refused at the handshake.
    pub fn tls(mut self, identity: crate::tls::Identity) -> Self {
        self.cluster.identity = Some(identity);
        self
    }

    /// The TLS identity from three PEM files (the CA certificate, this
    /// process's certificate chain, its private key), read by `build`; a
    /// missing or malformed file fails `build` with a `Config` error.
    pub fn tls_pem_files(
        mut self,
        ca: impl Into<PathBuf>,
        chain: impl Into<PathBuf>,
        key: impl Into<PathBuf>,
    ) -> Self {
        self.cluster.identity_files = Some((ca.into(), chain.into(), key.into()));
        self
    }

    /// Speaks another wire protocol version: only for testing that nodes of
    /// different versions refuse each other with a clear error.
    #[doc(hidden)]
    pub fn protocol_version_for_tests(mut self, version: u32) -> Self {
        self.cluster.protocol_version = Some(version);
        self
    }

    /// Hosts objects of type `T` in this runtime.
    pub fn host<T: DurableObject>(mut self) -> Self {
        self.hosts.push((T::NAME, HostedType::new::<T>));
        self
    }

    /// Builds the runtime. Must be called within a tokio runtime, which then
    /// runs the objects' turns.
    ///
    /// # Errors
    /// [`Error::Config`] when the settings contradict each other or the
    /// secret cannot be read or created.
    pub async fn build(self) -> Result<Runtime> {
        let handle = tokio::runtime::Handle::try_current()
            .map_err(|_| Error::Config("`RuntimeBuilder::build` must run inside a tokio runtime".into()))?;
        let data_dir = match (self.data_dir, self.in_memory) {
            (Some(_), true) => {
                return Err(Error::Config("both `data_dir` and `in_memory` were set; choose one".into()));
            }
            (None, false) => {
                return Err(Error::Config(
                    "no storage was chosen; call `.data_dir(path)` for durable storage or \
                     `.in_memory()` for tests"
                        .into(),
                ));
            }
            (data_dir, _) => data_dir,
        };
        if self.mailbox_capacity == 0 {
            return Err(Error::Config("`mailbox_capacity` must be at least 1".into()));
        }
        if self.max_open_databases == 0 {
            return Err(Error::Config("`max_open_databases` must be at least 1".into()));
        }
        if self.idle_timeout.is_zero() {
            return Err(Error::Config("`idle_timeout` must be longer than zero".into()));
        }
        if let Some(dir) = &data_dir {
            std::fs::create_dir_all(dir).map_err(|e| {
                Error::Config(format!("cannot create the data directory {}: {e}", dir.display()))
            })?;
        }
        if self.cluster.client && !self.hosts.is_empty() {
            return Err(Error::Config(
                "a client-only runtime hosts nothing; remove its `host::<T>()` calls or make it a `node`"
                    .into(),
            ));
        }
        let secret = secret::resolve(self.secret.as_deref(), data_dir.as_deref())?;
        let cluster = if self.cluster.is_set() {
            Some(Cluster::start(&self.cluster, data_dir.as_deref())?)
        } else {
            None
        };
        let mut hosted = HashMap::new();
        for (name, make) in self.hosts {
            if hosted.insert(name, Arc::new(make(&secret))).is_some() {
                return Err(Error::Config(format!(
                    "two hosted types are named `{name}`; give one another name with \
                     `#[durable_object(name = \"...\")]`"
                )));
            }
        }
        let storage = Arc::new(StorageRoot {
            location: match &data_dir {
                Some(dir) => Location::Files(dir.clone()),
                None => Location::Memory(Default::default()),
            },
            durability: self.durability,
            open: OpenDatabases::new(if data_dir.is_some() { self.max_open_databases } else { usize::MAX }),
            alarms: AlarmIndex::open(data_dir.as_deref())?,
        });
        let config = Config {
            idle_timeout: self.idle_timeout,
            mailbox_capacity: self.mailbox_capacity,
            alarm_retry_delay: self.alarm_retry_delay,
        };
        let inner = Arc::new(RuntimeInner {
            config,
            secret,
            hosted,
            handle,
            storage,
            cluster,
            watchdog: Watchdog::default(),
            lifecycle: Lifecycle::default(),
        });
        let runtime = Runtime { inner };
        if let Some(cluster) = &runtime.inner.cluster
            && cluster.me.is_some()
        {
            runtime.spawn(remote::serve(runtime.downgrade(), cluster.endpoint.clone()));
        }
        runtime.spawn(evict_idle_objects(Arc::downgrade(&runtime.inner)));
        runtime.spawn(Watchdog::run(runtime.downgrade()));
        runtime.spawn(alarm::run_scheduler(runtime.downgrade()));
        Ok(runtime)
    }
}

impl fmt::Debug for RuntimeBuilder {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RuntimeBuilder")
            .field("data_dir", &self.data_dir)
            .field("in_memory", &self.in_memory)
            .field("idle_timeout", &self.idle_timeout)
            .field("mailbox_capacity", &self.mailbox_capacity)
            .field("durability", &self.durability)
            .field("hosts", &self.hosts.iter().map(|(name, _)| *name).collect::<Vec<_>>())
            .finish_non_exhaustive()
    }
}

/// A running stead node: hosts objects and hands out namespaces.
///
/// Cloning is cheap; all clones are the same runtime. Call
/// [`shutdown`](Self::shutdown) before exiting, so that in-flight turns
/// finish and storage is closed cleanly.
#[derive(Clone)]
pub struct Runtime {
    inner: Arc<RuntimeInner>,
}

struct RuntimeInner {
    config: Config,
    secret: [u8; 32],
    hosted: HashMap<&'static str, Arc<HostedType>>,
    handle: tokio::runtime::Handle,
    storage: Arc<StorageRoot>,
    cluster: Option<Arc<Cluster>>,
    watchdog: Watchdog,
    lifecycle: Lifecycle,
}

/// A reference to a runtime that does not keep it alive (for its own tasks).
#[derive(Clone)]
pub(crate) struct WeakRuntime(Weak<RuntimeInner>);

impl WeakRuntime {
    pub(crate) fn upgrade(&self) -> Option<Runtime> {
        self.0.upgrade().map(|inner| Runtime { inner })
    }
}

impl Runtime {
    /// Starts configuring a runtime.
    pub fn builder() -> RuntimeBuilder {
        RuntimeBuilder {
            data_dir: None,
            in_memory: false,
            secret: None,
            idle_timeout: DEFAULT_IDLE_TIMEOUT,
            mailbox_capacity: DEFAULT_MAILBOX_CAPACITY,
            durability: Durability::default(),
            max_open_databases: DEFAULT_MAX_OPEN_DATABASES,
            alarm_retry_delay: DEFAULT_ALARM_RETRY_DELAY,
            hosts: Vec::new(),
            cluster: ClusterConfig::default(),
        }
    }

    /// The namespace of object type `T`.
    ///
    /// Works for any type with `#[durable_object]`; calls to a type that this
    /// runtime does not host fail with [`Error::NotHosted`].
    pub fn namespace<T: DurableObject>(&self) -> Namespace<T> {
        let hosted = self.inner.hosted.get(T::NAME).cloned();
        let keys = match &hosted {
            Some(hosted) => hosted.keys.clone(),
            None => IdKeys::derive(&self.inner.secret, T::NAME),
        };
        Namespace::new(self.clone(), keys, hosted)
    }

    /// Stops the runtime gracefully.
    ///
    /// New calls from outside are refused with [`Error::Unavailable`]; calls
    /// already queued, and calls that running turns make, still run. Once no
    /// turn is left, every object is dropped and its storage closed.
    pub async fn shutdown(&self) -> Result<()> {
        let lifecycle = &self.inner.lifecycle;
        lifecycle.closing.store(true, Ordering::SeqCst);
        while lifecycle.busy.load(Ordering::SeqCst) > 0 || self.inner.watchdog.is_watching() {
            // Queued calls whose callers do not poll still run.
            self.inner.watchdog.kick_all();
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
        lifecycle.closed.store(true, Ordering::SeqCst);
        // Let the watchdog's task see that the runtime is closed and end.
        self.inner.watchdog.kick_all();
        for hosted in self.inner.hosted.values() {
            hosted.evict_idle(u64::MAX);
        }
        if let Some(cluster) = &self.inner.cluster {
            cluster.endpoint.close();
        }
        Ok(())
    }

    /// Number of objects currently in memory, over all hosted types.
    pub fn active_objects(&self) -> usize {
        self.inner.hosted.values().map(|hosted| hosted.active_count()).sum()
    }

    /// Number of object databases currently open.
    pub fn open_databases(&self) -> usize {
        self.inner.storage.open.count()
    }

    /// The address this node listens on, in a cluster.
    pub fn local_addr(&self) -> Option<SocketAddr> {
        let cluster = self.inner.cluster.as_ref()?;
        cluster.me.as_ref()?;
        cluster.endpoint.local_addr().ok()
    }

    pub(crate) fn cluster(&self) -> Option<&Arc<Cluster>> {
        self.inner.cluster.as_ref()
    }

    pub(crate) fn downgrade(&self) -> WeakRuntime {
        WeakRuntime(Arc::downgrade(&self.inner))
    }

    pub(crate) fn storage_root(&self) -> Arc<StorageRoot> {
        self.inner.storage.clone()
    }

    pub(crate) fn hosted(&self, type_name: &str) -> Option<&Arc<HostedType>> {
        self.inner.hosted.get(type_name)
    }

    /// Whether shutdown has finished.
    pub(crate) fn is_closed(&self) -> bool {
        self.inner.lifecycle.closed.load(Ordering::Acquire)
    }

    /// Whether shutdown has begun.
    pub(crate) fn is_closing(&self) -> bool {
        self.inner.lifecycle.closing.load(Ordering::Acquire)
    }

    pub(crate) fn watchdog(&self) -> &Watchdog {
        &self.inner.watchdog
    }

    pub(crate) fn config(&self) -> &Config {
        &self.inner.config
    }

    /// How many eviction sweeps have run: the coarse clock by which
    /// activations record when they were last active.
    pub(crate) fn sweep(&self) -> u64 {
        self.inner.lifecycle.sweeps.load(Ordering::Relaxed)
    }

    pub(crate) fn lifecycle(&self) -> &Lifecycle {
        &self.inner.lifecycle
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

    /// Fails when the runtime no longer takes this call.
    pub(crate) fn check_accepting(&self) -> Result<()> {
        let lifecycle = &self.inner.lifecycle;
        if lifecycle.closed.load(Ordering::Acquire) {
            return Err(Error::Unavailable("the runtime has been shut down".into()));
        }
        if lifecycle.closing.load(Ordering::Acquire) && !in_turn() {
            return Err(Error::Unavailable("the runtime is shutting down and takes no new calls".into()));
        }
        Ok(())
    }
}

impl fmt::Debug for Runtime {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Runtime")
            .field("config", &self.inner.config)
            .field("hosted", &self.inner.hosted.keys().collect::<Vec<_>>())
            .finish_non_exhaustive()
    }
}

/// Whether the runtime takes calls, and how many activations are running turns.
#[derive(Default)]
pub(crate) struct Lifecycle {
    closing: AtomicBool,
    closed: AtomicBool,
    busy: AtomicUsize,
    /// Eviction sweeps so far.
    sweeps: AtomicU64,
}

impl Lifecycle {
    pub(crate) fn turns_started(&self) {
        self.busy.fetch_add(1, Ordering::SeqCst);
    }

    pub(crate) fn turns_ended(&self) {
        self.busy.fetch_sub(1, Ordering::SeqCst);
    }
}

/// Evicts objects idle for longer than the idle timeout, until the runtime
/// is gone or shut down. An object leaves memory between `idle_timeout` and
/// `idle_timeout` plus one sweep period after its last turn (a quarter of the
/// timeout, at least 5 ms, at most 15 s).
async fn evict_idle_objects(runtime: Weak<RuntimeInner>) {
    let Some(idle_timeout) = runtime.upgrade().map(|rt| rt.config.idle_timeout) else {
        return;
    };
    let tick = (idle_timeout / 4).clamp(Duration::from_millis(5), Duration::from_secs(15));
    // Activations record the sweep count when they go idle: one idle since
    // before sweep `now - ticks` has been idle for at least `ticks` periods.
    let ticks = idle_timeout.as_nanos().div_ceil(tick.as_nanos());
    let ticks = u64::try_from(ticks).unwrap_or(u64::MAX);
    loop {
        tokio::time::sleep(tick).await;
        let Some(inner) = runtime.upgrade() else {
            return;
        };
        if inner.lifecycle.closed.load(Ordering::Acquire) {
            return;
        }
        let now = inner.lifecycle.sweeps.fetch_add(1, Ordering::Relaxed) + 1;
        let idle_before = now.saturating_sub(ticks);
        for hosted in inner.hosted.values() {
            hosted.evict_idle(idle_before);
        }
    }
}
