//! This process in the cluster: its name, its connections, and where
//! objects live. The owner of each object is asked of the directory once
//! and then cached (an owner never changes: a node that is down makes its
//! objects unavailable, it does not lose them).

use std::collections::{HashMap, VecDeque};
use std::net::SocketAddr;
use std::sync::{Arc, Mutex, Weak};
use std::time::Duration;

use stead_transport::{Connection, Endpoint, Flow, Identity};

use super::config::ClusterConfig;
use super::connections::Connections;
use super::directory::{self, CoordinatorClient, Directory, SqliteDirectory};
use super::membership::{Lease, Member, Members};
use super::postgres::{self, Pg, PostgresDirectory};
use crate::error::{Error, Result};
use crate::id::ObjectId;
use crate::limits::Limits;
use crate::sync::lock;
use crate::wire::{ClusterView, DirectoryRequest, PostgresView, View};

/// Eight bytes of a one-way hash of the cluster secret: enough to tell two
/// secrets apart, nothing to learn the secret from.
fn secret_fingerprint(secret: &[u8; 32]) -> [u8; 8] {
    let hash = blake3::derive_key("stead 2026 cluster secret fingerprint", secret);
    let mut fingerprint = [0u8; 8];
    fingerprint.copy_from_slice(&hash[..8]);
    fingerprint
}

/// The cluster as seen by one process.
pub(crate) struct Cluster {
    /// This node's name; none for a client.
    pub(crate) me: Option<String>,
    /// The types this node hosts.
    hosts: Vec<String>,
    mode: Mode,
    pub(crate) connections: Arc<Connections>,
    directory: Arc<dyn Directory>,
    /// The coordinator's own directory, when this node is the coordinator.
    pub(crate) local_directory: Option<Arc<SqliteDirectory>>,
    placements: Mutex<Placements>,
    /// What the node forgets when its lease had lapsed (see `lapsed`).
    on_lapse: Mutex<Option<Box<dyn Fn() + Send + Sync>>>,
}

/// How the cluster finds its nodes.
enum Mode {
    /// A fixed peer list; the first peer keeps the directory.
    Static { coordinator: String },
    /// Membership and directory in PostgreSQL.
    Postgres(Box<PostgresMode>),
}

struct PostgresMode {
    members: Members,
    /// The directory, for the queries only it answers.
    directory: Arc<PostgresDirectory>,
    /// This node replicates storage, so it takes over dead nodes' objects.
    takes_over: bool,
    /// This node's lease; none for a client.
    lease: Option<Arc<Lease>>,
    /// The lease every node of this process's configuration takes.
    length: Duration,
}

/// Where a stub's calls go.
pub(crate) enum Placed {
    /// The object lives on this node.
    Owner(String),
    /// The object lives nowhere yet: its first call goes to this node,
    /// which places it.
    Unplaced(String),
}

/// How often at most a caller reads the members again because it lost its
/// connection to a node (see `reread_if_lost`).
const REREAD_AFTER: Duration = Duration::from_millis(50);

/// Added to a node's lease left when bounding a connection attempt to it:
/// the members were read a moment ago, and PostgreSQL's clock and ours
/// need not agree to the millisecond.
const LEASE_SLACK: Duration = Duration::from_millis(100);

/// How many nodes a caller follows, one telling it the object lives on
/// another, before it gives up.
const MAX_HOPS: usize = 3;

