//! A read-only view of a PostgreSQL cluster's tables, for the `stead`
//! command (`stead nodes --postgres`, `stead objects --postgres`).
//!
//! It lives here, next to the schema, rather than in the command: the
//! queries name the runtime's tables and columns, and the version check is
//! the runtime's own, so a change of the schema changes them in one place
//! and a tool built with an older runtime refuses newer tables instead of
//! misreading them. It is `#[doc(hidden)]`, not part of stead's API: its
//! rows mirror the tables (incarnations, lease times, epochs), which change
//! with the schema's version; the command is built from the same release.
//! Applications ask a running runtime instead (`Runtime::nodes`).
//!
//! Reading never writes: the session is made read-only
//! (`SET SESSION CHARACTERISTICS AS TRANSACTION READ ONLY`) before
//! anything is read, and no transaction stays open between queries (a
//! listing of millions of objects is read in pages, by key, so that it
//! holds back no vacuum of a production database). Every use of PostgreSQL,
//! connecting included, is bounded by the reader's timeout.

use std::future::Future;
use std::time::Duration;

use tokio_postgres::{Client, NoTls};

use super::postgres::{SCHEMA_VERSION, check_version, get, tables_exist};
use crate::error::{Error, Result};

/// The members, with what `stead_nodes` says of their leases; times are
/// PostgreSQL's, as Unix milliseconds (`lease_left_ms` is negative once
/// the lease lapsed).
const NODES: &str = "
SELECT name, incarnation, addr, hosts, lease_until > now(),
       (extract(epoch FROM lease_until) * 1000)::bigint,
       (extract(epoch FROM lease_until - now()) * 1000)::bigint,
       (extract(epoch FROM started_at) * 1000)::bigint
FROM stead_nodes
ORDER BY name";

/// One page of the directory, in order of type then id, after the key
/// `($4, $5)` when given; `$1` to `$3` filter by type, owner and a part of
/// the name, when given. An owner without a row in `stead_nodes` is not
/// alive.
const OBJECTS: &str = "
SELECT o.type, o.id, o.name, o.owner, o.epoch, coalesce(n.lease_until > now(), false),
       (extract(epoch FROM o.created_at) * 1000)::bigint
FROM stead_objects o LEFT JOIN stead_nodes n ON n.name = o.owner
WHERE ($1::text IS NULL OR o.type = $1::text)
  AND ($2::text IS NULL OR o.owner = $2::text)
  AND ($3::text IS NULL OR strpos(o.name, $3::text) > 0)
  AND ($4::text IS NULL OR (o.type, o.id) > ($4::text, $5::bytea))
ORDER BY o.type, o.id
LIMIT $6";

/// The types that have objects in the directory.
const TYPES: &str = "SELECT DISTINCT type FROM stead_objects ORDER BY type";

/// An error and its causes, on one line ("error connecting to server:
/// Connection refused (os error 111)").
fn with_sources(err: &dyn std::error::Error) -> String {
    let mut text = err.to_string();
    let mut source = err.source();
    while let Some(cause) = source {
        let cause_text = cause.to_string();
        if !text.contains(&cause_text) {
            text = format!("{text}: {cause_text}");
        }
        source = cause.source();
    }
    text
}

/// A read-only connection to a PostgreSQL cluster's tables, their version
/// checked.
pub struct ClusterReader {
    client: Client,
    timeout: Duration,
    cluster_id: String,
}

/// A row of `stead_nodes`: one node of the cluster.
#[derive(Debug, Clone)]
pub struct NodeRow {
    /// The node's name.
    pub name: String,
    /// Its run: a restarted node is the next incarnation.
    pub incarnation: i64,
    /// The address it registered (as written; a hand-edited row may hold
    /// anything).
    pub addr: String,
    /// The types it hosts.
    pub hosts: Vec<String>,
    /// Whether its lease holds now, by PostgreSQL's clock.
    pub alive: bool,
    /// When its lease ends (or ended), Unix milliseconds, PostgreSQL's clock.
    pub lease_until_unix_ms: i64,
    /// How long its lease still holds, in milliseconds; negative: for how
    /// long it has lapsed.
    pub lease_left_ms: i64,
    /// When this incarnation registered, Unix milliseconds.
    pub started_at_unix_ms: i64,
}

