//! The WAL of a replicated database, with its newest frames held in memory.
//!
//! A replicated object's local files are a cache of its log (see
//! `replica.rs`): what a commit wrote to the WAL is shipped to the log, and
//! the reply waits for the log, not for the file. Yet SQLite wrote each
//! commit's frames to the file (two `pwrite`s a frame: its header, its
//! page) and the shipment read them back (a `pread`): three system calls
//! between PostgreSQL's answer to one turn and the entry of the next, on
//! the path of every replicated write (about 4.6 µs on the test VM, where
//! every µs of that pause costs about two in the round trip that follows).
//!
//! So replicated databases are opened through a VFS of ours, [`VFS`]: the
//! system's default one, except for WAL files. Their writes gather in
//! memory in one run of bytes ([`WalBuffer`]), which the file gets only
//! when the run reaches [`HELD_BYTES`], when SQLite writes elsewhere in the
//! file (a WAL that starts over), truncates, syncs or closes it, and when
//! the replica is about to write its marker (`replica.rs`: a marker
//! promises that the file holds the WAL up to its length). Reads see the
//! held bytes; a shipment copies its frames from them.
//!
//! What that changes: a process that dies (`kill -9`) loses the frames it
//! held, at most [`HELD_BYTES`] of its newest commits, as a crash of the
//! operating system loses unsynced writes. Every shipped one is in the log,
//! and the marker is behind them, so the next activation catches the copy
//! up from the log; no other process reads an object's files while it is
//! active (they are locked exclusively, see the module docs of `storage`).
//! Memory: at most [`HELD_BYTES`] for each open replicated database.
//!
//! This is the runtime's only `unsafe` code: SQLite's VFS interface is C.
//! Each function states what it relies on.

#![allow(unsafe_code)]

use std::ffi::{CStr, OsStr, c_int, c_void};
use std::fs::File;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::FileExt;
use std::path::Path;
use std::ptr;
use std::sync::atomic::{AtomicPtr, Ordering};
use std::sync::{Arc, Mutex, OnceLock};

use rusqlite::{Connection, OpenFlags, ffi};

use crate::sync::lock;

/// The name of the VFS replicated databases are opened with.
const VFS: &CStr = c"stead-replica";

/// The most bytes a WAL holds in memory before they go to its file: about
/// 60 frames of 1 KiB pages. One `pwrite` of them costs a turn a few µs,
/// once every 60 or so commits.
const HELD_BYTES: usize = 64 << 10;

/// The default VFS, which ours wraps (set once, by [`register`]).
static DEFAULT: AtomicPtr<ffi::sqlite3_vfs> = AtomicPtr::new(ptr::null_mut());

/// Opens the database at `path` with `flags` through [`VFS`], registering
/// it on first use.
pub(crate) fn open(path: &Path, flags: OpenFlags) -> rusqlite::Result<Connection> {
    register().map_err(|reason| {
        rusqlite::Error::SqliteFailure(ffi::Error::new(ffi::SQLITE_ERROR), Some(reason.to_string()))
    })?;
    Connection::open_with_flags_and_vfs(path, flags, VFS)
}

/// The buffer of `conn`'s WAL, if `conn` was opened with [`open`] and its
/// WAL is open (a database in WAL mode opens it with its first read).
pub(crate) fn of(conn: &Connection) -> Option<Arc<WalBuffer>> {
    let mut file: *mut ffi::sqlite3_file = ptr::null_mut();
    // SAFETY: the handle is `conn`'s, used on this thread while `conn` is
    // borrowed; `SQLITE_FCNTL_JOURNAL_POINTER` writes the WAL's (or the
    // rollback journal's) `sqlite3_file` pointer to `file`.
    let found = unsafe {
        ffi::sqlite3_file_control(
            conn.handle(),
            c"main".as_ptr(),
            ffi::SQLITE_FCNTL_JOURNAL_POINTER,
            (&raw mut file).cast::<c_void>(),
        )
    };
    if found != ffi::SQLITE_OK || file.is_null() {
        return None;
    }
    // SAFETY: `file` is an open file of `conn`. Its methods are ours only if
    // `vfs_open` made it, as a `WalFile`, whose `buffer` is a live `Arc`
    // until the file is closed (not while `conn` is borrowed here).
    unsafe {
        if !ptr::eq((*file).pMethods, &raw const WAL_METHODS) {
            return None;
        }
        let buffer = (*file.cast::<WalFile>()).buffer;
        Arc::increment_strong_count(buffer);
        Some(Arc::from_raw(buffer))
    }
}

