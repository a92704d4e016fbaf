use stead::{AlarmInfo, Context, durable_object};

pub struct Reminder;

#[durable_object]
impl Reminder {
    pub async fn new(_ctx: Context) -> Self {
        Reminder
    }

    #[alarm]
    async fn alarm(&mut self, _info: AlarmInfo) {}

    #[alarm]
    async fn another_alarm(&mut self, _info: AlarmInfo) {}
}

fn main() {}
