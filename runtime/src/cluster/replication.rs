//! Replicated object storage in PostgreSQL: the objects' log (see
//! `storage/replica.rs` for what is shipped and how an object is rebuilt).
//!
//! Tables (created by `postgres.rs`): `stead_log (type, id, seq,
//! wal_offset, frames)` holds each shipped entry, `stead_snapshots (type,
//! id, seq, data)` each object's last snapshot, and `stead_objects` the
//! object's `epoch`, `snapshot_seq` and `alarm_at`.
//!
//! **Fencing.** A node numbers its object's entries itself, the last one
//! plus one, with at most one shipment of the object in flight, and
//! appends each with a plain insert ([`APPEND`]); the primary key refuses
//! a number twice. Every change of an object's epoch (a takeover) puts a
//! *fence* in its log in the same statement (the table's trigger, see
//! `FENCES` in `postgres.rs`): a row with the number after the last entry,
//! no frames, and minus the new epoch as its offset. That is the number of
//! the old owner's next entry, so PostgreSQL refuses it, and the turn
//! fails and resets the object; its next activation reads the object's row
//! and finds another owner. An entry of the old owner in flight during the
//! takeover either commits first (the fence's insert waits for it, fails,
//! and the takeover is tried again, its fence after that entry) or is
//! refused. So there is never a second activation that can commit, and
//! the new owner, which restores after its takeover committed, sees every
//! entry that was acknowledged, and numbers its own after the fence.
//! Fences are never deleted (a trigger skips them), since a paused node
//! may wake at any time. A turn thus costs no read or lock of the object's
//! row, and no update of it unless it changed the object's alarm
//! ([`APPEND_SETTING_ALARM`]).
//!
//! **Group commit.** Entries of many objects that are ready at the same
//! moment share one statement ([`APPEND_MANY`], the entries as arrays),
//! hence one transaction and one round trip:
//! two connections ([`SHIPPERS`]) ship at once, each taking every entry
//! waiting (up to [`MAX_BATCH`]) when it is free, the one used last first
//! (see `dispatch`). Entries that carry the application's statements
//! (`ctx.postgres()`) are shipped in an explicit transaction instead, each
//! in a savepoint with its statements, so that one failing statement fails
//! only its own turn.
//!
//! Storage is synchronous, so the log is reached from plain threads (the
//! sync threads, and turns opening a database): the PostgreSQL connections
//! run on a small tokio runtime on a thread of its own ("stead-log"), work
//! is handed to it directly (a task, or an entry in the shippers' queue),
//! and the asking thread waits for the answer, bounded by the connect
//! timeout.
//!
//! **The lane.** One entry at a time goes another way: when a turn commits
//! on a worker of a multi-threaded tokio runtime (the objects' runtime) and
//! no other entry is on the lane, the worker itself sends it, from a task
//! spawned there, on a connection of its own that this task drives itself
//! (`driven.rs`). That saves a lone write two hand-offs between threads
//! (to the log's thread and back), each a wake-up of an idle core: about
//! 35 µs of a 220 µs write on the test VM (`replicated_write`); driving the
//! connection in the task, rather than in one of its own, keeps the whole
//! write on one worker and saved about 15 µs more. The task waits in the
//! worker's next-task slot until the worker's current task yields; should
//! the worker block first (a turn waiting for this very entry, or for its
//! database back from a sync thread), every blocking wait of storage first
//! takes the entry back and queues it for the log's thread
//! (`storage::on_block`). Under load the lane is mostly busy, and entries
//! share the shippers' shipments as before.

use std::future::Future;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::mpsc;
use tokio_postgres::error::SqlState;
use tokio_postgres::types::{ToSql, Type};

use super::postgres::{Pg, PgConn, get, pg_error};
use crate::error::{Error, Result};
use crate::id::ObjectId;
use crate::storage::{Appended, Entry, Fetched, Head, ObjectLog};

/// The most entries one shipment carries.
const MAX_BATCH: usize = 256;

/// The shippers: shipments in flight at once, each on its own connection.
///
/// Two, so that a slow shipment (an application's statement waiting for
/// a lock) leaves another to ship, and no more: each shipment takes every
/// entry waiting, so fewer shipments carry more entries each, and cost
/// PostgreSQL fewer transactions and its processes fewer switches. In
/// `replicated_throughput` (64 callers) on the 2-core test VM, a turn took
/// 14.1–16.8 µs with two (seven runs), 16.1–16.2 with one, 16.1–19.9 with
/// three, 18.0–21.3 with four (five runs) and 24.1–25.3 with eight.
const SHIPPERS: usize = 2;

