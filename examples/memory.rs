//! Memory per object: activates many small objects and prints the resident
//! memory each one costs while idle in memory.
//!
//! `cargo run --release --example memory [COUNT] [STORED]`. Two rounds:
//! COUNT objects (default 100,000) that never touch storage, and STORED
//! objects (default 2,000) that each wrote one key to their own SQLite
//! database, which is then closed (at most 64 stay open), as happens to
//! idle objects on a busy node. Creating a database costs a few
//! milliseconds (file creation and fsyncs), hence the smaller default.
//! Each round runs in a process of its own, so that neither measures memory
//! the other freed. A round that takes more than a second shows a progress
//! bar on stderr (when it is a terminal).

#[path = "support/progress.rs"]
mod progress;

use std::time::{Duration, Instant};

use progress::Progress;
use stead::{Context, Durability, Runtime, durable_object};

/// The smallest useful object: a counter.
pub struct Small {
    ctx: Context,
    hits: u64,
}

#[durable_object]
impl Small {
    /// Constructs the counter.
    pub async fn new(ctx: Context) -> Self {
        Small { ctx, hits: 0 }
    }

    /// Counts a hit in memory.
    pub fn hit(&mut self) -> u64 {
        self.hits += 1;
        self.hits
    }

    /// Counts a hit and writes it to storage.
    pub fn hit_and_store(&mut self) -> stead::Result<u64> {
        self.hits += 1;
        self.ctx.storage().put("hits", &self.hits)?;
        Ok(self.hits)
    }
}

/// Resident memory of this process, in bytes (Linux).
fn resident_bytes() -> u64 {
    let statm = std::fs::read_to_string("/proc/self/statm").unwrap_or_default();
    let pages: u64 = statm.split_whitespace().nth(1).and_then(|p| p.parse().ok()).unwrap_or(0);
    pages * 4096
}

async fn round(count: usize, store: bool) -> stead::Result<()> {
    let dir = std::env::temp_dir().join(format!("stead-memory-example-{}", std::process::id()));
    // Objects must stay in memory for the measurement: no eviction meanwhile.
    let builder = Runtime::builder()
        .host::<Small>()
        .max_open_databases(64)
        .durability(Durability::Normal)
        .idle_timeout(Duration::from_secs(3600));
    let rt = if store { builder.data_dir(&dir) } else { builder.in_memory() }.build().await?;
    let objects = rt.namespace::<Small>();
    // Made before the first measure, so that its own memory is not counted.
    let what = if store { "creating objects with a database" } else { "activating objects" };
    let progress = Progress::new(count as u64, what);
    let before = resident_bytes();
    let started = Instant::now();
    for i in 0..count {
        let stub = objects.stub(&objects.id_from_name(&i.to_string()));
        if store {
            stub.hit_and_store().await??;
        } else {
            stub.hit().await?;
        }
        progress.inc(1);
    }
    let elapsed = started.elapsed();
    let after = resident_bytes();
    drop(progress);
    let per_object = after.saturating_sub(before) as f64 / count as f64;
    println!(
        "{count} objects {}: {} in memory, {} databases open, {:.0} bytes resident per object \
         ({:.1} MiB in all), activated in {:.1} s",
        if store { "with a closed database each" } else { "without storage" },
        rt.active_objects(),
        rt.open_databases(),
        per_object,
        after.saturating_sub(before) as f64 / (1024.0 * 1024.0),
        elapsed.as_secs_f64(),
    );
    rt.shutdown().await?;
    std::fs::remove_dir_all(&dir).ok();
    Ok(())
}

#[tokio::main]
async fn main() -> stead::Result<()> {
    let args: Vec<String> = std::env::args().collect();
    if let [_, flag, kind, count] = args.as_slice()
        && flag == "--round"
    {
        let count = count.parse().unwrap_or(1);
        return round(count, kind == "stored").await;
    }
    let arg = |n: usize, default: usize| args.get(n).and_then(|a| a.parse().ok()).unwrap_or(default);
    let exe = std::env::current_exe().map_err(|e| stead::Error::Config(e.to_string()))?;
    for (kind, count) in [("in-memory", arg(1, 100_000)), ("stored", arg(2, 2_000))] {
        let status = std::process::Command::new(&exe)
            .args(["--round", kind, &count.to_string()])
            .status()
            .map_err(|e| stead::Error::Config(format!("could not run the {kind} round: {e}")))?;
        if !status.success() {
            return Err(stead::Error::Config(format!("the {kind} round failed: {status}")));
        }
    }
    Ok(())
}
