//! The durable half of the output gate: a reply leaves only once the commit
//! it may have seen is on disk.
//!
//! With [`Durability::Full`](super::Durability::Full), a turn commits into
//! the object's WAL without syncing it (SQLite's `synchronous = OFF`: SQLite
//! syncs nothing, see `wal.rs`), so that the turn costs no disk wait on the
//! tokio worker that runs it. The
//! object then goes on running its next turns against the committed state,
//! while a sync thread (`sync_threads.rs`) makes the WAL durable. The reply
//! of every turn (whether it wrote or only read) is *held* here, in order,
//! until a sync that began after the object's latest commit at the end of
//! that turn has finished: so no caller ever sees a write that a crash
//! could take back, and one sync covers every turn committed since the one
//! before (group commit, per object). The first sync of a new database also
//! syncs its file and the directories it was created in; a sync of commits
//! that set an alarm first syncs the node's alarm index through their
//! entries (`alarm_index.rs`).
//!
//! With `Normal`, commits are not synced, and replies pass through here at
//! once, except the first commit of a new database: it is synced like a
//! `Full` one (with the database's file and directories), so that a power
//! loss cannot leave a torn new database, and no tokio worker waits for
//! the disk to make one.
//!
//! A sync that fails fails every reply it held and every reply held after
//! it (their turns may have built on the lost writes), and marks the object
//! for a reset: the runtime drops its instance and closes its database
//! before its next turn, so that it starts again from what is on disk.
//!
//! With replicated storage (a PostgreSQL cluster, see `replica.rs`) the
//! same gate holds replies until the commits they may have seen are
//! *shipped* to the cluster's referee instead: the job ships where it
//! would sync, and a refused shipment fails and resets like a failed sync.
//!
//! Output other than replies waits too: a turn that calls another object
//! (`Flush::wait`, from the stub) first waits for the syncs of the turns
//! before it, since the call could carry their writes (that wait blocks the
//! turn's thread, as a sync of its own would); the alarm index forgets an
//! alarm only once the turn that ran it is durable. Memory is bounded: past
//! [`MAX_HELD`] held replies, a turn waits for the sync before it ends.

use std::collections::VecDeque;
use std::fs::File;
use std::path::PathBuf;
use std::sync::{Arc, Condvar, Mutex, MutexGuard};

use super::alarm_index::AlarmIndex;
use super::replica::{Pending, Replica, Statement};
use super::sync_threads::SyncThreads;
use crate::error::{Error, Result};
use crate::sync::lock;

/// The most replies one object holds; the turn after waits for a sync.
pub(crate) const MAX_HELD: usize = 4096;

/// What happens once a turn's commit is durable (or could not be made so).
pub(crate) type Release = Box<dyn FnOnce(Result<()>) + Send>;

/// The syncs of one object's database.
pub(crate) struct Flush {
    state: Mutex<State>,
    /// Signalled after each sync.
    synced: Condvar,
}

#[derive(Default)]
struct State {
    /// Commits so far that need a sync (numbered from 1).
    committed: u64,
    /// The last commit known durable.
    durable: u64,
    /// A sync job is queued or running.
    syncing: bool,
    /// Held releases, each with the commit it waits for, in turn order.
    held: VecDeque<(u64, Release)>,
    /// The file to sync: the WAL of the open database.
    wal: Option<Arc<File>>,
    /// Files and directories to sync before it: a new database file, and
    /// the directories it and its WAL were created in.
    paths: Vec<PathBuf>,
    /// The node's alarm index, to sync through this batch before the WAL:
    /// the entries of alarms the commits set (see `alarm_index.rs`).
    index: Option<(Arc<AlarmIndex>, u64)>,
    /// Where to ship commits instead, when the storage is replicated.
    replica: Option<Arc<Replica>>,
    /// The end of the WAL after the newest commit to ship.
    end: u64,
    /// The statements of the turns to ship.
    statements: Vec<Statement>,
    /// The alarm, if the turns to ship changed it.
    alarm: Option<Option<i64>>,
    /// Why the last sync failed, until the object is reset.
    failed: Option<Error>,
    /// Threads waiting on `synced` (a signal nobody waits for is a
    /// system call saved, twice a replicated write).
    waiters: usize,
}

/// What a turn gives the log besides its frames.
#[derive(Default)]
pub(crate) struct Shipment {
    /// Statements for PostgreSQL (`Postgres::execute`).
    pub(crate) statements: Vec<Statement>,
    /// The alarm, if the turn changed it.
    pub(crate) alarm: Option<Option<i64>>,
}

