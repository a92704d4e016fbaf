//! A throw-away PostgreSQL server for stead's tests, benchmarks and
//! examples: `initdb` into a temporary directory, `postgres` on a free
//! loopback port (its unix socket in the same directory), stopped and
//! removed when the [`TempPostgres`] is dropped, even by a panicking test.
//!
//! The binaries are looked up in `$STEAD_PG_BINDIR`, `/usr/local/bin`, the
//! `PATH`, `pg_config --bindir` and `/usr/lib/postgresql/*/bin` (Debian's
//! `postgresql` package), in that order. PostgreSQL refuses to run as root:
//! when this process is root, the server runs as the unprivileged
//! `postgres` user, which must exist.
//!
//! [`TempPostgres::start`] makes a server for speed, not safety: `fsync` is
//! off. [`TempPostgres::start_durable`] keeps PostgreSQL's durable defaults
//! (`fsync` on), for benchmarks that compare durable writes. Either accepts
//! any local connection as the superuser `postgres` without a password.
//!
//! ```no_run
//! let pg = stead_pgtemp::TempPostgres::start().unwrap();
//! println!("{}", pg.conninfo()); // host=127.0.0.1 port=... user=postgres dbname=postgres
//! ```

use std::io::{BufRead, BufReader};
use std::net::TcpListener;
use std::os::unix::fs::MetadataExt;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// How long the server may take to start or stop.
const PATIENCE: Duration = Duration::from_secs(30);

/// The server's last lines of output kept, for error messages.
const KEPT_LINES: usize = 50;

/// A running throw-away PostgreSQL server; dropping it stops the server and
/// removes its files.
pub struct TempPostgres {
    dir: tempfile::TempDir,
    bin: PathBuf,
    user: Option<(u32, u32)>,
    port: u16,
    /// `fsync` on (PostgreSQL's default) instead of off.
    durable: bool,
    server: Option<Server>,
}

/// The `postgres` process and what it printed.
struct Server {
    child: Child,
    output: Arc<Mutex<Vec<String>>>,
}

/// A failure to start or stop the server, with what to do about it.
#[derive(Debug)]
pub struct Error(String);

impl std::fmt::Display for Error {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for Error {}

impl TempPostgres {
    /// Creates a database cluster in a new temporary directory and starts a
    /// server on it, returning once it accepts connections.
    ///
    /// # Errors
    /// When the binaries cannot be found, `initdb` fails, or the server does
    /// not come up within 30 s; the message says why and what to install.
    pub fn start() -> Result<TempPostgres, Error> {
        Self::launch(false)
    }

    /// Like [`start`](Self::start), with `fsync` on, as PostgreSQL ships:
    /// a commit waits for its WAL to reach the disk (with
    /// `synchronous_commit = on`, the default).
    ///
    /// # Errors
    /// As [`start`](Self::start).
    pub fn start_durable() -> Result<TempPostgres, Error> {
        Self::launch(true)
    }

    fn launch(durable: bool) -> Result<TempPostgres, Error> {
        let bin = bindir()?;
        let user = server_user()?;
        let dir = tempfile::Builder::new()
            .prefix("stead-pg-")
            .tempdir()
            .map_err(|e| Error(format!("cannot create a temporary directory: {e}")))?;
        if let Some((uid, gid)) = user {
            std::os::unix::fs::chown(dir.path(), Some(uid), Some(gid)).map_err(|e| {
                Error(format!("cannot hand {} to the `postgres` user: {e}", dir.path().display()))
            })?;
        }
        let mut initdb = Command::new(bin.join("initdb"));
        initdb
            .arg("-D")
            .arg(dir.path().join("data"))
            .args(["-U", "postgres", "--auth=trust", "-E", "UTF8", "--no-sync"])
            .current_dir(dir.path());
        as_user(&mut initdb, user);
        let out = initdb.output().map_err(|e| Error(format!("cannot run {}/initdb: {e}", bin.display())))?;
        if !out.status.success() {
            return Err(Error(format!(
                "initdb failed ({}): {}",
                out.status,
                String::from_utf8_lossy(&out.stderr).trim()
            )));
        }
        let mut pg = TempPostgres { dir, bin, user, port: 0, durable, server: None };
        // A port just handed out by the OS may be taken again before the
        // server binds it: try a few.
        let mut last = None;
        for _ in 0..5 {
            pg.port = free_port()?;
            match pg.start_server() {
                Ok(()) => return Ok(pg),
                Err(err) => last = Some(err),
            }
        }
        Err(last.unwrap_or_else(|| Error("the server did not start".into())))
    }

    /// The connection string of the server's `postgres` database, over TCP
    /// on loopback.
    pub fn conninfo(&self) -> String {
        format!("host=127.0.0.1 port={} user=postgres dbname=postgres", self.port)
    }

    /// The server's TCP port on 127.0.0.1.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// The data directory of the database cluster.
    pub fn data_dir(&self) -> PathBuf {
        self.dir.path().join("data")
    }

