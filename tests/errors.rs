//! Every failure gives its caller a clear error and leaves everything else
//! untouched: panics, full mailboxes, unhosted types, mismatched builds,
//! shutdown.

#![allow(missing_docs)] // test objects are exercised, not documented

use std::sync::Arc;
use std::time::Duration;

use stead::{Context, Error, Runtime, durable_object};
use tokio::sync::Semaphore;

pub struct Counter {
    value: u64,
}

#[durable_object]
impl Counter {
    pub async fn new(_ctx: Context) -> Self {
        Counter { value: 0 }
    }

    pub async fn increment(&mut self, by: u64) -> u64 {
        self.value += by;
        self.value
    }

    /// Changes state, then returns a value that cannot be encoded.
    pub async fn unencodable(&mut self) -> Unencodable {
        self.value += 1000;
        Unencodable
    }

    pub async fn explode(&mut self, message: String) -> u64 {
        self.value += 1000;
        panic!("{message}");
    }

    /// `unencodable` as a plain `fn` (run without a future).
    pub fn unencodable_now(&mut self) -> Unencodable {
        self.value += 1000;
        Unencodable
    }

    /// `explode` as a plain `fn` (run without a future).
    pub fn explode_now(&mut self, message: String) -> u64 {
        self.value += 1000;
        panic!("{message}");
    }
}

/// A value whose encoding always fails.
#[derive(Debug, serde::Deserialize)]
pub struct Unencodable;

impl serde::Serialize for Unencodable {
    fn serialize<S: serde::Serializer>(&self, _: S) -> Result<S::Ok, S::Error> {
        Err(serde::ser::Error::custom("this value refuses to be encoded"))
    }
}

/// Holds its turn until the test opens the gate.
pub struct Gate;

/// One gate per test, since tests run in parallel.
static GATES: [Semaphore; 2] = [Semaphore::const_new(0), Semaphore::const_new(0)];
const OVERLOAD_TEST: usize = 0;
const SHUTDOWN_TEST: usize = 1;

#[durable_object]
impl Gate {
    pub async fn new(_ctx: Context) -> Self {
        Gate
    }

    pub async fn pass(&mut self, gate: usize, n: u64) -> u64 {
        GATES[gate].acquire().await.unwrap().forget();
        n
    }
}

/// The same name as `Counter`, with another signature: what a caller built
/// from a different version of the type looks like.
pub struct CounterV2;

#[durable_object(name = "Counter")]
impl CounterV2 {
    pub async fn new(_ctx: Context) -> Self {
        CounterV2
    }

    pub async fn increment(&mut self, by: u32) -> u32 {
        by
    }
}

/// Not hosted by the test runtimes.
pub struct Stranger;

#[durable_object]
impl Stranger {
    pub async fn new(_ctx: Context) -> Self {
        Stranger
    }

    pub async fn hello(&self) {}
}

async fn runtime() -> Runtime {
    Runtime::builder().in_memory().host::<Counter>().build().await.unwrap()
}

#[tokio::test]
async fn a_panicking_method_gives_panicked_and_leaves_other_objects_untouched() {
    let rt = runtime().await;
    let ns = rt.namespace::<Counter>();
    let victim = ns.stub(&ns.id_from_name("victim"));
    let bystander = ns.stub(&ns.id_from_name("bystander"));
    assert_eq!(victim.increment(5).await.unwrap(), 5);
    assert_eq!(bystander.increment(7).await.unwrap(), 7);

    let Err(Error::Panicked(message)) = victim.explode("boom at 42".into()).await else {
        panic!("expected Panicked")
    };
    assert!(message.contains("boom at 42") && message.contains("Counter::explode"), "{message}");

    // The instance was dropped: the next call constructs a fresh one.
    assert_eq!(victim.increment(1).await.unwrap(), 1);
    // The other object kept its state.
    assert_eq!(bystander.increment(1).await.unwrap(), 8);
}