/// Appends one entry, by its number: a plain insert, which the primary
/// key refuses when the number is taken, by a fence (the object was taken
/// over: see the module's docs) or by another entry; then the entry is
/// fenced ([`number_taken`]). For an entry alone in its transaction or
/// savepoint: the refusal aborts it.
///
/// Checking the object's row in the statement instead (an `INSERT ..
/// SELECT` from `stead_objects` where it names this node at the entry's
/// epoch, `FOR SHARE`) took PostgreSQL about 19 µs more a commit (pgbench
/// on the test VM, medians of ten alternating rounds: 152 against 133 µs;
/// the bare upsert of `replicated_write`'s baseline took 131).
const APPEND: &str = "INSERT INTO stead_log (type, id, seq, wal_offset, frames) VALUES ($1, $2, $3, $4, $5)";

/// [`APPEND`] for an entry sharing a transaction with others: a taken
/// number adds nothing and fails nothing else (`ON CONFLICT DO NOTHING`,
/// about 11 µs dearer than the plain insert by the same measure).
const APPEND_UNLESS_FENCED: &str = "
INSERT INTO stead_log (type, id, seq, wal_offset, frames) VALUES ($1, $2, $3, $4, $5)
ON CONFLICT DO NOTHING";

/// [`APPEND_UNLESS_FENCED`] for an entry that changed the object's alarm:
/// also sets it (to `$6`, none: `NULL`) if the entry was appended.
/// Returns a row if it was.
const APPEND_SETTING_ALARM: &str = "
WITH i AS (
    INSERT INTO stead_log (type, id, seq, wal_offset, frames) VALUES ($1, $2, $3, $4, $5)
    ON CONFLICT DO NOTHING
    RETURNING 1
), a AS (
    UPDATE stead_objects SET alarm_at = $6 WHERE type = $1 AND id = $2 AND EXISTS (SELECT 1 FROM i)
)
SELECT 1 FROM i";

/// The types of [`APPEND_SETTING_ALARM`]'s parameters; [`APPEND`] and
/// [`APPEND_UNLESS_FENCED`] have the first five.
const APPEND_TYPES: &[Type] = &[Type::TEXT, Type::BYTEA, Type::INT8, Type::INT8, Type::BYTEA, Type::INT8];

/// [`APPEND`] for several entries at once, given as arrays (`$1` to `$5`:
/// types, ids, numbers, WAL offsets, frames): every entry, or, if one of
/// them is fenced, none.
const APPEND_MANY: &str = "
INSERT INTO stead_log (type, id, seq, wal_offset, frames)
SELECT * FROM unnest($1::text[], $2::bytea[], $3::int8[], $4::int8[], $5::bytea[])";

/// [`APPEND_MANY`] where one of the entries is fenced: appends the others,
/// and returns the place in the arrays (from 1) of each entry appended.
const APPEND_MANY_UNLESS_FENCED: &str = "
WITH e AS (
    SELECT * FROM unnest($1::text[], $2::bytea[], $3::int8[], $4::int8[], $5::bytea[])
        WITH ORDINALITY AS e (type, id, seq, wal_offset, frames, n)
), i AS (
    INSERT INTO stead_log (type, id, seq, wal_offset, frames)
    SELECT type, id, seq, wal_offset, frames FROM e
    ON CONFLICT DO NOTHING
    RETURNING type, id, seq
)
SELECT e.n FROM e JOIN i USING (type, id, seq)";

/// The types of [`APPEND_MANY`]'s parameters.
const APPEND_MANY_TYPES: &[Type] =
    &[Type::TEXT_ARRAY, Type::BYTEA_ARRAY, Type::INT8_ARRAY, Type::INT8_ARRAY, Type::BYTEA_ARRAY];

const HEAD: &str = "
SELECT owner, epoch,
       (SELECT greatest(max(l.seq), o.snapshot_seq) FROM stead_log l WHERE l.type = o.type AND l.id = o.id),
       snapshot_seq,
       EXISTS (SELECT 1 FROM stead_snapshots s WHERE s.type = o.type AND s.id = o.id)
FROM stead_objects o WHERE type = $1 AND id = $2";

const SNAPSHOT_DATA: &str = "SELECT data FROM stead_snapshots WHERE type = $1 AND id = $2";

