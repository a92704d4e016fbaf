//! Deadlines: no caller waits forever.

#![allow(missing_docs)] // test objects are exercised, not documented

use std::time::Duration;

use stead::{Context, Error, Runtime, durable_object};

pub struct Stuck;

#[durable_object]
impl Stuck {
    pub async fn new(_ctx: Context) -> Self {
        Stuck
    }

    /// Never returns.
    pub async fn hang(&self) {
        std::future::pending::<()>().await
    }

    pub fn ping(&self) -> u32 {
        1
    }
}

async fn runtime(call_timeout: Duration) -> Runtime {
    Runtime::builder().in_memory().call_timeout(call_timeout).host::<Stuck>().build().await.unwrap()
}

#[tokio::test]
async fn a_method_that_never_returns_gives_its_callers_timeout_and_other_objects_keep_answering() {
    let rt = runtime(Duration::from_millis(200)).await;
    let ns = rt.namespace::<Stuck>();
    let stuck = ns.stub(&ns.id_from_name("stuck"));
    let first = stuck.hang();
    // Queued behind the turn that never ends.
    let second = stuck.ping();
    let outcome =
        tokio::time::timeout(Duration::from_secs(30), first).await.expect("the caller waited forever");
    let err = outcome.unwrap_err();
    assert!(matches!(err, Error::Timeout(_)), "{err:?}");
    assert!(err.is_retryable());
    assert!(err.to_string().contains("call_timeout"), "{err}");
    let err = tokio::time::timeout(Duration::from_secs(30), second).await.unwrap().unwrap_err();
    assert!(matches!(err, Error::Timeout(_)), "{err:?}");
    let other = ns.stub(&ns.id_from_name("other"));
    assert_eq!(other.ping().await.unwrap(), 1);
}

#[tokio::test]
async fn a_call_answered_in_time_is_not_timed_out() {
    let rt = runtime(Duration::from_millis(50)).await;
    let ns = rt.namespace::<Stuck>();
    let stub = ns.stub(&ns.id_from_name("quick"));
    for _ in 0..100 {
        assert_eq!(stub.ping().await.unwrap(), 1);
    }
}

#[tokio::test]
async fn a_zero_call_timeout_is_a_config_error() {
    let err = Runtime::builder().in_memory().call_timeout(Duration::ZERO).build().await.unwrap_err();
    let Error::Config(message) = &err else { panic!("{err:?}") };
    assert!(message.contains("call_timeout"), "{message}");
}
