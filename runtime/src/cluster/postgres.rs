//! The cluster on PostgreSQL: the connection to it, its schema, and the
//! directory kept in it.
//!
//! PostgreSQL is the cluster's referee: membership leases are judged by its
//! clock (`now()`), placements by its unique keys. stead builds no consensus
//! of its own. Tables (names start with `stead_`; set another schema with
//! `options=-csearch_path=..` in the conninfo):
//!
//! - `stead_schema (version, cluster_id)`: one row; the version of these
//!   tables, and the random id of the cluster, created with them, that
//!   processes compare at every handshake.
//! - `stead_nodes (name, incarnation, addr, hosts, lease_until, started_at)`:
//!   the members (see `membership.rs`).
//! - `stead_objects (type, id, name, owner, epoch, created_at)`: the
//!   directory. A node claims an object for itself with one
//!   `INSERT .. ON CONFLICT DO NOTHING`, after checking that its lease
//!   holds; the first claim wins (`epoch` 1). An object that was placed
//!   already costs a second round trip, which answers its owner and, when
//!   the owner's lease has lapsed, lets a node that replicates storage
//!   take it over in one conditional `UPDATE`, bumping `epoch`, which
//!   fences the object's log (see [`FENCES`] and `replication.rs`).
//!   `snapshot_seq` is
//!   the log entry of the object's snapshot; `alarm_at` is its
//!   alarm (milliseconds since the epoch), so that a dead node's alarms
//!   are found and fired elsewhere (see `orphans.rs`).
//! - `stead_log (type, id, seq, wal_offset, frames)`: each shipped commit's
//!   WAL frames; `stead_snapshots (type, id, seq, data)`: the object's
//!   database as of log entry `seq` (the log before it is trimmed). See
//!   `replication.rs`. Both are compressed with lz4 where the server has
//!   it (see [`compress_with_lz4`]).
//!
//! The tables are versioned (`stead_schema.version`): a node upgrades older
//! ones in place, one migration after the other, under the schema lock.
//!
//! stead connects without TLS (`NoTls`): reach a PostgreSQL on another host
//! through a private network or a TLS tunnel; a conninfo with
//! `sslmode=require` is refused by the driver.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use tokio_postgres::types::{ToSql, Type};
use tokio_postgres::{Client, GenericClient, NoTls, Row, Statement};

use super::directory::check_type_name;
use super::driven::{Driver, PgConnection};
use super::membership::Lease;
use super::replication::number_taken;
use crate::error::{Error, Result};
use crate::id::ObjectId;
use crate::local::BoxFuture;

use super::Directory;

/// The version of the tables this build reads and writes.
pub(crate) const SCHEMA_VERSION: i32 = 3;

/// The advisory lock under which the schema is created (its key spells
/// "stead" and the lock's purpose).
const SCHEMA_LOCK: i64 = 0x7374_6561_6400_0001;

const SCHEMA: &str = "
CREATE TABLE stead_schema (
    version integer NOT NULL,
    cluster_id text NOT NULL,
    created_at timestamptz NOT NULL DEFAULT now()
);
CREATE TABLE stead_nodes (
    name text PRIMARY KEY,
    incarnation bigint NOT NULL,
    addr text NOT NULL,
    hosts text[] NOT NULL,
    lease_until timestamptz NOT NULL,
    started_at timestamptz NOT NULL
);
CREATE TABLE stead_objects (
    type text NOT NULL,
    id bytea NOT NULL,
    name text,
    owner text NOT NULL,
    epoch bigint NOT NULL,
    created_at timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (type, id)
);
";