/// Registers [`VFS`] once: a copy of the default VFS whose `xOpen` opens
/// WAL files as [`WalFile`]s.
fn register() -> Result<(), &'static str> {
    static REGISTERED: OnceLock<Result<(), &'static str>> = OnceLock::new();
    *REGISTERED.get_or_init(|| {
        // SAFETY: `sqlite3_vfs_find` and `sqlite3_vfs_register` are
        // thread-safe; the registered struct is leaked, so it lives as long
        // as SQLite may use it. The copied functions of the default VFS
        // get our struct, whose other fields (`pAppData` included) are the
        // default's; `xOpen` passes them the default VFS itself.
        unsafe {
            let default = ffi::sqlite3_vfs_find(ptr::null());
            if default.is_null() {
                return Err("SQLite has no default VFS to open replicated databases with");
            }
            DEFAULT.store(default, Ordering::Release);
            let size = c_int::try_from(size_of::<WalFile>()).unwrap_or(c_int::MAX);
            let vfs = Box::leak(Box::new(ffi::sqlite3_vfs {
                szOsFile: (*default).szOsFile.max(size),
                pNext: ptr::null_mut(),
                zName: VFS.as_ptr(),
                xOpen: Some(vfs_open),
                ..*default
            }));
            match ffi::sqlite3_vfs_register(vfs, 0) {
                ffi::SQLITE_OK => Ok(()),
                _ => Err("SQLite refused to register the VFS of replicated databases"),
            }
        }
    })
}

/// The bytes written to a WAL that its file does not have yet, and the
/// file: shared by SQLite's handle of the WAL and the object's replica
/// (which copies frames from it and has it written out before a marker).
pub(crate) struct WalBuffer {
    held: Mutex<Held>,
}

/// One run of bytes from `start`, over what the file has there.
struct Held {
    /// The WAL, opened for this buffer (SQLite's own handle of it is the
    /// default VFS's).
    file: File,
    start: u64,
    bytes: Vec<u8>,
}

impl WalBuffer {
    fn new(file: File) -> WalBuffer {
        WalBuffer { held: Mutex::new(Held { file, start: 0, bytes: Vec::new() }) }
    }

    /// The WAL's bytes from `offset` to `offset + len`, which it must have.
    pub(crate) fn read_exact(&self, offset: u64, len: usize) -> std::io::Result<Vec<u8>> {
        let mut bytes = vec![0; len];
        match lock(&self.held).read(&mut bytes, offset)? {
            true => Ok(bytes),
            false => Err(std::io::ErrorKind::UnexpectedEof.into()),
        }
    }

    /// Writes what is held to the file.
    pub(crate) fn write_out(&self) -> std::io::Result<()> {
        lock(&self.held).write_out()
    }
}

impl Held {
    fn end(&self) -> u64 {
        self.start + self.bytes.len() as u64
    }

