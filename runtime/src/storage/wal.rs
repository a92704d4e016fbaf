//! The WAL of an object's database: when it is checkpointed, and why its
//! file keeps its size.
//!
//! # Who syncs what (`Durability::Full`)
//! The connection runs with `synchronous = OFF`: SQLite itself never syncs
//! anything on the thread that runs a turn. Each sync it would have done is
//! either the runtime's, on a sync thread, or not needed:
//!
//! - **A commit** is synced by the output gate (`flush.rs`), on a sync
//!   thread, before any reply that may have seen it leaves.
//! - **A new database** is switched to WAL mode and given its schema
//!   without a sync (`database.rs`); the database file and the directories
//!   whose entries changed are synced with the first commit, before its
//!   reply (or when it is closed, if no turn wrote to it). A power loss
//!   before that may take the new file back (an empty database file makes
//!   SQLite start afresh and drop its WAL), but nothing that was
//!   acknowledged. This relies on the filesystem not exposing the file's
//!   first page unwritten after a power loss (ext4 in its default
//!   `data=ordered` mode writes a file's data before its new size); where
//!   it may, such an unacknowledged new object could fail to open.
//! - **A checkpoint** runs only in [`checkpoint`], on a sync thread, with
//!   the connection handed there between two turns (`upkeep.rs`), under
//!   `synchronous = NORMAL` for its duration: SQLite syncs the WAL before it
//!   copies pages into the database file, and the database file before the
//!   WAL may be overwritten. SQLite's automatic checkpoint is off (the WAL
//!   hook [`count_frames`] replaces it).
//! - **Starting the WAL over** after a checkpoint (new salts in its header,
//!   then frames written from the start) needs the new header synced before
//!   any frame overwrites an old one: otherwise a power loss could leave the
//!   old header with a prefix of old frames that still check out, whose
//!   stale pages would then shadow the database (SQLite's ticket
//!   ff5be73dee). So [`checkpoint`] starts the WAL over itself, with a
//!   one-page commit under `NORMAL`, which writes and syncs the new header.
//!   Turns under `OFF` only ever append to a WAL whose header is durable,
//!   or write the first header of a WAL that held no valid frame when the
//!   database was opened: then no old frame can check out against either
//!   header.
//!
//! # A WAL that keeps its size
//! On Linux a `fdatasync` that follows an append must also write the file's
//! new size (on the test VM, a 4 KiB write and `fdatasync` took 220–250 µs
//! appending, 120–155 µs overwriting). So the WAL is never truncated to
//! zero: after a checkpoint, commits overwrite it from its start. A
//! checkpoint comes every [`CHECKPOINT_BYTES`] of pages (256 pages of the
//! 1 KiB of a new database, see `database.rs`), and the
//! file is cut back to [`KEPT_WAL_BYTES`] (`journal_size_limit`) when it
//! starts over after growing past that (a large turn), so an object keeps at
//! most 512 KiB of WAL on disk beside its database, and only an object that
//! wrote that much keeps that much: 10,000 such objects, 5 GiB at most.
//! Closing a database checkpoints it the same way (`Location::close`), so
//! the next activation finds a WAL of one page to read back, in a file of
//! its old size. A young WAL, not yet that long, is kept written with zeros
//! ahead of its last commit ([`make_room`]), so that its commits overwrite
//! too.
//!
//! With `Durability::Normal` SQLite commits without syncing
//! (`synchronous = NORMAL`) and syncs only in checkpoints, which are the
//! runtime's here too, on a sync thread (`upkeep.rs`), every
//! [`NORMAL_CHECKPOINT_BYTES`]; the WAL keeps its size while the database
//! is open ([`NORMAL_OPEN_WAL_BYTES`]) and is cut back to
//! [`KEPT_WAL_BYTES`] when it is closed.

use std::cell::Cell;
use std::ffi::c_int;
use std::fs::File;
use std::os::unix::fs::FileExt;

use rusqlite::Connection;
use rusqlite::hooks::Wal;

/// The pages in the WAL, in bytes, after which an object's database is
/// checkpointed (`Durability::Full`), before its next turn: 256 pages of
/// 1 KiB (64 in a database made with 4 KiB pages). Every checkpoint costs
/// the object a wait for two syncs; measured with 64 callers, one every
/// 256 pages instead of 64 gave a p99 of 16 ms against 19–22 ms at 1,000
/// objects, and 12 % more turns at 100 (`durable_throughput`).
pub(crate) const CHECKPOINT_BYTES: u64 = 256 * 1024;

