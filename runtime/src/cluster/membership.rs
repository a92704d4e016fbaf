//! Membership of a PostgreSQL cluster: who the nodes are, where they
//! listen, and whether they are alive, judged by PostgreSQL's clock.
//!
//! A node registers `(name, incarnation, addr, hosts)` in `stead_nodes`
//! with a lease (`lease_until = now() + lease`, PostgreSQL's `now()`) and
//! renews it every quarter of the lease. A node whose `lease_until` has
//! passed is dead. A restarted node is a new incarnation: it takes the name
//! over once the old lease has lapsed (a live holder of the name is
//! refused), and whatever the old incarnation still believes, its renewals
//! no longer match and it stops for good.
//!
//! **Self-fencing.** A node serves only until two thirds of the lease after
//! the moment it *sent* its last successful renewal, by its own monotonic
//! clock. PostgreSQL set that renewal's `lease_until` after it received it,
//! so a node that cannot renew (PostgreSQL down, or the node cut off from
//! it) stops answering before the cluster may count it dead, with a third
//! of the lease to spare for clocks that run at different rates.
//!
//! Every process (clients too) reads the table every quarter of the lease,
//! and on demand when it meets a node it does not know: peers are found
//! there, never in a list.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio::sync::Mutex as AsyncMutex;
use tokio_postgres::types::Type;
use tokio_postgres::{Client, Statement};

use super::connections::Connections;
use super::postgres::{Pg, get, pg_error};
use crate::error::{Error, Result};
use crate::sync::lock;

const REGISTER: &str = "
INSERT INTO stead_nodes (name, incarnation, addr, hosts, lease_until, started_at)
VALUES ($1, 1, $2, $3, now() + make_interval(secs => $4), now())
ON CONFLICT (name) DO UPDATE
    SET incarnation = stead_nodes.incarnation + 1, addr = EXCLUDED.addr, hosts = EXCLUDED.hosts,
        lease_until = EXCLUDED.lease_until, started_at = EXCLUDED.started_at
    WHERE stead_nodes.lease_until < now()
RETURNING incarnation";

/// Renews the lease; answers whether it still held (`false`: it had
/// lapsed, and the cluster may have counted the node dead meanwhile).
const RENEW: &str = "
UPDATE stead_nodes n SET lease_until = now() + make_interval(secs => $3)
FROM (SELECT lease_until > now() AS held FROM stead_nodes WHERE name = $1 AND incarnation = $2) old
WHERE n.name = $1 AND n.incarnation = $2
RETURNING old.held";

const LEAVE: &str = "UPDATE stead_nodes SET lease_until = now() WHERE name = $1 AND incarnation = $2";

/// The members, each with how many seconds of its lease are left by
/// PostgreSQL's clock (0: it is dead).
const MEMBERS: &str = "
SELECT name, incarnation, addr, hosts, GREATEST(EXTRACT(EPOCH FROM lease_until - now()), 0)::float8
FROM stead_nodes ORDER BY name";

/// How long shutdown waits for PostgreSQL to take note that the node left.
const LEAVE_TIMEOUT: Duration = Duration::from_secs(1);

/// A node's lease, as the node itself sees it.
pub(crate) struct Lease {
    /// The node's name.
    pub(crate) name: String,
    /// This run of the node.
    pub(crate) incarnation: i64,
    /// How long a renewal lasts in PostgreSQL.
    pub(crate) length: Duration,
    state: Mutex<LeaseState>,
}

struct LeaseState {
    /// Until when the node may serve: two thirds of the lease after its
    /// last successful renewal was sent.
    serve_until: Instant,
    /// A newer incarnation took the name over, or the node left.
    ended: Option<&'static str>,
}

impl Lease {
    fn new(name: String, incarnation: i64, length: Duration, sent: Instant) -> Self {
        let serve_until = sent + fenced_after(length);
        Lease { name, incarnation, length, state: Mutex::new(LeaseState { serve_until, ended: None }) }
    }