/// The migrations from each version to the next: `MIGRATIONS[0]` takes
/// version 1 to 2, and so on.
const MIGRATIONS: &[&str] = &[
    "
ALTER TABLE stead_objects
    ADD COLUMN snapshot_seq bigint NOT NULL DEFAULT 0,
    ADD COLUMN alarm_at bigint;
CREATE INDEX stead_objects_alarms ON stead_objects (alarm_at) WHERE alarm_at IS NOT NULL;
CREATE TABLE stead_log (
    type text NOT NULL,
    id bytea NOT NULL,
    seq bigint NOT NULL,
    wal_offset bigint NOT NULL,
    frames bytea NOT NULL,
    PRIMARY KEY (type, id, seq)
);
CREATE TABLE stead_snapshots (
    type text NOT NULL,
    id bytea NOT NULL,
    seq bigint NOT NULL,
    data bytea NOT NULL,
    PRIMARY KEY (type, id)
);
",
    FENCES,
];

/// Version 2 to 3: every change of an object's epoch (a takeover) fences
/// the object's log, and fences are never deleted (see `replication.rs`).
///
/// A fence is a row of `stead_log` that takes the number after the last
/// entry (or the snapshot's), with no frames and `wal_offset` minus the
/// new epoch. Entries are appended by number with a plain `INSERT`, and
/// the primary key refuses a number twice: the node that lost the object
/// can never append its next entry. The trigger does it in the
/// statement that changes the epoch, whoever runs it (a node of this
/// release or an older one, or an operator by hand), and its statements
/// read the tables where they were created (`SET search_path FROM
/// CURRENT`). Should an entry of the old owner take that number first (it
/// was in flight), the `INSERT` fails, and with it the takeover, which is
/// then tried again. The second trigger keeps fences from deletes, the
/// log's trims included (also an older release's, which trims every
/// entry up to a snapshot).
const FENCES: &str = "
CREATE FUNCTION stead_fence() RETURNS trigger LANGUAGE plpgsql SET search_path FROM CURRENT AS $$
BEGIN
    INSERT INTO stead_log (type, id, seq, wal_offset, frames)
    SELECT NEW.type, NEW.id, greatest(max(l.seq), NEW.snapshot_seq) + 1, -NEW.epoch, ''::bytea
    FROM stead_log l WHERE l.type = NEW.type AND l.id = NEW.id;
    RETURN NULL;
END $$;
CREATE TRIGGER stead_fence AFTER UPDATE OF epoch ON stead_objects
    FOR EACH ROW WHEN (NEW.epoch <> OLD.epoch) EXECUTE FUNCTION stead_fence();
CREATE FUNCTION stead_keep_fence() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    RETURN NULL;
END $$;
CREATE TRIGGER stead_keep_fences BEFORE DELETE ON stead_log
    FOR EACH ROW WHEN (OLD.wal_offset < 0) EXECUTE FUNCTION stead_keep_fence();
";

/// A claim: the object is inserted for node `$4`, unless it was placed
/// already; then nothing is, and [`TAKE_OVER`] says where.
///
/// A new object, the common case, costs this one statement, kept to a
/// plain insert: checking the node's lease in the statement as well (a
/// subquery on `stead_nodes` and `now()`) added 10 to 25 µs to its round
/// trip of about 70 µs on the test VM (pgbench, prepared statements).
/// The node checked its lease itself just before, by its own monotonic
/// clock (self-fencing: see `membership.rs`), and nothing here needs the
/// check to be PostgreSQL's: a node whose lease lapsed between the two can
/// only place a new object on itself, which is then the object's single
/// owner like any other. Taking a placed object over (below) does check
/// both leases in PostgreSQL, and a replicated object's writes are fenced
/// by its epoch there too.
const CLAIM: &str = "
INSERT INTO stead_objects (type, id, name, owner, epoch)
VALUES ($1, $2, $3, $4, 1)
ON CONFLICT (type, id) DO NOTHING";