/// The size a WAL is cut back to when it starts over
/// (`PRAGMA journal_size_limit`): twice the checkpoint interval, so that
/// the checkpoint, which comes a turn after [`CHECKPOINT_BYTES`], rarely
/// finds a WAL past it.
pub(crate) const KEPT_WAL_BYTES: i64 = 512 * 1024;

/// The pages in the WAL, in bytes, after which an object's database is
/// checkpointed with `Durability::Normal`: SQLite's own interval of 1,000
/// pages, of 1 KiB. `Normal` commits do not sync, so a longer WAL costs
/// nothing per commit, and every checkpoint costs three syncs: measured,
/// one every 64 pages made a lone writer's turns 1.4 times as slow as
/// SQLite's (`durable_write`), and one every 256 pages cost a third of the
/// throughput of 64 callers on 100 objects without a shorter tail.
pub(crate) const NORMAL_CHECKPOINT_BYTES: u64 = 1000 * 1024;

/// The size a WAL is cut back to when it starts over while its database
/// is open with `Durability::Normal`: four times [`NORMAL_CHECKPOINT_BYTES`]
/// (the WAL grows on while it is synced ahead of the checkpoint), so that
/// it keeps its size between checkpoints (cutting it back took half of a
/// checkpoint's time under load). Closing the database cuts it back to
/// [`KEPT_WAL_BYTES`].
pub(crate) const NORMAL_OPEN_WAL_BYTES: i64 = 4 << 20;

/// How far a WAL synced after every commit (`Durability::Full`) is kept
/// written ahead of its last frame, with zeros: a commit then overwrites
/// bytes the file already has, and its `fdatasync` need not write the
/// file's new size as well (an append's sync costs a journal commit of the
/// filesystem too; see [`make_room`]).
pub(crate) const ROOM_BYTES: u64 = 64 * 1024;

/// The bytes of a WAL's header, and of the header of each of its frames.
const WAL_HEADER_BYTES: u64 = 32;
const FRAME_HEADER_BYTES: u64 = 24;

/// Zeros to write ahead of a WAL's frames.
static ZEROS: [u8; ROOM_BYTES as usize] = [0; ROOM_BYTES as usize];

/// Where the last of `frames` frames of `page_size`-byte pages ends in
/// the WAL.
pub(crate) fn frames_end(frames: u32, page_size: u32) -> u64 {
    WAL_HEADER_BYTES + u64::from(frames) * (u64::from(page_size) + FRAME_HEADER_BYTES)
}

/// Keeps the WAL written with zeros at least [`ROOM_BYTES`] / 2 beyond
/// `end`, the end of its last committed frame, up to [`KEPT_WAL_BYTES`]
/// (so that SQLite never cuts the file back): `len` is the file's length
/// as last seen (`None`: not known, read it). Call it on the thread that
/// commits, between two commits, so that no frame is being written.
///
/// Why: a `fdatasync` after an append must also make the file's new size
/// durable, which on ext4 is a commit of its journal, shared by all the
/// files being synced. A small program writing 1 KiB frames and
/// `fdatasync`ing them from 64 threads into 1,000 files did 21,000–25,000
/// syncs a second overwriting and 18,000 appending (p99 4.0–5.0 ms against
/// 5.4–5.5 ms). A WAL is overwritten once it is checkpointed (it keeps its
/// size), so only a young WAL appends: every WAL of the many objects that
/// wrote less than a checkpoint's worth since they were made. PostgreSQL
/// does the same for its WAL segments (`wal_init_zero`). `fallocate` would
/// not do: writing into its unwritten extents changes the file's metadata
/// too. The zeros are not valid frames (their page number is 0), so SQLite
/// reads the WAL back up to its last commit, as it does in a WAL kept at
/// its size, and nothing more.
pub(crate) fn make_room(wal: &File, len: &mut Option<u64>, end: u64) -> std::io::Result<()> {
    let limit = KEPT_WAL_BYTES as u64;
    let known = match *len {
        Some(known) => known,
        None => wal.metadata()?.len(),
    }
    .max(end);
    *len = Some(known);
    if end + ROOM_BYTES / 2 <= known || known >= limit {
        return Ok(());
    }
    // Past `known` (which is at least `end`) and at most `ROOM_BYTES` on.
    let upto = (end + ROOM_BYTES).min(limit);
    let zeros = &ZEROS[..(upto - known) as usize];
    *len = None; // Unknown if the write fails halfway.
    wal.write_all_at(zeros, known)?;
    *len = Some(known + zeros.len() as u64);
    Ok(())
}

