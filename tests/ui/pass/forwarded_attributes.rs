// `#[deprecated]` reaches the stub method and `#[allow(..)]` the generated
// code that mentions the method's types, and neither leaks a warning of its
// own: the generated code calling a deprecated method does not warn.
#![deny(warnings)]

use stead::{Context, Runtime, durable_object};

#[deprecated(note = "count in `u64`")]
pub type Amount = u64;

pub struct Tally {
    total: u64,
}

#[durable_object]
impl Tally {
    #[deprecated(note = "even the constructor")]
    pub async fn new(_ctx: Context) -> Self {
        Tally { total: 0 }
    }

    // Its stub method, table entry and dispatch arm all name `Amount`.
    #[allow(deprecated)]
    pub async fn add(&mut self, by: Amount) -> Amount {
        self.total += by;
        self.total
    }

    #[deprecated(note = "use `add`")]
    pub fn increment(&mut self) -> u64 {
        self.total += 1;
        self.total
    }

    #[deprecated(note = "all of it")]
    #[allow(deprecated)]
    #[alarm]
    async fn alarm(&mut self, info: stead::AlarmInfo) {
        let _: Amount = info.retry_count.into();
    }
}

#[tokio::main]
async fn main() -> stead::Result<()> {
    let rt = Runtime::builder().in_memory().host::<Tally>().build().await?;
    let tallies = rt.namespace::<Tally>();
    let stub = tallies.stub(&tallies.unique_id());
    assert_eq!(stub.add(2).await?, 2);
    #[allow(deprecated)]
    let third = stub.increment();
    assert_eq!(third.await?, 3);
    rt.shutdown().await?;
    Ok(())
}