/// A placed object's owner, after a claim inserted nothing. When `$5`
/// (node `$3` replicates its objects' storage), the owner is another node
/// and its lease has lapsed, `$3` takes the object over while its
/// incarnation `$4` holds its lease: a new owner and the next epoch.
/// Returns the owner, and whether that answer is settled: taken over, or
/// an owner that is `$3` or alive. An unsettled one (a dead owner left
/// alone: `$3` takes nothing over, its lease lapsed, or another node took
/// the object over after this statement's snapshot, which its select
/// cannot see) is looked up again. No row: the object lives nowhere (it
/// was removed between the two statements).
const TAKE_OVER: &str = "
WITH taken AS (
    UPDATE stead_objects o SET owner = $3, epoch = o.epoch + 1
    WHERE o.type = $1 AND o.id = $2 AND $5 AND o.owner <> $3
      AND EXISTS (SELECT 1 FROM stead_nodes WHERE name = $3 AND incarnation = $4 AND lease_until > now())
      AND NOT EXISTS (SELECT 1 FROM stead_nodes n WHERE n.name = o.owner AND n.lease_until > now())
    RETURNING o.owner)
SELECT owner, true AS settled FROM taken
UNION ALL
SELECT o.owner, o.owner = $3 OR EXISTS (SELECT 1 FROM stead_nodes n WHERE n.name = o.owner AND n.lease_until > now())
FROM stead_objects o
WHERE o.type = $1 AND o.id = $2 AND NOT EXISTS (SELECT 1 FROM taken)";

const LOOKUP: &str = "SELECT owner FROM stead_objects WHERE type = $1 AND id = $2";

/// How many times a takeover is tried while the old owner's entries take
/// the fence's number first (see `claim_now`).
const TAKE_OVER_TRIES: u32 = 5;

/// One connection to PostgreSQL (made on first use, made again after it
/// broke) with its prepared statements. Every use is bounded in time.
pub(crate) struct Pg {
    conninfo: String,
    timeout: Duration,
    /// Whether its users drive the connection ([`Pg::driven`]).
    driven: bool,
    conn: tokio::sync::Mutex<Option<Arc<PgConn>>>,
}

/// A live connection and its statements.
pub(crate) struct PgConn {
    pub(crate) client: Client,
    /// The connection's I/O, when its users drive it ([`Pg::driven`]).
    driver: Option<Driver>,
    claim: Statement,
    take_over: Statement,
    lookup: Statement,
    /// Other statements, prepared on first use.
    prepared: std::sync::Mutex<std::collections::HashMap<&'static str, Statement>>,
}

impl PgConn {
    /// `sql` prepared on this connection (once: later uses reuse it).
    pub(crate) async fn prepared(
        &self,
        sql: &'static str,
        types: &[Type],
    ) -> std::result::Result<Statement, tokio_postgres::Error> {
        if let Some(statement) = crate::sync::lock(&self.prepared).get(sql) {
            return Ok(statement.clone());
        }
        let statement = self.client.prepare_typed(sql, types).await?;
        crate::sync::lock(&self.prepared).insert(sql, statement.clone());
        Ok(statement)
    }
}

impl Pg {
    /// A connection to `conninfo`, each use of which (connecting included)
    /// may take `timeout`.
    pub(crate) fn new(conninfo: &str, timeout: Duration) -> Self {
        Pg { conninfo: conninfo.to_string(), timeout, driven: false, conn: tokio::sync::Mutex::new(None) }
    }

    /// Like [`new`](Self::new), but the connection has no task of its own:
    /// each use drives it (see `driven.rs`). For one use at a time.
    pub(crate) fn driven(conninfo: &str, timeout: Duration) -> Self {
        Pg { driven: true, ..Pg::new(conninfo, timeout) }
    }

    /// Runs `f` on the connection, within the timeout; `what` says what
    /// for, in errors. A connection that failed or did not answer is
    /// dropped (the next use connects again).
    pub(crate) async fn with<T, F>(&self, what: &str, f: impl FnOnce(Arc<PgConn>) -> F) -> Result<T>
    where
        F: Future<Output = Result<T, tokio_postgres::Error>>,
    {
        self.with_timeout(self.timeout, what, f).await
    }

