use stead::{Context, durable_object};

pub struct Greeter;

#[durable_object]
impl Greeter {
    pub async fn new(_ctx: Context) -> Self {
        Greeter
    }

    pub async fn greet(&self, name: impl Into<String>) -> String {
        name.into()
    }
}

fn main() {}
