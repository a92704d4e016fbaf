use stead::{Context, durable_object};

pub struct Room {
    members: Vec<String>,
}

#[durable_object(name = "chat.Room")]
impl Room {
    pub async fn new(_ctx: Context) -> Room {
        Room { members: Vec::new() }
    }

    pub async fn join(&mut self, name: String) -> usize {
        self.add(name);
        self.count()
    }

    // Private and `pub(crate)` methods stay ordinary helpers, with any signature.
    fn add(&mut self, name: String) {
        self.members.push(name);
    }

    pub(crate) fn count(&self) -> usize {
        self.members.len()
    }

    fn first(&self) -> Option<&str> {
        self.members.first().map(String::as_str)
    }

    #[alarm]
    async fn alarm(&mut self, info: stead::AlarmInfo) {
        let _ = (info.retry_count, info.is_retry, self.first());
    }
}

fn main() {
    assert_eq!(<Room as stead::DurableObject>::NAME, "chat.Room");
}
