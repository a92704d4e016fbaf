use stead::{Context, durable_object};

pub struct Counter;

#[durable_object]
impl Counter {
    pub async fn new(_ctx: Context) -> Self {
        Counter
    }

    pub async fn echo<T: serde::Serialize>(&self, value: T) -> T {
        value
    }
}

fn main() {}
