use stead::{Context, durable_object};

pub struct Account {
    _ctx: Context,
}

#[derive(Debug)]
pub struct SetupError(String);

impl std::fmt::Display for SetupError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "setup failed: {}", self.0)
    }
}

#[durable_object]
impl Account {
    pub async fn new(ctx: Context) -> Result<Self, SetupError> {
        if ctx.type_name().is_empty() {
            return Err(SetupError("no type".into()));
        }
        Ok(Account { _ctx: ctx })
    }

    pub async fn ping(&self) -> bool {
        true
    }
}

fn main() {}
