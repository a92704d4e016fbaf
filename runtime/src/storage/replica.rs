//! Replicated storage: an object's database as a cache of its log.
//!
//! In a PostgreSQL cluster with a data directory, every commit of an
//! object is shipped to the cluster's referee before its reply is released
//! (the output gate of `flush.rs`, with a shipment where a local sync would
//! be). What is shipped is exactly what SQLite appended to the object's WAL
//! for those commits: the WAL *frames* between the end of the last shipped
//! commit and the end of the newest one (the `wal_hook` tells the number of
//! frames after each commit), copied from memory (`wal_buffer.rs`). The log is
//! therefore the WAL itself, cut into entries; to rebuild the object, its
//! last snapshot becomes the database file and the entries since, put end
//! to end, its WAL, which SQLite checks frame by frame (checksums, salts,
//! commit marks) when it opens it.
//!
//! The runtime controls checkpoints: none happens by itself (the WAL hook
//! replaces the automatic one, and closing does not checkpoint), so the
//! local WAL and the shipped log stay the same bytes. When the WAL passes
//! [`SNAPSHOT_AFTER`] bytes, a turn waits until everything is shipped,
//! checkpoints (the WAL starts again from its first byte, in the same
//! file: see [`KEPT_WAL_BYTES`]), and the database file is shipped as the
//! new snapshot, which trims the log.
//!
//! **Nothing local is synced.** The log is what is durable; the local copy
//! is a cache of it, and SQLite runs it with `synchronous = OFF`, so that a
//! checkpoint does not write the WAL's 8 MiB to the disk and wait for it
//! (on the test VM a snapshot's checkpoint took about 10 ms with `NORMAL`,
//! 6 of them syncing the WAL, and takes 0.1–0.4 ms without; the next turn
//! waits for it). What an unsynced file may lose, only a crash of the
//! operating system loses (a power loss, a kernel panic, a reset of the
//! machine): a process that dies, even by `kill -9`, leaves its writes in
//! the page cache, where the next process reads them. So the marker
//! (below) names the boot of the operating system that wrote it (Linux's
//! `boot_id`), and a copy is trusted only in that same boot: after a
//! reboot, every object is rebuilt from the log on its first activation.
//! The WAL's newest frames do not even reach the page cache at once: they
//! are held in memory (at most 64 KiB, see `wal_buffer.rs`), and a process
//! that dies loses them. Every marker is written after them, so that is a
//! copy behind its marker's log, which the next activation catches up.
//!
//! Each entry is fenced by the object's *epoch*: a takeover, which moves
//! the object to the next epoch, takes the number of the old owner's next
//! entry in the log, so a node that lost an object (its lease lapsed and
//! another node took the object over) can never commit for it again (see
//! `cluster/replication.rs`).
//!
//! The local copy is trusted only as far as it is known to match the log:
//! a small marker file beside the database (`<id>.sqlite-log`: epoch,
//! entry number, shipped WAL length, the boot that wrote it) says how far.
//! It is written when the database closes, and at once around a checkpoint
//! and its snapshot, not after each shipment: that write updates the
//! file's metadata (about 3 µs of CPU a turn by `perf`, in
//! `replicated_throughput`) and buys nothing a crash needs, since the log
//! has every shipped entry. At open, the
//! object's head in the log (its epoch and last entry) is read, and a
//! marker written in this boot of the system is compared with it:
//!
//! - the marker matches it: the WAL is cut back to the shipped length
//!   (frames committed locally but never shipped were never acknowledged)
//!   and the copy is used;
//! - the marker is behind it at the same epoch (this node's process died,
//!   or the marker's last write was not made): the local WAL is good up to
//!   the marker's length, so only the entries after the marker's are
//!   fetched and written from there (*catch-up*), and the WAL is cut after
//!   them;
//! - otherwise (no marker, one of another boot, another epoch: another
//!   node wrote since) the copy is rebuilt from the snapshot and the whole
//!   log.
//!
//! A shipment that fails resets the object (see `flush.rs`): its marker is
//! removed, so that its next activation rebuilds it from the log, which
//! never had the failed turn.

use std::fmt;
use std::fs::File;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use rusqlite::Connection;
use tokio_postgres::types::ToSql;

use super::wal;
use super::wal_buffer::{self, WalBuffer};
use crate::error::{Error, Result};
use crate::id::ObjectId;
use crate::sync::lock;

/// The WAL size past which a turn snapshots its object (and the log is
/// trimmed): 8 MiB, about 8,000 frames of 1 KiB pages.
pub(crate) const SNAPSHOT_AFTER: u64 = 8 << 20;

/// The size a replicated database's WAL is cut back to when it starts over
/// after a snapshot (`PRAGMA journal_size_limit`): twice [`SNAPSHOT_AFTER`],
/// so that the file keeps the size it reached and the next commits
/// overwrite it instead of growing it from nothing (cutting it back to the
/// 4 MiB of a `Normal` database took 1.2–1.5 ms of the next turn by
/// `strace -T`, and the commits after it grew the file again). A turn that
/// left a longer WAL (a large write) gives the space back.
pub(crate) const KEPT_WAL_BYTES: u64 = 2 * SNAPSHOT_AFTER;

