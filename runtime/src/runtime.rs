//! The runtime: the builder, the user's handle, and shutdown.
//!
//! `Runtime` is the top of the crate: it builds a [`Host`] (settings,
//! lifecycle, tokio handle, storage), this process's objects (`local/`) and,
//! in a cluster, the cluster (`cluster/`), starts their background tasks,
//! and hands out namespaces (`namespace.rs`).

use std::fmt;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::{Arc, Weak};
use std::time::Duration;

use crate::cluster::{self, Cluster, ClusterConfig, NodeInfo, PostgresLog};
use crate::context::Context;
use crate::error::{Error, Result};
use crate::host::{Config, Host};
use crate::id::IdKeys;
use crate::limits::Limits;
use crate::local::watchdog::Watchdog;
use crate::local::{self, Constructor, HostedType, Objects};
use crate::object::{DurableObject, construct_erased};
use crate::observe::{Observe, PressureEvictions};
use crate::secret;
use crate::storage::{AlarmIndex, Durability, Location, ObjectLog, OpenDatabases, StorageRoot, SyncThreads};

/// How long an idle object stays in memory unless configured otherwise.
pub const DEFAULT_IDLE_TIMEOUT: Duration = Duration::from_secs(60);

/// How many calls may wait in one object's mailbox unless configured otherwise.
pub const DEFAULT_MAILBOX_CAPACITY: usize = 4096;

/// How many object databases may be open at once unless configured otherwise.
pub const DEFAULT_MAX_OPEN_DATABASES: usize = 1024;

/// How many threads sync object databases at once, unless
/// [`RuntimeBuilder::sync_threads`] says otherwise.
pub const DEFAULT_SYNC_THREADS: usize = 32;

/// How long a caller waits for a reply unless configured otherwise.
pub const DEFAULT_CALL_TIMEOUT: Duration = Duration::from_secs(30);

/// How long `shutdown` may take unless configured otherwise.
pub const DEFAULT_SHUTDOWN_TIMEOUT: Duration = Duration::from_secs(30);

/// The delay before the first retry of a failed alarm unless configured otherwise.
pub const DEFAULT_ALARM_RETRY_DELAY: Duration = Duration::from_secs(2);

/// Registers one hosted type, once the secret, the host and the runtime
/// (for the objects' contexts) exist.
type MakeHostedType = fn(&[u8; 32], &Host, WeakRuntime) -> HostedType;

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
    sync_threads: usize,
    max_open_databases: usize,
    alarm_retry_delay: Duration,
    call_timeout: Duration,
    shutdown_timeout: Duration,
    limits: Limits,
    hosts: Vec<(&'static str, MakeHostedType)>,
    cluster: ClusterConfig,
    record_metrics: bool,
    #[cfg(feature = "prometheus")]
    metrics_listen: Option<SocketAddr>,
    /// Alarms run only when `stead::testing::run_alarm` says so.
    manual_alarms: bool,
    /// See [`RuntimeBuilder::stream_open_pause_for_tests`].
    stream_open_pause: Option<Duration>,
}

impl RuntimeBuilder {
    /// Delivers no alarm by itself: alarms run when
    /// `stead::testing::run_alarm` asks (see `testing.rs`).
    pub(crate) fn manual_alarms(mut self) -> Self {
        self.manual_alarms = true;
        self
    }

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

    /// How many threads may sync object databases to disk at once (default
    /// 64), when they are on disk.
    ///
    /// Turns never wait for the disk on the tokio workers: a turn commits,
    /// the object goes on with its next turns, and a sync thread makes the
    /// commit durable before the replies it covers leave (one sync covers
    /// every turn committed since the one before). Syncs of different
    /// objects run in parallel, up to this many: a disk serves concurrent
    /// syncs of different files in parallel up to its queue depth. The
    /// default, 32, is where the test VM's disk stopped gaining: with 1,000
    /// busy objects, 16 threads gave about 0.85 of the throughput of 32, and
    /// 64 the same throughput as 32 with a longer tail (p99 13–21 ms against
    /// 10–18 ms; see `benches/throughput.rs`). Raise it for a disk with a
    /// deeper queue (an NVMe drive), lower it to spare a slow or shared
    /// one. Threads start when needed and leave after 10 s without work.
    /// With [`Durability::Normal`] commits are not synced, and these
    /// threads run only the checkpoints and closes of databases, which
    /// sync.
    pub fn sync_threads(mut self, threads: usize) -> Self {
        self.sync_threads = threads;
        self
    }

