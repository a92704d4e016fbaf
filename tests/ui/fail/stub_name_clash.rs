use stead::{Context, durable_object};

pub struct Sheep;

#[durable_object]
impl Sheep {
    pub async fn new(_ctx: Context) -> Self {
        Sheep
    }

    pub async fn clone(&self) -> u64 {
        2
    }
}

fn main() {}
