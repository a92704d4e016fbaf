use stead::{Context, durable_object};

pub struct Counter;

#[durable_object(name = "my counter")]
impl Counter {
    pub async fn new(_ctx: Context) -> Self {
        Counter
    }

    pub async fn get(&self) -> u64 {
        0
    }
}

// The argument is wrong, not the type: its stub is still there.
async fn read(stub: CounterStub) -> stead::Result<u64> {
    stub.get().await
}

fn main() {
    let _ = read;
}
