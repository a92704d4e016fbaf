// A remote method under a `cfg` that fails vanishes everywhere (stub method,
// method table, dispatch arms), even though its types do not exist; the
// methods after it still answer to the ids their stub methods send.
#![deny(warnings)]

use stead::{Context, DurableObject, Runtime, durable_object};

pub struct Gated;

#[durable_object]
impl Gated {
    pub async fn new(_ctx: Context) -> Self {
        Gated
    }

    pub fn first(&self) -> String {
        "first".into()
    }

    #[cfg(any())]
    pub async fn gone(&self, value: DoesNotExist) -> AlsoMissing {
        value.into()
    }

    pub async fn second(&self) -> String {
        "second".into()
    }

    #[cfg(all())]
    pub fn third(&self) -> String {
        "third".into()
    }

    #[cfg(any())]
    pub fn gone_sync(&mut self) -> DoesNotExist {
        DoesNotExist
    }

    #[cfg(not(any()))]
    #[cfg(all())]
    pub async fn fourth(&self) -> String {
        "fourth".into()
    }

    #[cfg(any())]
    #[alarm]
    async fn alarm(&mut self, info: stead::AlarmInfo) {
        let _: DoesNotExist = info.into();
    }
}

pub struct Ticking;

#[durable_object]
impl Ticking {
    pub async fn new(_ctx: Context) -> Self {
        Ticking
    }

    #[cfg(all())]
    #[alarm]
    async fn alarm(&mut self, info: stead::AlarmInfo) {
        let _ = info;
    }
}

#[tokio::main]
async fn main() -> stead::Result<()> {
    let names: Vec<&str> = Gated::METHODS.iter().map(|method| method.name).collect();
    assert_eq!(names, ["first", "second", "third", "fourth"]);
    assert!(!Gated::HAS_ALARM);
    assert!(Ticking::HAS_ALARM);

    let rt = Runtime::builder().in_memory().host::<Gated>().build().await?;
    let gated = rt.namespace::<Gated>();
    let stub = gated.stub(&gated.unique_id());
    assert_eq!(stub.first().await?, "first");
    assert_eq!(stub.second().await?, "second");
    assert_eq!(stub.third().await?, "third");
    assert_eq!(stub.fourth().await?, "fourth");
    rt.shutdown().await?;
    Ok(())
}
