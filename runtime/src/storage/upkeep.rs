//! Work on an object's database that syncs, done off the turn's thread:
//! checkpoints and closes of databases on disk, with either durability.
//! (Replies wait for the syncs of their own commits only with
//! `Durability::Full`: see `flush.rs`.)
//!
//! Both need the object's connection, which is not shared: the connection
//! is handed to a sync thread, between two turns, and the object is *away*
//! until it comes back (a checkpoint) or is closed (a close). A turn first
//! waits, asynchronously, for its object's connection ([`Storage::upkeep`],
//! called by the runtime before every turn with a future); a turn without
//! a future is not run while the object needs upkeep
//! ([`Storage::needs_upkeep`]) and takes the path with a future instead.
//! Other code that reaches the storage while it is away (the runtime's own
//! reads, a pool close racing a turn's start) blocks until it is back:
//! correct, and rare.
//!
//! - **Checkpoints.** A commit that leaves [`CHECKPOINT_BYTES`] of pages or
//!   more in the WAL ([`NORMAL_CHECKPOINT_BYTES`] with `Normal`, see `wal.rs`)
//!   marks a checkpoint due; the next turn hands the connection to
//!   a sync thread, which runs [`wal::checkpoint`] and gives it back, and
//!   then runs. Replies are not held by it: the output gate holds them
//!   until their own sync. With `Normal`, whose commits are not synced, a
//!   sync thread first syncs the WAL while turns go on, and the checkpoint
//!   is due once that is done.
//! - **Snapshots** of a replicated object (`replica.rs`): a commit that
//!   leaves its WAL past the snapshot threshold marks a snapshot due; the
//!   sync thread waits for what was committed to be shipped, checkpoints
//!   the database, and has the file shipped as the log's new snapshot
//!   with the next shipment (which the next reply waits for).
//! - **Closes.** Closing a database syncs what was committed (releasing the
//!   replies held for it), checkpoints the WAL if anything was written, and
//!   closes the file, all on a sync thread ([`Closing`]). The pool of open
//!   databases hands a close over and goes on (it runs on some other
//!   object's turn), as does the reset of an object whose sync failed (on
//!   its own turn's thread: the turn then waits in `upkeep`); eviction
//!   waits for it, off the tokio workers, because another activation may
//!   open the file next. A storage dropped with its database open closes
//!   it in place.
//!
//! In memory there are no sync threads and nothing to sync: closes run in
//! place, and there are no checkpoints.
//!
//! With `Normal`, SQLite used to run its own checkpoints, every 1,000
//! pages, in the commit that reached them: `fsync`s on a tokio worker,
//! which under load took up to 36 ms each and a third of the workers' time
//! over a run, while every caller queued on the object waited (64 callers
//! on 100 objects saw calls of 1.3 s). They now run here, at the same
//! interval, with a WAL that keeps its size while the database is open
//! (cutting a 4 MiB WAL back to its kept size took half of a checkpoint's
//! time under load). The object still waits for its checkpoint: that is
//! `Normal`'s latency tail. Syncing the WAL ahead, while turns go on, took
//! the longest part out of that wait (a checkpoint's own sync of 1,000
//! unsynced pages took 5 ms at p90 under load, with other checkpoints
//! running 20 to 50 ms): p99 of 64 callers on 100 objects went from 24 to
//! 19–22 ms (`durable_throughput`, alternating runs). What is left is three
//! syncs of a few pages each (the WAL's last commits, the database file,
//! the WAL's new header), slow when the disk is busy writing back other
//! objects' WALs.

use std::fs::File;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU8, Ordering};
use std::sync::{Arc, Condvar, Mutex};

use rusqlite::Connection;

use super::Durability;
use super::flush::{Flush, Shipment};
use super::replica::Replica;
use super::wal::{self, CHECKPOINT_BYTES, NORMAL_CHECKPOINT_BYTES};
use super::{Storage, StorageRoot, is_empty};
use crate::id::ObjectId;
use crate::sync::lock;

/// Where an object's connection is: here, or on a sync thread.
#[derive(Default)]
pub(super) struct Gate {
    /// The connection is on a sync thread (mirrors `state`, to check it
    /// without a lock on every turn).
    away: AtomicBool,
    /// A checkpoint is due before the next turn.
    due: AtomicBool,
    /// Where the sync of the WAL ahead of a `Normal` checkpoint stands:
    /// [`AHEAD_NONE`], [`AHEAD_SYNCING`], [`AHEAD_SYNCED`] or
    /// [`AHEAD_FAILED`] (see [`Storage::note_frames`]).
    ahead: AtomicU8,
    state: Mutex<bool>,
    back: Condvar,
    notify: tokio::sync::Notify,
}

/// No sync of the WAL ahead of a checkpoint since the last one.
const AHEAD_NONE: u8 = 0;
/// The WAL is being synced ahead of a checkpoint, while turns go on.
const AHEAD_SYNCING: u8 = 1;
/// The WAL was synced ahead: the checkpoint is due.
const AHEAD_SYNCED: u8 = 2;
/// Syncing the WAL ahead failed: the database is closed instead of
/// checkpointed.
const AHEAD_FAILED: u8 = 3;