impl Cluster {
    /// Starts this process's part of the cluster: binds the endpoint, opens
    /// the directory and, in a PostgreSQL cluster, joins it (no connection
    /// to another node is made). `secret` is the cluster secret (only a
    /// fingerprint of it is ever shown to peers); `hosts`, the hosted types.
    pub(crate) async fn start(
        config: &ClusterConfig,
        data_dir: Option<&std::path::Path>,
        secret: &[u8; 32],
        limits: &Limits,
        hosts: &[&str],
    ) -> Result<Arc<Self>> {
        config.validate()?;
        let identity = match (&config.identity, &config.identity_files) {
            (Some(identity), _) => identity.clone(),
            (None, Some((ca, chain, key))) => Identity::from_pem_files(ca, chain, key)
                .map_err(|e| Error::Config(format!("cannot load the TLS identity: {e}")))?,
            (None, None) => return Err(Error::Config("no TLS identity".into())),
        };
        let identity = &identity;
        let version = config.protocol_version.unwrap_or(stead_transport::PROTOCOL_VERSION);
        let flow = Flow {
            max_streams: limits.max_streams_per_connection,
            stream_window: limits.stream_window,
            connection_window: limits.connection_window,
        };
        let placements = Mutex::new(Placements::new(limits.placement_cache));
        let hosts_owned = hosts.iter().map(|h| h.to_string()).collect();
        if let Some(conninfo) = &config.postgres {
            if let Some(node) = &config.node
                && !identity.names(node)
            {
                return Err(Error::Config(format!(
                    "this process's TLS certificate does not name node `{node}`: the other processes would \
                     refuse it as `{node}`; use the certificate issued for `{node}` (its DNS name must be \
                     the node's name, as `stead certs node {node}` or `dev_identity(dir, \"{node}\")` make)"
                )));
            }
            let timeout = config.liveness.connect_timeout;
            let cluster_id = postgres::setup(conninfo, timeout, config.node.is_some()).await?;
            let endpoint = Endpoint::bind_with(
                identity,
                config.node.as_ref().and(config.listen),
                config.liveness,
                flow,
                version,
            )
            .map_err(|e| Error::Transport(e.to_string()))?;
            let view = View::Postgres(PostgresView { cluster_id, secret: secret_fingerprint(secret) });
            let connections = Arc::new(Connections::new(endpoint, &[], view));
            let members = Members::new(conninfo, timeout);
            let length = config.lease();
            let lease = match &config.node {
                Some(node) => {
                    let bound =
                        connections.endpoint.local_addr().map_err(|e| Error::Transport(e.to_string()))?;
                    let addr = config.advertise.unwrap_or(bound);
                    Some(members.register(node, addr, hosts, length).await?)
                }
                None => None,
            };
            members.refresh(&connections, timeout).await?;
            // A node with a data directory replicates its objects' storage
            // in PostgreSQL, so it may take over a dead node's objects.
            let takes_over = data_dir.is_some();
            let directory =
                Arc::new(PostgresDirectory::new(Pg::new(conninfo, timeout), lease.clone(), takes_over));
            return Ok(Arc::new(Cluster {
                me: config.node.clone(),
                hosts: hosts_owned,
                mode: Mode::Postgres(Box::new(PostgresMode {
                    members,
                    directory: directory.clone(),
                    takes_over,
                    lease,
                    length,
                })),
                connections,
                directory,
                local_directory: None,
                placements,
                on_lapse: Mutex::new(None),
            }));
        }
        // A node listens where the peer list says, unless told otherwise
        // (`validate` made sure the node is in the list).
        let listen = config.node.as_ref().map(|node| {
            config.listen.unwrap_or_else(|| {
                let own = config.peers.iter().find(|(name, _)| name == node);
                own.map_or(SocketAddr::from(([0, 0, 0, 0], 0)), |(_, addr)| *addr)
            })
        });
        let endpoint = Endpoint::bind_with(identity, listen, config.liveness, flow, version)
            .map_err(|e| Error::Transport(e.to_string()))?;
        let coordinator = config.peers[0].0.clone();
        let is_coordinator = config.node.as_deref() == Some(coordinator.as_str());
        let local_directory =
            if is_coordinator { Some(Arc::new(SqliteDirectory::open(data_dir)?)) } else { None };
        let view = View::Static(ClusterView {
            peers: config.peers.iter().map(|(name, addr)| (name.clone(), addr.to_string())).collect(),
            secret: secret_fingerprint(secret),
        });
        let connections = Arc::new(Connections::new(endpoint, &config.peers, view));
        let directory: Arc<dyn Directory> = match &local_directory {
            Some(local) => local.clone(),
            None => Arc::new(CoordinatorClient::new(connections.clone(), coordinator.clone())),
        };
        Ok(Arc::new(Cluster {
            me: config.node.clone(),
            hosts: hosts_owned,
            mode: Mode::Static { coordinator },
            connections,
            directory,
            local_directory,
            placements,
            on_lapse: Mutex::new(None),
        }))
    }