/// A row of `stead_objects`: where one object lives.
#[derive(Debug, Clone)]
pub struct ObjectRow {
    /// The object's type name.
    pub type_name: String,
    /// Its id's bytes (32 for every id stead makes).
    pub id: Vec<u8>,
    /// The name given to `id_from_name`, for a named id.
    pub name: Option<String>,
    /// The node that owns it.
    pub owner: String,
    /// Its placement's epoch (1 until objects move).
    pub epoch: i64,
    /// Whether its owner holds its lease now, by PostgreSQL's clock.
    pub owner_alive: bool,
    /// When it was placed, Unix milliseconds.
    pub created_at_unix_ms: i64,
}

/// Which objects [`ClusterReader::objects`] returns; `None` matches all.
#[derive(Debug, Clone, Default)]
pub struct ObjectFilter {
    /// Only objects of this type.
    pub type_name: Option<String>,
    /// Only objects owned by this node.
    pub owner: Option<String>,
    /// Only named objects whose name contains this text.
    pub name_contains: Option<String>,
}

impl ClusterReader {
    /// Connects to `conninfo` and checks that the database holds stead's
    /// tables, of a version this build knows. Each use of PostgreSQL,
    /// this one included, may take `timeout`.
    ///
    /// # Errors
    /// `Error::Config` for a conninfo that cannot be read, a database
    /// without stead's tables, or tables newer than this build;
    /// `Error::Unavailable` when PostgreSQL cannot be reached or does not
    /// answer in time; `Error::Storage` when it refuses a query.
    pub async fn connect(conninfo: &str, timeout: Duration) -> Result<Self> {
        let config: tokio_postgres::Config = conninfo.parse().map_err(|e| {
            Error::Config(format!(
                "the conninfo cannot be read: {e} (it looks like `host=db.internal user=stead dbname=stead`)"
            ))
        })?;
        let connected = tokio::time::timeout(timeout, config.connect(NoTls)).await.map_err(|_| {
            Error::Unavailable(format!(
                "PostgreSQL did not accept a connection within {timeout:?}: check that it runs and that the \
                 conninfo reaches it"
            ))
        })?;
        let (client, connection) = connected.map_err(|e| match e.as_db_error() {
            Some(db) => Error::Unavailable(format!("PostgreSQL refused the connection: {}", db.message())),
            None => Error::Unavailable(format!(
                "cannot connect to PostgreSQL: {}; check that it runs and that the conninfo reaches it",
                with_sources(&e)
            )),
        })?;
        tokio::spawn(async move {
            if let Err(err) = connection.await {
                tracing::debug!(%err, "a connection to PostgreSQL ended");
            }
        });
        let mut reader = ClusterReader { client, timeout, cluster_id: String::new() };
        reader
            .bounded("making the session read-only", |c| async move {
                c.batch_execute("SET SESSION CHARACTERISTICS AS TRANSACTION READ ONLY")
                    .await
                    .map_err(|e| super::postgres::pg_error("making the session read-only", &e))
            })
            .await?;
        let cluster_id = reader
            .bounded("checking the cluster's tables", |c| async move {
                if !tables_exist(c).await? {
                    return Err(Error::Config(
                        "this PostgreSQL database holds no stead cluster (no table `stead_schema`): check \
                         the conninfo's database (and `options=-csearch_path=..` if the cluster's tables \
                         are in a schema of their own), or start a node of the cluster first"
                            .into(),
                    ));
                }
                check_version(c, |version| {
                    Error::Config(format!(
                        "this PostgreSQL database holds stead tables of version {version}, newer than \
                         version {SCHEMA_VERSION}, the newest this build knows: use the `stead` command of \
                         the release the cluster's nodes run"
                    ))
                })
                .await
            })
            .await?;
        reader.cluster_id = cluster_id;
        Ok(reader)
    }