    /// Like [`with`](Self::with), bounded by `timeout` instead.
    pub(crate) async fn with_timeout<T, F>(
        &self,
        timeout: Duration,
        what: &str,
        f: impl FnOnce(Arc<PgConn>) -> F,
    ) -> Result<T>
    where
        F: Future<Output = Result<T, tokio_postgres::Error>>,
    {
        let deadline = tokio::time::Instant::now() + timeout;
        let late = || {
            Error::Unavailable(format!("PostgreSQL did not answer within {timeout:?} ({what}); retry later"))
        };
        let conn = tokio::time::timeout_at(deadline, self.connection()).await.map_err(|_| late())??;
        // Pinned here, once: the futures below hold a pointer to it, not a
        // copy of it each (see `drive`).
        let work = std::pin::pin!(f(conn.clone()));
        match tokio::time::timeout_at(deadline, drive(conn.driver.as_ref(), work)).await {
            Ok(Ok(value)) => Ok(value),
            Ok(Err(err)) => {
                if conn.client.is_closed() {
                    self.forget(&conn).await;
                }
                Err(pg_error(what, &err))
            }
            Err(_) => {
                // Its answer may still come, late; queries behind it would
                // wait for it: start afresh.
                self.forget(&conn).await;
                Err(late())
            }
        }
    }

    async fn connection(&self) -> Result<Arc<PgConn>> {
        let mut conn = self.conn.lock().await;
        if let Some(live) = conn.as_ref()
            && live.driver.as_ref().is_none_or(Driver::alive)
            && !live.client.is_closed()
        {
            return Ok(live.clone());
        }
        // Boxed: connecting is rare, and its future (about 9 KiB) made the
        // future of every use of the connection that large; a lone write's
        // was copied at its spawn and at each `.await` that starts a nested
        // future (`memmove` took about 4 % of the lone writer's CPU).
        let live = Box::pin(self.connect_prepared()).await?;
        *conn = Some(live.clone());
        Ok(live)
    }

    /// A new connection with the directory's statements prepared.
    async fn connect_prepared(&self) -> Result<Arc<PgConn>> {
        let (client, connection) = connect_unspawned(&self.conninfo).await?;
        let driver = match self.driven {
            true => Some(Driver::new(connection)),
            false => {
                spawn_connection(connection);
                None
            }
        };
        let claim_types = [Type::TEXT, Type::BYTEA, Type::TEXT, Type::TEXT];
        let take_over_types = [Type::TEXT, Type::BYTEA, Type::TEXT, Type::INT8, Type::BOOL];
        let lookup_types = [Type::TEXT, Type::BYTEA];
        let prepares = async {
            tokio::try_join!(
                client.prepare_typed(CLAIM, &claim_types),
                client.prepare_typed(TAKE_OVER, &take_over_types),
                client.prepare_typed(LOOKUP, &lookup_types),
            )
        };
        let (claim, take_over, lookup) = drive(driver.as_ref(), std::pin::pin!(prepares))
            .await
            .map_err(|e| pg_error("preparing the directory's statements", &e))?;
        Ok(Arc::new(PgConn { client, driver, claim, take_over, lookup, prepared: Default::default() }))
    }

    /// A new connection of its own, outside this `Pg`, within the timeout.
    pub(crate) async fn connect_raw(&self) -> Result<Client> {
        tokio::time::timeout(self.timeout, connect(&self.conninfo)).await.unwrap_or_else(|_| {
            Err(Error::Unavailable(format!(
                "PostgreSQL did not accept a connection within {:?} (`connect_timeout`); check that it \
                 runs and that the conninfo reaches it",
                self.timeout
            )))
        })
    }

    async fn forget(&self, broken: &Arc<PgConn>) {
        let mut conn = self.conn.lock().await;
        if conn.as_ref().is_some_and(|live| Arc::ptr_eq(live, broken)) {
            *conn = None;
        }
    }
}

