use stead::durable_object;

pub struct Counter;

#[durable_object]
impl Counter {
    pub async fn new(start: u64) -> Self {
        let _ = start;
        Counter
    }
}

fn main() {}
