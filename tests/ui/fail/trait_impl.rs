use stead::durable_object;

pub struct Counter;

pub trait Named {
    fn name(&self) -> String;
}

#[durable_object]
impl Named for Counter {
    fn name(&self) -> String {
        "counter".into()
    }
}

fn main() {}