/// The entries after `$3` up to `$4`: all since the snapshot for a
/// rebuild (`$4` the largest number), the tail for a copy that catches up.
const LOG: &str = "SELECT seq, wal_offset, frames FROM stead_log \
    WHERE type = $1 AND id = $2 AND seq > $3 AND seq <= $4 ORDER BY seq";

const SNAPSHOT: &str = "
WITH f AS (
    UPDATE stead_objects SET snapshot_seq = $5
    WHERE type = $1 AND id = $2 AND epoch = $3 AND owner = $4
    RETURNING type, id
), s AS (
    INSERT INTO stead_snapshots (type, id, seq, data) SELECT type, id, $5, $6 FROM f
    ON CONFLICT (type, id) DO UPDATE SET seq = EXCLUDED.seq, data = EXCLUDED.data
    RETURNING 1
)
SELECT count(*) FROM f";

/// Trims the log entries up to a snapshot's (`$3`), once it is committed;
/// fences stay (the table's trigger skips them: see the module's docs).
///
/// Not part of [`SNAPSHOT`], which the object's next turn waits for:
/// deleting a snapshot's worth of entries (about 8,000 of 1 KiB) took
/// 7–15 ms there, and the longest write of a long run went from 25–30 ms
/// to 14–16 ms without it. Nothing reads entries up to the snapshot's
/// (restoring starts after it), so they may go later; should the trim
/// fail, the next snapshot's takes them too.
const TRIM: &str = "DELETE FROM stead_log WHERE type = $1 AND id = $2 AND seq <= $3";

type Reply<T> = std::sync::mpsc::SyncSender<Result<T>>;

/// An entry waiting to be shipped, and who waits for it.
struct Append {
    entry: Entry,
    done: Appended,
}

/// The objects' log in the cluster's PostgreSQL, for node `me`.
pub(crate) struct PostgresLog {
    /// The log thread's runtime, which runs every use of PostgreSQL.
    handle: tokio::runtime::Handle,
    /// Entries for the shippers.
    appends: mpsc::UnboundedSender<Append>,
    /// The connection of reads and snapshots.
    reads: Arc<Pg>,
    me: Arc<str>,
    /// How long a caller waits for an answer.
    timeout: Duration,
    /// Ends the log thread when the log is dropped.
    _stop: tokio::sync::oneshot::Sender<()>,
    /// The lone entry sent from the worker that committed it.
    lane: Arc<Lane>,
    /// Shipments the shippers have in flight.
    shipping: Arc<AtomicUsize>,
}

/// The lane (see the module's docs): its connection, the entry its task
/// has yet to take, and whether an entry is on it.
struct Lane {
    pg: Pg,
    unsent: Mutex<Option<Append>>,
    busy: AtomicBool,
}

impl Lane {
    /// Queues the entry the lane's task has not taken yet for the log's
    /// thread instead. Never runs the entry's `done` (the caller may hold
    /// the locks `done` takes): if the log's thread is gone, the entry
    /// stays for the task, or its drop.
    fn take_back(&self, appends: &mpsc::UnboundedSender<Append>) {
        let mut unsent = crate::sync::lock(&self.unsent);
        if let Some(append) = unsent.take()
            && let Err(refused) = appends.send(append)
        {
            *unsent = Some(refused.0);
        }
    }
}

/// Held by the lane's task: when the task ends, the lane is free again,
/// and an entry it never took (a runtime shutting down drops the task
/// unrun) goes to the log's thread, or fails.
struct OnLane {
    lane: Arc<Lane>,
    appends: mpsc::UnboundedSender<Append>,
}

impl Drop for OnLane {
    fn drop(&mut self) {
        self.lane.take_back(&self.appends);
        if let Some(Append { done, .. }) = crate::sync::lock(&self.lane.unsent).take() {
            done(Err(Error::Unavailable(
                "the runtime is shutting down (shipping a turn's writes); retry later".into(),
            )));
        }
        self.lane.busy.store(false, Ordering::Release);
    }
}

