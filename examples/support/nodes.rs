//! The node processes of the cluster examples: this example's own binary,
//! run as `node NAME ...`, each killed when the set is dropped, also when
//! the example fails half-way, so that none is left running.
//!
//! Included by the examples with `#[path = "support/nodes.rs"] mod nodes;`.

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};

/// Node processes by name.
#[derive(Default)]
pub(crate) struct Nodes {
    running: Vec<(String, Child)>,
}

impl Nodes {
    /// Starts node `name`: this binary with `args` (after `node NAME`) and
    /// `env`, once it printed a line starting with `ready`, which is
    /// returned. A node of that name that ran before is replaced.
    pub(crate) fn start(
        &mut self,
        name: &str,
        args: &[&str],
        env: (&str, &str),
        ready: &str,
    ) -> std::io::Result<String> {
        let mut child = Command::new(std::env::current_exe()?)
            .args(["node", name])
            .args(args)
            .env(env.0, env.1)
            .stdout(Stdio::piped())
            .spawn()?;
        let mut line = String::new();
        if let Some(stdout) = child.stdout.take() {
            let mut lines = BufReader::new(stdout).lines();
            line = lines.by_ref().map_while(Result::ok).find(|l| l.starts_with(ready)).unwrap_or_default();
            // Keep draining so the child never blocks on a full pipe.
            std::thread::spawn(move || lines.for_each(drop));
        }
        self.kill(name)?;
        self.running.push((name.to_string(), child));
        Ok(line)
    }

    /// `kill -9` of node `name`, if it runs.
    pub(crate) fn kill(&mut self, name: &str) -> std::io::Result<()> {
        if let Some(at) = self.running.iter().position(|(running, _)| running == name) {
            let (_, mut child) = self.running.swap_remove(at);
            child.kill()?;
            child.wait()?;
        }
        Ok(())
    }
}

impl Drop for Nodes {
    fn drop(&mut self) {
        for (_, child) in &mut self.running {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}
