//! Storage, the caching pattern and alarms.
//!
//! A `Profile` reads its state from storage once, in the constructor, keeps
//! it in memory, and writes every change through. Because every turn's
//! writes are committed before its reply is released (the output gate), the
//! in-memory copy is never ahead of what a restart would see. An alarm
//! expires the profile's session.
//!
//! Run with `cargo run --example storage`.

use std::time::{Duration, SystemTime};

use serde::{Deserialize, Serialize};
use stead::{AlarmInfo, Context, Runtime, durable_object};

/// What a profile keeps, in memory and in storage.
#[derive(Debug, Default, Clone, Serialize, Deserialize)]
pub struct State {
    /// The display name.
    pub name: String,
    /// How many times the profile was visited.
    pub visits: u64,
    /// Whether a session is open.
    pub signed_in: bool,
}

/// One user's profile.
pub struct Profile {
    ctx: Context,
    state: State,
}

#[durable_object]
impl Profile {
    /// Reads the state once; from now on memory is the cache.
    pub async fn new(ctx: Context) -> stead::Result<Self> {
        let state = ctx.storage().get::<State>("state")?.unwrap_or_default();
        println!("  constructing {} from storage: {state:?}", ctx.id());
        Ok(Profile { ctx, state })
    }

    /// Records a visit and opens a session that expires after `session_ms`.
    pub fn visit(&mut self, name: String, session_ms: u64) -> stead::Result<State> {
        self.state.name = name;
        self.state.visits += 1;
        self.state.signed_in = true;
        let storage = self.ctx.storage();
        storage.put("state", &self.state)?;
        storage.set_alarm(SystemTime::now() + Duration::from_millis(session_ms))?;
        Ok(self.state.clone())
    }

    /// The cached state: no storage access at all.
    pub fn state(&self) -> State {
        self.state.clone()
    }

    /// Runs when the session expires.
    #[alarm]
    async fn alarm(&mut self, _info: AlarmInfo) -> stead::Result<()> {
        println!("  alarm: the session of {} expired", self.state.name);
        self.state.signed_in = false;
        self.ctx.storage().put("state", &self.state)
    }
}

#[tokio::main]
async fn main() -> stead::Result<()> {
    let data_dir = std::env::temp_dir().join(format!("stead-storage-example-{}", std::process::id()));
    let build = || Runtime::builder().data_dir(&data_dir).host::<Profile>().build();

    let rt = build().await?;
    let profiles = rt.namespace::<Profile>();
    let id = profiles.id_from_name("ada");
    let ada = profiles.stub(&id);
    println!("visit -> {:?}", ada.visit("Ada".into(), 200).await??);
    println!("visit -> {:?}", ada.visit("Ada".into(), 200).await??);
    rt.shutdown().await?;
    println!("runtime shut down; starting a new one on {}", data_dir.display());

    let rt = build().await?;
    let ada = rt.namespace::<Profile>().stub(&id);
    println!("state after restart -> {:?}", ada.state().await?);
    tokio::time::sleep(Duration::from_millis(400)).await;
    println!("state after the alarm -> {:?}", ada.state().await?);
    rt.shutdown().await?;
    std::fs::remove_dir_all(&data_dir).ok();
    Ok(())
}