    /// Keeps a PostgreSQL cluster's membership: renews this node's lease
    /// and reads the members every quarter of the lease, until the cluster
    /// is gone or the node left. Nothing to do in a static cluster.
    pub(crate) async fn maintain(cluster: Weak<Cluster>) {
        let Some(length) = cluster.upgrade().and_then(|c| match &c.mode {
            Mode::Postgres(pg) => Some(pg.length),
            Mode::Static { .. } => None,
        }) else {
            return;
        };
        let mut ticks = tokio::time::interval(length / 4);
        ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        ticks.tick().await;
        loop {
            ticks.tick().await;
            let Some(cluster) = cluster.upgrade() else { return };
            let Mode::Postgres(pg) = &cluster.mode else { return };
            if let Some(lease) = &pg.lease {
                if lease.has_ended() {
                    return;
                }
                pg.members.renew(lease, || cluster.lapsed()).await;
            }
            if let Err(err) = pg.members.refresh(&cluster.connections, length / 4).await {
                tracing::debug!(%err, "could not read the cluster's members");
            }
        }
    }

    /// Sets what this node forgets when it finds its lease lapsed: its
    /// objects in memory (set by the runtime, which owns them).
    pub(crate) fn on_lapse(&self, forget: Box<dyn Fn() + Send + Sync>) {
        *lock(&self.on_lapse) = Some(forget);
    }

    /// The node's lease had lapsed in PostgreSQL: other nodes may have
    /// taken its objects over. It forgets every placement and every object
    /// in memory before it serves again; storage it keeps is checked
    /// against the log when next opened (see `storage/replica.rs`).
    fn lapsed(&self) {
        self.forget_all();
        if let Some(forget) = lock(&self.on_lapse).as_ref() {
            forget();
        }
    }

    /// How often to look for a dead node's due alarms: a quarter of the
    /// lease, on a node that replicates storage; never otherwise.
    pub(crate) fn orphan_poll(&self) -> Option<Duration> {
        match &self.mode {
            Mode::Postgres(pg) if pg.takes_over && self.me.is_some() => Some(pg.length / 4),
            _ => None,
        }
    }

    /// Due alarms (by `by`, milliseconds since the epoch) of objects of
    /// `types` whose owner is dead: `(type, id, at)`.
    pub(crate) async fn orphaned_alarms(
        &self,
        by: i64,
        types: &[String],
    ) -> Result<Vec<(String, ObjectId, i64)>> {
        match (&self.mode, &self.me) {
            (Mode::Postgres(pg), Some(me)) => pg.directory.orphaned_alarms(by, types, me).await,
            _ => Ok(Vec::new()),
        }
    }

    /// Takes object `id` over for this node if its owner is dead (see
    /// `claim`); whether this node owns it now.
    pub(crate) async fn adopt(&self, type_name: &str, id: &ObjectId) -> Result<bool> {
        self.forget(type_name, id);
        let owner = self.claim(type_name, id, None).await?;
        Ok(self.me.as_deref() == Some(owner.as_str()))
    }

    /// Whether this node may serve calls now: in a PostgreSQL cluster, only
    /// while its lease holds (see `membership.rs`).
    pub(crate) fn serving(&self) -> Result<()> {
        match &self.mode {
            Mode::Postgres(pg) => pg.lease.as_ref().map_or(Ok(()), |lease| lease.check()),
            Mode::Static { .. } => Ok(()),
        }
    }

    /// Leaves a PostgreSQL cluster at shutdown: the node counts as dead at
    /// once instead of when its lease lapses.
    pub(crate) async fn leave(&self) {
        if let Mode::Postgres(pg) = &self.mode
            && let Some(lease) = &pg.lease
        {
            pg.members.leave(lease).await;
        }
    }