impl Gate {
    /// Forgets any sync ahead of a checkpoint: the database was opened, or
    /// is being checkpointed. Returns whether one had failed.
    pub(super) fn forget_sync_ahead(&self) -> bool {
        self.ahead.swap(AHEAD_NONE, Ordering::SeqCst) == AHEAD_FAILED
    }

    /// Marks the connection as handed to a sync thread.
    fn leave(&self) {
        *lock(&self.state) = true;
        self.away.store(true, Ordering::SeqCst);
    }

    /// Marks the connection as back (or closed), waking whoever waits.
    fn back(&self) {
        *lock(&self.state) = false;
        self.away.store(false, Ordering::SeqCst);
        self.back.notify_all();
        self.notify.notify_waiters();
    }

    pub(super) fn is_away(&self) -> bool {
        self.away.load(Ordering::SeqCst)
    }

    /// Blocks the thread until the connection is back or closed.
    pub(super) fn wait(&self) {
        let mut away = lock(&self.state);
        while *away {
            super::before_blocking();
            away = self.back.wait(away).unwrap_or_else(|poisoned| poisoned.into_inner());
        }
    }

    /// Waits, without blocking the thread, until the connection is back.
    async fn until_back(&self) {
        loop {
            let notified = self.notify.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            if !self.is_away() {
                return;
            }
            notified.await;
        }
    }
}

/// Marks the connection back when dropped: at the end of a sync thread's
/// job, even one that panicked (the pool catches the panic), so that no turn
/// waits forever.
struct Back(Arc<Gate>);

impl Drop for Back {
    fn drop(&mut self) {
        self.0.back();
    }
}

impl Storage {
    /// Whether the next turn must wait for upkeep: the connection is away,
    /// a checkpoint is due, or a failed sync asks for a reset. The runtime
    /// then runs the turn with a future, which calls [`upkeep`](Self::upkeep).
    pub(crate) fn needs_upkeep(&self) -> bool {
        let gate = &self.inner.gate;
        gate.is_away() || gate.due.load(Ordering::Relaxed) || self.sync_failed()
    }

    /// Before a turn: runs a due checkpoint on a sync thread, and waits
    /// (asynchronously) until the connection is back from any such work.
    pub(crate) async fn upkeep(&self) {
        let gate = &self.inner.gate;
        if gate.due.swap(false, Ordering::Relaxed) {
            self.checkpoint_away();
        }
        if gate.is_away() {
            gate.until_back().await;
        }
    }