impl PostgresLog {
    /// Starts the log's thread and its shippers; they connect on first
    /// use and end when the log is dropped.
    pub(crate) fn start(conninfo: &str, timeout: Duration, me: &str) -> Result<Self> {
        let failed = |e: std::io::Error| {
            Error::Config(format!("cannot start the thread that ships the objects' log: {e}"))
        };
        let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().map_err(failed)?;
        let handle = runtime.handle().clone();
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        std::thread::Builder::new()
            .name("stead-log".into())
            .spawn(move || runtime.block_on(async move { drop(stopped.await) }))
            .map_err(failed)?;
        let me = Arc::<str>::from(me);
        let (appends, queue) = mpsc::unbounded_channel();
        let conns = (0..SHIPPERS).map(|_| Pg::new(conninfo, timeout)).collect();
        let shipping = Arc::new(AtomicUsize::new(0));
        handle.spawn(dispatch(conns, me.clone(), queue, shipping.clone()));
        let reads = Arc::new(Pg::new(conninfo, timeout));
        let lane = Arc::new(Lane {
            pg: Pg::driven(conninfo, timeout),
            unsent: Mutex::new(None),
            busy: AtomicBool::new(false),
        });
        Ok(PostgresLog { handle, appends, reads, me, timeout, _stop: stop, lane, shipping })
    }

    /// Sends `append` on the lane from this thread's tokio worker, if this
    /// is a worker of a multi-threaded runtime, the lane is free and the
    /// shippers are idle (under load, entries are better off sharing their
    /// shipments); else hands it back.
    fn send_on_lane(&self, append: Append) -> Option<Append> {
        let Ok(runtime) = tokio::runtime::Handle::try_current() else { return Some(append) };
        if runtime.runtime_flavor() != tokio::runtime::RuntimeFlavor::MultiThread
            || self.shipping.load(Ordering::Acquire) > 0
            || self.lane.busy.swap(true, Ordering::AcqRel)
        {
            return Some(append);
        }
        *crate::sync::lock(&self.lane.unsent) = Some(append);
        // Weak: the hook may outlive the log, in the worker's thread.
        let (lane, appends) = (Arc::downgrade(&self.lane), self.appends.downgrade());
        crate::storage::on_block(Box::new(move || {
            if let (Some(lane), Some(appends)) = (lane.upgrade(), appends.upgrade()) {
                lane.take_back(&appends);
            }
        }));
        let on_lane = OnLane { lane: self.lane.clone(), appends: self.appends.clone() };
        let me = self.me.clone();
        runtime.spawn(async move {
            let unsent = crate::sync::lock(&on_lane.lane.unsent).take();
            if let Some(append) = unsent {
                Box::pin(ship(&on_lane.lane.pg, &me, vec![append])).await;
            }
            drop(on_lane);
        });
        None
    }

    /// Waits for the answer `send` arranges for, from the log thread.
    fn wait<T>(&self, what: &str, send: impl FnOnce(Reply<T>) -> bool) -> Result<T> {
        // This thread blocks below: an entry it left on the lane goes first.
        crate::storage::before_blocking();
        let (reply, answer) = std::sync::mpsc::sync_channel(1);
        let gone = || Error::Unavailable(format!("the runtime is shutting down ({what}); retry later"));
        if !send(reply) {
            return Err(gone());
        }
        // The thread's own waits are bounded by `timeout` each; a shipment
        // may wait for the one before it on its connection.
        match answer.recv_timeout(self.timeout * 3) {
            Ok(answer) => answer,
            Err(std::sync::mpsc::RecvTimeoutError::Timeout) => Err(Error::Unavailable(format!(
                "PostgreSQL did not answer within {:?} ({what}); retry later",
                self.timeout * 3
            ))),
            Err(std::sync::mpsc::RecvTimeoutError::Disconnected) => Err(gone()),
        }
    }

    /// Runs `work` on the log thread and waits for its answer.
    fn run<T, F>(&self, what: &str, work: impl FnOnce(Arc<Pg>, Arc<str>) -> F) -> Result<T>
    where
        T: Send + 'static,
        F: Future<Output = Result<T>> + Send + 'static,
    {
        let work = work(self.reads.clone(), self.me.clone());
        self.wait(what, |reply| {
            self.handle.spawn(async move { reply.send(work.await).ok() });
            true
        })
    }
}

impl ObjectLog for PostgresLog {
    fn head(&self, type_name: &'static str, id: &ObjectId) -> Result<(Head, bool)> {
        let id = *id;
        self.run("reading an object's log", move |pg, me| async move { head(&pg, &me, type_name, &id).await })
    }

    fn fetch(&self, type_name: &'static str, id: &ObjectId) -> Result<Fetched> {
        let id = *id;
        self.run("restoring an object from its log", move |pg, me| async move {
            fetch(&pg, &me, type_name, &id).await
        })
    }

