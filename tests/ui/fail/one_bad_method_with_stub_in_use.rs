use stead::{Context, Namespace, durable_object};

pub struct Counter {
    value: u64,
}

#[durable_object]
impl Counter {
    pub async fn new(_ctx: Context) -> Self {
        Counter { value: 0 }
    }

    pub async fn get(&self) -> u64 {
        self.value
    }

    pub async fn add(&mut self, by: &u64) -> u64 {
        self.value += by;
        self.value
    }
}

// Only `add` is wrong: the stub, its sound methods and the namespace's
// `stub` still compile, so its error is the only one.
fn stub_of(counters: &Namespace<Counter>) -> CounterStub {
    counters.stub(&counters.id_from_name("alice"))
}

async fn read(counters: Namespace<Counter>) -> stead::Result<u64> {
    let stub: CounterStub = stub_of(&counters);
    let _ = stub.object_id();
    stub.get().await
}

fn main() {
    let _ = read;
}
