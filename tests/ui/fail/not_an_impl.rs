use stead::durable_object;

#[durable_object]
pub struct Counter {
    value: u64,
}

fn main() {}