/// The log of every object of a runtime, kept by the cluster's referee
/// (implemented in `cluster/replication.rs`). Every method blocks the
/// calling thread (storage is synchronous) and is bounded in time.
pub(crate) trait ObjectLog: Send + Sync + 'static {
    /// The object's epoch and last entry, and whether it has a snapshot,
    /// if this node owns it; else an `Unavailable` error naming its owner.
    fn head(&self, type_name: &'static str, id: &ObjectId) -> Result<(Head, bool)>;

    /// The object's snapshot and the WAL since (its entries end to end),
    /// if this node owns it.
    fn fetch(&self, type_name: &'static str, id: &ObjectId) -> Result<Fetched>;

    /// The WAL of the entries after `after` up to `upto` (the head just
    /// read, which checked that this node owns the object), end to end, if
    /// they follow entry `after` at WAL offset `from`; none if the log no
    /// longer holds them so (a snapshot trimmed it): the copy is then
    /// rebuilt.
    fn tail(
        &self,
        type_name: &'static str,
        id: &ObjectId,
        after: i64,
        upto: i64,
        from: u64,
    ) -> Result<Option<Vec<u8>>>;

    /// Appends `entry` unless the object's epoch moved on, in one
    /// transaction with its statements (shared with other objects'
    /// entries: group commit); returns the entry's number.
    fn append(&self, entry: Entry) -> Result<i64>;

    /// Like [`append`](Self::append) without waiting: `done` gets the
    /// outcome, from the log's own thread.
    fn append_then(&self, entry: Entry, done: Appended);

    /// Stores `data` as the object's database as of entry `seq`, and trims
    /// the log up to it, unless the object's epoch moved on.
    fn snapshot(
        &self,
        type_name: &'static str,
        id: &ObjectId,
        epoch: i64,
        seq: i64,
        data: Vec<u8>,
    ) -> Result<()>;
}

/// What runs once an entry is appended (or could not be).
pub(crate) type Appended = Box<dyn FnOnce(Result<i64>) + Send>;

thread_local! {
    /// What must run before this thread blocks (see [`before_blocking`]).
    static BEFORE_BLOCKING: std::cell::RefCell<Option<Box<dyn FnOnce()>>> =
        const { std::cell::RefCell::new(None) };
}

/// Has `take_back` run if this thread blocks before the work it queued on
/// this thread's tokio worker ran. A log that sends a turn's entry from the
/// worker that committed it (`cluster/replication.rs`) leaves the sending
/// task in the worker's next-task slot, which only this worker runs, once
/// its current task yields: a turn that blocks meanwhile (waiting for that
/// very entry, say) would wait for ever. `take_back` hands the work to
/// another thread instead. Replaces what an earlier call left.
pub(crate) fn on_block(take_back: Box<dyn FnOnce()>) {
    BEFORE_BLOCKING.with(|hook| *hook.borrow_mut() = Some(take_back));
}

/// Runs what [`on_block`] left for this thread, if anything: called by
/// every wait of storage that blocks a thread.
pub(crate) fn before_blocking() {
    if let Some(take_back) = BEFORE_BLOCKING.with(|hook| hook.borrow_mut().take()) {
        take_back();
    }
}

/// Where an object's log stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Head {
    pub(crate) epoch: i64,
    pub(crate) seq: i64,
}

/// What rebuilds an object.
pub(crate) struct Fetched {
    pub(crate) head: Head,
    /// The database file; none before the first snapshot.
    pub(crate) snapshot: Option<Vec<u8>>,
    /// The WAL since the snapshot.
    pub(crate) wal: Vec<u8>,
}

/// One shipment of an object: the WAL bytes of its commits since the last
/// one, and the statements its turns queued for the referee.
pub(crate) struct Entry {
    pub(crate) type_name: &'static str,
    pub(crate) id: ObjectId,
    /// The entry's number: the last one's plus one. It is what fences the
    /// entry: a takeover takes the number after the last entry.
    pub(crate) seq: i64,
    /// Where `frames` start in the WAL.
    pub(crate) wal_offset: i64,
    pub(crate) frames: Vec<u8>,
    pub(crate) statements: Vec<Statement>,
    /// The object's alarm, if the entry's turns changed it (`Some(None)`:
    /// deleted), so that the log's keeper can fire it if this node dies.
    pub(crate) alarm: Option<Option<i64>>,
}

/// A statement a turn queued with [`Postgres::execute`](crate::Postgres::execute).
pub(crate) struct Statement {
    pub(crate) sql: String,
    pub(crate) params: Vec<Box<dyn ToSql + Send + Sync>>,
}

impl fmt::Debug for Statement {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Statement").field("sql", &self.sql).field("params", &self.params.len()).finish()
    }
}

/// One replicated object's database: its place in the log.
pub(crate) struct Replica {
    log: Arc<dyn ObjectLog>,
    type_name: &'static str,
    id: ObjectId,
    db: PathBuf,
    /// The WAL's newest bytes, from which shipments copy their frames
    /// (`wal_buffer.rs`).
    wal: Arc<WalBuffer>,
    /// The marker, overwritten in place after each shipment.
    marker: File,
    /// The size of the database's pages (each WAL frame holds one).
    page_size: u32,
    epoch: i64,
    shipped: Mutex<Shipped>,
}

