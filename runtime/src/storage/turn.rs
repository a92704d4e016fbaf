//! The turn: who may touch an object's storage, and the turn's transaction
//! (the output gate).
//!
//! An object's storage is reachable only from the object's own turns: its
//! constructor, its methods and its alarm handler. The runtime runs each
//! turn inside [`Storage::in_turn`], a task-local mark naming the storage;
//! the mark follows the turn's future wherever it is polled (the caller's
//! task, then maybe a drain task), and a task or thread that the object
//! spawns does not inherit it. An access without the mark fails with
//! [`Error::Storage`]: in a turn's transaction it would be committed or
//! rolled back with whatever turn happened to be running, unseen by that
//! turn's output gate; on its own it would commit beside the gate.
//!
//! Within a turn, the first access begins one transaction; the runtime
//! commits it with [`Storage::commit_turn`] before the reply is released, or
//! undoes it with [`Storage::rollback_turn`].

use std::future::Future;
use std::sync::Arc;

use super::database::{self, storage_error};
use super::flush::Shipment;
use super::replica::Statement;
use super::wal;
use super::{Durability, State, Storage};
use crate::error::{Error, Result};

tokio::task_local! {
    /// The storage whose object's turn the current task is running.
    static TURN: Storage;
}

impl Storage {
    /// Runs `turn` as a turn of this storage's object: storage accesses
    /// inside it are allowed.
    pub(crate) fn in_turn<F: Future>(&self, turn: F) -> impl Future<Output = F::Output> + use<F> {
        TURN.scope(self.clone(), turn)
    }

    /// [`in_turn`](Self::in_turn) for a turn without a future.
    pub(crate) fn in_turn_sync<R>(&self, turn: impl FnOnce() -> R) -> R {
        TURN.sync_scope(self.clone(), turn)
    }

    /// Holds output of the running turn (a call to another object) until
    /// the commits of its object's earlier turns are durable; returns at
    /// once outside a turn or with nothing to sync. See `flush.rs`.
    pub(crate) fn hold_output() {
        // Cloned only when the runtime syncs: most calls cost a lookup.
        let syncing = TURN.try_with(|storage| storage.inner.root.upkeep.is_some().then(|| storage.clone()));
        if let Ok(Some(storage)) = syncing
            && let Some(threads) = &storage.inner.root.upkeep
        {
            storage.inner.flush.wait(threads);
        }
    }

    /// Runs `release` once the commits so far are durable: at once in
    /// memory, else in order with the object's other replies (see
    /// `flush.rs`; with `Durability::Normal` only a new database's first
    /// commit is synced).
    pub(crate) fn release(&self, release: impl FnOnce(Result<()>) + Send + 'static) {
        match &self.inner.root.upkeep {
            None => release(Ok(())),
            Some(threads) => self.inner.flush.release(threads, Box::new(release)),
        }
    }

    /// Whether a sync of this object's database failed since the last
    /// check: the runtime must then drop the instance and close the
    /// database before the next turn.
    pub(crate) fn take_sync_failure(&self) -> Option<String> {
        self.inner.flush.take_failure()
    }

    /// Opens the object's database now, if it is not open (a replicated
    /// one checks first that this node owns the object, and is rebuilt
    /// from the log if needed): before its constructor runs, so that an
    /// object this node lost is refused with a clear, retryable error.
    pub(crate) fn open_now(&self) -> Result<()> {
        if self.inner.root.log.is_none() {
            return Ok(());
        }
        let mut state = self.lock();
        self.ready(&mut state).map(drop)
    }

    /// Whether a sync failure waits for [`take_sync_failure`](Self::take_sync_failure).
    pub(crate) fn sync_failed(&self) -> bool {
        self.inner.root.upkeep.is_some() && self.inner.flush.failed()
    }

    /// Fails unless the current task runs a turn of this storage's object
    /// and the object is still in memory.
    pub(super) fn check_access(&self, state: &State) -> Result<()> {
        if state.evicted {
            return Err(Error::Storage(format!(
                "the storage handle of `{}` object {} is no longer valid: the object was evicted \
                 (a task kept its Context after the object left memory); reach the object \
                 through a stub instead",
                self.inner.type_name, self.inner.id
            )));
        }
        if TURN.try_with(|turn| Arc::ptr_eq(&turn.inner, &self.inner)).unwrap_or(false) {
            return Ok(());
        }
        Err(Error::Storage(format!(
            "the storage of `{0}` object {1} was used outside a turn of the object (from a task or \
             thread it spawned, or from its Drop); such an access would join, and could be lost \
             with, whatever turn was running. Use storage in the object's constructor, methods and \
             alarm handler; from a spawned task, call the object through its stub \
             (`ctx.namespace::<{0}>().stub(&ctx.id())`)",
            self.inner.type_name, self.inner.id
        )))
    }

    /// Starts a turn: accesses from now on join one transaction.
    pub(crate) fn begin_turn(&self) {
        let mut state = self.lock();
        // A turn never inherits another's writes, whatever became of that
        // turn's end (the runtime always ends it; this is the last line).
        if std::mem::take(&mut state.txn)
            && let Some(conn) = state.conn.as_ref()
            && !conn.is_autocommit()
        {
            tracing::warn!(
                r#type = self.inner.type_name, object = %self.inner.id,
                "a turn's transaction was still open when the next turn began; it was rolled back"
            );
            let _ = conn.execute_batch("ROLLBACK");
        }
        state.savepoints = 0;
        state.written = 0;
        state.turn = true;
    }