/// One sync job's work: everything committed up to `upto`.
struct Work {
    upto: u64,
    wal: Option<Arc<File>>,
    paths: Vec<PathBuf>,
    index: Option<(Arc<AlarmIndex>, u64)>,
    ship: Option<(Arc<Replica>, Pending)>,
}

impl Flush {
    pub(crate) fn new() -> Arc<Self> {
        Arc::new(Flush { state: Mutex::default(), synced: Condvar::new() })
    }

    /// Records a commit into `wal` that is not synced yet; `paths` are
    /// synced with it (a new database: see `Opened::new_paths`), and
    /// before them the alarm index through the batch given, if the commit
    /// set an alarm.
    pub(crate) fn committed(
        &self,
        wal: &Arc<File>,
        paths: Vec<PathBuf>,
        index: Option<(Arc<AlarmIndex>, u64)>,
    ) {
        let mut state = lock(&self.state);
        state.committed += 1;
        state.paths.extend(paths);
        if let Some((alarms, batch)) = index {
            let through = state.index.as_ref().map_or(0, |(_, held)| *held);
            state.index = Some((alarms, batch.max(through)));
        }
        if !state.wal.as_ref().is_some_and(|held| Arc::ptr_eq(held, wal)) {
            state.wal = Some(wal.clone());
        }
    }

    /// Records a commit of a replicated object, to ship: the WAL now ends
    /// at `end` (unchanged if none: the commit wrote no frames), and the
    /// turn gave `turn` (its statements, its alarm if it changed it).
    pub(crate) fn committed_to_log(&self, replica: &Arc<Replica>, end: Option<u64>, turn: Shipment) {
        let mut state = lock(&self.state);
        state.committed += 1;
        let Shipment { statements, alarm } = turn;
        if alarm.is_some() {
            state.alarm = alarm;
        }
        if let Some(end) = end {
            // Not the larger: a checkpoint starts the WAL again from zero.
            state.end = end;
        }
        state.statements.extend(statements);
        if !state.replica.as_ref().is_some_and(|held| Arc::ptr_eq(held, replica)) {
            // The database was opened again: ends are its new WAL's.
            state.end = end.unwrap_or(0);
            state.replica = Some(replica.clone());
        }
    }

    /// Runs `release` once every commit so far is durable: now, if it is
    /// and nothing is held before it; otherwise in order, from the thread
    /// that finishes the sync. With too many held, waits for that sync.
    pub(crate) fn release(self: &Arc<Self>, threads: &SyncThreads, release: Release) {
        let mut state = lock(&self.state);
        if let Some(err) = &state.failed {
            let err = err.clone();
            drop(state);
            release(Err(err));
            return;
        }
        if state.held.is_empty() && state.durable >= state.committed {
            drop(state);
            release(Ok(()));
            return;
        }
        let upto = state.committed;
        state.held.push_back((upto, release));
        let start = !std::mem::replace(&mut state.syncing, true);
        let full = state.held.len() >= MAX_HELD;
        drop(state);
        if start {
            self.start_job(threads);
        }
        if full {
            self.wait_for(upto, threads);
        }
    }

    /// Waits (blocking the thread) until every commit so far is durable or
    /// its sync failed. For output that is not a reply (see the module docs).
    pub(crate) fn wait(self: &Arc<Self>, threads: &SyncThreads) {
        let upto = lock(&self.state).committed;
        self.wait_for(upto, threads);
    }

    fn wait_for(self: &Arc<Self>, upto: u64, threads: &SyncThreads) {
        let mut state = lock(&self.state);
        if state.durable < upto && !state.syncing && state.failed.is_none() {
            state.syncing = true;
            drop(state);
            self.start_job(threads);
            state = lock(&self.state);
        }
        while state.durable < upto && state.failed.is_none() {
            state = self.wait_synced(state);
        }
    }