/// Runs `work`, a use of a connection, driving the connection meanwhile if
/// its users drive it (`driver`).
///
/// `work` comes pinned by the caller: taken by value, each async layer
/// kept a copy of it in its own state (a use's future was about 5 KiB, 3
/// times the work's, copied at every spawn and `.await`).
async fn drive<F: Future>(driver: Option<&Driver>, work: Pin<&mut F>) -> F::Output {
    match driver {
        Some(driver) => driver.drive(work).await,
        None => work.await,
    }
}

/// Connects to `conninfo`; the connection's task runs on the current tokio
/// runtime until the client is dropped.
async fn connect(conninfo: &str) -> Result<Client> {
    let (client, connection) = connect_unspawned(conninfo).await?;
    spawn_connection(connection);
    Ok(client)
}

/// Connects to `conninfo`; the caller runs the connection.
async fn connect_unspawned(conninfo: &str) -> Result<(Client, PgConnection)> {
    tokio_postgres::connect(conninfo, NoTls).await.map_err(|e| pg_error("connecting", &e))
}

/// Runs `connection` on the current tokio runtime until its client is
/// dropped.
fn spawn_connection(connection: PgConnection) {
    tokio::spawn(async move {
        if let Err(err) = connection.await {
            tracing::debug!(%err, "a connection to PostgreSQL ended");
        }
    });
}

/// The error for a failed use of PostgreSQL: a refusal by the server is a
/// `Storage` error, anything else (down, unreachable, cut off) makes it
/// `Unavailable`.
pub(crate) fn pg_error(what: &str, err: &tokio_postgres::Error) -> Error {
    match err.as_db_error() {
        Some(db) => Error::Storage(format!("PostgreSQL refused {what}: {}", db.message())),
        None => Error::Unavailable(format!("PostgreSQL is unavailable ({what}): {err}; retry later")),
    }
}

/// Creates the tables on first start (a node only; `create` false for a
/// client, which never writes) and checks their version; returns the
/// cluster's id.
pub(crate) async fn setup(conninfo: &str, timeout: Duration, create: bool) -> Result<String> {
    tokio::time::timeout(timeout, setup_now(conninfo, create)).await.unwrap_or_else(|_| {
        Err(Error::Unavailable(format!(
            "PostgreSQL did not answer within {timeout:?} (`connect_timeout`) while checking the \
             cluster's tables; check that it runs and that the conninfo reaches it"
        )))
    })
}

async fn setup_now(conninfo: &str, create: bool) -> Result<String> {
    let mut client = connect(conninfo).await?;
    let failed = |e: tokio_postgres::Error| pg_error("checking the cluster's tables", &e);
    let mut tx = client.transaction().await.map_err(failed)?;
    // Nodes starting together create the tables once.
    tx.execute("SELECT pg_advisory_xact_lock($1)", &[&SCHEMA_LOCK]).await.map_err(failed)?;
    if !tables_exist(&tx).await? {
        if !create {
            return Err(Error::Config(
                "the PostgreSQL database holds no stead cluster yet (no table `stead_schema`): start a \
                 node of the cluster first (a client never writes to PostgreSQL), or check the conninfo"
                    .into(),
            ));
        }
        let mut id = [0u8; 16];
        getrandom::fill(&mut id)
            .map_err(|e| Error::Config(format!("cannot draw a random cluster id: {e}")))?;
        let id: String = id.iter().map(|b| format!("{b:02x}")).collect();
        tx.batch_execute(SCHEMA).await.map_err(failed)?;
        tx.execute("INSERT INTO stead_schema (version, cluster_id) VALUES (1, $1)", &[&id])
            .await
            .map_err(failed)?;
    }
    if create {
        migrate(&tx).await?;
        compress_with_lz4(&mut tx).await?;
    }
    let cluster_id = check_version(&tx, |version| {
        Error::Config(format!(
            "the PostgreSQL database holds stead tables of version {version}, newer than version \
             {SCHEMA_VERSION}, the newest this build knows: run the stead release of the cluster's other \
             nodes here, or point this process at another database"
        ))
    })
    .await?;
    tx.commit().await.map_err(failed)?;
    Ok(cluster_id)
}

