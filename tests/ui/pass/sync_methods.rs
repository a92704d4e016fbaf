use stead::{Context, durable_object};

pub struct Register {
    value: String,
}

#[durable_object]
impl Register {
    pub fn new(_ctx: Context) -> Self {
        Register { value: String::new() }
    }

    /// Replaces the value, returning the old one.
    pub fn swap(&mut self, value: String) -> String {
        std::mem::replace(&mut self.value, value)
    }

    pub fn read(&self) -> String {
        self.value.clone()
    }

    pub fn clear(&mut self) {
        self.value.clear();
    }
}

fn assert_stub<S: Clone + Send + Sync + std::fmt::Debug + 'static>() {}

fn main() {
    assert_stub::<RegisterStub>();
}