thread_local! {
    /// The pages in the WAL after the last commit on this thread that
    /// wrote any (0: none since the last [`take_frames`]).
    static FRAMES: Cell<u32> = const { Cell::new(0) };
}

/// The WAL hook of every database on disk: notes the WAL's length after
/// each commit that wrote pages, for [`take_frames`]. Installing it turns
/// SQLite's automatic checkpoint off (the two share the hook): the runtime
/// checkpoints instead, off the turn's thread (`upkeep.rs`).
pub(crate) fn count_frames(_wal: &Wal, pages: c_int) -> rusqlite::Result<()> {
    FRAMES.set(u32::try_from(pages).unwrap_or(0));
    Ok(())
}

/// The WAL's length in pages after the last commit on this thread that
/// wrote pages since the last call, or 0. Call it before a commit (to
/// forget others') and after (to learn the commit's).
pub(crate) fn take_frames() -> u32 {
    FRAMES.take()
}

/// Checkpoints the database and starts its WAL over, keeping the file: the
/// WAL's pages are copied into the database file, which is synced, and a
/// one-page commit then writes and syncs a new WAL header (see the module
/// docs). Runs under `synchronous = NORMAL`, restored after. Blocks on
/// syncs: run it on a sync thread, or where SQLite would sync anyway.
///
/// On error the WAL may not have started over: the caller must then close
/// the connection rather than let turns write to it under `OFF`.
pub(crate) fn checkpoint(conn: &Connection) -> rusqlite::Result<()> {
    let level: i64 = conn.query_row("PRAGMA synchronous", [], |row| row.get(0))?;
    conn.execute_batch("PRAGMA synchronous = NORMAL")?;
    let done = checkpoint_and_start_over(conn);
    let restored = conn.execute_batch(&format!("PRAGMA synchronous = {level}"));
    done.and(restored)
}

fn checkpoint_and_start_over(conn: &Connection) -> rusqlite::Result<()> {
    // (busy, pages in the WAL, pages copied); a PASSIVE checkpoint copies
    // them all, as no other connection reads this database.
    let (busy, pages, copied): (i64, i64, i64) =
        conn.query_row("PRAGMA wal_checkpoint(PASSIVE)", [], |row| {
            Ok((row.get(0)?, row.get(1)?, row.get(2)?))
        })?;
    if busy != 0 || copied < pages {
        return Err(rusqlite::Error::SqliteFailure(
            rusqlite::ffi::Error::new(rusqlite::ffi::SQLITE_BUSY),
            Some(format!("the checkpoint copied {copied} of {pages} WAL pages")),
        ));
    }
    start_over(conn)
}