/// Brings the tables from their version up to [`SCHEMA_VERSION`], one
/// migration after the other (newer ones are left alone, and refused by
/// `check_version`).
async fn migrate(tx: &tokio_postgres::Transaction<'_>) -> Result<()> {
    let failed = |e: tokio_postgres::Error| pg_error("upgrading the cluster's tables", &e);
    let row = tx.query_one("SELECT version FROM stead_schema", &[]).await.map_err(failed)?;
    let mut version = get::<i32>(&row, 0, "stead_schema.version")?;
    while (1..SCHEMA_VERSION).contains(&version) {
        let Some(migration) = MIGRATIONS.get(version as usize - 1) else { break };
        tx.batch_execute(migration).await.map_err(failed)?;
        version += 1;
        tx.execute("UPDATE stead_schema SET version = $1", &[&version]).await.map_err(failed)?;
    }
    Ok(())
}

/// Whether `stead_log.frames` is compressed with lz4 (PostgreSQL 14 and later).
const USES_LZ4: &str = "
SELECT attcompression = 'l' FROM pg_attribute WHERE attrelid = 'stead_log'::regclass AND attname = 'frames'";

/// Sets lz4; the tables' lock is waited for at most a second (the setting
/// needs it alone), so that a busy cluster never holds up a node's start.
const SET_LZ4: &str = "
SET LOCAL lock_timeout = '1s';
ALTER TABLE stead_log ALTER COLUMN frames SET COMPRESSION lz4;
ALTER TABLE stead_snapshots ALTER COLUMN data SET COMPRESSION lz4";

/// Has PostgreSQL compress the log's frames and the snapshots with lz4
/// rather than its default, pglz, where the server has lz4 (version 14 and
/// later built with it, as the common packages are). An entry holds whole
/// pages (1 KiB each), mostly zeros, and PostgreSQL compresses every value
/// over about 2 KiB (a turn that wrote three pages or more, every
/// snapshot): for a turn of 3 KiB that cost 20–40 µs more with pglz than
/// with lz4 on the test VM (`cargo bench --bench postgres`, see the
/// README). The setting is no new version of the tables: any release reads
/// such values, and values stored before keep their compression. When it
/// cannot be set (no lz4, another owner, the tables busy for a second) the
/// log keeps pglz, with a warning, and the next node to start tries again.
async fn compress_with_lz4(tx: &mut tokio_postgres::Transaction<'_>) -> Result<()> {
    let failed = |e: tokio_postgres::Error| pg_error("setting the log's compression", &e);
    // In a savepoint: on an older server the check itself fails.
    let savepoint = tx.savepoint("stead_compression").await.map_err(failed)?;
    let set = match savepoint.query_one(USES_LZ4, &[]).await {
        Ok(row) if get::<bool>(&row, 0, "attcompression")? => Ok(()),
        Ok(_) => savepoint.batch_execute(SET_LZ4).await,
        Err(err) => Err(err),
    };
    match set {
        Ok(()) => savepoint.commit().await.map_err(failed),
        Err(err) if err.as_db_error().is_some() => {
            tracing::warn!(
                err = %pg_error("lz4 compression", &err),
                "could not have PostgreSQL compress the objects' log with lz4 (it needs PostgreSQL 14 or \
                 later built with lz4, and the tables' owner): the log keeps pglz, which adds tens of \
                 microseconds to each turn that ships more than 2 KiB; the next node to start tries again"
            );
            savepoint.rollback().await.map_err(failed)
        }
        Err(err) => Err(failed(err)),
    }
}