    /// Stops the server (a fast shutdown: sessions are cut, data is kept);
    /// [`start_again`](Self::start_again) brings it back on the same port.
    pub fn stop(&mut self) {
        if let Some(server) = self.server.take() {
            server.stop(libc::SIGINT);
        }
    }

    /// Starts the server again after [`stop`](Self::stop), on the same port
    /// and data.
    ///
    /// # Errors
    /// When the server does not come up (for instance, another process took
    /// its port meanwhile).
    pub fn start_again(&mut self) -> Result<(), Error> {
        if self.server.is_none() {
            self.start_server()?;
        }
        Ok(())
    }

    /// Freezes every process of the server (`SIGSTOP` to the postmaster
    /// and each of its children): connections stay open but nothing
    /// answers, as when the server or its network hangs.
    pub fn pause(&self) {
        if let Some(server) = &self.server {
            server.signal_tree(libc::SIGSTOP);
        }
    }

    /// Lets a [`pause`](Self::pause)d server run on.
    pub fn resume(&self) {
        if let Some(server) = &self.server {
            server.signal_tree(libc::SIGCONT);
        }
    }

    fn start_server(&mut self) -> Result<(), Error> {
        let mut command = Command::new(self.bin.join("postgres"));
        command
            .arg("-D")
            .arg(self.data_dir())
            .arg("-k")
            .arg(self.dir.path())
            .args(["-p", &self.port.to_string()])
            .args(["-c", "listen_addresses=127.0.0.1", "-c", "logging_collector=off"])
            .args(["-c", if self.durable { "fsync=on" } else { "fsync=off" }])
            .current_dir(self.dir.path())
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            // Its own process group, so that a last SIGKILL reaches what
            // is left of it.
            .process_group(0);
        as_user(&mut command, self.user);
        let mut child =
            command.spawn().map_err(|e| Error(format!("cannot run {}/postgres: {e}", self.bin.display())))?;
        let output = Arc::new(Mutex::new(Vec::new()));
        if let Some(stderr) = child.stderr.take() {
            let sink = output.clone();
            std::thread::spawn(move || {
                for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                    let mut lines = sink.lock().unwrap_or_else(|e| e.into_inner());
                    if lines.len() == KEPT_LINES {
                        lines.remove(0);
                    }
                    lines.push(line);
                }
            });
        }
        self.wait_ready(Server { child, output }, Instant::now() + PATIENCE)
    }

