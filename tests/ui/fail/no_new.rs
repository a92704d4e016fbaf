use stead::durable_object;

pub struct Counter;

#[durable_object]
impl Counter {
    pub async fn get(&self) -> u64 {
        0
    }
}

fn main() {}