/// What the log has of this copy.
struct Shipped {
    /// The log's last entry.
    seq: i64,
    /// The WAL bytes it holds.
    end: u64,
    /// The database file must be shipped as a snapshot first (the WAL was
    /// checkpointed).
    snapshot: bool,
    /// The marker file says what `seq` and `end` say, or that the copy was
    /// discarded: closing writes nothing.
    marked: bool,
}

/// What a turn's commits give the next shipment.
pub(crate) struct Pending {
    /// The end of the WAL after the newest commit.
    pub(crate) end: u64,
    pub(crate) statements: Vec<Statement>,
    /// The alarm as the newest commit that changed it left it.
    pub(crate) alarm: Option<Option<i64>>,
}

impl Replica {
    /// Opens object `id`'s database at `db` as a copy of its log: checks
    /// that this node owns it, rebuilds the file from the log unless the
    /// local copy matches it, and opens it with `open` (which sets the
    /// connection up). The connection then reports its commits' frames.
    pub(crate) fn open(
        log: Arc<dyn ObjectLog>,
        type_name: &'static str,
        id: &ObjectId,
        db: &Path,
        open: impl FnOnce(&Path) -> Result<Connection>,
    ) -> Result<(Connection, Arc<Replica>)> {
        let (head, snapshotted) = log.head(type_name, id)?;
        let files = Files::of(db);
        let end = match files.catch_up(&*log, type_name, id, head)? {
            Some(end) => end,
            None => files.rebuild(&*log, type_name, id)?,
        };
        let conn = open(db)?;
        // Counts the frames of each commit, and replaces SQLite's automatic
        // checkpoints: the runtime checkpoints (see `checkpoint`).
        conn.wal_hook(Some(wal::count_frames));
        let page_size: u32 = conn
            .query_row("PRAGMA page_size", [], |row| row.get::<_, i64>(0))
            .map(|size| u32::try_from(size).unwrap_or(4096))
            .map_err(|e| Error::Storage(format!("could not read the page size of {}: {e}", db.display())))?;
        let wal = wal_buffer::of(&conn).ok_or_else(|| {
            Error::Storage(format!(
                "the WAL of {} is not open through the VFS of replicated databases (a bug in stead: \
                 please report it)",
                db.display()
            ))
        })?;
        let marker = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(&files.marker)
            .map_err(|e| io(&files.marker, e))?;
        let replica = Replica {
            log,
            type_name,
            id: *id,
            db: db.to_path_buf(),
            wal,
            marker,
            page_size,
            epoch: head.epoch,
            // A new object's first shipment starts its log with the file
            // SQLite made (its header says WAL mode, and only it).
            shipped: Mutex::new(Shipped { seq: head.seq, end, snapshot: !snapshotted, marked: true }),
        };
        Ok((conn, Arc::new(replica)))
    }

    /// The end of the WAL after a commit that left `frames` frames in it
    /// (`wal::take_frames`: 0 when the commit wrote none).
    pub(crate) fn wal_end(&self, frames: u32) -> Option<u64> {
        (frames > 0).then(|| wal::frames_end(frames, self.page_size))
    }

    /// Whether the WAL has grown past [`SNAPSHOT_AFTER`].
    pub(crate) fn wants_snapshot(&self, end: u64) -> bool {
        end > SNAPSHOT_AFTER
    }

    /// Checkpoints `conn` (everything is shipped: the caller waited) so
    /// that the WAL starts again from its first byte with the next commit,
    /// and marks the database file to be shipped as the next snapshot. The
    /// marker goes first: a crash from now until the snapshot is shipped
    /// rebuilds the object from the log.
    pub(crate) fn checkpoint(&self, conn: &Connection) -> Result<()> {
        self.discard_local();
        conn.query_row("PRAGMA wal_checkpoint(RESTART)", [], |row| row.get::<_, i64>(0))
            .map_err(|e| Error::Storage(format!("could not checkpoint {}: {e}", self.db.display())))
            .and_then(|busy| {
                if busy == 0 {
                    Ok(())
                } else {
                    Err(Error::Storage(format!(
                        "could not checkpoint {}: the database was busy",
                        self.db.display()
                    )))
                }
            })?;
        let mut shipped = lock(&self.shipped);
        shipped.end = 0;
        shipped.snapshot = true;
        Ok(())
    }

    /// Ships what `pending` says (on a sync thread): the snapshot if one is
    /// due, then the WAL from the last shipped end to `pending.end` with
    /// the statements, as one entry. Then records it in the marker.
    pub(crate) fn ship(&self, pending: Pending) -> Result<()> {
        let shipped = self.ship_now(pending);
        if shipped.is_err() {
            self.discard_local();
        }
        shipped
    }

    fn ship_now(&self, pending: Pending) -> Result<()> {
        let mut shipped = lock(&self.shipped);
        if shipped.snapshot {
            let data = std::fs::read(&self.db).map_err(|e| io(&self.db, e))?;
            self.log.snapshot(self.type_name, &self.id, self.epoch, shipped.seq, data)?;
            shipped.snapshot = false;
        }
        if let Some((entry, end)) = self.next_entry(&shipped, pending)? {
            shipped.seq = self.log.append(entry)?;
            shipped.end = end;
        }
        // This path ships a snapshot after a checkpoint (which discarded
        // the marker), or what is left when closing: marked at once.
        self.mark(&mut shipped);
        Ok(())
    }