    /// Takes `data` at `offset`: into the run if it falls within it or
    /// right after it; else the run is written out and a new one starts.
    fn write(&mut self, data: &[u8], offset: u64) -> std::io::Result<()> {
        if self.bytes.is_empty() || offset < self.start || offset > self.end() {
            self.write_out()?;
            self.start = offset;
        }
        let at = usize::try_from(offset - self.start).unwrap_or(usize::MAX);
        let over = data.len().min(self.bytes.len() - at);
        self.bytes[at..at + over].copy_from_slice(&data[..over]);
        self.bytes.extend_from_slice(&data[over..]);
        if self.bytes.len() >= HELD_BYTES {
            self.write_out()?;
        }
        Ok(())
    }

    /// Fills `buf` from `offset`: the file's bytes, with the held ones over
    /// them, zeros past both. Whether the WAL reaches the end of `buf`.
    fn read(&self, buf: &mut [u8], offset: u64) -> std::io::Result<bool> {
        let end = offset + buf.len() as u64;
        if !self.bytes.is_empty() && offset >= self.start && end <= self.end() {
            // All held (a shipment's frames): no system call.
            let at = (offset - self.start) as usize;
            buf.copy_from_slice(&self.bytes[at..at + buf.len()]);
            return Ok(true);
        }
        let mut read = 0;
        while read < buf.len() {
            match self.file.read_at(&mut buf[read..], offset + read as u64) {
                Ok(0) => break,
                Ok(n) => read += n,
                Err(err) if err.kind() == std::io::ErrorKind::Interrupted => {}
                Err(err) => return Err(err),
            }
        }
        buf[read..].fill(0);
        let (from, to) = (offset.max(self.start), end.min(self.end()));
        if from < to {
            let (at, len) = ((from - self.start) as usize, (to - from) as usize);
            let into = (from - offset) as usize;
            buf[into..into + len].copy_from_slice(&self.bytes[at..at + len]);
        }
        Ok(read == buf.len() || (!self.bytes.is_empty() && self.end() >= end))
    }

    fn write_out(&mut self) -> std::io::Result<()> {
        if !self.bytes.is_empty() {
            self.file.write_all_at(&self.bytes, self.start)?;
            self.start = self.end();
            self.bytes.clear();
        }
        Ok(())
    }
}

/// A WAL opened through [`VFS`]: SQLite's `sqlite3_file` (which must come
/// first), the default VFS's file it wraps, and the buffer.
#[repr(C)]
struct WalFile {
    base: ffi::sqlite3_file,
    /// Allocated with `sqlite3_malloc`, opened by the default VFS.
    inner: *mut ffi::sqlite3_file,
    /// From `Arc::into_raw`; released by `wal_close`.
    buffer: *const WalBuffer,
}

static WAL_METHODS: ffi::sqlite3_io_methods = ffi::sqlite3_io_methods {
    iVersion: 1,
    xClose: Some(wal_close),
    xRead: Some(wal_read),
    xWrite: Some(wal_write),
    xTruncate: Some(wal_truncate),
    xSync: Some(wal_sync),
    xFileSize: Some(wal_file_size),
    xLock: Some(wal_lock),
    xUnlock: Some(wal_unlock),
    xCheckReservedLock: Some(wal_check_reserved_lock),
    xFileControl: Some(wal_file_control),
    xSectorSize: Some(wal_sector_size),
    xDeviceCharacteristics: Some(wal_device_characteristics),
    xShmMap: None,
    xShmLock: None,
    xShmBarrier: None,
    xShmUnmap: None,
    xFetch: None,
    xUnfetch: None,
};

