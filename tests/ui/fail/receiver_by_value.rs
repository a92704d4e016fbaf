use stead::{Context, durable_object};

pub struct Counter;

#[durable_object]
impl Counter {
    pub async fn new(_ctx: Context) -> Self {
        Counter
    }

    pub async fn consume(self) -> u64 {
        0
    }
}

fn main() {}