    /// How many object databases may be open at once (default 1024); the
    /// one opened longest ago is closed to make room, and reopened on its
    /// next use. Each open database holds three file descriptors; a
    /// replicated one (a PostgreSQL cluster) also holds up to 64 KiB of its
    /// WAL's newest frames in memory.
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

    /// How long a caller waits for the reply of a call (default 30 s), local
    /// or remote; then the call fails with [`Error::Timeout`], which is
    /// retryable. The clock starts when the caller first waits and the reply
    /// is not there. The call itself is not cancelled: it may still run, or
    /// have run, so retry only what is safe to repeat. Opening a stub's
    /// stream (placing the object, connecting to its node) is bounded by the
    /// same time.
    pub fn call_timeout(mut self, timeout: Duration) -> Self {
        self.call_timeout = timeout;
        self
    }

    /// Makes this process the cluster node `name`: it hosts objects and
    /// listens for other nodes. In a static cluster `name` must be in the
    /// peer list; in a PostgreSQL cluster it registers under it. Either
    /// way its TLS certificate must name it.
    pub fn node(mut self, name: impl Into<String>) -> Self {
        self.cluster.node = Some(name.into());
        self
    }

    /// The memory bounds (see [`Limits`] for each, with its default).
    pub fn limits(mut self, limits: Limits) -> Self {
        self.limits = limits;
        self
    }

    /// How long [`Runtime::shutdown`] may take (default 30 s): past it,
    /// shutdown closes the runtime anyway and reports
    /// [`Error::Timeout`].
    pub fn shutdown_timeout(mut self, timeout: Duration) -> Self {
        self.shutdown_timeout = timeout;
        self
    }

    /// How often an idle connection to a peer sends a keep-alive (default
    /// 1 s). Must be shorter than [`peer_timeout`](Self::peer_timeout).
    pub fn keep_alive(mut self, interval: Duration) -> Self {
        self.cluster.liveness.keep_alive = interval;
        self
    }

    /// How long a peer may stay silent before it counts as dead (default
    /// 5 s): calls in flight to it then fail with `Disconnected`, and new
    /// ones with `Unavailable`, both retryable. This is the cluster's
    /// failure-detection time; QUIC also waits at least three probe
    /// timeouts (a few round trips), so on a slow link it is the longer of
    /// the two. The defaults survive a 200 ms round trip between regions;
    /// on one machine or one rack, 500 ms with a 100 ms keep-alive notices a
    /// dead node in well under a second.
    pub fn peer_timeout(mut self, timeout: Duration) -> Self {
        self.cluster.liveness.peer_timeout = timeout;
        self
    }

    /// How long a connection attempt to a peer may take (default 5 s). In
    /// a PostgreSQL cluster an attempt also ends when the peer's lease, as
    /// last read, runs out: a node that has not answered by then is dead.
    /// It also bounds each use of PostgreSQL.
    pub fn connect_timeout(mut self, timeout: Duration) -> Self {
        self.cluster.liveness.connect_timeout = timeout;
        self
    }

    /// Makes this process a client of the cluster: it hosts nothing and
    /// calls objects on the nodes (Cloudflare's "Worker").
    pub fn client(mut self) -> Self {
        self.cluster.client = true;
        self
    }

    /// Where this node listens (default: its own address in the peer list;
    /// a node of a PostgreSQL cluster must say). Port 0 takes a free port.
    pub fn listen(mut self, addr: SocketAddr) -> Self {
        self.cluster.listen = Some(addr);
        self
    }

    /// The address other processes reach this node at, when it is not the
    /// one it listens on (PostgreSQL cluster; default: the listening
    /// address, with the port actually bound). Needed when the node listens
    /// on `0.0.0.0`, or behind address translation.
    pub fn advertise(mut self, addr: SocketAddr) -> Self {
        self.cluster.advertise = Some(addr);
        self
    }

