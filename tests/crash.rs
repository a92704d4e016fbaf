//! Crash safety: a real `kill -9` of a process in the middle of a stream of
//! acknowledged writes loses no acknowledged write, under both durability
//! modes.
//!
//! The test binary runs itself as the child (the ignored test
//! `child_writes_until_killed`, selected with an environment variable), so
//! the writer is a separate process with its own runtime and files.

#![allow(missing_docs)] // test objects are exercised, not documented

use std::io::{BufRead, BufReader, Write};
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use stead::{Context, Durability, ListOptions, Runtime, durable_object};

const DIR_VAR: &str = "STEAD_CRASH_TEST_DIR";
const DURABILITY_VAR: &str = "STEAD_CRASH_TEST_DURABILITY";

pub struct Journal {
    ctx: Context,
}

#[durable_object]
impl Journal {
    pub async fn new(ctx: Context) -> Self {
        Journal { ctx }
    }

    pub fn append(&mut self, n: u64) -> stead::Result<()> {
        self.ctx.storage().put(&format!("entry:{n:010}"), &n)
    }

    pub fn entries(&self) -> stead::Result<Vec<u64>> {
        let pairs = self.ctx.storage().list::<u64>(ListOptions::default().prefix("entry:"))?;
        Ok(pairs.into_iter().map(|(_, n)| n).collect())
    }
}

async fn runtime(dir: &Path, durability: Durability) -> Runtime {
    Runtime::builder().data_dir(dir).durability(durability).host::<Journal>().build().await.unwrap()
}

/// The child: appends 0, 1, 2, ... and prints `ack N` after each reply.
#[tokio::test]
#[ignore = "run by the crash tests as a child process"]
async fn child_writes_until_killed() {
    let Ok(dir) = std::env::var(DIR_VAR) else { return };
    let durability = match std::env::var(DURABILITY_VAR).as_deref() {
        Ok("normal") => Durability::Normal,
        _ => Durability::Full,
    };
    let rt = runtime(Path::new(&dir), durability).await;
    let ns = rt.namespace::<Journal>();
    let journal = ns.stub(&ns.id_from_name("journal"));
    let mut out = std::io::stdout().lock();
    for n in 0.. {
        journal.append(n).await.unwrap().unwrap();
        writeln!(out, "ack {n}").unwrap();
        out.flush().unwrap();
    }
}

/// Starts the child, reads acknowledgements until `acks` have arrived, then
/// kills it with SIGKILL and returns the last acknowledged number.
fn write_then_kill(dir: &Path, durability: &str, acks: u64) -> u64 {
    let mut child = Command::new(std::env::current_exe().unwrap())
        .args(["--exact", "child_writes_until_killed", "--ignored", "--nocapture", "--test-threads=1"])
        .env(DIR_VAR, dir)
        .env(DURABILITY_VAR, durability)
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let stdout = child.stdout.take().unwrap();
    let deadline = Instant::now() + Duration::from_secs(60);
    let mut last = None;
    for line in BufReader::new(stdout).lines() {
        let line = line.unwrap();
        if let Some(n) = line.strip_prefix("ack ") {
            last = Some(n.parse::<u64>().unwrap());
            if last >= Some(acks) || Instant::now() > deadline {
                break;
            }
        }
    }
    // `Child::kill` is SIGKILL on Unix: no destructor, no flush, no shutdown.
    child.kill().unwrap();
    child.wait().unwrap();
    last.expect("the child acknowledged no write")
}

async fn no_acknowledged_write_is_lost(durability: Durability, name: &str) {
    let dir = tempfile::tempdir().unwrap();
    let last_ack = write_then_kill(dir.path(), name, 300);
    let rt = runtime(dir.path(), durability).await;
    let ns = rt.namespace::<Journal>();
    let entries = ns.stub(&ns.id_from_name("journal")).entries().await.unwrap().unwrap();
    // Every acknowledged write is there, in order; at most the one in flight more.
    assert!(entries.len() as u64 > last_ack, "{} entries, but {last_ack} was acknowledged", entries.len());
    assert_eq!(entries, (0..entries.len() as u64).collect::<Vec<_>>());
    rt.shutdown().await.unwrap();
}

#[tokio::test]
async fn kill_9_loses_no_acknowledged_write_with_full_durability() {
    no_acknowledged_write_is_lost(Durability::Full, "full").await;
}

#[tokio::test]
async fn kill_9_loses_no_acknowledged_write_with_normal_durability() {
    no_acknowledged_write_is_lost(Durability::Normal, "normal").await;
}