    /// Ships like [`ship`](Self::ship) without waiting: reads the frames
    /// here and hands the entry to the log, whose thread runs `done` with
    /// the outcome once the entry is appended (or at once if there is
    /// nothing to ship). Only one shipment of an object may be in flight.
    /// A snapshot due first needs the waiting path: `pending` is handed
    /// back.
    pub(crate) fn ship_then(
        self: &Arc<Self>,
        pending: Pending,
        done: impl FnOnce(Result<()>) + Send + 'static,
    ) -> std::result::Result<(), Pending> {
        let shipped = lock(&self.shipped);
        if shipped.snapshot {
            return Err(pending);
        }
        let next = self.next_entry(&shipped, pending);
        drop(shipped);
        let (entry, end) = match next {
            Ok(Some(next)) => next,
            Ok(None) => {
                done(Ok(()));
                return Ok(());
            }
            Err(err) => {
                self.discard_local();
                done(Err(err));
                return Ok(());
            }
        };
        let replica = self.clone();
        self.log.append_then(
            entry,
            Box::new(move |appended| {
                let outcome = appended.map(|seq| {
                    let mut shipped = lock(&replica.shipped);
                    shipped.seq = seq;
                    shipped.end = end;
                    shipped.marked = false;
                });
                if outcome.is_err() {
                    replica.discard_local();
                }
                done(outcome);
            }),
        );
        Ok(())
    }

    /// The next entry to ship, with the WAL end it reaches: the WAL from
    /// the shipped end to `pending`'s, with its statements and alarm; none
    /// if there is nothing to ship.
    fn next_entry(&self, shipped: &Shipped, pending: Pending) -> Result<Option<(Entry, u64)>> {
        // The shipped end is newer after a checkpoint (zero) or a reopen.
        let end = pending.end.max(shipped.end);
        if end == shipped.end && pending.statements.is_empty() && pending.alarm.is_none() {
            return Ok(None);
        }
        self.entry(shipped, end, pending).map(|entry| Some((entry, end)))
    }

    /// The entry of the WAL from the shipped end to `end`, with `pending`'s
    /// statements and alarm.
    fn entry(&self, shipped: &Shipped, end: u64, pending: Pending) -> Result<Entry> {
        let len = usize::try_from(end - shipped.end).unwrap_or(0);
        let frames = self.wal.read_exact(shipped.end, len).map_err(|e| {
            Error::Storage(format!("could not read back the WAL of {} to ship it: {e}", self.db.display()))
        })?;
        Ok(Entry {
            type_name: self.type_name,
            id: self.id,
            seq: shipped.seq + 1,
            wal_offset: i64::try_from(shipped.end).unwrap_or(i64::MAX),
            frames,
            statements: pending.statements,
            alarm: pending.alarm,
        })
    }

    /// Records in the marker what the log has now, once the WAL's file
    /// has every byte the marker counts (`wal_buffer.rs`: some may be held
    /// in memory). Not synced: a marker lost in a crash only costs a
    /// catch-up, or a rebuild.
    fn mark(&self, shipped: &mut Shipped) {
        if self.wal.write_out().is_ok() {
            let marker = Marker::new(Head { epoch: self.epoch, seq: shipped.seq }, shipped.end);
            let _ = marker.write(&self.marker);
        }
        shipped.marked = true;
    }

    /// Records in the marker what the log has, if the marker is behind:
    /// the database is closing, after its last shipment.
    pub(crate) fn close(&self) {
        let mut shipped = lock(&self.shipped);
        if !shipped.marked {
            self.mark(&mut shipped);
        }
    }

    /// Forgets the local copy (after a failed shipment): its next open
    /// rebuilds it from the log.
    pub(crate) fn discard_local(&self) {
        let mut shipped = lock(&self.shipped);
        let _ = self.marker.write_all_at(&[0; MARKER_LEN], 0);
        shipped.marked = true;
    }
}

/// An object's files.
struct Files {
    db: PathBuf,
    wal: PathBuf,
    marker: PathBuf,
}

/// What the marker says: the log's head when this copy was last shipped,
/// the WAL length shipped, and the boot of the operating system that wrote
/// the copy (see [`this_boot`]).
struct Marker {
    head: Head,
    end: u64,
    boot: Boot,
}

/// The marker's size: epoch, entry, WAL length, boot and a check of the
/// four, little-endian, written in place (one sector: a crash leaves the
/// old marker, the new one, or one whose check fails, which means
/// "rebuild"). A marker of another size (an older release's) fails too.
const MARKER_LEN: usize = 48;

/// A boot of the operating system, as [`this_boot`] names it.
type Boot = [u8; 16];

impl Marker {
    /// A marker written in this boot (none known: zeros, which no boot
    /// matches).
    fn new(head: Head, end: u64) -> Marker {
        Marker { head, end, boot: this_boot().unwrap_or_default() }
    }

    fn encode(&self) -> [u8; MARKER_LEN] {
        let mut bytes = [0; MARKER_LEN];
        bytes[..8].copy_from_slice(&self.head.epoch.to_le_bytes());
        bytes[8..16].copy_from_slice(&self.head.seq.to_le_bytes());
        bytes[16..24].copy_from_slice(&self.end.to_le_bytes());
        bytes[24..40].copy_from_slice(&self.boot);
        let check = check(&bytes[..40]);
        bytes[40..].copy_from_slice(&check);
        bytes
    }