    /// Counts `bytes` written by the turn.
    pub(super) fn wrote(&self, bytes: usize) {
        let mut state = self.lock();
        state.written = state.written.saturating_add(bytes as u64);
    }

    /// The bytes of keys and values the turn wrote with `put` and
    /// `put_many`, if it opened a transaction (which the commit then ends).
    pub(crate) fn turn_written(&self) -> Option<u64> {
        let state = self.lock();
        state.txn.then_some(state.written)
    }

    /// Ends the turn by committing its transaction (the output gate).
    pub(crate) fn commit_turn(&self) -> Result<()> {
        let mut state = self.lock();
        state.turn = false;
        state.savepoints = 0;
        let turn = Shipment { statements: std::mem::take(&mut state.statements), alarm: state.alarm.take() };
        let index_batch = std::mem::take(&mut state.index_batch);
        if !std::mem::take(&mut state.txn) {
            return self.ship_statements(&state, turn);
        }
        let unknown_writes = std::mem::take(&mut state.unknown_writes);
        let Some(conn) = state.conn.as_ref() else { return Ok(()) };
        let wrote = unknown_writes || conn.total_changes() != state.changes;
        wal::take_frames();
        if let Err(err) = database::commit(conn) {
            let _ = conn.execute_batch("ROLLBACK");
            return Err(storage_error("commit the turn", err));
        }
        let frames = wal::take_frames();
        if let Some(replica) = state.replica.clone() {
            let end = replica.wal_end(frames);
            if end.is_some() || !turn.statements.is_empty() || turn.alarm.is_some() {
                self.inner.flush.committed_to_log(&replica, end, turn);
            }
            if let Some(end) = end
                && replica.wants_snapshot(end)
            {
                // Before the next turn, on a sync thread (`upkeep.rs`).
                self.snapshot_due();
            }
            return Ok(());
        }
        self.note_frames(&mut state, frames);
        let full = self.inner.root.durability == Durability::Full;
        if full && frames > 0 && state.page_size > 0 {
            self.make_room(&mut state, frames);
        }
        let synced = full || !state.new_paths.is_empty();
        if wrote
            && synced
            && let Some(wal) = state.wal.clone()
        {
            let paths = std::mem::take(&mut state.new_paths);
            let root = &self.inner.root;
            let index =
                (index_batch > 0 && root.alarms.synced_by_gate()).then(|| (root.alarms.clone(), index_batch));
            self.inner.flush.committed(&wal, paths, index);
        }
        Ok(())
    }

    /// Keeps the WAL written ahead of the commit's frames, so that the
    /// syncs of the next commits overwrite it rather than append to it
    /// (`wal::make_room`). The commit does not depend on it: a failure is
    /// only logged.
    fn make_room(&self, state: &mut State, frames: u32) {
        let State { wal, wal_len, page_size, .. } = state;
        let Some(wal) = wal else { return };
        if let Err(err) = wal::make_room(wal, wal_len, wal::frames_end(frames, *page_size)) {
            tracing::debug!(%err, r#type = self.inner.type_name, object = %self.inner.id, "could not write the WAL ahead of its frames");
        }
    }

    /// Queues statements of a turn that touched no storage, to be shipped
    /// (they need the object's replicated log; see `Postgres::execute`).
    fn ship_statements(&self, state: &State, turn: Shipment) -> Result<()> {
        if turn.statements.is_empty() {
            return Ok(());
        }
        let Some(replica) = &state.replica else {
            return Err(Error::Storage("the turn's PostgreSQL statements found no open database".into()));
        };
        self.inner.flush.committed_to_log(replica, None, turn);
        Ok(())
    }

    /// Queues `statement` to run in PostgreSQL in the same transaction as
    /// the turn's writes (see [`Postgres::execute`](crate::Postgres::execute)).
    pub(crate) fn queue_statement(&self, statement: Statement) -> Result<()> {
        let mut state = self.lock();
        self.check_access(&state)?;
        if self.inner.root.log.is_none() {
            return Err(Error::Config(
                "`ctx.postgres()` writes to the cluster's PostgreSQL, and this runtime has none: build it \
                 with `.postgres(conninfo)` and a `.data_dir(..)` (its storage is then replicated there)"
                    .into(),
            ));
        }
        if !state.turn {
            return Err(Error::Storage("a PostgreSQL statement can only be queued during a turn".into()));
        }
        // The database is opened (and the object's ownership checked)
        // before anything is queued.
        self.ready(&mut state)?;
        state.statements.push(statement);
        Ok(())
    }

    /// Ends the turn by rolling back its transaction.
    pub(crate) fn rollback_turn(&self) {
        let mut state = self.lock();
        state.turn = false;
        state.savepoints = 0;
        state.unknown_writes = false;
        state.statements.clear();
        state.alarm = None;
        state.index_batch = 0;
        if std::mem::take(&mut state.txn)
            && let Some(conn) = state.conn.as_ref()
            && !conn.is_autocommit()
        {
            // A failed rollback leaves nothing to undo: SQLite rolled back already.
            let _ = conn.execute_batch("ROLLBACK");
        }
    }
}