    /// Forms the cluster through PostgreSQL instead of a peer list: nodes
    /// register there with a lease, find each other there, and keep the
    /// directory of objects there. `conninfo` is a libpq-style connection
    /// string (`"host=db port=5432 user=stead dbname=stead"`) or URL. The
    /// tables are created on the first node's start.
    ///
    /// stead connects without TLS: keep PostgreSQL on a private network, or
    /// reach it through a TLS tunnel (a conninfo with `sslmode=require` is
    /// refused). See the README's "Running on PostgreSQL".
    pub fn postgres(mut self, conninfo: impl Into<String>) -> Self {
        self.cluster.postgres = Some(conninfo.into());
        self
    }

    /// How long a node's membership lasts in PostgreSQL without renewal
    /// (default 10 s): the cluster's failure-detection time. A node renews
    /// it every quarter, and stops serving on its own two thirds of it after
    /// its last successful renewal was sent (self-fencing), so a node cut
    /// off from PostgreSQL goes quiet before anyone counts it dead.
    pub fn lease(mut self, lease: Duration) -> Self {
        self.cluster.lease = Some(lease);
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

    /// Records the runtime's metrics (`stead_calls_total`,
    /// `stead_turn_seconds`, ...; the README's "Observability" lists them)
    /// through the [`metrics`](https://docs.rs/metrics) facade, to whatever
    /// recorder the process installed: install it *before* `build`, which
    /// registers the handles the runtime keeps.
    ///
    /// Off by default: the facade cannot tell whether a recorder is
    /// installed, and timing every turn costs two clock reads, a good part of
    /// a local call, which a runtime nobody watches should not pay.
    /// `metrics_listen` (cargo feature `prometheus`)
    /// turns it on too.
    pub fn record_metrics(mut self) -> Self {
        self.record_metrics = true;
        self
    }

    /// Serves the runtime's metrics at `http://addr/metrics` in the
    /// Prometheus text format (and records them, see
    /// [`record_metrics`](Self::record_metrics)). Port 0 picks a free port:
    /// [`Runtime::metrics_addr`] tells which.
    ///
    /// The first runtime of the process that listens installs a Prometheus
    /// recorder as the process's `metrics` recorder; others share it (their
    /// metrics add up). `build` fails with [`Error::Config`] if the process
    /// has another recorder already, or the address cannot be bound. The
    /// endpoint closes when the runtime shuts down.
    ///
    /// Only with the cargo feature `prometheus`.
    #[cfg(feature = "prometheus")]
    pub fn metrics_listen(mut self, addr: SocketAddr) -> Self {
        self.metrics_listen = Some(addr);
        self.record_metrics = true;
        self
    }

    /// Makes each stub's pump, as it opens the stub's stream, pause for
    /// `pause` between registering the calls queued so far as waiting for
    /// their responses and starting the stream's reader task: only for
    /// testing that no response is lost whatever runs in between.
    #[doc(hidden)]
    pub fn stream_open_pause_for_tests(mut self, pause: Duration) -> Self {
        self.stream_open_pause = Some(pause);
        self
    }

    /// Hosts objects of type `T` in this runtime.
    pub fn host<T: DurableObject>(mut self) -> Self {
        self.hosts.push((T::NAME, hosted_type::<T>));
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
        if self.sync_threads == 0 {
            return Err(Error::Config("`sync_threads` must be at least 1".into()));
        }
        if self.idle_timeout.is_zero() {
            return Err(Error::Config("`idle_timeout` must be longer than zero".into()));
        }
        let limits = &self.limits;
        if limits.mailbox_bytes == 0
            || limits.max_connections == 0
            || limits.max_streams_per_connection == 0
            || limits.stream_window == 0
            || limits.connection_window == 0
            || limits.first_frame_timeout.is_zero()
            || limits.stub_buffer_bytes == 0
            || limits.stub_calls_in_flight == 0
            || limits.placement_cache == 0
        {
            return Err(Error::Config(format!("every limit must be above zero: {limits:?}")));
        }
        if self.call_timeout.is_zero() || self.shutdown_timeout.is_zero() {
            return Err(Error::Config(
                "`call_timeout` and `shutdown_timeout` must be longer than zero".into(),
            ));
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
            let hosts: Vec<&str> = self.hosts.iter().map(|(name, _)| *name).collect();
            Some(Cluster::start(&self.cluster, data_dir.as_deref(), &secret, &self.limits, &hosts).await?)
        } else {
            None
        };
        for (i, (name, _)) in self.hosts.iter().enumerate() {
            if self.hosts[..i].iter().any(|(other, _)| other == name) {
                return Err(Error::Config(format!(
                    "two hosted types are named `{name}`; give one another name with \
                     `#[durable_object(name = \"...\")]`"
                )));
            }
        }
        #[cfg(feature = "prometheus")]
        let scrapes = match self.metrics_listen {
            Some(addr) => {
                let handle = crate::observe::prometheus::recorder()?;
                Some((crate::observe::prometheus::bind(addr).await?, handle))
            }
            None => None,
        };
        // A node of a PostgreSQL cluster with a data directory replicates
        // its objects' storage there (see `storage/replica.rs`).
        let log: Option<Arc<dyn ObjectLog>> = match (&self.cluster.postgres, &self.cluster.node, &data_dir) {
            (Some(conninfo), Some(node), Some(_)) => {
                Some(Arc::new(PostgresLog::start(conninfo, self.cluster.liveness.connect_timeout, node)?))
            }
            _ => None,
        };
        let pressure = PressureEvictions::new(self.record_metrics, self.hosts.iter().map(|(name, _)| *name));
        // Databases on disk are synced, checkpointed and closed off the
        // tokio workers, with either durability.
        let threads = data_dir.is_some().then(|| SyncThreads::new(self.sync_threads));
        let storage = StorageRoot {
            location: match &data_dir {
                Some(dir) => Location::Files(dir.clone()),
                None => Location::Memory(Default::default()),
            },
            durability: self.durability,
            open: OpenDatabases::new(
                if data_dir.is_some() { self.max_open_databases } else { usize::MAX },
                pressure,
            ),
            alarms: Arc::new(AlarmIndex::open(data_dir.as_deref(), self.durability)?),
            sync: threads.clone().filter(|_| self.durability == Durability::Full || log.is_some()),
            upkeep: threads,
            log,
        };
        let config = Config {
            idle_timeout: self.idle_timeout,
            mailbox_capacity: self.mailbox_capacity,
            alarm_retry_delay: self.alarm_retry_delay,
            call_timeout: self.call_timeout,
            shutdown_timeout: self.shutdown_timeout,
            limits: self.limits,
            stream_open_pause: self.stream_open_pause,
        };
        let node = match (&self.cluster.node, self.cluster.client) {
            (Some(node), _) => node.clone(),
            (None, true) => "client".to_string(),
            (None, false) => "local".to_string(),
        };
        let host = Host::new(config, handle, storage, Observe::new(node, self.record_metrics));
        if let Some(cluster) = &cluster {
            // Alarms fire only while this node may serve (its lease holds).
            let cluster = Arc::downgrade(cluster);
            host.set_fence(Box::new(move || cluster.upgrade().map_or(Ok(()), |cluster| cluster.serving())));
        }
        let inner = Arc::new_cyclic(|runtime: &Weak<RuntimeInner>| {
            let types = self
                .hosts
                .iter()
                .map(|(name, make)| (*name, Arc::new(make(&secret, &host, WeakRuntime(runtime.clone())))))
                .collect();
            RuntimeInner {
                secret,
                objects: Arc::new(Objects::new(host.clone(), types)),
                cluster,
                #[cfg(feature = "prometheus")]
                metrics_addr: scrapes.as_ref().and_then(|(listener, _)| listener.local_addr().ok()),
                manual_alarms: self.manual_alarms,
            }
        });
        #[cfg(feature = "prometheus")]
        if let Some((listener, handle)) = scrapes {
            host.spawn(crate::observe::prometheus::serve(listener, handle, host.lifecycle().closed()));
        }
        let objects = Arc::downgrade(&inner.objects);
        if let Some(cluster) = &inner.cluster {
            if cluster.me.is_some() {
                host.spawn(cluster::serve(
                    objects.clone(),
                    Arc::downgrade(cluster),
                    cluster.endpoint().clone(),
                ));
            }
            // A node whose lease lapsed drops its idle objects from memory
            // (another node may have taken them over meanwhile).
            let lapsed = objects.clone();
            cluster.on_lapse(Box::new(move || {
                if let Some(objects) = lapsed.upgrade() {
                    objects.evict_idle(u64::MAX);
                }
            }));
            host.spawn(Cluster::maintain(Arc::downgrade(cluster)));
            host.spawn(cluster::adopt_alarms(objects.clone(), Arc::downgrade(cluster)));
        }
        host.spawn(local::evict_idle_objects(objects.clone()));
        host.spawn(Watchdog::run(Arc::downgrade(host.watchdog())));
        if !self.manual_alarms {
            host.spawn(local::run_scheduler(objects));
        }
        Ok(Runtime { inner })
    }
}

/// A hosted type `T`, whose constructor gets a `Context` of `runtime`.
fn hosted_type<T: DurableObject>(secret: &[u8; 32], host: &Host, runtime: WeakRuntime) -> HostedType {
    let construct: Constructor = Box::new(move |id, storage| match runtime.upgrade() {
        Some(runtime) => construct_erased::<T>(Context::new(id, T::NAME, runtime, storage)),
        None => Box::pin(async { Err("the runtime was dropped".to_string()) }),
    });
    HostedType::new(
        host.clone(),
        T::NAME,
        IdKeys::derive(secret, T::NAME),
        T::METHODS,
        T::HAS_ALARM,
        construct,
    )
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
    secret: [u8; 32],
    objects: Arc<Objects>,
    cluster: Option<Arc<Cluster>>,
    /// Where the Prometheus endpoint listens, if it does.
    #[cfg(feature = "prometheus")]
    metrics_addr: Option<SocketAddr>,
    manual_alarms: bool,
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
            sync_threads: DEFAULT_SYNC_THREADS,
            max_open_databases: DEFAULT_MAX_OPEN_DATABASES,
            alarm_retry_delay: DEFAULT_ALARM_RETRY_DELAY,
            call_timeout: DEFAULT_CALL_TIMEOUT,
            shutdown_timeout: DEFAULT_SHUTDOWN_TIMEOUT,
            limits: Limits::default(),
            hosts: Vec::new(),
            cluster: ClusterConfig::default(),
            record_metrics: false,
            #[cfg(feature = "prometheus")]
            metrics_listen: None,
            manual_alarms: false,
            stream_open_pause: None,
        }
    }

    /// Stops the runtime gracefully, within `shutdown_timeout`.
    ///
    /// 1. New calls are refused with [`Error::Unavailable`] (retryable),
    ///    from this process and from others; calls that running turns make
    ///    are still taken.
    /// 2. The calls already queued run, and their replies are delivered,
    ///    to other processes too.
    /// 3. Every object is dropped, its storage closed, and the network
    ///    endpoint closed.
    ///
    /// # Errors
    /// [`Error::Timeout`] when steps 1 and 2 took longer than
    /// `shutdown_timeout`; the runtime is closed all the same, and the turns
    /// still running are abandoned.
    pub async fn shutdown(&self) -> Result<()> {
        let host = self.host();
        let lifecycle = host.lifecycle();
        let timeout = host.config().shutdown_timeout;
        let deadline = tokio::time::Instant::now() + timeout;
        let rescue = || {
            // Queued calls whose callers do not poll still run.
            host.watchdog().rescue_all();
            true
        };
        lifecycle.begin_closing();
        let drained =
            settle(deadline, || rescue() && !lifecycle.is_busy() && !host.watchdog().is_watching()).await;
        // No delivery starts from now on; wait for those under way, their
        // turns, and the replies to other processes.
        lifecycle.close();
        let settled = drained && settle(deadline, || rescue() && !lifecycle.is_settling()).await;
        // Served streams finish once their peers have every reply.
        let flushed = settled && settle(deadline, || !lifecycle.is_serving()).await;
        host.watchdog().close();
        // Objects' `Drop`s are user code, maybe slow: not on a worker.
        let objects = self.inner.objects.clone();
        host.run_blocking(move || objects.evict_idle(u64::MAX)).await;
        if let Some(cluster) = &self.inner.cluster {
            cluster.leave().await;
            cluster.endpoint().close();
        }
        if flushed {
            Ok(())
        } else {
            Err(Error::Timeout(format!(
                "shutdown did not finish within {timeout:?} (`shutdown_timeout`): turns were still \
                 running or replies still on their way; the runtime was closed anyway"
            )))
        }
    }

    /// Number of objects currently in memory, over all hosted types.
    pub fn active_objects(&self) -> usize {
        self.inner.objects.active_count()
    }

    /// Number of object databases currently open.
    pub fn open_databases(&self) -> usize {
        self.inner.objects.host().storage().open.count()
    }

    /// The address this node listens on, in a cluster.
    pub fn local_addr(&self) -> Option<SocketAddr> {
        let cluster = self.inner.cluster.as_ref()?;
        cluster.me.as_ref()?;
        cluster.endpoint().local_addr().ok()
    }

    /// The address of the Prometheus endpoint, when the runtime was built
    /// with [`RuntimeBuilder::metrics_listen`] (feature `prometheus`).
    #[cfg(feature = "prometheus")]
    pub fn metrics_addr(&self) -> Option<SocketAddr> {
        self.inner.metrics_addr
    }

    /// The nodes of the cluster. In a PostgreSQL cluster: every node that
    /// ever registered, as PostgreSQL says now (`alive`: its lease holds, by
    /// PostgreSQL's clock). In a static cluster: the peer list, where
    /// `alive` means this node or a peer this process is connected to, and
    /// `hosts` is known for this node only.
    ///
    /// # Errors
    /// [`Error::Config`] outside a cluster; [`Error::Unavailable`] when
    /// PostgreSQL cannot be reached.
    pub async fn nodes(&self) -> Result<Vec<NodeInfo>> {
        match &self.inner.cluster {
            Some(cluster) => cluster.nodes().await,
            None => Err(Error::Config("this runtime is not part of a cluster: it has no nodes".into())),
        }
    }

    pub(crate) fn host(&self) -> &Host {
        self.inner.objects.host()
    }

    pub(crate) fn objects(&self) -> &Objects {
        &self.inner.objects
    }

    pub(crate) fn cluster(&self) -> Option<&Arc<Cluster>> {
        self.inner.cluster.as_ref()
    }

    /// A reference that does not keep the runtime alive.
    pub(crate) fn downgrade(&self) -> WeakRuntime {
        WeakRuntime(Arc::downgrade(&self.inner))
    }

    /// Whether alarms run only when `stead::testing::run_alarm` asks.
    pub(crate) fn has_manual_alarms(&self) -> bool {
        self.inner.manual_alarms
    }

    /// The id keys of type `type_name`: its hosted type's, or derived from
    /// the secret for a type hosted elsewhere.
    pub(crate) fn id_keys(&self, type_name: &'static str) -> IdKeys {
        match self.inner.objects.hosted(type_name) {
            Some(hosted) => hosted.keys.clone(),
            None => IdKeys::derive(&self.inner.secret, type_name),
        }
    }
}

impl fmt::Debug for Runtime {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Runtime")
            .field("config", self.host().config())
            .field("hosted", &self.inner.objects.type_names().collect::<Vec<_>>())
            .finish_non_exhaustive()
    }
}

/// Waits until `done` holds (checked every millisecond), or `deadline`;
/// returns whether it held.
async fn settle(deadline: tokio::time::Instant, mut done: impl FnMut() -> bool) -> bool {
    loop {
        if done() {
            return true;
        }
        if tokio::time::Instant::now() >= deadline {
            return false;
        }
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
}
