//! The quickstart: one counter object per user, called through typed stubs.
//!
//! Run with `cargo run --example quickstart`.

use stead::{Context, Runtime, durable_object};

/// A counter that lives once per name.
pub struct Counter {
    ctx: Context,
    value: u64,
}

#[durable_object]
impl Counter {
    /// Runs once per activation, in the turn of the first call that reaches the object.
    pub async fn new(ctx: Context) -> Self {
        println!("  (constructing counter {})", ctx.id());
        Counter { ctx, value: 0 }
    }

    /// Adds `by` and returns the new value.
    pub async fn increment(&mut self, by: u64) -> u64 {
        self.value += by;
        self.value
    }

    /// The current value.
    pub fn get(&self) -> u64 {
        self.value
    }

    /// Who this counter is.
    pub fn whoami(&self) -> String {
        self.ctx.id().to_string()
    }
}

#[tokio::main]
async fn main() -> stead::Result<()> {
    let rt = Runtime::builder().in_memory().host::<Counter>().build().await?;
    let counters = rt.namespace::<Counter>();

    let id = counters.id_from_name("alice");
    println!("id_from_name(\"alice\") = {id}");
    let alice: CounterStub = counters.stub(&id);
    println!("made a stub: nothing is constructed yet");

    println!("alice.increment(2) = {}", alice.increment(2).await?);
    println!("alice.increment(3) = {}", alice.increment(3).await?);

    // Calls are queued when issued, so these arrive in order even unawaited.
    let pending: Vec<_> = (0..5).map(|_| alice.increment(1)).collect();
    for call in pending {
        call.await?;
    }
    println!("after 5 pipelined increments: {}", alice.get().await?);

    let same = counters.id_from_str(&id.to_string())?;
    assert_eq!(same, id);
    println!("id_from_str round-trips; whoami = {}", counters.stub(&same).whoami().await?);

    match counters.id_from_str("not-an-id") {
        Err(err) => println!("a malformed id is refused: {err}"),
        Ok(_) => unreachable!(),
    }

    rt.shutdown().await?;
    println!("shut down cleanly");
    Ok(())
}