    /// The nodes of the cluster: in PostgreSQL, as its table says now; in a
    /// static cluster, the peer list (alive: this node, and the peers it
    /// has a live connection to).
    pub(crate) async fn nodes(&self) -> Result<Vec<NodeInfo>> {
        match &self.mode {
            Mode::Postgres(pg) => {
                let members = pg.members.refresh(&self.connections, pg.members.timeout()).await?;
                Ok(members
                    .into_iter()
                    .map(|m| NodeInfo { name: m.name, addr: m.addr, alive: m.alive, hosts: m.hosts })
                    .collect())
            }
            Mode::Static { .. } => {
                let mut nodes = Vec::new();
                for (name, addr, connected) in self.connections.peers().await {
                    let me = self.me.as_deref() == Some(name.as_str());
                    let hosts = if me { self.hosts.clone() } else { Vec::new() };
                    nodes.push(NodeInfo { name, addr, alive: me || connected, hosts });
                }
                Ok(nodes)
            }
        }
    }

    pub(crate) fn endpoint(&self) -> &Endpoint {
        &self.connections.endpoint
    }

    /// A live connection to node `name`, made if needed; in a PostgreSQL
    /// cluster, a node that is dead fails at once, and a connection attempt
    /// waits no longer than the node's lease has left (a node that does not
    /// answer by then is dead, and its objects are placed again).
    pub(crate) async fn connection(&self, name: &str) -> Result<Connection> {
        let within = self.check_alive(name).await?.map(|member| {
            (member.lease_left() + LEASE_SLACK).min(self.connections.endpoint.connect_timeout())
        });
        self.connections.connect(name, within).await
    }

    /// The node a stub's first call goes to when the stub names none: this
    /// node when it hosts the type; else the coordinator (static cluster),
    /// or a live node that hosts the type, chosen by the id (PostgreSQL).
    pub(crate) async fn default_target(&self, type_name: &str, id: &ObjectId) -> Result<String> {
        if let Some(me) = &self.me
            && self.hosts.iter().any(|h| h == type_name)
        {
            return Ok(me.clone());
        }
        let pg = match &self.mode {
            Mode::Static { coordinator } => return Ok(coordinator.clone()),
            Mode::Postgres(pg) => pg,
        };
        let choose = || {
            let able: Vec<Member> = pg
                .members
                .all()
                .into_iter()
                .filter(|m| m.alive && m.hosts.iter().any(|h| h == type_name))
                .collect();
            let mut spread = [0u8; 8];
            spread.copy_from_slice(&id.as_bytes()[..8]);
            let n = able.len() as u64;
            (n > 0).then(|| able[(u64::from_le_bytes(spread) % n) as usize].name.clone())
        };
        if let Some(node) = choose() {
            return Ok(node);
        }
        pg.members.refresh(&self.connections, pg.members.timeout()).await?;
        choose().ok_or_else(|| {
            Error::Unavailable(format!(
                "no live node of the cluster hosts `{type_name}`: start a node with `.host::<{type_name}>()`, \
                 or wait for one to come back; retry later"
            ))
        })
    }

    /// Where calls to object `id` go: its owner, if it has one (cached
    /// once known); else `target`, which places the object. A node that is
    /// its own target claims it here, so that it never runs an object
    /// another node owns, keeping `name`, the name of a named id.
    pub(crate) async fn route(
        &self,
        type_name: &str,
        id: &ObjectId,
        target: &str,
        name: Option<&str>,
    ) -> Result<Placed> {
        if let Mode::Postgres(pg) = &self.mode {
            return self.route_postgres(pg, type_name, id, target, name).await;
        }
        if let Some(owner) = self.cached(type_name, id) {
            return Ok(Placed::Owner(owner));
        }
        let me = self.me.as_deref() == Some(target);
        if let Some(owner) = self.directory.lookup(type_name, id).await? {
            self.cache(type_name, id, &owner);
            return Ok(Placed::Owner(owner));
        }
        if me {
            return self.claim(type_name, id, name).await.map(Placed::Owner);
        }
        if !self.connections.is_peer(target) {
            return Err(Error::Config(format!("there is no node `{target}` in the peer list")));
        }
        Ok(Placed::Unplaced(target.to_string()))
    }