    /// A renewal sent at `sent` succeeded.
    fn renewed(&self, sent: Instant) {
        let mut state = lock(&self.state);
        state.serve_until = state.serve_until.max(sent + fenced_after(self.length));
    }

    fn end(&self, why: &'static str) {
        lock(&self.state).ended.get_or_insert(why);
    }

    /// Whether the lease ended for good (the node left, or was replaced).
    pub(crate) fn has_ended(&self) -> bool {
        lock(&self.state).ended.is_some()
    }

    /// Whether this node may serve now; if not, the error its callers get.
    pub(crate) fn check(&self) -> Result<()> {
        let state = lock(&self.state);
        if let Some(why) = state.ended {
            return Err(Error::Unavailable(format!(
                "node `{}` (incarnation {}) serves nothing more: {why}; retry later",
                self.name, self.incarnation
            )));
        }
        let now = Instant::now();
        if now >= state.serve_until {
            return Err(Error::Unavailable(format!(
                "node `{}` has not renewed its lease in PostgreSQL for {:?}: it stops serving until it \
                 can (self-fencing), so that it never answers once the cluster may count it dead; retry \
                 later",
                self.name,
                now - state.serve_until + fenced_after(self.length)
            )));
        }
        Ok(())
    }
}

/// How long after sending a successful renewal a node may serve.
fn fenced_after(lease: Duration) -> Duration {
    lease * 2 / 3
}

/// One node of the cluster, as its row says.
#[derive(Debug, Clone)]
pub(crate) struct Member {
    pub(crate) name: String,
    pub(crate) incarnation: i64,
    pub(crate) addr: SocketAddr,
    pub(crate) alive: bool,
    pub(crate) hosts: Vec<String>,
    /// How much of its lease was left when the row was read, and when
    /// that was (this process's clock).
    lease_left: Duration,
    read_at: Instant,
}

impl Member {
    /// How much of the node's lease is left now, as far as this process
    /// knows (zero for a dead node): a node that does not answer within it
    /// is dead by then anyway.
    pub(crate) fn lease_left(&self) -> Duration {
        self.lease_left.saturating_sub(self.read_at.elapsed())
    }
}

/// The membership connection (apart from the directory's, so that
/// renewals never wait behind placements) and the members last read.
pub(crate) struct Members {
    conninfo: String,
    timeout: Duration,
    conn: AsyncMutex<Option<MembersConn>>,
    known: Mutex<HashMap<String, Member>>,
    /// When the members were last read.
    read_at: Mutex<Option<Instant>>,
}

struct MembersConn {
    client: Client,
    renew: Statement,
    members: Statement,
}

impl Members {
    pub(crate) fn new(conninfo: &str, timeout: Duration) -> Self {
        Members {
            conninfo: conninfo.to_string(),
            timeout,
            conn: AsyncMutex::new(None),
            known: Mutex::new(HashMap::new()),
            read_at: Mutex::new(None),
        }
    }

    /// Runs `f` on the membership connection within `timeout`, connecting
    /// first if needed; a failure drops the connection.
    async fn with<T>(
        &self,
        timeout: Duration,
        what: &str,
        f: impl AsyncFnOnce(&MembersConn) -> Result<T, tokio_postgres::Error>,
    ) -> Result<T> {
        let work = async {
            let mut conn = self.conn.lock().await;
            let live = match conn.take() {
                Some(live) if !live.client.is_closed() => live,
                _ => {
                    let client = Pg::new(&self.conninfo, self.timeout).connect_raw().await?;
                    let renew_types = [Type::TEXT, Type::INT8, Type::FLOAT8];
                    let prepared =
                        tokio::try_join!(client.prepare_typed(RENEW, &renew_types), client.prepare(MEMBERS),);
                    let (renew, members) = prepared.map_err(|e| pg_error(what, &e))?;
                    MembersConn { client, renew, members }
                }
            };
            // A failed (or, by the timeout below, abandoned) connection is
            // dropped: a late answer would hold up the next use.
            let result = f(&live).await.map_err(|e| pg_error(what, &e))?;
            *conn = Some(live);
            Ok(result)
        };
        tokio::time::timeout(timeout, work).await.unwrap_or_else(|_| {
            Err(Error::Unavailable(format!(
                "PostgreSQL did not answer within {timeout:?} ({what}); retry later"
            )))
        })
    }

