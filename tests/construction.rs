//! When objects are constructed: lazily, once per activation, retried after
//! a failure.

#![allow(missing_docs)] // test objects are exercised, not documented

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::Duration;

use stead::{Context, Error, ObjectId, Runtime, durable_object};

/// How many times each object's constructor ran.
static CONSTRUCTED: Mutex<Option<HashMap<ObjectId, usize>>> = Mutex::new(None);

fn constructions(id: ObjectId) -> usize {
    CONSTRUCTED.lock().unwrap().as_ref().and_then(|m| m.get(&id).copied()).unwrap_or(0)
}

fn count_construction(id: ObjectId) -> usize {
    let mut guard = CONSTRUCTED.lock().unwrap();
    let n = guard.get_or_insert_with(HashMap::new).entry(id).or_insert(0);
    *n += 1;
    *n
}

pub struct Tracked {
    hits: u64,
}

#[durable_object]
impl Tracked {
    pub async fn new(ctx: Context) -> Self {
        count_construction(ctx.id());
        Tracked { hits: 0 }
    }

    pub async fn hit(&mut self) -> u64 {
        self.hits += 1;
        self.hits
    }
}

/// Fails its first construction with an error, panics in its second, and
/// succeeds from the third on.
pub struct Flaky;

#[durable_object]
impl Flaky {
    pub async fn new(ctx: Context) -> Result<Self, String> {
        match count_construction(ctx.id()) {
            1 => Err("the database is not ready".to_string()),
            2 => panic!("constructor exploded"),
            _ => Ok(Flaky),
        }
    }

    pub fn ping(&self) -> String {
        "pong".to_string()
    }
}

async fn runtime() -> Runtime {
    Runtime::builder().in_memory().host::<Tracked>().host::<Flaky>().build().await.unwrap()
}

#[tokio::test]
async fn making_a_stub_never_constructs_the_object() {
    let rt = runtime().await;
    let ns = rt.namespace::<Tracked>();
    let id = ns.unique_id();
    let stubs: Vec<_> = (0..100).map(|_| ns.stub(&id)).collect();
    let cloned = stubs[0].clone();
    tokio::time::sleep(Duration::from_millis(20)).await;
    assert_eq!(constructions(id), 0);
    assert_eq!(rt.active_objects(), 0);
    drop((stubs, cloned));
    assert_eq!(constructions(id), 0);
}

#[tokio::test]
async fn the_first_call_constructs_and_the_constructor_runs_once_for_many_calls() {
    let rt = runtime().await;
    let ns = rt.namespace::<Tracked>();
    let id = ns.id_from_name("many-calls");
    let stub = ns.stub(&id);
    assert_eq!(stub.hit().await.unwrap(), 1);
    assert_eq!(constructions(id), 1);
    for expected in 2..=500 {
        assert_eq!(ns.stub(&id).hit().await.unwrap(), expected);
    }
    assert_eq!(constructions(id), 1);
}

#[tokio::test]
async fn concurrent_first_calls_construct_exactly_once() {
    let rt = runtime().await;
    let ns = rt.namespace::<Tracked>();
    let id = ns.unique_id();
    let calls: Vec<_> = (0..64)
        .map(|_| {
            let stub = ns.stub(&id);
            tokio::spawn(async move { stub.hit().await })
        })
        .collect();
    for call in calls {
        call.await.unwrap().unwrap();
    }
    assert_eq!(constructions(id), 1);
}

#[tokio::test]
async fn a_failing_or_panicking_constructor_fails_that_call_and_the_next_call_retries() {
    let rt = runtime().await;
    let ns = rt.namespace::<Flaky>();
    let id = ns.unique_id();
    let stub = ns.stub(&id);

    let Err(Error::ConstructorFailed(message)) = stub.ping().await else {
        panic!("expected ConstructorFailed")
    };
    assert!(message.contains("the database is not ready"), "{message}");

    let Err(Error::Panicked(message)) = stub.ping().await else { panic!("expected Panicked") };
    assert!(message.contains("constructor exploded"), "{message}");

    assert_eq!(stub.ping().await.unwrap(), "pong");
    assert_eq!(stub.ping().await.unwrap(), "pong");
    assert_eq!(constructions(id), 3);
}

#[tokio::test]
async fn an_idle_object_is_evicted_and_the_next_call_constructs_it_again() {
    let rt = Runtime::builder()
        .in_memory()
        .idle_timeout(Duration::from_millis(50))
        .host::<Tracked>()
        .build()
        .await
        .unwrap();
    let ns = rt.namespace::<Tracked>();
    let id = ns.unique_id();
    assert_eq!(ns.stub(&id).hit().await.unwrap(), 1);
    assert_eq!(rt.active_objects(), 1);
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    while rt.active_objects() > 0 {
        assert!(tokio::time::Instant::now() < deadline, "the idle object was never evicted");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    // In-memory state is gone (storage would not be); the constructor runs again.
    assert_eq!(ns.stub(&id).hit().await.unwrap(), 1);
    assert_eq!(constructions(id), 2);
}