    /// [`route`](Self::route) in a PostgreSQL cluster. An owner known to
    /// be dead is forgotten, and the object placed again: a node that
    /// replicates storage takes it over (see `postgres.rs`); one that does
    /// not answers the dead owner, which then fails `Unavailable`.
    async fn route_postgres(
        &self,
        pg: &PostgresMode,
        type_name: &str,
        id: &ObjectId,
        target: &str,
        name: Option<&str>,
    ) -> Result<Placed> {
        let hosting = self.me.as_deref() == Some(target) && self.hosts.iter().any(|h| h == type_name);
        let owner = match self.cached(type_name, id) {
            Some(owner) => Some(owner),
            // One round trip: the claim answers the owner either way.
            None if hosting => None,
            None => self.directory.lookup(type_name, id).await?,
        };
        let mut target = target.to_string();
        if let Some(owner) = owner {
            self.reread_if_lost(pg, &owner).await;
            let dead = self.me.as_deref() != Some(owner.as_str())
                && pg.members.get(&owner).is_some_and(|member| !member.alive);
            if !dead {
                self.cache(type_name, id, &owner);
                return Ok(Placed::Owner(owner));
            }
            self.forget(type_name, id);
            if target == owner {
                target = self.default_target(type_name, id).await?;
            }
        }
        if self.me.as_deref() == Some(target.as_str()) && self.hosts.iter().any(|h| h == type_name) {
            return self.claim(type_name, id, name).await.map(Placed::Owner);
        }
        self.check_alive(&target).await?;
        Ok(Placed::Unplaced(target))
    }

    /// The owner of object `id`, which lives nowhere yet and is meant for
    /// `target`. In a static cluster that is `target` (it claims the object
    /// when the first call arrives); in PostgreSQL, `target` is asked to
    /// place it and answers the owner it knows, which the caller follows, a
    /// bounded number of times.
    pub(crate) async fn place_at(
        &self,
        target: &str,
        type_name: &str,
        id: &ObjectId,
        name: Option<&str>,
    ) -> Result<String> {
        if let Mode::Static { .. } = self.mode {
            return Ok(target.to_string());
        }
        let mut asked = target.to_string();
        for _ in 0..MAX_HOPS {
            if self.me.as_deref() == Some(asked.as_str()) {
                if !self.hosts.iter().any(|h| h == type_name) {
                    return Err(Error::not_hosted(type_name));
                }
                return self.claim(type_name, id, name).await;
            }
            let request = DirectoryRequest::Place {
                type_name: type_name.to_string(),
                id: *id,
                name: name.map(str::to_string),
            };
            let owner = self.ask(&asked, request).await?.ok_or_else(|| {
                Error::Unavailable(format!(
                    "node `{asked}` did not place `{type_name}` object {id}; retry later"
                ))
            })?;
            if owner == asked {
                self.cache(type_name, id, &owner);
                return Ok(owner);
            }
            asked = owner;
        }
        Err(Error::Unavailable(format!(
            "`{type_name}` object {id} could not be placed: {MAX_HOPS} nodes in a row sent the caller on; retry later"
        )))
    }

    /// Asks node `node` one directory question.
    async fn ask(&self, node: &str, request: DirectoryRequest) -> Result<Option<String>> {
        let conn = self.connection(node).await?;
        directory::ask(&conn, node, &request).await
    }

    /// Reads the members again when this process lost its connection to
    /// node `owner` (at most every `REREAD_AFTER`): a caller whose stub
    /// broke when the node died learns that it is dead as soon as
    /// PostgreSQL says so, instead of at the next quarter-lease read, and
    /// places the object again rather than wait on a dead address.
    async fn reread_if_lost(&self, pg: &PostgresMode, owner: &str) {
        if self.me.as_deref() == Some(owner)
            || !self.connections.lost(owner)
            || pg.members.read_within(REREAD_AFTER)
        {
            return;
        }
        if let Err(err) = pg.members.refresh(&self.connections, pg.length / 4).await {
            tracing::debug!(%err, "could not read the cluster's members");
        }
    }