/// Whether the database (on the connection's `search_path`) holds stead's
/// tables.
pub(crate) async fn tables_exist(client: &impl GenericClient) -> Result<bool> {
    let failed = |e: tokio_postgres::Error| pg_error("checking the cluster's tables", &e);
    client
        .query_one("SELECT to_regclass('stead_schema') IS NOT NULL", &[])
        .await
        .map_err(failed)?
        .try_get(0)
        .map_err(failed)
}

/// Checks the version of stead's tables, which must exist, and returns the
/// cluster's id. A version newer than [`SCHEMA_VERSION`] gives the error
/// `newer` makes of it: what to do depends on who reads.
pub(crate) async fn check_version(
    client: &impl GenericClient,
    newer: impl FnOnce(i32) -> Error,
) -> Result<String> {
    let failed = |e: tokio_postgres::Error| pg_error("checking the cluster's tables", &e);
    // The version first, alone: a newer release may have changed the rest.
    let versions = client.query("SELECT version FROM stead_schema", &[]).await.map_err(failed)?;
    let version = match versions.as_slice() {
        [row] => get::<i32>(row, 0, "stead_schema.version")?,
        _ => {
            return Err(Error::Storage(format!(
                "the table `stead_schema` must hold one row, and it holds {}: it was changed by hand; \
                 restore it from a backup",
                versions.len()
            )));
        }
    };
    if version > SCHEMA_VERSION {
        return Err(newer(version));
    }
    if version < 1 {
        return Err(Error::Storage(format!(
            "the table `stead_schema` names version {version}, which no stead release wrote: it was \
             changed by hand"
        )));
    }
    let row = client.query_one("SELECT cluster_id FROM stead_schema", &[]).await.map_err(failed)?;
    get::<String>(&row, 0, "stead_schema.cluster_id")
}

/// Column `i` of `row`, or an error naming `column`.
pub(crate) fn get<'a, T: tokio_postgres::types::FromSql<'a>>(
    row: &'a Row,
    i: usize,
    column: &str,
) -> Result<T> {
    row.try_get(i)
        .map_err(|e| Error::Storage(format!("PostgreSQL returned an unexpected value in `{column}`: {e}")))
}

/// The directory in PostgreSQL. Lookups are anyone's; claims only the
/// node's own, fenced by its lease.
pub(crate) struct PostgresDirectory {
    pg: Pg,
    /// This node's lease; none for a client, which never claims.
    lease: Option<Arc<Lease>>,
    /// This node replicates its objects' storage in PostgreSQL, so it may
    /// take over the objects of a dead node (see `replication.rs`).
    takes_over: bool,
}

impl PostgresDirectory {
    pub(crate) fn new(pg: Pg, lease: Option<Arc<Lease>>, takes_over: bool) -> Self {
        PostgresDirectory { pg, lease, takes_over }
    }

    async fn lookup_now(&self, type_name: &str, id: &ObjectId) -> Result<Option<String>> {
        check_type_name(type_name)?;
        let row = self
            .pg
            .with("looking an object up", |c| async move {
                c.client.query_opt(&c.lookup, &[&type_name, &id.as_bytes().as_slice()]).await
            })
            .await?;
        row.map(|row| get::<String>(&row, 0, "stead_objects.owner")).transpose()
    }