    /// The cluster's id (random, made with the tables).
    pub fn cluster_id(&self) -> &str {
        &self.cluster_id
    }

    /// Every node that ever registered, in order of name, alive or not.
    ///
    /// # Errors
    /// As [`connect`](Self::connect), for this query.
    pub async fn nodes(&self) -> Result<Vec<NodeRow>> {
        let rows = self.query("reading the cluster's nodes", NODES, &[]).await?;
        rows.iter()
            .map(|row| {
                Ok(NodeRow {
                    name: get(row, 0, "stead_nodes.name")?,
                    incarnation: get(row, 1, "stead_nodes.incarnation")?,
                    addr: get(row, 2, "stead_nodes.addr")?,
                    hosts: get(row, 3, "stead_nodes.hosts")?,
                    alive: get(row, 4, "lease_until > now()")?,
                    lease_until_unix_ms: get(row, 5, "stead_nodes.lease_until")?,
                    lease_left_ms: get(row, 6, "lease_until - now()")?,
                    started_at_unix_ms: get(row, 7, "stead_nodes.started_at")?,
                })
            })
            .collect()
    }

    /// At most `limit` objects that match `filter`, in order of type then
    /// id, after `after` (the last row of the previous page) when given. A
    /// page shorter than `limit` is the last.
    ///
    /// # Errors
    /// As [`connect`](Self::connect), for this query.
    pub async fn objects(
        &self,
        filter: &ObjectFilter,
        after: Option<&ObjectRow>,
        limit: usize,
    ) -> Result<Vec<ObjectRow>> {
        let limit = i64::try_from(limit).unwrap_or(i64::MAX);
        let after_type = after.map(|row| row.type_name.as_str());
        let after_id = after.map(|row| row.id.as_slice());
        let rows = self
            .query(
                "reading the cluster's objects",
                OBJECTS,
                &[&filter.type_name, &filter.owner, &filter.name_contains, &after_type, &after_id, &limit],
            )
            .await?;
        rows.iter()
            .map(|row| {
                Ok(ObjectRow {
                    type_name: get(row, 0, "stead_objects.type")?,
                    id: get(row, 1, "stead_objects.id")?,
                    name: get(row, 2, "stead_objects.name")?,
                    owner: get(row, 3, "stead_objects.owner")?,
                    epoch: get(row, 4, "stead_objects.epoch")?,
                    owner_alive: get(row, 5, "lease_until > now()")?,
                    created_at_unix_ms: get(row, 6, "stead_objects.created_at")?,
                })
            })
            .collect()
    }

    /// The types that have objects in the directory, in order.
    ///
    /// # Errors
    /// As [`connect`](Self::connect), for this query.
    pub async fn types(&self) -> Result<Vec<String>> {
        let rows = self.query("reading the cluster's types", TYPES, &[]).await?;
        rows.iter().map(|row| get(row, 0, "stead_objects.type")).collect()
    }

    async fn query(
        &self,
        what: &'static str,
        sql: &'static str,
        params: &[&(dyn tokio_postgres::types::ToSql + Sync)],
    ) -> Result<Vec<tokio_postgres::Row>> {
        self.bounded(what, |c| async move {
            c.query(sql, params).await.map_err(|e| super::postgres::pg_error(what, &e))
        })
        .await
    }

    /// Runs `f` on the connection within the timeout.
    async fn bounded<'a, T, F>(&'a self, what: &str, f: impl FnOnce(&'a Client) -> F) -> Result<T>
    where
        F: Future<Output = Result<T>> + 'a,
    {
        let timeout = self.timeout;
        tokio::time::timeout(timeout, f(&self.client)).await.unwrap_or_else(|_| {
            Err(Error::Unavailable(format!(
                "PostgreSQL did not answer within {timeout:?} ({what}): check that it runs and that the \
                 conninfo reaches it"
            )))
        })
    }
}
