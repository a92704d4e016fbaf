//! Child processes for the multi-process tests: each child is the test
//! binary itself, running one ignored test selected by environment
//! variables; it is killed when its guard is dropped. Included by path
//! (`#[path = "common/process.rs"] mod process;`) by the files that spawn.

#![allow(dead_code)] // each test file uses its own part

use std::io::{BufRead, BufReader};
use std::net::{SocketAddr, UdpSocket};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// Loopback addresses with ports the OS just handed out.
pub(crate) fn free_addrs(n: usize) -> Vec<SocketAddr> {
    let sockets: Vec<_> = (0..n).map(|_| UdpSocket::bind("127.0.0.1:0").unwrap()).collect();
    sockets.iter().map(|s| s.local_addr().unwrap()).collect()
}

/// A child process, killed on drop, whose stdout lines are collected.
pub(crate) struct ChildGuard {
    pub(crate) child: Child,
    lines: Arc<Mutex<Vec<String>>>,
}

impl ChildGuard {
    pub(crate) fn spawn(test: &str, env: &[(&str, String)]) -> ChildGuard {
        let mut command = Command::new(std::env::current_exe().unwrap());
        command.args(["--exact", test, "--ignored", "--nocapture", "--test-threads=1"]);
        for (key, value) in env {
            command.env(key, value);
        }
        let mut child = command.stdout(Stdio::piped()).stderr(Stdio::null()).spawn().unwrap();
        let stdout = child.stdout.take().unwrap();
        let lines = Arc::new(Mutex::new(Vec::new()));
        let sink = lines.clone();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                sink.lock().unwrap().push(line);
            }
        });
        ChildGuard { child, lines }
    }

    /// Waits for a line starting with `prefix`, returning its rest.
    pub(crate) fn wait_for(&self, prefix: &str) -> String {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            // The harness prints "test node_process ... " without a newline,
            // so the first line of the child's own output may follow it.
            if let Some(rest) =
                self.lines.lock().unwrap().iter().find_map(|l| l.split_once(prefix).map(|(_, r)| r))
            {
                return rest.trim().to_string();
            }
            assert!(
                Instant::now() < deadline,
                "the child never printed {prefix:?}; it printed {:?}",
                self.lines.lock().unwrap()
            );
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    /// The child's peak resident memory, in bytes (Linux).
    pub(crate) fn peak_memory(&self) -> u64 {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.child.id())).unwrap();
        let line = status.lines().find(|l| l.starts_with("VmHWM:")).unwrap();
        let kib: u64 = line.split_whitespace().nth(1).unwrap().parse().unwrap();
        kib * 1024
    }

    /// Every line the child printed so far.
    pub(crate) fn lines(&self) -> Vec<String> {
        self.lines.lock().unwrap().clone()
    }

    pub(crate) fn count(&self, line: &str) -> usize {
        self.lines.lock().unwrap().iter().filter(|l| l.ends_with(line)).count()
    }
}

impl Drop for ChildGuard {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