/// `xOpen`: the default VFS's, and for a WAL a [`WalFile`] around it.
///
/// SAFETY (for SQLite's calls): `file` points to `szOsFile` bytes, at least
/// a `WalFile`; `name` is a path, which a WAL always has.
unsafe extern "C" fn vfs_open(
    _: *mut ffi::sqlite3_vfs,
    name: ffi::sqlite3_filename,
    file: *mut ffi::sqlite3_file,
    flags: c_int,
    out_flags: *mut c_int,
) -> c_int {
    let default = DEFAULT.load(Ordering::Acquire);
    // SAFETY: `register` set `DEFAULT` before it registered the VFS that
    // calls this; the default VFS has an `xOpen`.
    unsafe {
        let Some(default_open) = (*default).xOpen else { return ffi::SQLITE_CANTOPEN };
        if flags & ffi::SQLITE_OPEN_WAL == 0 || name.is_null() {
            return default_open(default, name, file, flags, out_flags);
        }
        (*file).pMethods = ptr::null();
        let size = (*default).szOsFile;
        let inner = ffi::sqlite3_malloc(size).cast::<ffi::sqlite3_file>();
        if inner.is_null() {
            return ffi::SQLITE_NOMEM;
        }
        ptr::write_bytes(inner.cast::<u8>(), 0, usize::try_from(size).unwrap_or(0));
        let opened = default_open(default, name, inner, flags, out_flags);
        if opened != ffi::SQLITE_OK {
            ffi::sqlite3_free(inner.cast());
            return opened;
        }
        let path = OsStr::from_bytes(CStr::from_ptr(name).to_bytes());
        let own = std::fs::OpenOptions::new().read(true).write(true).open(path);
        let Ok(own) = own else {
            close_inner(inner);
            return ffi::SQLITE_CANTOPEN;
        };
        let buffer = Arc::into_raw(Arc::new(WalBuffer::new(own)));
        ptr::write(
            file.cast::<WalFile>(),
            WalFile { base: ffi::sqlite3_file { pMethods: &raw const WAL_METHODS }, inner, buffer },
        );
        ffi::SQLITE_OK
    }
}

/// Closes and frees the default VFS's file.
///
/// SAFETY: `inner` was opened by the default VFS into `sqlite3_malloc`ed
/// memory, and is not used after.
unsafe fn close_inner(inner: *mut ffi::sqlite3_file) -> c_int {
    // SAFETY: as the function says.
    unsafe {
        let closed = match (*inner).pMethods.as_ref().and_then(|methods| methods.xClose) {
            Some(close) => close(inner),
            None => ffi::SQLITE_OK,
        };
        ffi::sqlite3_free(inner.cast());
        closed
    }
}

/// The parts of a file that `vfs_open` made.
///
/// SAFETY: `file` is a [`WalFile`] (its methods are [`WAL_METHODS`]) that
/// is not closed; SQLite calls its methods one at a time.
unsafe fn parts<'a>(file: *mut ffi::sqlite3_file) -> (*mut ffi::sqlite3_file, &'a WalBuffer) {
    // SAFETY: as the function says; `buffer` lives until `wal_close`.
    unsafe {
        let wal = file.cast::<WalFile>();
        ((*wal).inner, &*(*wal).buffer)
    }
}

/// The default VFS's method `$method` of `inner`, called with `$args`.
macro_rules! inner_call {
    ($inner:expr, $method:ident $(, $arg:expr)*) => {
        match (*(*$inner).pMethods).$method {
            Some(method) => method($inner $(, $arg)*),
            None => ffi::SQLITE_IOERR,
        }
    };
}

unsafe extern "C" fn wal_close(file: *mut ffi::sqlite3_file) -> c_int {
    // SAFETY: SQLite closes a file once and uses it no more; the `Arc`
    // made by `vfs_open` is released here.
    unsafe {
        let wal = file.cast::<WalFile>();
        let written = (*(*wal).buffer).write_out();
        let closed = close_inner((*wal).inner);
        drop(Arc::from_raw((*wal).buffer));
        (*file).pMethods = ptr::null();
        match written {
            Ok(()) => closed,
            Err(_) => ffi::SQLITE_IOERR_CLOSE,
        }
    }
}