    fn decode(bytes: &[u8; MARKER_LEN]) -> Option<Marker> {
        if bytes[40..] != check(&bytes[..40]) {
            return None;
        }
        let field = |i: usize| bytes[i..i + 8].try_into().ok().map(i64::from_le_bytes);
        let end = u64::try_from(field(16)?).ok()?;
        let boot = bytes[24..40].try_into().ok()?;
        Some(Marker { head: Head { epoch: field(0)?, seq: field(8)? }, end, boot })
    }

    /// Whether the copy it describes can be trusted as far as it says: it
    /// was written in this boot of the operating system, so every write to
    /// the copy's files, synced or not, is still there.
    fn of_this_boot(&self) -> bool {
        this_boot() == Some(self.boot)
    }

    fn write(&self, file: &File) -> std::io::Result<()> {
        file.write_all_at(&self.encode(), 0)
    }
}

/// This boot of the operating system: a hash of Linux's
/// `/proc/sys/kernel/random/boot_id`, which is new at every boot. None
/// where there is no such file: no local copy is then trusted, and every
/// activation rebuilds its object from the log (the node warns once).
fn this_boot() -> Option<Boot> {
    static BOOT: std::sync::OnceLock<Option<Boot>> = std::sync::OnceLock::new();
    *BOOT.get_or_init(|| match std::fs::read_to_string("/proc/sys/kernel/random/boot_id") {
        Ok(id) if !id.trim().is_empty() => {
            let hash = blake3::hash(id.trim().as_bytes());
            hash.as_bytes()[..16].try_into().ok()
        }
        Ok(_) | Err(_) => {
            tracing::warn!(
                "the boot of the operating system cannot be told (no /proc/sys/kernel/random/boot_id): \
                 the local copies of replicated objects are not trusted, and each activation rebuilds its \
                 object from PostgreSQL"
            );
            None
        }
    })
}

/// Eight bytes of a hash of `fields`: a marker that was never written whole
/// (or is all zeros: discarded) fails it.
fn check(fields: &[u8]) -> [u8; 8] {
    let hash = blake3::derive_key("stead 2026 replica marker", fields);
    let mut check = [0; 8];
    check.copy_from_slice(&hash[..8]);
    check
}

impl Files {
    fn of(db: &Path) -> Files {
        let with = |suffix: &str| {
            let mut path = db.as_os_str().to_owned();
            path.push(suffix);
            PathBuf::from(path)
        };
        Files { db: db.to_path_buf(), wal: with("-wal"), marker: with("-log") }
    }

    fn read_marker(&self) -> Option<Marker> {
        let mut bytes = [0; MARKER_LEN];
        File::open(&self.marker).ok()?.read_exact_at(&mut bytes, 0).ok()?;
        Marker::decode(&bytes)
    }

    /// Makes the local copy the log's `head`, if the marker says how far it
    /// matches the log at `head`'s epoch: cuts the WAL back to the shipped
    /// length, after writing there the entries shipped since the marker
    /// (catch-up). Returns the WAL's length; none if the copy must be
    /// rebuilt.
    fn catch_up(
        &self,
        log: &dyn ObjectLog,
        type_name: &'static str,
        id: &ObjectId,
        head: Head,
    ) -> Result<Option<u64>> {
        let Some(marker) = self.read_marker() else { return Ok(None) };
        let wal_len = std::fs::metadata(&self.wal).map_or(0, |m| m.len());
        if !marker.of_this_boot()
            || marker.head.epoch != head.epoch
            || marker.head.seq > head.seq
            || !self.db.exists()
            || wal_len < marker.end
        {
            return Ok(None);
        }
        let tail = match marker.head.seq < head.seq {
            true => match log.tail(type_name, id, marker.head.seq, head.seq, marker.end)? {
                Some(tail) => tail,
                None => return Ok(None),
            },
            false => Vec::new(),
        };
        let wal = std::fs::OpenOptions::new().write(true).open(&self.wal).map_err(|e| io(&self.wal, e))?;
        wal.write_all_at(&tail, marker.end).map_err(|e| io(&self.wal, e))?;
        // Frames committed here after the last shipment were never
        // acknowledged: they go.
        let end = marker.end + tail.len() as u64;
        wal.set_len(end).map_err(|e| io(&self.wal, e))?;
        if !tail.is_empty() {
            self.write_marker(&Marker::new(head, end))?;
        }
        Ok(Some(end))
    }

    /// Rebuilds the database from the log; returns the WAL's length.
    fn rebuild(&self, log: &dyn ObjectLog, type_name: &'static str, id: &ObjectId) -> Result<u64> {
        let fetched = log.fetch(type_name, id)?;
        for path in [&self.marker, &self.db, &self.wal] {
            match std::fs::remove_file(path) {
                Ok(()) => {}
                Err(err) if err.kind() == std::io::ErrorKind::NotFound => {}
                Err(err) => return Err(io(path, err)),
            }
        }
        if let Some(dir) = self.db.parent() {
            std::fs::create_dir_all(dir).map_err(|e| io(dir, e))?;
        }
        if let Some(snapshot) = &fetched.snapshot {
            std::fs::write(&self.db, snapshot).map_err(|e| io(&self.db, e))?;
        }
        if !fetched.wal.is_empty() {
            std::fs::write(&self.wal, &fetched.wal).map_err(|e| io(&self.wal, e))?;
        }
        let end = fetched.wal.len() as u64;
        self.write_marker(&Marker::new(fetched.head, end))?;
        Ok(end)
    }