    /// Waits for the next signal of `synced`, after running what this
    /// thread must do before it blocks (`replica::on_block`).
    fn wait_synced<'a>(&self, mut state: MutexGuard<'a, State>) -> MutexGuard<'a, State> {
        super::before_blocking();
        state.waiters += 1;
        let mut state = self.synced.wait(state).unwrap_or_else(|poisoned| poisoned.into_inner());
        state.waiters -= 1;
        state
    }

    /// Signals `synced`, if anyone waits (with `state` still locked).
    fn signal_synced(&self, state: MutexGuard<'_, State>) {
        let waiting = state.waiters > 0;
        drop(state);
        if waiting {
            self.synced.notify_all();
        }
    }

    /// Syncs the database before it is closed (by the close, on a sync
    /// thread when the runtime has them: see `upkeep.rs`), so that nothing
    /// held waits for a file that is gone.
    pub(crate) fn settle(&self) {
        let work = {
            let mut state = lock(&self.state);
            // A shipment in flight finishes first: one at a time.
            while state.syncing && state.replica.is_some() && state.failed.is_none() {
                state = self.wait_synced(state);
            }
            if state.durable >= state.committed {
                return;
            }
            state.work()
        };
        self.sync(work);
    }

    /// Whether a sync failed and the object was not reset since.
    pub(crate) fn failed(&self) -> bool {
        lock(&self.state).failed.is_some()
    }

    /// The reason of a failed sync, once: the object must be reset (its
    /// instance dropped, its database closed) before its next turn.
    pub(crate) fn take_failure(&self) -> Option<String> {
        let mut state = lock(&self.state);
        let failed = state.failed.take()?;
        // A fresh start: what was held failed with the sync.
        state.durable = state.committed;
        state.statements.clear();
        state.alarm = None;
        state.replica = None;
        Some(failed.to_string())
    }

    /// The sync job: syncs until every commit is durable.
    fn sync_until_done(&self) {
        while let Some(work) = self.next_work() {
            self.sync(work);
        }
    }

    /// What the running job does next: the commits not yet durable; none
    /// when there are none (or a sync failed), which ends the job.
    fn next_work(&self) -> Option<Work> {
        let mut state = lock(&self.state);
        if state.durable >= state.committed || state.failed.is_some() {
            state.syncing = false;
            // A close may wait for the job to be over (`settle`).
            self.signal_synced(state);
            return None;
        }
        Some(state.work())
    }

    /// Syncs `paths` and `wal`, then releases what waited for commits up to
    /// `upto` (all that is held, if the sync failed).
    ///
    /// `fdatasync` is enough for the WAL: it writes the file's data and the
    /// metadata needed to read it back (its size), which is all a commit
    /// adds; SQLite itself uses it where the system has it.
    ///
    /// A replicated object's commits are shipped instead (`replica.rs`).
    fn sync(&self, work: Work) {
        let Work { upto, wal, paths, index, ship } = work;
        let outcome = match ship {
            Some((replica, pending)) => replica.ship(pending),
            None => index
                .map_or(Ok(()), |(alarms, batch)| alarms.sync_through(batch))
                .and_then(|()| {
                    paths.iter().try_for_each(|path| File::open(path).and_then(|file| file.sync_all()))
                })
                .and_then(|()| wal.as_deref().map_or(Ok(()), File::sync_data))
                .map_err(|err| sync_failed(&err.to_string())),
        };
        self.finish(upto, outcome);
    }

    /// Starts the job that makes the commits so far durable (the caller
    /// set `syncing`): a sync thread's, or for a replicated object a
    /// shipment that needs no thread of its own (see `ship_next`).
    fn start_job(self: &Arc<Self>, threads: &SyncThreads) {
        if lock(&self.state).replica.is_some() {
            self.clone().ship_next(threads.clone());
        } else {
            self.submit_sync(threads);
        }
    }

    /// Runs the sync job on a sync thread.
    fn submit_sync(self: &Arc<Self>, threads: &SyncThreads) {
        let flush = self.clone();
        threads.submit(Box::new(move || flush.sync_until_done()));
    }

    /// Ships what was committed since the last shipment without waiting
    /// for it: the frames are read here, the log's thread appends them and
    /// then releases what they cover and ships what was committed
    /// meanwhile. No sync thread stands between a turn and PostgreSQL (two
    /// thread hand-offs fewer per shipment). A snapshot due first is
    /// shipped from a sync thread, which waits for it.
    fn ship_next(self: Arc<Self>, threads: SyncThreads) {
        let Some(mut work) = self.next_work() else { return };
        let upto = work.upto;
        let Some((replica, pending)) = work.ship.take() else {
            // Not replicated any more (a reset): a sync thread's job.
            threads.submit(Box::new(move || {
                self.sync(work);
                self.sync_until_done();
            }));
            return;
        };
        let flush = self.clone();
        let next = threads.clone();
        let shipped = replica.ship_then(pending, move |outcome| {
            flush.finish(upto, outcome);
            flush.ship_next(next);
        });
        if let Err(pending) = shipped {
            threads.submit(Box::new(move || {
                let outcome = replica.ship(pending);
                self.finish(upto, outcome);
                self.sync_until_done();
            }));
        }
    }

    /// Records that the commits up to `upto` are durable (or could not be
    /// made so), and releases what waited for them (all that is held, on a
    /// failure).
    fn finish(&self, upto: u64, outcome: Result<()>) {
        let mut state = lock(&self.state);
        let released: Vec<(Release, Result<()>)> = match outcome {
            Ok(()) => {
                state.durable = state.durable.max(upto);
                let mut released = Vec::new();
                while state.held.front().is_some_and(|(needs, _)| *needs <= state.durable) {
                    if let Some((_, release)) = state.held.pop_front() {
                        released.push((release, Ok(())));
                    }
                }
                released
            }
            Err(err) => {
                tracing::error!(%err, "could not make an object's commits durable; its held replies fail and it is reset");
                state.failed = Some(err.clone());
                state.held.drain(..).map(|(_, release)| (release, Err(err.clone()))).collect()
            }
        };
        self.signal_synced(state);
        for (release, outcome) in released {
            release(outcome);
        }
    }
}