/// Starts the WAL of a completely checkpointed database over, with a
/// commit that rewrites page 1 unchanged: the first commit after a
/// complete checkpoint starts the WAL over (writing its new header, synced
/// under `NORMAL`, and cutting a long one back to `journal_size_limit`),
/// so that no later writer does.
pub(crate) fn start_over(conn: &Connection) -> rusqlite::Result<()> {
    let version: i64 = conn.query_row("PRAGMA user_version", [], |row| row.get(0))?;
    conn.execute_batch(&format!("BEGIN IMMEDIATE; PRAGMA user_version = {version}; COMMIT;"))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A database configured as `database.rs` does with `Full`.
    fn full(path: &std::path::Path) -> Connection {
        let conn = Connection::open(path).unwrap();
        conn.execute_batch(&format!(
            "PRAGMA locking_mode = EXCLUSIVE; PRAGMA synchronous = OFF; PRAGMA journal_mode = WAL;
             PRAGMA journal_size_limit = {KEPT_WAL_BYTES};
             CREATE TABLE t (k INTEGER PRIMARY KEY, v BLOB);"
        ))
        .unwrap();
        conn.wal_hook(Some(count_frames));
        conn
    }

    fn with_wal(path: &std::path::Path) -> std::path::PathBuf {
        let mut wal = path.as_os_str().to_owned();
        wal.push("-wal");
        wal.into()
    }

    fn wal_len(path: &std::path::Path) -> u64 {
        std::fs::metadata(with_wal(path)).unwrap().len()
    }

    #[test]
    fn the_hook_counts_pages_and_sqlite_no_longer_checkpoints() {
        let dir = tempfile::tempdir().unwrap();
        let conn = full(&dir.path().join("db"));
        take_frames();
        let mut last = 0;
        for i in 0..1500 {
            conn.execute("INSERT INTO t VALUES (?1, zeroblob(3000))", [i]).unwrap();
            let frames = take_frames();
            assert!(frames > last, "commit {i}: {frames} pages after {last}");
            last = frames;
        }
        // Past SQLite's 1,000 pages, no checkpoint started the WAL over.
        assert!(last > 1500, "{last} pages");
        conn.execute_batch("SELECT 1").unwrap();
        assert_eq!(take_frames(), 0, "a commit that wrote nothing is not counted");
    }

    #[test]
    fn a_checkpoint_starts_the_wal_over_and_keeps_its_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("db");
        let conn = full(&path);
        for i in 0..40 {
            conn.execute("INSERT INTO t VALUES (?1, zeroblob(3000))", [i]).unwrap();
        }
        let before = wal_len(&path);
        checkpoint(&conn).unwrap();
        assert_eq!(take_frames(), 1, "the WAL starts over with one page");
        let sync: i64 = conn.query_row("PRAGMA synchronous", [], |row| row.get(0)).unwrap();
        assert_eq!(sync, 0, "OFF is restored");
        assert_eq!(wal_len(&path), before, "the file keeps its size");
        conn.execute("INSERT INTO t VALUES (100, zeroblob(3000))", []).unwrap();
        let frames = take_frames();
        assert!((2..10).contains(&frames), "commits follow from the start: {frames} pages");
        assert_eq!(wal_len(&path), before, "overwriting, not appending");
        drop(conn);
        // Reopened, the WAL is read back: its new pages, not the old ones.
        let conn = Connection::open(&path).unwrap();
        let rows: i64 = conn.query_row("SELECT count(*) FROM t", [], |row| row.get(0)).unwrap();
        assert_eq!(rows, 41);
    }

    #[test]
    fn zeros_written_ahead_of_the_frames_are_not_read_as_frames() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("db");
        let conn = full(&path);
        let wal = File::options().write(true).open(with_wal(&path)).unwrap();
        let page_size: u32 = conn.query_row("PRAGMA page_size", [], |row| row.get(0)).unwrap();
        let mut len = None;
        take_frames();
        let mut frames = 0;
        let (limit, mut commits, mut at_limit) = (KEPT_WAL_BYTES as u64, 0, false);
        // Commits of about a page each, until SQLite itself grows the WAL
        // past the size kept.
        while frames_end(frames, page_size) <= limit {
            conn.execute("INSERT INTO t VALUES (?1, randomblob(100))", [commits]).unwrap();
            commits += 1;
            frames = take_frames();
            let end = frames_end(frames, page_size);
            make_room(&wal, &mut len, end).unwrap();
            let on_disk = wal_len(&path);
            assert_eq!(len, Some(on_disk), "commit {commits}");
            assert!(
                on_disk >= (end + ROOM_BYTES / 2).min(limit),
                "commit {commits}: {on_disk} bytes, frames end at {end}"
            );
            assert!(on_disk <= limit.max(end), "commit {commits}: {on_disk} bytes");
            at_limit |= on_disk == limit;
            if commits % 25 == 0 {
                // Zeros follow the frames: the WAL is read up to its last
                // commit, no further.
                assert!(on_disk > end);
                assert_eq!(read_back_copy(&path), (commits, i64::from(frames)));
            }
        }
        assert!(at_limit, "it wrote up to the size kept, no further");
    }

    /// The rows in `t` and the pages in the WAL of a copy of the files of
    /// the database at `path`, made while it is open (as after a crash).
    fn read_back_copy(path: &std::path::Path) -> (i64, i64) {
        let copy = path.with_extension("copy");
        std::fs::copy(path, &copy).unwrap();
        std::fs::copy(with_wal(path), with_wal(&copy)).unwrap();
        let conn = Connection::open(&copy).unwrap();
        let rows = conn.query_row("SELECT count(*) FROM t", [], |row| row.get(0)).unwrap();
        let pages = conn.query_row("PRAGMA wal_checkpoint(PASSIVE)", [], |row| row.get(1)).unwrap();
        drop(conn); // Which checkpoints the copy and removes its WAL.
        std::fs::remove_file(copy).unwrap();
        (rows, pages)
    }

    #[test]
    fn a_long_wal_is_cut_back_when_it_starts_over() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("db");
        let conn = full(&path);
        conn.execute_batch(
            "WITH RECURSIVE s(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM s WHERE i < 1000)
             INSERT INTO t SELECT i, zeroblob(3000) FROM s",
        )
        .unwrap();
        assert!(wal_len(&path) > 2 * KEPT_WAL_BYTES as u64);
        checkpoint(&conn).unwrap();
        assert_eq!(wal_len(&path), KEPT_WAL_BYTES as u64);
    }
}