    /// Writes `marker` as the copy's marker file, afresh.
    fn write_marker(&self, marker: &Marker) -> Result<()> {
        let file = File::create(&self.marker).map_err(|e| io(&self.marker, e))?;
        marker.write(&file).map_err(|e| io(&self.marker, e))
    }
}

fn io(path: &Path, err: std::io::Error) -> Error {
    Error::Storage(format!("{}: {err}", path.display()))
}

/// A log kept in memory, for the unit tests of the storage layer.
#[cfg(test)]
pub(crate) mod memory {
    use std::collections::HashMap;

    use super::*;

    /// An object's log: its head, snapshot and WAL since.
    type Log = (Head, Option<Vec<u8>>, Vec<u8>);

    #[derive(Default)]
    pub(crate) struct MemoryLog {
        pub(crate) objects: Mutex<HashMap<ObjectId, Log>>,
        /// Where each entry since the snapshot starts in the WAL.
        pub(crate) starts: Mutex<HashMap<ObjectId, Vec<(i64, u64)>>>,
        /// How many rebuilds fetched the whole log.
        pub(crate) fetches: std::sync::atomic::AtomicUsize,
    }

    impl ObjectLog for MemoryLog {
        fn head(&self, _: &'static str, id: &ObjectId) -> Result<(Head, bool)> {
            let mut objects = lock(&self.objects);
            let (head, snapshot, _) =
                objects.entry(*id).or_insert((Head { epoch: 1, seq: 0 }, None, Vec::new()));
            Ok((*head, snapshot.is_some()))
        }

        fn fetch(&self, t: &'static str, id: &ObjectId) -> Result<Fetched> {
            let (head, _) = self.head(t, id)?;
            let objects = lock(&self.objects);
            let (_, snapshot, wal) = &objects[id];
            self.fetches.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            Ok(Fetched { head, snapshot: snapshot.clone(), wal: wal.clone() })
        }

        fn tail(
            &self,
            _: &'static str,
            id: &ObjectId,
            after: i64,
            upto: i64,
            from: u64,
        ) -> Result<Option<Vec<u8>>> {
            let objects = lock(&self.objects);
            let (head, _, wal) = &objects[id];
            assert_eq!(head.seq, upto, "nothing was appended since the head was read");
            let follows =
                lock(&self.starts).get(id).is_some_and(|starts| starts.contains(&(after + 1, from)));
            Ok(follows.then(|| wal[from as usize..].to_vec()))
        }

        fn append(&self, entry: Entry) -> Result<i64> {
            let mut objects = lock(&self.objects);
            let (head, _, wal) = objects.get_mut(&entry.id).expect("opened first");
            assert_eq!(entry.wal_offset as usize, wal.len(), "entries follow each other");
            lock(&self.starts).entry(entry.id).or_default().push((entry.seq, wal.len() as u64));
            wal.extend_from_slice(&entry.frames);
            assert_eq!(entry.seq, head.seq + 1, "entries are numbered in order");
            head.seq = entry.seq;
            Ok(head.seq)
        }

        fn append_then(&self, entry: Entry, done: Appended) {
            done(self.append(entry));
        }

        fn snapshot(&self, _: &'static str, id: &ObjectId, _: i64, seq: i64, data: Vec<u8>) -> Result<()> {
            let mut objects = lock(&self.objects);
            let (head, snapshot, wal) = objects.get_mut(id).expect("opened first");
            assert_eq!(head.seq, seq);
            *snapshot = Some(data);
            wal.clear();
            lock(&self.starts).remove(id);
            Ok(())
        }
    }
}

#[cfg(test)]
mod tests {
    use rusqlite::config::DbConfig;

    use super::memory::MemoryLog;
    use super::*;

    fn open(log: &Arc<MemoryLog>, db: &Path) -> (Connection, Arc<Replica>) {
        let id = ObjectId::from_slice(&[7; 32]).unwrap();
        Replica::open(log.clone(), "T", &id, db, |path| {
            let conn = wal_buffer::open(path, rusqlite::OpenFlags::default()).unwrap();
            // As `open_replicated` does: nothing local is synced.
            conn.execute_batch(
                "PRAGMA locking_mode = EXCLUSIVE; PRAGMA journal_mode = WAL; PRAGMA synchronous = OFF;",
            )
            .unwrap();
            conn.set_db_config(DbConfig::SQLITE_DBCONFIG_NO_CKPT_ON_CLOSE, true).unwrap();
            conn.execute_batch("CREATE TABLE IF NOT EXISTS t (n INTEGER)").unwrap();
            Ok(conn)
        })
        .unwrap()
    }

    /// Inserts `n` and returns the commit's WAL end.
    fn insert(conn: &Connection, replica: &Replica, n: i64) -> u64 {
        wal::take_frames();
        conn.execute("INSERT INTO t VALUES (?1)", [n]).unwrap();
        replica.wal_end(wal::take_frames()).unwrap()
    }