    /// Registers node `name` at `addr`, hosting `hosts`, as a new
    /// incarnation. A live holder of the name (its lease not lapsed) is
    /// waited for during one lease, then refused.
    pub(crate) async fn register(
        &self,
        name: &str,
        addr: SocketAddr,
        hosts: &[&str],
        length: Duration,
    ) -> Result<Arc<Lease>> {
        let client = Pg::new(&self.conninfo, self.timeout).connect_raw().await?;
        let failed = |e: tokio_postgres::Error| pg_error("registering the node", &e);
        let hosts: Vec<String> = hosts.iter().map(|h| h.to_string()).collect();
        let addr_text = addr.to_string();
        let secs = length.as_secs_f64();
        let give_up = Instant::now() + length + length / 2;
        loop {
            let sent = Instant::now();
            let registered = tokio::time::timeout(
                self.timeout,
                client.query_opt(REGISTER, &[&name, &addr_text, &hosts, &secs]),
            )
            .await
            .map_err(|_| {
                Error::Unavailable(format!(
                    "PostgreSQL did not answer within {:?} while node `{name}` registered; check \
                             that it runs and that the conninfo reaches it",
                    self.timeout
                ))
            })?
            .map_err(failed)?;
            if let Some(row) = registered {
                let incarnation = get::<i64>(&row, 0, "stead_nodes.incarnation")?;
                tracing::info!(node = name, incarnation, %addr, "joined the cluster");
                return Ok(Arc::new(Lease::new(name.to_string(), incarnation, length, sent)));
            }
            if Instant::now() >= give_up {
                let holder = client
                    .query_opt("SELECT addr FROM stead_nodes WHERE name = $1", &[&name])
                    .await
                    .ok()
                    .flatten()
                    .and_then(|row| row.try_get::<_, String>(0).ok())
                    .unwrap_or_default();
                return Err(Error::Config(format!(
                    "node `{name}` is a live member of this cluster already (at {holder}, its lease renewed \
                     by another process): two processes cannot be one node; stop the other process, or \
                     give this one another name"
                )));
            }
            // Maybe the previous incarnation crashed: its lease lapses soon.
            tokio::time::sleep((length / 10).max(Duration::from_millis(50))).await;
        }
    }

    /// Renews `lease`; a renewal that no longer matches (a newer
    /// incarnation has the name) ends it for good. A renewal that finds the
    /// lease lapsed runs `on_lapse` before the node may serve again.
    pub(crate) async fn renew(&self, lease: &Lease, on_lapse: impl FnOnce()) {
        let sent = Instant::now();
        let (name, incarnation, secs) = (&lease.name, lease.incarnation, lease.length.as_secs_f64());
        // A renewal answered later than this could not extend anything.
        let timeout = fenced_after(lease.length) / 2;
        let renewed = self
            .with(timeout, "renewing the node's lease", async |c| {
                c.client.query_opt(&c.renew, &[name, &incarnation, &secs]).await
            })
            .await;
        match renewed {
            Ok(Some(row)) => {
                if !row.try_get::<_, bool>(0).unwrap_or(false) {
                    // Counted dead meanwhile: its objects may live elsewhere
                    // now. What it remembers goes before it serves again.
                    tracing::warn!(
                        node = %name, incarnation,
                        "the node's lease had lapsed in PostgreSQL; it forgets its placements and objects in memory before it serves again"
                    );
                    on_lapse();
                }
                lease.renewed(sent)
            }
            Ok(None) => {
                lease.end("a newer process of the same name joined the cluster");
                tracing::error!(
                    node = %name,
                    incarnation,
                    "a newer process took this node's name over in the cluster; this one serves nothing more"
                );
            }
            Err(err) => tracing::warn!(node = %name, %err, "could not renew the lease"),
        }
    }

