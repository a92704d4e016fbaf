//! Throughput as the number of distinct objects grows: 1, 10, 1,000 and
//! 100,000 objects, called from 64 concurrent tasks.
//!
//! `cargo run --release --example scaling`
//!
//! Long rounds show a progress bar on stderr (when it is a terminal).

#[path = "support/progress.rs"]
mod progress;

use std::time::Instant;

use progress::Progress;
use stead::{Context, Runtime, durable_object};

/// A counter.
pub struct Counter {
    value: u64,
}

#[durable_object]
impl Counter {
    /// Constructs the counter.
    pub async fn new(_ctx: Context) -> Self {
        Counter { value: 0 }
    }

    /// Adds one.
    pub fn increment(&mut self) -> u64 {
        self.value += 1;
        self.value
    }
}

const TASKS: usize = 64;
const CALLS: usize = 200_000;
/// Calls a task makes between two updates of the progress bar (an update
/// reads the clock, which would show in the figures if done per call).
const BATCH: usize = 1024;

#[tokio::main]
async fn main() -> stead::Result<()> {
    for objects in [1usize, 10, 1_000, 100_000] {
        let rt = Runtime::builder().in_memory().host::<Counter>().build().await?;
        let ns = rt.namespace::<Counter>();
        let stubs: Vec<CounterStub> =
            (0..objects).map(|i| ns.stub(&ns.id_from_name(&i.to_string()))).collect();
        // Activate every object first: this measures calls, not constructors.
        let activating = Progress::new(objects as u64, &format!("activating {objects} objects"));
        for stub in &stubs {
            stub.increment().await?;
            activating.inc(1);
        }
        drop(activating);
        let calling = Progress::new(CALLS as u64, &format!("calling {objects} objects"));
        let started = Instant::now();
        let tasks: Vec<tokio::task::JoinHandle<stead::Result<()>>> = (0..TASKS)
            .map(|task| {
                let stubs = stubs.clone();
                let calling = calling.clone();
                tokio::spawn(async move {
                    for (n, call) in (task..CALLS).step_by(TASKS).enumerate() {
                        stubs[call % stubs.len()].increment().await?;
                        if (n + 1) % BATCH == 0 {
                            calling.inc(BATCH as u64);
                        }
                    }
                    Ok::<(), stead::Error>(())
                })
            })
            .collect();
        for task in tasks {
            task.await.map_err(|e| stead::Error::Config(e.to_string()))??;
        }
        let rate = CALLS as f64 / started.elapsed().as_secs_f64();
        drop(calling);
        println!("{objects:>7} objects: {rate:>10.0} calls/s ({TASKS} tasks, {CALLS} calls)");
        rt.shutdown().await?;
    }
    Ok(())
}
