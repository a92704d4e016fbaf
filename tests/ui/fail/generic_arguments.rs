use stead::{Context, durable_object};

pub struct Holder<T> {
    value: Option<T>,
}

#[durable_object]
impl Holder<u64> {
    pub async fn new(_ctx: Context) -> Self {
        Holder { value: None }
    }
}

fn main() {}