    /// Notes the WAL's length after a commit (`frames`, from the WAL hook;
    /// 0 if the commit wrote nothing), and whether a checkpoint is due.
    ///
    /// With `Full` every commit was synced already, and the checkpoint is
    /// due at once. With `Normal` the WAL holds a whole interval of pages
    /// nobody synced, and syncing them was most of a checkpoint's time
    /// under load: a sync thread syncs them first, while the object goes
    /// on running turns, and the checkpoint is due once that is done (its
    /// own sync of the WAL then has only the last few commits to write).
    pub(super) fn note_frames(&self, state: &mut super::State, frames: u32) {
        if frames == 0 {
            return;
        }
        state.wal_frames = frames;
        let Some(threads) = &self.inner.root.upkeep else { return };
        let gate = &self.inner.gate;
        let bytes = u64::from(frames) * u64::from(state.page_size);
        match self.inner.root.durability {
            Durability::Full if bytes >= CHECKPOINT_BYTES => gate.due.store(true, Ordering::Relaxed),
            Durability::Normal if bytes >= NORMAL_CHECKPOINT_BYTES => {
                match (gate.ahead.load(Ordering::SeqCst), &state.wal) {
                    (AHEAD_SYNCING, _) => {}
                    (AHEAD_NONE, Some(wal)) => {
                        gate.ahead.store(AHEAD_SYNCING, Ordering::SeqCst);
                        let (wal, gate) = (wal.clone(), gate.clone());
                        let (type_name, id) = (self.inner.type_name, self.inner.id);
                        threads.submit(Box::new(move || {
                            let synced = wal.sync_data().map(|()| AHEAD_SYNCED).unwrap_or_else(|err| {
                                tracing::warn!(%err, r#type = type_name, object = %id, "could not sync the object's WAL ahead of a checkpoint; the database is closed instead");
                                AHEAD_FAILED
                            });
                            // Unless the database was checkpointed or
                            // opened again meanwhile.
                            let now = gate.ahead.compare_exchange(AHEAD_SYNCING, synced, Ordering::SeqCst, Ordering::SeqCst);
                            if now.is_ok() {
                                gate.due.store(true, Ordering::Relaxed);
                            }
                        }));
                    }
                    // Synced (or failed) ahead, and the checkpoint was not
                    // taken yet: due at the next turn.
                    _ => gate.due.store(true, Ordering::Relaxed),
                }
            }
            _ => {}
        }
    }

    /// Marks a snapshot of the replicated database due before the next
    /// turn (replicas are shipped by the sync threads' output gate, so a
    /// runtime without them has none).
    pub(super) fn snapshot_due(&self) {
        if self.inner.root.sync.is_some() {
            self.inner.gate.due.store(true, Ordering::Relaxed);
        }
    }

    /// Hands the connection to a sync thread for a checkpoint (a snapshot,
    /// if the database is a replica). Between turns, so nothing else is
    /// using it.
    fn checkpoint_away(&self) {
        let Some(threads) = &self.inner.root.upkeep else { return };
        let mut state = self.inner.lock();
        if state.turn || state.lent || state.txn {
            return;
        }
        let replica = state.replica.clone();
        if replica.is_none() && state.wal_frames == 0 {
            // Nothing written since the database was opened again: a sync
            // ahead of the checkpoint of the old one marked it due.
            return;
        }
        let Some(conn) = state.conn.take() else { return };
        state.wal_frames = 0;
        state.wal_len = None;
        let failed_ahead = self.inner.gate.forget_sync_ahead();
        self.inner.gate.leave();
        drop(state);
        let inner = self.inner.clone();
        let back = Back(self.inner.gate.clone());
        let threads_too = threads.clone();
        threads.submit(Box::new(move || {
            if let Some(replica) = replica {
                // Everything committed is shipped first: the file is
                // then what the log says up to here.
                inner.flush.wait(&threads_too);
                if !inner.flush.failed() {
                    snapshot(&inner.flush, &replica, &conn, inner.type_name, &inner.id);
                }
                inner.lock().conn = Some(conn);
                drop(back);
                return;
            }
            // A WAL that could not be synced must not be copied into the
            // database (a power loss midway could tear it).
            let checkpointed = if failed_ahead {
                Err("its WAL could not be synced".to_string())
            } else {
                wal::checkpoint(&conn).map_err(|err| err.to_string())
            };
            let mut state = inner.lock();
            match checkpointed {
                Ok(()) => state.conn = Some(conn),
                Err(err) => {
                    // The WAL may not have started over as it must (see
                    // `wal.rs`): close the database instead; the next
                    // access opens it again from what is on disk.
                    tracing::warn!(%err, r#type = inner.type_name, object = %inner.id, "could not checkpoint the object's database; it is closed");
                    state.wal = None;
                    inner.flush.settle();
                    drop(conn);
                    inner.root.open.closed();
                }
            }
            drop(state);
            drop(back);
        }));
    }
}

/// Checkpoints a replicated database whose commits are all shipped, so
/// that its WAL starts again and its file becomes the log's new snapshot,
/// shipped with the next shipment. A failure leaves the WAL as it was: the
/// next commit tries again.
fn snapshot(flush: &Flush, replica: &Arc<Replica>, conn: &Connection, type_name: &str, id: &ObjectId) {
    match replica.checkpoint(conn) {
        Ok(()) => flush.committed_to_log(replica, Some(0), Shipment::default()),
        Err(err) => tracing::warn!(
            %err, r#type = type_name, object = %id,
            "could not checkpoint the object's database to snapshot it; the next turn tries again"
        ),
    }
}

/// A database being closed: what the close needs, owned, so that it can
/// run on a sync thread after the storage moved on.
pub(super) struct Closing {
    pub(super) conn: Connection,
    pub(super) root: Arc<StorageRoot>,
    pub(super) flush: Arc<Flush>,
    pub(super) type_name: &'static str,
    pub(super) id: ObjectId,
    /// A new database file and directories that no commit synced yet (the
    /// object's first activation only read): synced before the close, so
    /// that a later activation, which finds the file, can rely on it.
    pub(super) new_paths: Vec<PathBuf>,
    /// `delete_all` ran: remove the file if the storage stayed empty.
    pub(super) maybe_empty: bool,
    /// Commits wrote to the WAL since its last checkpoint.
    pub(super) written: bool,
    /// The database's place in its log, if it is a copy of it
    /// (`replica.rs`): no checkpoint, it is never removed (the log would
    /// rebuild it anyway), and its marker is brought up to date.
    pub(super) replica: Option<Arc<Replica>>,
}

impl Closing {
    /// Closes the database: on a sync thread if the runtime has them (the
    /// gate is away until it is done), otherwise here.
    pub(super) fn start(self, gate: &Arc<Gate>) {
        match self.root.upkeep.clone() {
            Some(threads) => {
                gate.leave();
                let back = Back(gate.clone());
                threads.submit(Box::new(move || {
                    self.run();
                    drop(back);
                }));
            }
            None => self.run(),
        }
    }

    /// Closes the database here.
    pub(super) fn run(self) {
        // Nothing held may wait for a file that is about to close.
        self.flush.settle();
        if let Some(replica) = &self.replica {
            replica.close();
        }
        for path in &self.new_paths {
            if let Err(err) = File::open(path).and_then(|file| file.sync_all()) {
                tracing::warn!(%err, path = %path.display(), "could not sync a new object database's file or directory");
            }
        }
        let replicated = self.replica.is_some();
        let empty = self.maybe_empty && !replicated && is_empty(&self.conn);
        self.root.location.close(self.type_name, &self.id, self.conn, self.written, replicated);
        if empty {
            self.root.location.remove(self.type_name, &self.id);
        }
    }
}