    /// Ends `lease` now (at shutdown), so that the cluster counts the node
    /// dead at once.
    pub(crate) async fn leave(&self, lease: &Lease) {
        lease.end("the node shut down");
        let (name, incarnation) = (&lease.name, lease.incarnation);
        let left = self
            .with(self.timeout.min(LEAVE_TIMEOUT), "leaving the cluster", async |c| {
                c.client.execute(LEAVE, &[name, &incarnation]).await.map(drop)
            })
            .await;
        if let Err(err) = left {
            tracing::warn!(node = %name, %err, "could not leave the cluster; its lease lapses by itself");
        }
    }

    /// Reads the members from PostgreSQL, and tells `connections` where the
    /// nodes are. A row that cannot be read is skipped with a warning.
    /// Waits at most `timeout`.
    pub(crate) async fn refresh(&self, connections: &Connections, timeout: Duration) -> Result<Vec<Member>> {
        let sent = Instant::now();
        let rows = self
            .with(timeout, "reading the cluster's members", async |c| c.client.query(&c.members, &[]).await)
            .await?;
        let mut members = Vec::with_capacity(rows.len());
        for row in &rows {
            match member(row, sent) {
                Ok(member) => members.push(member),
                Err(err) => tracing::warn!(%err, "skipped a row of stead_nodes"),
            }
        }
        let mut known = lock(&self.known);
        known.clear();
        for member in &members {
            connections.set_peer(&member.name, member.addr, member.incarnation);
            known.insert(member.name.clone(), member.clone());
        }
        drop(known);
        *lock(&self.read_at) = Some(sent);
        Ok(members)
    }

    /// Whether the members were read less than `age` ago.
    pub(crate) fn read_within(&self, age: Duration) -> bool {
        lock(&self.read_at).is_some_and(|at| at.elapsed() < age)
    }

    /// Node `name` as last read, if it is a member.
    pub(crate) fn get(&self, name: &str) -> Option<Member> {
        lock(&self.known).get(name).cloned()
    }

    /// How long a use of PostgreSQL may take (`connect_timeout`).
    pub(crate) fn timeout(&self) -> Duration {
        self.timeout
    }

    /// The members last read.
    pub(crate) fn all(&self) -> Vec<Member> {
        let mut members: Vec<_> = lock(&self.known).values().cloned().collect();
        members.sort_by(|a, b| a.name.cmp(&b.name));
        members
    }
}

/// A row of `stead_nodes`, checked; `sent` is when it was asked for (the
/// lease left is counted from then, to err on the short side).
fn member(row: &tokio_postgres::Row, sent: Instant) -> Result<Member> {
    let name = get::<String>(row, 0, "stead_nodes.name")?;
    let addr_text = get::<String>(row, 2, "stead_nodes.addr")?;
    let addr = addr_text.parse().map_err(|e| {
        Error::Storage(format!(
            "node `{name}` is registered at {addr_text:?}, which is not an IP address and port ({e}); the \
             row was changed by hand: the node writes it again when it restarts"
        ))
    })?;
    let lease_left = Duration::try_from_secs_f64(get(row, 4, "lease_until - now()")?).unwrap_or_default();
    Ok(Member {
        incarnation: get(row, 1, "stead_nodes.incarnation")?,
        addr,
        hosts: get(row, 3, "stead_nodes.hosts")?,
        alive: !lease_left.is_zero(),
        lease_left,
        read_at: sent,
        name,
    })
}
