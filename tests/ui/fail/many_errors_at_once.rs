use stead::{Context, durable_object};

pub struct Messy;

#[durable_object]
impl Messy {
    pub async fn new(_ctx: Context) -> Self {
        Messy
    }

    pub async fn by_value(self) {}

    pub async fn borrowed(&self, key: &[u8]) -> usize {
        key.len()
    }

    pub fn no_self() -> u64 {
        1
    }
}

fn main() {}