    fn rows(conn: &Connection) -> Vec<i64> {
        let mut stmt = conn.prepare("SELECT n FROM t ORDER BY n").unwrap();
        stmt.query_map([], |row| row.get(0)).unwrap().map(Result::unwrap).collect()
    }

    #[test]
    fn a_copy_is_rebuilt_from_the_log_and_loses_what_was_never_shipped() {
        let dir = tempfile::tempdir().unwrap();
        let db = dir.path().join("objects").join("x.sqlite");
        let log = Arc::new(MemoryLog::default());

        let (conn, replica) = open(&log, &db);
        let end = (1..=3).map(|n| insert(&conn, &replica, n)).last().unwrap();
        replica.ship(Pending { end, statements: Vec::new(), alarm: None }).unwrap();
        insert(&conn, &replica, 4); // committed here, never shipped
        drop(conn);

        // The local copy matches the log: used, cut back to what was shipped.
        let (conn, replica) = open(&log, &db);
        assert_eq!(rows(&conn), [1, 2, 3]);
        drop((conn, replica));

        // The disk is gone: rebuilt from the snapshot and the log.
        std::fs::remove_dir_all(dir.path().join("objects")).unwrap();
        let (conn, replica) = open(&log, &db);
        assert_eq!(rows(&conn), [1, 2, 3]);

        // A checkpoint makes the file the next snapshot and empties the log.
        let end = insert(&conn, &replica, 5);
        replica.ship(Pending { end, statements: Vec::new(), alarm: None }).unwrap();
        replica.checkpoint(&conn).unwrap();
        replica.ship(Pending { end: 0, statements: Vec::new(), alarm: None }).unwrap();
        assert!(lock(&log.objects).values().all(|(_, _, wal)| wal.is_empty()), "the log was trimmed");
        let end = insert(&conn, &replica, 6);
        replica.ship(Pending { end, statements: Vec::new(), alarm: None }).unwrap();
        drop((conn, replica));
        std::fs::remove_dir_all(dir.path().join("objects")).unwrap();
        let (conn, _replica) = open(&log, &db);
        assert_eq!(rows(&conn), [1, 2, 3, 5, 6]);
    }

    /// Ships like a turn does, without waiting and without writing the
    /// marker.
    fn ship_lazily(replica: &Arc<Replica>, end: u64) {
        let pending = Pending { end, statements: Vec::new(), alarm: None };
        let (done, shipped) = std::sync::mpsc::channel();
        assert!(replica.ship_then(pending, move |outcome| done.send(outcome).unwrap()).is_ok());
        shipped.recv().unwrap().unwrap();
    }

    /// Inserts and ships rows 2 to 4 like turns do (the marker stays at
    /// row 1's entry); returns the WAL's end.
    fn ship_three_lazily(conn: &Connection, replica: &Arc<Replica>) -> u64 {
        let mut end = 0;
        for n in 2..=4 {
            end = insert(conn, replica, n);
            ship_lazily(replica, end);
        }
        end
    }

    #[test]
    fn a_copy_behind_its_log_catches_up_with_the_entries_since_its_marker() {
        let dir = tempfile::tempdir().unwrap();
        let (log, db, conn, replica) = marked_copy(dir.path());
        ship_three_lazily(&conn, &replica);
        insert(&conn, &replica, 5); // committed here, never shipped
        // A crash: the database is not closed, the marker says entry 1.
        drop((conn, replica));
        let on_disk = Files::of(&db).read_marker().unwrap();
        assert_eq!(on_disk.head.seq, 1);

        let rebuilt = fetches(&log);
        let (conn, replica) = open(&log, &db);
        assert_eq!(fetches(&log), rebuilt, "caught up, not rebuilt");
        assert_eq!(rows(&conn), [1, 2, 3, 4]);
        assert_eq!(Files::of(&db).read_marker().unwrap().head.seq, 4, "marked after the catch-up");

        // Closing brings the marker up to date: the next open trusts it.
        let end = insert(&conn, &replica, 6);
        ship_lazily(&replica, end);
        assert_eq!(Files::of(&db).read_marker().unwrap().head.seq, 4, "not written by a shipment");
        replica.close();
        assert_eq!(Files::of(&db).read_marker().unwrap().head.seq, 5);
        drop((conn, replica));
        let (conn, _replica) = open(&log, &db);
        assert_eq!(rows(&conn), [1, 2, 3, 4, 6]);
        assert_eq!(fetches(&log), rebuilt);
    }

    #[test]
    fn a_copy_left_by_a_killed_process_catches_up_with_the_frames_it_held() {
        let dir = tempfile::tempdir().unwrap();
        let (log, db, conn, replica) = marked_copy(dir.path());
        let end = ship_three_lazily(&conn, &replica);
        // What a `kill -9` now leaves on disk: the files, without the
        // frames held in memory (`wal_buffer.rs`).
        let (files, left) = (Files::of(&db), tempfile::tempdir().unwrap());
        let copy = left.path().join("x.sqlite");
        for (from, to) in [
            (&files.db, &copy),
            (&files.wal, &Files::of(&copy).wal),
            (&files.marker, &Files::of(&copy).marker),
        ] {
            std::fs::copy(from, to).unwrap();
        }
        assert!(std::fs::metadata(Files::of(&copy).wal).unwrap().len() < end, "frames were held");
        drop((conn, replica));

        let rebuilt = fetches(&log);
        let (conn, _replica) = open(&log, &copy);
        assert_eq!(fetches(&log), rebuilt, "caught up, not rebuilt");
        assert_eq!(rows(&conn), [1, 2, 3, 4]);
    }

