use stead::{Context, durable_object};

pub struct NotSerde;

pub struct Store;

#[durable_object]
impl Store {
    pub async fn new(_ctx: Context) -> Self {
        Store
    }

    pub async fn take(&mut self) -> NotSerde {
        NotSerde
    }
}

fn main() {}