impl State {
    /// Takes what a sync job does for the commits so far.
    fn work(&mut self) -> Work {
        let ship = self.replica.clone().map(|replica| {
            let statements = std::mem::take(&mut self.statements);
            (replica, Pending { end: self.end, statements, alarm: self.alarm.take() })
        });
        Work {
            upto: self.committed,
            wal: self.wal.clone(),
            paths: std::mem::take(&mut self.paths),
            index: self.index.take(),
            ship,
        }
    }
}

fn sync_failed(reason: &str) -> Error {
    Error::Storage(format!(
        "the object's writes could not be synced to disk ({reason}); this turn's writes, and those of \
         the turns just before it, may be lost. The object is reset: its next call starts from what \
         is on disk"
    ))
}

#[cfg(test)]
mod tests {
    use std::sync::mpsc;

    use super::*;

    /// A file to sync (the WAL's stand-in), removed when the test ends.
    fn wal() -> Arc<File> {
        Arc::new(tempfile::tempfile().unwrap())
    }

    /// The releases' outcomes, each with the number of its release.
    type Outcomes = mpsc::Receiver<(u32, Result<()>)>;

    fn recorder() -> (impl Fn(u32) -> Release, Outcomes) {
        let (tx, rx) = mpsc::channel();
        let make = move |n: u32| -> Release {
            let tx = tx.clone();
            Box::new(move |outcome| tx.send((n, outcome)).unwrap())
        };
        (make, rx)
    }

    #[test]
    fn with_nothing_to_sync_a_reply_leaves_at_once() {
        let flush = Flush::new();
        let threads = SyncThreads::new(1);
        let (make, rx) = recorder();
        flush.release(&threads, make(1));
        assert_eq!(rx.try_recv().unwrap().0, 1);
    }

    #[test]
    fn replies_wait_for_the_sync_and_leave_in_order() {
        let flush = Flush::new();
        let threads = SyncThreads::new(4);
        let (make, rx) = recorder();
        let wal = wal();
        for n in 0..50 {
            if n % 3 != 0 {
                flush.committed(&wal, Vec::new(), None);
            }
            flush.release(&threads, make(n));
        }
        let order: Vec<u32> = (0..50)
            .map(|_| rx.recv().unwrap())
            .map(|(n, outcome)| {
                assert!(outcome.is_ok());
                n
            })
            .collect();
        assert_eq!(order, (0..50).collect::<Vec<_>>());
        flush.wait(&threads);
        assert!(lock(&flush.state).held.is_empty());
    }

    #[test]
    fn settle_syncs_and_releases_on_the_closing_thread() {
        let flush = Flush::new();
        // No thread ever runs the job: only `settle` can release.
        let threads = SyncThreads::new(1);
        let (make, rx) = recorder();
        flush.committed(&wal(), Vec::new(), None);
        lock(&flush.state).syncing = true;
        flush.release(&threads, make(7));
        assert!(rx.try_recv().is_err(), "held until synced");
        flush.settle();
        assert_eq!(rx.try_recv().unwrap().0, 7);
    }

    #[test]
    fn a_failed_sync_fails_what_it_held_and_what_follows_until_the_reset() {
        let flush = Flush::new();
        let threads = SyncThreads::new(1);
        let (make, rx) = recorder();
        // Linux refuses to sync /dev/null (EINVAL): a real failing sync.
        let broken = Arc::new(File::open("/dev/null").unwrap());
        flush.committed(&broken, Vec::new(), None);
        flush.release(&threads, make(1));
        let (n, outcome) = rx.recv().unwrap();
        assert_eq!(n, 1);
        assert!(
            matches!(outcome, Err(Error::Storage(ref m)) if m.contains("could not be synced")),
            "{outcome:?}"
        );
        // A turn that ran before the reset fails too.
        flush.release(&threads, make(2));
        assert!(rx.recv().unwrap().1.is_err());
        assert!(flush.take_failure().is_some(), "the object must be reset");
        assert!(flush.take_failure().is_none(), "once");
        flush.release(&threads, make(3));
        assert!(rx.recv().unwrap().1.is_ok(), "after the reset, replies flow again");
    }
}