#[tokio::test]
async fn a_result_that_cannot_be_encoded_fails_the_call_and_resets_the_object() {
    let rt = runtime().await;
    let ns = rt.namespace::<Counter>();
    let stub = ns.stub(&ns.unique_id());
    assert_eq!(stub.increment(1).await.unwrap(), 1);
    let err = stub.unencodable().await.unwrap_err();
    let Error::Codec(message) = &err else { panic!("expected Codec, got {err:?}") };
    assert!(message.contains("refuses to be encoded"), "{message}");
    // The turn's effects are gone with the instance: a fresh one starts at 0.
    assert_eq!(stub.increment(1).await.unwrap(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn plain_fn_methods_fail_like_async_ones() {
    let rt = runtime().await;
    let ns = rt.namespace::<Counter>();
    let stub = ns.stub(&ns.unique_id());
    assert_eq!(stub.increment(1).await.unwrap(), 1);
    let Err(Error::Panicked(message)) = stub.explode_now("boom now".into()).await else {
        panic!("expected Panicked")
    };
    assert!(message.contains("boom now") && message.contains("Counter::explode_now"), "{message}");
    assert_eq!(stub.increment(1).await.unwrap(), 1, "a fresh instance after the panic");
    let err = stub.unencodable_now().await.unwrap_err();
    assert!(matches!(&err, Error::Codec(m) if m.contains("refuses to be encoded")), "{err:?}");
    assert_eq!(stub.increment(1).await.unwrap(), 1, "a fresh instance after the lost result");
}

#[tokio::test]
async fn calls_queued_behind_a_panic_still_run_in_order() {
    let rt = runtime().await;
    let ns = rt.namespace::<Counter>();
    let stub = ns.stub(&ns.unique_id());
    let first = stub.increment(1);
    let boom = stub.explode("mid-pipeline".into());
    let after = stub.increment(2);
    assert_eq!(first.await.unwrap(), 1);
    assert!(matches!(boom.await, Err(Error::Panicked(_))));
    assert_eq!(after.await.unwrap(), 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_mailbox_answers_overloaded_at_once_and_loses_nothing_it_accepted() {
    let rt = Runtime::builder().in_memory().mailbox_capacity(2).host::<Gate>().build().await.unwrap();
    let ns = rt.namespace::<Gate>();
    let stub = ns.stub(&ns.unique_id());

    // The first call occupies the object; wait until its turn has begun.
    let running = stub.pass(OVERLOAD_TEST, 0);
    tokio::time::sleep(Duration::from_millis(50)).await;
    let queued = [stub.pass(OVERLOAD_TEST, 1), stub.pass(OVERLOAD_TEST, 2)];

    let refused = tokio::time::timeout(Duration::from_secs(1), stub.pass(OVERLOAD_TEST, 3))
        .await
        .expect("a full mailbox must answer at once, not block");
    let Err(err @ Error::Overloaded(_)) = refused else { panic!("expected Overloaded, got {refused:?}") };
    assert!(err.is_retryable());
    assert!(err.to_string().contains("mailbox"), "{err}");

    GATES[OVERLOAD_TEST].add_permits(3);
    assert_eq!(running.await.unwrap(), 0);
    let [one, two] = queued;
    assert_eq!(one.await.unwrap(), 1);
    assert_eq!(two.await.unwrap(), 2);
}

#[tokio::test]
async fn a_type_that_is_not_hosted_gives_not_hosted() {
    let rt = runtime().await;
    let ns = rt.namespace::<Stranger>();
    let err = ns.stub(&ns.unique_id()).hello().await.unwrap_err();
    assert!(matches!(err, Error::NotHosted(_)), "{err}");
    assert!(err.to_string().contains("host::<Stranger>()"), "{err}");
    assert!(!err.is_retryable());
}

#[tokio::test]
async fn a_caller_from_another_build_gets_incompatible_not_garbage() {
    let rt = runtime().await;
    // `CounterV2` is named "Counter": its calls reach the hosted `Counter`.
    let ns = rt.namespace::<CounterV2>();
    let err = ns.stub(&ns.id_from_name("x")).increment(1).await.unwrap_err();
    let Error::Incompatible(message) = &err else { panic!("expected Incompatible, got {err:?}") };
    assert!(message.contains("Counter::increment"), "{message}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_drains_in_flight_turns_and_then_refuses_calls() {
    let rt = Runtime::builder().in_memory().host::<Gate>().build().await.unwrap();
    let ns = rt.namespace::<Gate>();
    let stub = ns.stub(&ns.unique_id());
    let in_flight = [stub.pass(SHUTDOWN_TEST, 10), stub.pass(SHUTDOWN_TEST, 11)];
    tokio::time::sleep(Duration::from_millis(20)).await;

    let shutdown = tokio::spawn({
        let rt = rt.clone();
        async move { rt.shutdown().await }
    });
    tokio::time::sleep(Duration::from_millis(20)).await;
    let refused = stub.pass(SHUTDOWN_TEST, 12).await.unwrap_err();
    assert!(matches!(refused, Error::Unavailable(_)), "{refused}");
    assert!(!shutdown.is_finished(), "shutdown must wait for in-flight turns");

    GATES[SHUTDOWN_TEST].add_permits(2);
    let [a, b] = in_flight;
    assert_eq!(a.await.unwrap(), 10);
    assert_eq!(b.await.unwrap(), 11);
    shutdown.await.unwrap().unwrap();
    assert_eq!(rt.active_objects(), 0);
    assert!(matches!(stub.pass(SHUTDOWN_TEST, 13).await, Err(Error::Unavailable(_))));
}

#[tokio::test]
async fn building_without_choosing_storage_is_a_config_error_that_says_what_to_do() {
    let err = Runtime::builder().host::<Counter>().build().await.unwrap_err();
    let Error::Config(message) = &err else { panic!("{err:?}") };
    assert!(message.contains(".in_memory()") && message.contains(".data_dir("), "{message}");
    let twice = Runtime::builder().in_memory().host::<Counter>().host::<CounterV2>().build().await;
    assert!(matches!(twice, Err(Error::Config(_))), "two types named Counter must be refused");
}

#[tokio::test]
async fn a_failed_call_does_not_poison_the_stub() {
    let rt = runtime().await;
    let ns = rt.namespace::<Counter>();
    let stub = Arc::new(ns.stub(&ns.unique_id()));
    assert!(stub.explode("once".into()).await.is_err());
    assert_eq!(stub.increment(3).await.unwrap(), 3);
}