unsafe extern "C" fn wal_read(
    file: *mut ffi::sqlite3_file,
    buf: *mut c_void,
    amount: c_int,
    offset: i64,
) -> c_int {
    // SAFETY: `buf` holds `amount` bytes (SQLite's contract).
    unsafe {
        let (_, buffer) = parts(file);
        let buf = std::slice::from_raw_parts_mut(buf.cast::<u8>(), usize::try_from(amount).unwrap_or(0));
        match lock(&buffer.held).read(buf, offset as u64) {
            Ok(true) => ffi::SQLITE_OK,
            Ok(false) => ffi::SQLITE_IOERR_SHORT_READ,
            Err(_) => ffi::SQLITE_IOERR_READ,
        }
    }
}

unsafe extern "C" fn wal_write(
    file: *mut ffi::sqlite3_file,
    data: *const c_void,
    amount: c_int,
    offset: i64,
) -> c_int {
    // SAFETY: `data` holds `amount` bytes (SQLite's contract).
    unsafe {
        let (_, buffer) = parts(file);
        let data = std::slice::from_raw_parts(data.cast::<u8>(), usize::try_from(amount).unwrap_or(0));
        match lock(&buffer.held).write(data, offset as u64) {
            Ok(()) => ffi::SQLITE_OK,
            Err(_) => ffi::SQLITE_IOERR_WRITE,
        }
    }
}

/// Writes the held bytes to the file, then runs `then` on the default
/// VFS's file (the bytes stay locked meanwhile); `failed` if they could
/// not be written.
///
/// SAFETY: as for [`parts`].
unsafe fn written_out_then(
    file: *mut ffi::sqlite3_file,
    failed: c_int,
    then: impl FnOnce(*mut ffi::sqlite3_file) -> c_int,
) -> c_int {
    // SAFETY: as the function says.
    let (inner, buffer) = unsafe { parts(file) };
    let mut held = lock(&buffer.held);
    match held.write_out() {
        Ok(()) => then(inner),
        Err(_) => failed,
    }
}

unsafe extern "C" fn wal_truncate(file: *mut ffi::sqlite3_file, size: i64) -> c_int {
    // SAFETY: see `parts`.
    unsafe { written_out_then(file, ffi::SQLITE_IOERR_TRUNCATE, |inner| inner_call!(inner, xTruncate, size)) }
}

unsafe extern "C" fn wal_sync(file: *mut ffi::sqlite3_file, flags: c_int) -> c_int {
    // SAFETY: see `parts`.
    unsafe { written_out_then(file, ffi::SQLITE_IOERR_FSYNC, |inner| inner_call!(inner, xSync, flags)) }
}

unsafe extern "C" fn wal_file_size(file: *mut ffi::sqlite3_file, size: *mut i64) -> c_int {
    // SAFETY: see `parts`; `size` is writable (SQLite's contract).
    unsafe {
        let (inner, buffer) = parts(file);
        let held = lock(&buffer.held);
        let sized = inner_call!(inner, xFileSize, size);
        if sized == ffi::SQLITE_OK && !held.bytes.is_empty() {
            *size = (*size).max(i64::try_from(held.end()).unwrap_or(i64::MAX));
        }
        sized
    }
}

unsafe extern "C" fn wal_lock(file: *mut ffi::sqlite3_file, level: c_int) -> c_int {
    // SAFETY: see `parts`.
    unsafe { inner_call!(parts(file).0, xLock, level) }
}

unsafe extern "C" fn wal_unlock(file: *mut ffi::sqlite3_file, level: c_int) -> c_int {
    // SAFETY: see `parts`.
    unsafe { inner_call!(parts(file).0, xUnlock, level) }
}

unsafe extern "C" fn wal_check_reserved_lock(file: *mut ffi::sqlite3_file, out: *mut c_int) -> c_int {
    // SAFETY: see `parts`.
    unsafe { inner_call!(parts(file).0, xCheckReservedLock, out) }
}

unsafe extern "C" fn wal_file_control(file: *mut ffi::sqlite3_file, op: c_int, arg: *mut c_void) -> c_int {
    // SAFETY: see `parts`.
    unsafe { inner_call!(parts(file).0, xFileControl, op, arg) }
}

