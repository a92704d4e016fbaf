#![deny(deprecated)]

use stead::{Context, durable_object};

pub struct Counter {
    value: u64,
}

#[durable_object]
impl Counter {
    pub async fn new(_ctx: Context) -> Self {
        Counter { value: 0 }
    }

    pub async fn get(&self) -> u64 {
        self.value
    }

    #[deprecated(note = "use `get`")]
    pub async fn read(&self) -> u64 {
        self.value
    }
}

async fn read(stub: CounterStub) -> stead::Result<u64> {
    stub.read().await
}

fn main() {
    let _ = read;
}