    /// In a PostgreSQL cluster, fails at once with `Unavailable` when node
    /// `name` is dead or no member (reading the members again when it is
    /// not known), else returns it (none for this node); a static
    /// cluster's peers are tried.
    async fn check_alive(&self, name: &str) -> Result<Option<Member>> {
        let Mode::Postgres(pg) = &self.mode else { return Ok(None) };
        if self.me.as_deref() == Some(name) {
            return Ok(None);
        }
        let member = match pg.members.get(name) {
            Some(member) => member,
            None => {
                pg.members.refresh(&self.connections, pg.members.timeout()).await?;
                pg.members.get(name).ok_or_else(|| {
                    Error::Unavailable(format!(
                        "there is no node `{name}` in the cluster (it never joined, or its row was removed); \
                         retry once it has joined"
                    ))
                })?
            }
        };
        if !member.alive {
            return Err(Error::Unavailable(format!(
                "node `{name}` is down (its lease in PostgreSQL lapsed): its objects are unavailable until it \
                 is back, or until a node that replicates storage takes them over; retry later"
            )));
        }
        Ok(Some(member))
    }

    /// Claims object `id` for this node (which hosts its type), unless it
    /// lives somewhere already; returns its owner. `name` is the object's
    /// name, if its id was made with one.
    pub(crate) async fn claim(&self, type_name: &str, id: &ObjectId, name: Option<&str>) -> Result<String> {
        if let Some(owner) = self.cached(type_name, id) {
            return Ok(owner);
        }
        let me = self.me.as_deref().ok_or_else(|| Error::Config("a client hosts no objects".into()))?;
        self.serving()?;
        let owner = self.directory.claim_named(type_name, id, me, name).await?;
        self.cache(type_name, id, &owner);
        Ok(owner)
    }

    fn cached(&self, type_name: &str, id: &ObjectId) -> Option<String> {
        lock(&self.placements).owners.get(&(type_name.to_string(), *id)).cloned()
    }

    fn cache(&self, type_name: &str, id: &ObjectId, owner: &str) {
        lock(&self.placements).insert((type_name.to_string(), *id), owner.to_string());
    }

    fn forget(&self, type_name: &str, id: &ObjectId) {
        lock(&self.placements).owners.remove(&(type_name.to_string(), *id));
    }

    /// Forgets every placement (the order list's stale keys are skipped
    /// when they come up).
    fn forget_all(&self) {
        lock(&self.placements).owners.clear();
    }
}

/// A node of the cluster, as [`Runtime::nodes`](crate::Runtime::nodes)
/// lists it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NodeInfo {
    /// The node's name (its certificate's).
    pub name: String,
    /// The address other processes reach it at.
    pub addr: SocketAddr,
    /// Whether it holds its lease now, by PostgreSQL's clock (a static
    /// cluster: this node, or a peer this process is connected to).
    pub alive: bool,
    /// The types it hosts (a static cluster knows only its own).
    pub hosts: Vec<String>,
}

/// The owners a process remembers: at most `capacity`, the oldest
/// forgotten first (a forgotten owner is looked up again when needed).
struct Placements {
    owners: HashMap<(String, ObjectId), String>,
    /// Keys in the order they were remembered.
    order: VecDeque<(String, ObjectId)>,
    capacity: usize,
}

impl Placements {
    fn new(capacity: usize) -> Self {
        Placements { owners: HashMap::new(), order: VecDeque::new(), capacity }
    }

    fn insert(&mut self, key: (String, ObjectId), owner: String) {
        if self.owners.insert(key.clone(), owner).is_none() {
            self.order.push_back(key);
        }
        if self.order.len() > 2 * self.capacity.max(1) {
            // Forgotten keys linger in the order; drop them.
            let owners = &self.owners;
            self.order.retain(|key| owners.contains_key(key));
        }
        while self.owners.len() > self.capacity {
            let Some(oldest) = self.order.pop_front() else { break };
            self.owners.remove(&oldest);
        }
    }
}