    async fn claim_now(
        &self,
        type_name: &str,
        id: &ObjectId,
        node: &str,
        name: Option<&str>,
    ) -> Result<String> {
        check_type_name(type_name)?;
        let lease =
            self.lease.as_ref().filter(|lease| lease.name == node).ok_or_else(|| {
                Error::Config(format!("only node `{node}` itself may claim objects for it"))
            })?;
        lease.check()?;
        let (incarnation, takes_over) = (lease.incarnation, self.takes_over);
        let inserted = self
            .pg
            .with("placing an object", |c| async move {
                let id = id.as_bytes().as_slice();
                c.client.execute(&c.claim, &[&type_name, &id, &name, &node]).await
            })
            .await?;
        if inserted == 1 {
            return Ok(node.to_string());
        }
        // Nothing inserted: placed already.
        let answer = self
            .pg
            .with("placing an object", |c| async move {
                let id = id.as_bytes().as_slice();
                let params: [&(dyn ToSql + Sync); 5] = [&type_name, &id, &node, &incarnation, &takes_over];
                // A takeover fences the object's log (see `FENCES`); it
                // fails when an entry of the old owner, in flight, took the
                // fence's number first. The old owner sends one entry at a
                // time, and stops by itself once its lease lapsed.
                for _ in 0..TAKE_OVER_TRIES {
                    match c.client.query_opt(&c.take_over, &params).await {
                        Err(err) if number_taken(&err) => continue,
                        done => return done.map(Some),
                    }
                }
                Ok(None)
            })
            .await?;
        let Some(row) = answer else {
            return Err(Error::Unavailable(format!(
                "node `{node}` could not take `{type_name}` object {id} over: entries of its old owner \
                 kept landing in its log ({TAKE_OVER_TRIES} tries); retry later"
            )));
        };
        let lapsed = || {
            Error::Unavailable(format!(
                "node `{node}` could not place `{type_name}` object {id}: its lease in PostgreSQL has \
                 lapsed, or the object was removed while it was being placed; retry later"
            ))
        };
        let Some(row) = row else { return Err(lapsed()) };
        let owner = get::<String>(&row, 0, "stead_objects.owner")?;
        if !takes_over || get::<bool>(&row, 1, "settled")? {
            return Ok(owner);
        }
        self.lookup_now(type_name, id).await?.ok_or_else(lapsed)
    }
}

/// Due alarms of objects whose owner is dead, of the types `$2`, that
/// node `$3` could adopt.
const ORPHANED_ALARMS: &str = "
SELECT o.type, o.id, o.alarm_at FROM stead_objects o
WHERE o.alarm_at IS NOT NULL AND o.alarm_at <= $1 AND o.type = ANY($2) AND o.owner <> $3
  AND NOT EXISTS (SELECT 1 FROM stead_nodes n WHERE n.name = o.owner AND n.lease_until > now())
ORDER BY o.alarm_at LIMIT 100";

impl PostgresDirectory {
    /// Alarms due by `by` (milliseconds since the epoch) of objects of
    /// `types` whose owner is dead: `(type, id, at)`, at most 100.
    pub(crate) async fn orphaned_alarms(
        &self,
        by: i64,
        types: &[String],
        me: &str,
    ) -> Result<Vec<(String, ObjectId, i64)>> {
        let rows = self
            .pg
            .with("looking for a dead node's alarms", |c| async move {
                c.client.query(ORPHANED_ALARMS, &[&by, &types, &me]).await
            })
            .await?;
        let mut alarms = Vec::with_capacity(rows.len());
        for row in &rows {
            let bytes: Vec<u8> = get(row, 1, "stead_objects.id")?;
            let Some(id) = ObjectId::from_slice(&bytes) else { continue };
            alarms.push((get(row, 0, "stead_objects.type")?, id, get(row, 2, "stead_objects.alarm_at")?));
        }
        Ok(alarms)
    }
}

impl Directory for PostgresDirectory {
    fn lookup<'a>(&'a self, type_name: &'a str, id: &'a ObjectId) -> BoxFuture<'a, Result<Option<String>>> {
        Box::pin(self.lookup_now(type_name, id))
    }

    fn claim<'a>(
        &'a self,
        type_name: &'a str,
        id: &'a ObjectId,
        node: &'a str,
    ) -> BoxFuture<'a, Result<String>> {
        Box::pin(self.claim_now(type_name, id, node, None))
    }

    fn claim_named<'a>(
        &'a self,
        type_name: &'a str,
        id: &'a ObjectId,
        node: &'a str,
        name: Option<&'a str>,
    ) -> BoxFuture<'a, Result<String>> {
        Box::pin(self.claim_now(type_name, id, node, name))
    }
}