unsafe extern "C" fn wal_sector_size(file: *mut ffi::sqlite3_file) -> c_int {
    // SAFETY: see `parts`.
    unsafe {
        let inner = parts(file).0;
        (*(*inner).pMethods).xSectorSize.map_or(4096, |method| method(inner))
    }
}

unsafe extern "C" fn wal_device_characteristics(file: *mut ffi::sqlite3_file) -> c_int {
    // SAFETY: see `parts`.
    unsafe {
        let inner = parts(file).0;
        (*(*inner).pMethods).xDeviceCharacteristics.map_or(0, |method| method(inner))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn held(dir: &Path) -> Held {
        let path = dir.join("wal");
        let file = std::fs::OpenOptions::new().read(true).write(true).create(true).truncate(true).open(&path);
        Held { file: file.unwrap(), start: 0, bytes: Vec::new() }
    }

    fn read(held: &Held, offset: u64, len: usize) -> (Vec<u8>, bool) {
        let mut buf = vec![9; len];
        let whole = held.read(&mut buf, offset).unwrap();
        (buf, whole)
    }

    #[test]
    fn a_run_takes_appends_and_overwrites_and_reads_see_it_over_the_file() {
        let dir = tempfile::tempdir().unwrap();
        let mut held = held(dir.path());
        held.write(b"abcd", 0).unwrap();
        held.write(b"ef", 4).unwrap();
        held.write(b"XY", 1).unwrap();
        assert_eq!(held.file.metadata().unwrap().len(), 0, "held, not written");
        assert_eq!(read(&held, 0, 6), (b"aXYdef".to_vec(), true));
        // Past the end: zeros, and a short read.
        assert_eq!(read(&held, 4, 4), (b"ef\0\0".to_vec(), false));

        // A write elsewhere writes the run out and starts another.
        held.write(b"12", 2).unwrap();
        held.write(b"zz", 20).unwrap();
        assert_eq!(std::fs::read(dir.path().join("wal")).unwrap(), b"aX12ef");
        assert_eq!((held.start, held.bytes.as_slice()), (20, b"zz".as_slice()));
        // The file's bytes, a hole of zeros, the held ones.
        let (bytes, whole) = read(&held, 4, 18);
        assert!(whole);
        assert_eq!(&bytes[..2], b"ef");
        assert!(bytes[2..16].iter().all(|&b| b == 0));
        assert_eq!(&bytes[16..], b"zz");

        held.write_out().unwrap();
        assert_eq!(held.file.metadata().unwrap().len(), 22);
        assert!(held.bytes.is_empty());
    }

    #[test]
    fn a_run_is_written_out_once_it_reaches_the_limit() {
        let dir = tempfile::tempdir().unwrap();
        let mut held = held(dir.path());
        let frame = vec![7; 1048];
        let mut offset = 0;
        while held.file.metadata().unwrap().len() == 0 {
            held.write(&frame, offset).unwrap();
            offset += frame.len() as u64;
            assert!(held.bytes.len() < HELD_BYTES);
        }
        assert_eq!(held.file.metadata().unwrap().len(), offset);
        assert!(offset as usize >= HELD_BYTES && (offset as usize) < HELD_BYTES + frame.len());
    }

    #[derive(Debug, Clone)]
    enum Op {
        Write(u64, Vec<u8>),
        Read(u64, usize),
        WriteOut,
    }

    fn op() -> impl proptest::strategy::Strategy<Value = Op> {
        use proptest::prelude::*;
        prop_oneof![
            4 => (0u64..400, proptest::collection::vec(any::<u8>(), 1..80))
                .prop_map(|(offset, data)| Op::Write(offset, data)),
            2 => (0u64..500, 1usize..120).prop_map(|(offset, len)| Op::Read(offset, len)),
            1 => Just(Op::WriteOut),
        ]
    }

    proptest::proptest! {
        /// Whatever SQLite writes, reads see a file that took every write
        /// at once, and the file is that once written out.
        #[test]
        fn held_bytes_read_like_the_file_they_stand_for(ops in proptest::collection::vec(op(), 1..60)) {
            let dir = tempfile::tempdir().unwrap();
            let mut held = held(dir.path());
            let mut model: Vec<u8> = Vec::new();
            for op in ops {
                match op {
                    Op::Write(offset, data) => {
                        held.write(&data, offset).unwrap();
                        let end = offset as usize + data.len();
                        if model.len() < end {
                            model.resize(end, 0);
                        }
                        model[offset as usize..end].copy_from_slice(&data);
                    }
                    Op::Read(offset, len) => {
                        let (bytes, whole) = read(&held, offset, len);
                        let mut expected = vec![0; len];
                        let from = (offset as usize).min(model.len());
                        let to = (offset as usize + len).min(model.len());
                        expected[..to - from].copy_from_slice(&model[from..to]);
                        proptest::prop_assert_eq!(bytes, expected);
                        proptest::prop_assert_eq!(whole, offset as usize + len <= model.len());
                    }
                    Op::WriteOut => held.write_out().unwrap(),
                }
            }
            held.write_out().unwrap();
            proptest::prop_assert_eq!(std::fs::read(dir.path().join("wal")).unwrap(), model);
        }
    }

    fn open_wal_db(path: &Path) -> Connection {
        let conn = open(path, OpenFlags::default()).unwrap();
        conn.execute_batch(
            "PRAGMA locking_mode = EXCLUSIVE; PRAGMA journal_mode = WAL; PRAGMA synchronous = OFF;
             CREATE TABLE IF NOT EXISTS t (n INTEGER, pad BLOB)",
        )
        .unwrap();
        conn.set_db_config(rusqlite::config::DbConfig::SQLITE_DBCONFIG_NO_CKPT_ON_CLOSE, true).unwrap();
        conn
    }

    fn count(conn: &Connection) -> i64 {
        conn.query_row("SELECT count(*) FROM t", [], |row| row.get(0)).unwrap()
    }

    #[test]
    fn sqlite_reads_its_held_frames_and_the_file_has_them_once_closed() {
        let dir = tempfile::tempdir().unwrap();
        let db = dir.path().join("x.sqlite");
        let wal = dir.path().join("x.sqlite-wal");
        let conn = open_wal_db(&db);
        let buffer = of(&conn).expect("the WAL is ours");
        let on_disk = || std::fs::metadata(&wal).unwrap().len();
        let before = on_disk();
        conn.execute("INSERT INTO t VALUES (1, zeroblob(100))", []).unwrap();
        assert_eq!(on_disk(), before, "the commit's frames are held");
        // SQLite reads them (a fresh page cache), and so does a shipment.
        conn.execute_batch("PRAGMA cache_size = 0; PRAGMA shrink_memory").unwrap();
        assert_eq!(count(&conn), 1);
        let header = buffer.read_exact(0, 32).unwrap();
        assert_eq!(&header[..4], &[0x37, 0x7f, 0x06, 0x82], "a WAL header, held");

        // Enough commits for the limit: the file gets them, in one write.
        for n in 2..=200 {
            conn.execute("INSERT INTO t VALUES (?1, zeroblob(500))", [n]).unwrap();
        }
        assert!(on_disk() > before);
        drop(conn);
        let plain = Connection::open(&db).unwrap();
        assert_eq!(count(&plain), 200, "closing wrote out what was held");
        drop(plain);

        // A database not opened through the VFS has no buffer.
        let other = Connection::open(dir.path().join("y.sqlite")).unwrap();
        other.execute_batch("PRAGMA journal_mode = WAL; CREATE TABLE t (n)").unwrap();
        assert!(of(&other).is_none());
    }
}
