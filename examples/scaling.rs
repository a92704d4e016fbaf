//! Throughput as the number of distinct objects grows: 1, 10, 1,000 and
//! 100,000 objects, called from 64 concurrent tasks.
//!
//! `cargo run --release --example scaling`

use std::time::Instant;

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

#[tokio::main]
async fn main() -> stead::Result<()> {
    for objects in [1usize, 10, 1_000, 100_000] {
        let rt = Runtime::builder().in_memory().host::<Counter>().build().await?;
        let ns = rt.namespace::<Counter>();
        let stubs: Vec<CounterStub> =
            (0..objects).map(|i| ns.stub(&ns.id_from_name(&i.to_string()))).collect();
        // Activate every object first: this measures calls, not constructors.
        for stub in &stubs {
            stub.increment().await?;
        }
        let started = Instant::now();
        let tasks: Vec<tokio::task::JoinHandle<stead::Result<()>>> = (0..TASKS)
            .map(|task| {
                let stubs = stubs.clone();
                tokio::spawn(async move {
                    for call in (task..CALLS).step_by(TASKS) {
                        stubs[call % stubs.len()].increment().await?;
                    }
                    Ok::<(), stead::Error>(())
                })
            })
            .collect();
        for task in tasks {
            task.await.map_err(|e| stead::Error::Config(e.to_string()))??;
        }
        let rate = CALLS as f64 / started.elapsed().as_secs_f64();
        println!("{objects:>7} objects: {rate:>10.0} calls/s ({TASKS} tasks, {CALLS} calls)");
        rt.shutdown().await?;
    }
    Ok(())
}