    fn tail(
        &self,
        type_name: &'static str,
        id: &ObjectId,
        after: i64,
        upto: i64,
        from: u64,
    ) -> Result<Option<Vec<u8>>> {
        let id = *id;
        self.run("catching an object up with its log", move |pg, _| async move {
            let key = id.as_bytes().as_slice();
            let entries = pg
                .with("catching an object up with its log", |c| async move {
                    c.client.query(LOG, &[&type_name, &key, &after, &upto]).await
                })
                .await?;
            Ok(join(&entries, after, from)?.filter(|(_, last)| *last == upto).map(|(wal, _)| wal))
        })
    }

    fn append(&self, entry: Entry) -> Result<i64> {
        self.wait("shipping a turn's writes", |reply| {
            let done: Appended = Box::new(move |appended| drop(reply.send(appended)));
            self.appends.send(Append { entry, done }).is_ok()
        })
    }

    fn append_then(&self, entry: Entry, done: Appended) {
        let Some(append) = self.send_on_lane(Append { entry, done }) else { return };
        if let Err(unsent) = self.appends.send(append) {
            let Append { done, .. } = unsent.0;
            done(Err(Error::Unavailable(
                "the runtime is shutting down (shipping a turn's writes); retry later".into(),
            )));
        }
    }

    fn snapshot(
        &self,
        type_name: &'static str,
        id: &ObjectId,
        epoch: i64,
        seq: i64,
        data: Vec<u8>,
    ) -> Result<()> {
        let id = *id;
        self.run("shipping an object's snapshot", move |pg, me| async move {
            snapshot(&pg, &me, type_name, &id, epoch, seq, data).await
        })?;
        let reads = self.reads.clone();
        self.handle.spawn(async move {
            let key = id.as_bytes().as_slice();
            let trimmed = reads
                .with("trimming an object's log", |c| async move {
                    c.client.execute(TRIM, &[&type_name, &key, &seq]).await
                })
                .await;
            if let Err(err) = trimmed {
                tracing::warn!(%err, r#type = type_name, object = %id, "could not trim the log up to the object's snapshot; its next snapshot will");
            }
        });
        Ok(())
    }
}

/// The object's row: its owner, epoch, last entry, snapshot's entry, and
/// whether it has a snapshot. Fails unless `me` owns it.
async fn owned_row(pg: &Pg, me: &str, type_name: &'static str, id: &ObjectId) -> Result<(Head, i64, bool)> {
    let row = pg
        .with("reading an object's log", |c| async move {
            c.client.query_opt(HEAD, &[&type_name, &id.as_bytes().as_slice()]).await
        })
        .await?
        .ok_or_else(|| {
            Error::Unavailable(format!(
                "`{type_name}` object {id} is not placed in the cluster's directory; retry: its next call places it"
            ))
        })?;
    let owner: String = get(&row, 0, "stead_objects.owner")?;
    let epoch: i64 = get(&row, 1, "stead_objects.epoch")?;
    if owner != me {
        return Err(Error::Unavailable(format!(
            "`{type_name}` object {id} now lives on node `{owner}` (epoch {epoch}), not on `{me}`: this node \
             serves and commits nothing more for it; retry, the call then goes to its owner"
        )));
    }
    let head = Head { epoch, seq: get(&row, 2, "last entry")? };
    Ok((head, get(&row, 3, "stead_objects.snapshot_seq")?, get(&row, 4, "snapshot")?))
}

async fn head(pg: &Pg, me: &str, type_name: &'static str, id: &ObjectId) -> Result<(Head, bool)> {
    owned_row(pg, me, type_name, id).await.map(|(head, _, snapshotted)| (head, snapshotted))
}

async fn fetch(pg: &Pg, me: &str, type_name: &'static str, id: &ObjectId) -> Result<Fetched> {
    let (head, snapshot_seq, snapshotted) = owned_row(pg, me, type_name, id).await?;
    let key = id.as_bytes().as_slice();
    let (snapshot, entries) = pg
        .with("restoring an object from its log", |c| async move {
            let snapshot = match snapshotted {
                true => c.client.query_opt(SNAPSHOT_DATA, &[&type_name, &key]).await?,
                false => None,
            };
            let entries = c.client.query(LOG, &[&type_name, &key, &snapshot_seq, &i64::MAX]).await?;
            Ok((snapshot, entries))
        })
        .await?;
    let snapshot = snapshot.map(|row| get::<Vec<u8>>(&row, 0, "stead_snapshots.data")).transpose()?;
    let Some((wal, expected)) = join(&entries, snapshot_seq, 0)? else {
        return Err(Error::Storage(format!(
            "the log of `{type_name}` object {id} in PostgreSQL is not whole: its entries do not follow each \
             other from entry {snapshot_seq}, the snapshot's; the tables were changed by hand, restore them \
             from a backup"
        )));
    };
    if expected != head.seq {
        return Err(Error::Storage(format!(
            "the log of `{type_name}` object {id} in PostgreSQL ends at entry {expected}, its row says {}; \
             the tables were changed by hand, restore them from a backup",
            head.seq
        )));
    }
    Ok(Fetched { head, snapshot, wal })
}

/// The frames of `entries` end to end, with the last one's number, if
/// they follow entry `after` one by one from WAL offset `from`. Fences
/// (a negative offset) take their number and add no frames.
fn join(entries: &[tokio_postgres::Row], after: i64, from: u64) -> Result<Option<(Vec<u8>, i64)>> {
    let mut wal = Vec::new();
    let mut last = after;
    for row in entries {
        let (seq, offset): (i64, i64) = (get(row, 0, "stead_log.seq")?, get(row, 1, "stead_log.wal_offset")?);
        if seq != last + 1 {
            return Ok(None);
        }
        last = seq;
        if offset < 0 {
            continue;
        }
        if u64::try_from(offset).ok() != Some(from + wal.len() as u64) {
            return Ok(None);
        }
        wal.extend_from_slice(get(row, 2, "stead_log.frames")?);
    }
    Ok(Some((wal, last)))
}

async fn snapshot(
    pg: &Pg,
    me: &str,
    type_name: &'static str,
    id: &ObjectId,
    epoch: i64,
    seq: i64,
    data: Vec<u8>,
) -> Result<()> {
    let key = id.as_bytes().as_slice();
    let data = data.as_slice();
    let row = pg
        .with("shipping an object's snapshot", |c| async move {
            c.client.query_one(SNAPSHOT, &[&type_name, &key, &epoch, &me, &seq, &data]).await
        })
        .await?;
    match get::<i64>(&row, 0, "count")? {
        0 => Err(fenced(type_name, id, me)),
        _ => Ok(()),
    }
}

/// Hands the entries to the shippers' connections until the log is
/// dropped: each shipment takes every entry waiting (up to [`MAX_BATCH`])
/// once a connection is free, and ships them in one transaction. The
/// connection used last goes first: under light load one connection (and
/// its server process) does all the work and stays warm, which saves about
/// 90 µs a shipment on the test VM against taking the connections in turn;
/// under load they all ship at once.
async fn dispatch(
    conns: Vec<Pg>,
    me: Arc<str>,
    mut queue: mpsc::UnboundedReceiver<Append>,
    shipping: Arc<AtomicUsize>,
) {
    let idle = Arc::new(std::sync::Mutex::new(conns));
    let freed = Arc::new(tokio::sync::Notify::new());
    while let Some(first) = queue.recv().await {
        let pg = loop {
            if let Some(pg) = crate::sync::lock(&idle).pop() {
                break pg;
            }
            freed.notified().await;
        };
        let mut batch = vec![first];
        while batch.len() < MAX_BATCH {
            match queue.try_recv() {
                Ok(append) => batch.push(append),
                Err(_) => break,
            }
        }
        let (me, idle, freed, shipping) = (me.clone(), idle.clone(), freed.clone(), shipping.clone());
        shipping.fetch_add(1, Ordering::AcqRel);
        tokio::spawn(async move {
            Box::pin(ship(&pg, &me, batch)).await;
            shipping.fetch_sub(1, Ordering::AcqRel);
            crate::sync::lock(&idle).push(pg);
            freed.notify_one();
        });
    }
}

/// Ships one batch in one transaction and answers each entry.
///
/// Its future is large (about 2.3 KiB), and tokio copies a task's future
/// when it spawns it and again when the task ends: the tasks that run it
/// box it, which took the lone writer's `memmove`s from 1.6 % to 0.5 % of
/// its samples (`perf`), about 0.5 µs a write.
async fn ship(pg: &Pg, me: &str, mut batch: Vec<Append>) {
    // Entries with the application's statements first, each in a
    // savepoint of one transaction; without any, one pipelined batch.
    batch.sort_by_key(|append| append.entry.statements.is_empty());
    let (entries, dones): (Vec<Entry>, Vec<Appended>) =
        batch.into_iter().map(|append| (append.entry, append.done)).unzip();
    let outcomes = if entries.iter().all(|entry| entry.statements.is_empty()) {
        append_plain(pg, &entries).await
    } else {
        append_in_transaction(pg, &entries).await
    };
    answer(&entries, dones, outcomes, me);
}

/// What became of one entry.
enum Outcome {
    Appended(i64),
    /// The object's epoch moved on: another node owns it.
    Fenced,
    /// One of its statements failed.
    Refused(String),
}

fn answer(entries: &[Entry], dones: Vec<Appended>, outcomes: Result<Vec<Outcome>>, me: &str) {
    for (i, (entry, done)) in entries.iter().zip(dones).enumerate() {
        let result = match &outcomes {
            Err(err) => Err(err.clone()),
            Ok(outcomes) => match outcomes.get(i) {
                Some(Outcome::Appended(seq)) => Ok(*seq),
                Some(Outcome::Fenced) | None => Err(fenced(entry.type_name, &entry.id, me)),
                Some(Outcome::Refused(message)) => Err(Error::Storage(format!(
                    "PostgreSQL refused a statement of a turn of `{}` object {}: {message}; the turn was \
                     undone (its writes, in the object and in PostgreSQL, are gone)",
                    entry.type_name, entry.id
                ))),
            },
        };
        done(result);
    }
}

fn fenced(type_name: &str, id: &ObjectId, me: &str) -> Error {
    Error::Unavailable(format!(
        "`{type_name}` object {id} was taken over by another node (its epoch in PostgreSQL moved on): node \
         `{me}` commits nothing more for it, and this turn was undone; retry, the call then goes to its owner"
    ))
}

/// Appends entries without statements in one transaction, so that the
/// batch costs one round trip and one commit: a single entry by itself,
/// several in one statement ([`APPEND_MANY`]), or, when one of them
/// changed its object's alarm, one statement each, all sent at once
/// (pipelined) in an explicit transaction.
async fn append_plain(pg: &Pg, batch: &[Entry]) -> Result<Vec<Outcome>> {
    pg.with("shipping turns' writes", |c| async move {
        match batch {
            [entry] => append_one(&c, entry, Alone::Yes).await.map(|outcome| vec![outcome]),
            _ if batch.iter().all(|entry| entry.alarm.is_none()) => append_many(&c, batch).await,
            _ => append_pipelined(&c, batch).await,
        }
    })
    .await
}

/// Appends entries one statement each, all sent at once (pipelined)
/// between `BEGIN` and `COMMIT`: for batches where an entry changed its
/// object's alarm.
async fn append_pipelined(
    c: &PgConn,
    batch: &[Entry],
) -> std::result::Result<Vec<Outcome>, tokio_postgres::Error> {
    let appends = batch.iter().map(|entry| append_one(c, entry, Alone::No));
    let (began, outcomes, committed) = tokio::join!(
        c.client.batch_execute("BEGIN"),
        futures_util::future::join_all(appends),
        c.client.batch_execute("COMMIT"),
    );
    began?;
    let outcomes = outcomes.into_iter().collect::<std::result::Result<Vec<_>, _>>()?;
    committed?;
    Ok(outcomes)
}

/// Appends entries that change no alarm with one statement; if one of
/// them is fenced (rare: its object was taken over), with another that
/// tells which.
async fn append_many(
    c: &PgConn,
    batch: &[Entry],
) -> std::result::Result<Vec<Outcome>, tokio_postgres::Error> {
    let column = |f: fn(&Entry) -> i64| batch.iter().map(f).collect::<Vec<i64>>();
    let types: Vec<&str> = batch.iter().map(|entry| entry.type_name).collect();
    let ids: Vec<&[u8]> = batch.iter().map(|entry| entry.id.as_bytes().as_slice()).collect();
    let frames: Vec<&[u8]> = batch.iter().map(|entry| entry.frames.as_slice()).collect();
    let (seqs, offsets) = (column(|e| e.seq), column(|e| e.wal_offset));
    let params: [&(dyn ToSql + Sync); 5] = [&types, &ids, &seqs, &offsets, &frames];
    let all = c.client.execute(&c.prepared(APPEND_MANY, APPEND_MANY_TYPES).await?, &params).await;
    match all {
        Ok(_) => return Ok(batch.iter().map(|entry| Outcome::Appended(entry.seq)).collect()),
        Err(err) if number_taken(&err) => {}
        Err(err) => return Err(err),
    }
    let statement = c.prepared(APPEND_MANY_UNLESS_FENCED, APPEND_MANY_TYPES).await?;
    let mut outcomes: Vec<Outcome> = batch.iter().map(|_| Outcome::Fenced).collect();
    for row in c.client.query(&statement, &params).await? {
        let ordinal: i64 = row.try_get(0)?;
        if let Some((entry, outcome)) =
            usize::try_from(ordinal - 1).ok().and_then(|i| batch.get(i).zip(outcomes.get_mut(i)))
        {
            *outcome = Outcome::Appended(entry.seq);
        }
    }
    Ok(outcomes)
}

/// Whether an entry is alone in its transaction (or savepoint), which a
/// fenced entry may abort.
#[derive(Clone, Copy)]
enum Alone {
    Yes,
    No,
}

/// Appends one entry (the statements are prepared once per connection).
async fn append_one(
    c: &PgConn,
    entry: &Entry,
    alone: Alone,
) -> std::result::Result<Outcome, tokio_postgres::Error> {
    let id = entry.id.as_bytes().as_slice();
    let alarm = entry.alarm.flatten();
    let params: [&(dyn ToSql + Sync); 6] =
        [&entry.type_name, &id, &entry.seq, &entry.wal_offset, &entry.frames.as_slice(), &alarm];
    let appended = match (entry.alarm, alone) {
        (None, Alone::Yes) => {
            match c.client.execute(&c.prepared(APPEND, &APPEND_TYPES[..5]).await?, &params[..5]).await {
                Err(err) if number_taken(&err) => false,
                appended => appended? == 1,
            }
        }
        (None, Alone::No) => {
            let statement = c.prepared(APPEND_UNLESS_FENCED, &APPEND_TYPES[..5]).await?;
            c.client.execute(&statement, &params[..5]).await? == 1
        }
        (Some(_), _) => {
            let statement = c.prepared(APPEND_SETTING_ALARM, APPEND_TYPES).await?;
            c.client.query_opt(&statement, &params).await?.is_some()
        }
    };
    Ok(match appended {
        true => Outcome::Appended(entry.seq),
        false => Outcome::Fenced,
    })
}

/// Whether PostgreSQL refused a row of the log because its number is
/// taken: an entry after its object was taken over (the number is the
/// takeover's fence), or a takeover's fence after an entry of the old
/// owner took the number first.
pub(crate) fn number_taken(err: &tokio_postgres::Error) -> bool {
    err.as_db_error()
        .is_some_and(|db| *db.code() == SqlState::UNIQUE_VIOLATION && db.table() == Some("stead_log"))
}

/// Appends entries with the application's statements: one transaction,
/// each entry with its statements in a savepoint, so that a failing
/// statement undoes only its own turn.
async fn append_in_transaction(pg: &Pg, batch: &[Entry]) -> Result<Vec<Outcome>> {
    pg.with("shipping turns' writes with their statements", |c| async move {
        let outcomes = transact(&c, batch).await;
        if outcomes.is_err() {
            // Leave no transaction open on the connection for the next
            // shipment (a broken connection is made again anyway).
            let _ = c.client.batch_execute("ROLLBACK").await;
        }
        outcomes
    })
    .await
}

async fn transact(c: &PgConn, batch: &[Entry]) -> std::result::Result<Vec<Outcome>, tokio_postgres::Error> {
    let client = &c.client;
    client.batch_execute("BEGIN").await?;
    let mut outcomes = Vec::with_capacity(batch.len());
    for entry in batch {
        client.batch_execute("SAVEPOINT stead_turn").await?;
        let Outcome::Appended(seq) = append_one(c, entry, Alone::Yes).await? else {
            client.batch_execute("ROLLBACK TO SAVEPOINT stead_turn").await?;
            outcomes.push(Outcome::Fenced);
            continue;
        };
        let mut refused = None;
        for statement in &entry.statements {
            let params = statement.params.iter().map(|p| p.as_ref() as &(dyn ToSql + Sync));
            if let Err(err) = client.execute_raw(statement.sql.as_str(), params).await {
                if err.as_db_error().is_none() {
                    return Err(err);
                }
                refused = Some(pg_error("the statement", &err).to_string());
                break;
            }
        }
        match refused {
            Some(message) => {
                client.batch_execute("ROLLBACK TO SAVEPOINT stead_turn").await?;
                outcomes.push(Outcome::Refused(message));
            }
            None => {
                client.batch_execute("RELEASE SAVEPOINT stead_turn").await?;
                outcomes.push(Outcome::Appended(seq));
            }
        }
    }
    client.batch_execute("COMMIT").await?;
    Ok(outcomes)
}