    /// A copy in `dir` whose row 1 is shipped and marked, and its log.
    fn marked_copy(dir: &Path) -> (Arc<MemoryLog>, PathBuf, Connection, Arc<Replica>) {
        let db = dir.join("x.sqlite");
        let log = Arc::new(MemoryLog::default());
        let (conn, replica) = open(&log, &db);
        let end = insert(&conn, &replica, 1);
        replica.ship(Pending { end, statements: Vec::new(), alarm: None }).unwrap();
        (log, db, conn, replica)
    }

    fn fetches(log: &MemoryLog) -> usize {
        log.fetches.load(std::sync::atomic::Ordering::Relaxed)
    }

    #[test]
    fn a_copy_whose_entries_were_trimmed_is_rebuilt() {
        let dir = tempfile::tempdir().unwrap();
        let (log, db, conn, replica) = marked_copy(dir.path());
        let end = insert(&conn, &replica, 2);
        ship_lazily(&replica, end);
        drop((conn, replica));
        // The entries after the marker's are gone from the log.
        lock(&log.starts).clear();
        let fetched = fetches(&log);
        let (conn, _replica) = open(&log, &db);
        assert_eq!(fetches(&log), fetched + 1);
        assert_eq!(rows(&conn), [1, 2]);
    }

    #[test]
    fn a_copy_marked_in_another_boot_of_the_system_is_rebuilt() {
        let dir = tempfile::tempdir().unwrap();
        let (log, db, conn, replica) = marked_copy(dir.path());
        drop((conn, replica));
        let files = Files::of(&db);
        let marker = files.read_marker().unwrap();
        assert!(marker.of_this_boot(), "this test runs where the boot can be told");

        // The same marker, as written before the machine restarted: the
        // files may have lost whatever was not synced, which is everything.
        files.write_marker(&Marker { boot: [7; 16], ..marker }).unwrap();
        let fetched = fetches(&log);
        let (conn, _replica) = open(&log, &db);
        assert_eq!(fetches(&log), fetched + 1, "rebuilt");
        assert_eq!(rows(&conn), [1]);
        assert!(files.read_marker().unwrap().of_this_boot(), "marked anew by the rebuild");
    }

    #[test]
    fn a_replicated_database_is_never_synced_and_its_wal_keeps_its_file_after_a_snapshot() {
        let dir = tempfile::tempdir().unwrap();
        let location = super::super::database::Location::Files(dir.path().to_path_buf());
        let log: Arc<dyn ObjectLog> = Arc::new(MemoryLog::default());
        let id = ObjectId::from_slice(&[7; 32]).unwrap();
        let opened = location.open_replicated(&log, "T", &id).unwrap();
        let (conn, replica) = (opened.conn, opened.replica.unwrap());
        let synchronous: i64 = conn.query_row("PRAGMA synchronous", [], |row| row.get(0)).unwrap();
        assert_eq!(synchronous, 0, "synchronous = OFF: the log is what is durable");
        conn.execute_batch("CREATE TABLE t (n INTEGER)").unwrap();
        wal::take_frames();
        let mut end = 0;
        for n in 0..64 {
            conn.execute("INSERT INTO t VALUES (?1)", [n]).unwrap();
            end = replica.wal_end(wal::take_frames()).unwrap();
        }
        replica.ship(Pending { end, statements: Vec::new(), alarm: None }).unwrap();
        let wal_file = Files::of(&replica.db).wal;
        let grown = std::fs::metadata(&wal_file).unwrap().len();
        assert!(grown >= end, "the WAL holds what was shipped");

        replica.checkpoint(&conn).unwrap();
        replica.ship(Pending { end: 0, statements: Vec::new(), alarm: None }).unwrap();
        conn.execute("INSERT INTO t VALUES (64)", []).unwrap();
        let frames = wal::take_frames();
        let end = replica.wal_end(frames).unwrap();
        assert!(end < grown, "the WAL started again from its first byte");
        assert_eq!(std::fs::metadata(&wal_file).unwrap().len(), grown, "in the same file, not cut back");
        replica.ship(Pending { end, statements: Vec::new(), alarm: None }).unwrap();
        drop((conn, replica));

        // Opened again: the copy is cut back to what the log has, and used.
        let opened = location.open_replicated(&log, "T", &id).unwrap();
        let count: i64 = opened.conn.query_row("SELECT count(*) FROM t", [], |row| row.get(0)).unwrap();
        assert_eq!(count, 65);
        assert_eq!(std::fs::metadata(&wal_file).unwrap().len(), end);
    }

    #[test]
    fn a_marker_that_was_not_written_whole_is_not_trusted() {
        let marker = Marker::new(Head { epoch: 3, seq: 9 }, 4152);
        let bytes = marker.encode();
        let read = Marker::decode(&bytes).unwrap();
        assert_eq!((read.head, read.end, read.boot), (marker.head, marker.end, marker.boot));
        let mut torn = bytes;
        torn[10] ^= 1;
        assert!(Marker::decode(&torn).is_none());
        assert!(Marker::decode(&[0; MARKER_LEN]).is_none(), "a discarded marker");
    }
}
