use stead::{Context, durable_object};

pub struct Holder<T> {
    value: Option<T>,
}

#[durable_object]
impl<T: Send + 'static> Holder<T> {
    pub async fn new(_ctx: Context) -> Self {
        Holder { value: None }
    }
}

fn main() {}