    fn wait_ready(&mut self, mut server: Server, deadline: Instant) -> Result<(), Error> {
        loop {
            if server.printed("ready to accept connections") {
                self.server = Some(server);
                return Ok(());
            }
            let exited = server.child.try_wait().ok().flatten();
            if exited.is_some() || Instant::now() > deadline {
                let why = match exited {
                    Some(status) => format!("exited ({status})"),
                    None => format!("did not accept connections within {PATIENCE:?}"),
                };
                let lines = server.lines();
                server.stop(libc::SIGQUIT);
                return Err(Error(format!("the PostgreSQL server {why}; it said: {lines}")));
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for TempPostgres {
    fn drop(&mut self) {
        if let Some(server) = self.server.take() {
            // An immediate shutdown: quick, and it frees shared memory.
            server.stop(libc::SIGQUIT);
        }
    }
}

impl Server {
    fn printed(&self, text: &str) -> bool {
        self.output.lock().unwrap_or_else(|e| e.into_inner()).iter().any(|line| line.contains(text))
    }

    fn lines(&self) -> String {
        self.output.lock().unwrap_or_else(|e| e.into_inner()).join("\n")
    }

    /// Signals the postmaster and its children (each backend runs in a
    /// session of its own, out of reach of a signal to the group).
    fn signal_tree(&self, signal: libc::c_int) {
        let postmaster = self.child.id();
        let mut pids = vec![postmaster];
        if let Ok(procs) = std::fs::read_dir("/proc") {
            for entry in procs.flatten() {
                let Some(pid) = entry.file_name().to_str().and_then(|n| n.parse::<u32>().ok()) else {
                    continue;
                };
                let stat = std::fs::read_to_string(entry.path().join("stat")).unwrap_or_default();
                // "pid (comm) state ppid ...": the command may hold spaces.
                let ppid = stat.rsplit_once(')').and_then(|(_, rest)| rest.split_whitespace().nth(1));
                if ppid.and_then(|p| p.parse::<u32>().ok()) == Some(postmaster) {
                    pids.push(pid);
                }
            }
        }
        for pid in pids {
            if let Ok(pid) = libc::pid_t::try_from(pid) {
                // SAFETY: `kill` has no memory-safety preconditions.
                unsafe { libc::kill(pid, signal) };
            }
        }
    }

    fn signal_group(&self, signal: libc::c_int) {
        if let Ok(pid) = libc::pid_t::try_from(self.child.id()) {
            // SAFETY: `kill` has no memory-safety preconditions; the group
            // is the server's own (see `process_group(0)`).
            unsafe { libc::kill(-pid, signal) };
        }
    }

    /// Sends the postmaster `signal` (after waking it, were it paused) and
    /// waits for it to exit; past the patience, kills its whole group.
    fn stop(mut self, signal: libc::c_int) {
        self.signal_tree(libc::SIGCONT);
        if let Ok(pid) = libc::pid_t::try_from(self.child.id()) {
            // SAFETY: as above.
            unsafe { libc::kill(pid, signal) };
        }
        let deadline = Instant::now() + PATIENCE;
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.child.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        self.signal_group(libc::SIGKILL);
        let _ = self.child.wait();
    }
}

/// Runs `command` as `user` (uid, gid), if given.
fn as_user(command: &mut Command, user: Option<(u32, u32)>) {
    if let Some((uid, gid)) = user {
        command.uid(uid).gid(gid).env("USER", "postgres").env("HOME", "/");
    }
}

/// The user the server must run as: `postgres` when this process is root
/// (PostgreSQL refuses to run as root), else this process's own.
fn server_user() -> Result<Option<(u32, u32)>, Error> {
    let me = std::fs::metadata("/proc/self").map(|m| m.uid()).unwrap_or(u32::MAX);
    if me != 0 {
        return Ok(None);
    }
    let passwd = std::fs::read_to_string("/etc/passwd")
        .map_err(|e| Error(format!("cannot read /etc/passwd to find the `postgres` user: {e}")))?;
    passwd
        .lines()
        .find_map(|line| {
            let fields: Vec<&str> = line.split(':').collect();
            match fields.as_slice() {
                ["postgres", _, uid, gid, ..] => Some((uid.parse().ok()?, gid.parse().ok()?)),
                _ => None,
            }
        })
        .map(Some)
        .ok_or_else(|| {
            Error(
                "this process is root, and PostgreSQL refuses to run as root, but there is no \
                 `postgres` user to run it as: install Debian's `postgresql` package (it creates \
                 the user) or run as another user"
                    .into(),
            )
        })
}

/// The directory holding `initdb` and `postgres`.
fn bindir() -> Result<PathBuf, Error> {
    let has = |dir: &Path| dir.join("initdb").is_file() && dir.join("postgres").is_file();
    let mut candidates: Vec<PathBuf> = Vec::new();
    if let Some(dir) = std::env::var_os("STEAD_PG_BINDIR") {
        candidates.push(dir.into());
    }
    candidates.push("/usr/local/bin".into());
    if let Some(path) = std::env::var_os("PATH") {
        candidates.extend(std::env::split_paths(&path));
    }
    if let Ok(out) = Command::new("pg_config").arg("--bindir").stderr(Stdio::null()).output()
        && out.status.success()
    {
        candidates.push(String::from_utf8_lossy(&out.stdout).trim().into());
    }
    let mut debian: Vec<PathBuf> = std::fs::read_dir("/usr/lib/postgresql")
        .map(|dirs| dirs.filter_map(|d| Some(d.ok()?.path().join("bin"))).collect())
        .unwrap_or_default();
    // The newest version first (directories are named by major version).
    debian.sort_by_key(|dir| {
        std::cmp::Reverse(
            dir.parent()
                .and_then(|v| v.file_name())
                .and_then(|v| v.to_str()?.parse::<u32>().ok())
                .unwrap_or(0),
        )
    });
    candidates.extend(debian);
    candidates.into_iter().find(|dir| has(dir)).ok_or_else(|| {
        Error(
            "no PostgreSQL server binaries (`initdb` and `postgres`) were found in $STEAD_PG_BINDIR, \
             /usr/local/bin, the PATH, `pg_config --bindir` or /usr/lib/postgresql/*/bin: install \
             them (`apt-get install postgresql` on Debian) or set STEAD_PG_BINDIR"
                .into(),
        )
    })
}

/// A TCP port on 127.0.0.1 that the OS just handed out.
fn free_port() -> Result<u16, Error> {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|listener| listener.local_addr())
        .map(|addr| addr.port())
        .map_err(|e| Error(format!("cannot find a free port on 127.0.0.1: {e}")))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_server_starts_accepts_connections_and_is_gone_after_drop() {
        let mut pg = TempPostgres::start().unwrap();
        let port = pg.port();
        assert!(std::net::TcpStream::connect(("127.0.0.1", port)).is_ok());
        pg.stop();
        assert!(std::net::TcpStream::connect(("127.0.0.1", port)).is_err());
        pg.start_again().unwrap();
        assert!(std::net::TcpStream::connect(("127.0.0.1", port)).is_ok());
        let dir = pg.data_dir();
        drop(pg);
        assert!(std::net::TcpStream::connect(("127.0.0.1", port)).is_err());
        assert!(!dir.exists());
    }
}
