//! Ids: minting, text form, and refusal of malformed and foreign ids.

#![allow(missing_docs)] // test objects are exercised, not documented

use std::collections::HashSet;

use common::Counter;
use stead::{Context, Error, Runtime, durable_object};

mod common;

pub struct Room;

#[durable_object]
impl Room {
    pub async fn new(_ctx: Context) -> Self {
        Room
    }
}

async fn runtime(secret: &str) -> Runtime {
    Runtime::builder().in_memory().secret(secret).host::<Counter>().host::<Room>().build().await.unwrap()
}

#[tokio::test]
async fn unique_ids_are_all_different() {
    let rt = runtime("a cluster secret of some length").await;
    let counters = rt.namespace::<Counter>();
    let ids: HashSet<_> = (0..10_000).map(|_| counters.unique_id()).collect();
    assert_eq!(ids.len(), 10_000);
}

#[tokio::test]
async fn a_name_gives_the_same_id_in_every_runtime_with_the_same_secret() {
    let a = runtime("a cluster secret of some length").await;
    let b = runtime("a cluster secret of some length").await;
    let other_cluster = runtime("another cluster's secret!!").await;
    let id = a.namespace::<Counter>().id_from_name("alice");
    assert_eq!(id, b.namespace::<Counter>().id_from_name("alice"));
    assert_ne!(id, a.namespace::<Counter>().id_from_name("bob"));
    assert_ne!(id, a.namespace::<Room>().id_from_name("alice"));
    assert_ne!(id, other_cluster.namespace::<Counter>().id_from_name("alice"));
}

#[tokio::test]
async fn display_is_64_lowercase_hex_digits_and_parses_back() {
    let rt = runtime("a cluster secret of some length").await;
    let counters = rt.namespace::<Counter>();
    for id in [counters.unique_id(), counters.id_from_name("alice")] {
        let text = id.to_string();
        assert_eq!(text.len(), 64);
        assert!(text.chars().all(|c| matches!(c, '0'..='9' | 'a'..='f')), "{text}");
        assert_eq!(counters.id_from_str(&text).unwrap(), id);
    }
}

#[tokio::test]
async fn malformed_ids_are_refused_each_with_its_own_message() {
    let rt = runtime("a cluster secret of some length").await;
    let counters = rt.namespace::<Counter>();
    let good = counters.unique_id().to_string();

    let Err(Error::InvalidId(too_short)) = counters.id_from_str(&good[..63]) else { panic!() };
    assert!(too_short.contains("64 hex digits") && too_short.contains("63 characters"), "{too_short}");

    let Err(Error::InvalidId(too_long)) = counters.id_from_str(&format!("{good}0")) else { panic!() };
    assert!(too_long.contains("65 characters"), "{too_long}");

    let not_hex = format!("{}z{}", &good[..10], &good[11..]);
    let Err(Error::InvalidId(not_hex)) = counters.id_from_str(&not_hex) else { panic!() };
    assert!(not_hex.contains("'z' at position 10"), "{not_hex}");

    let Err(Error::InvalidId(empty)) = counters.id_from_str("") else { panic!() };
    assert!(empty.contains("0 characters"), "{empty}");

    let unicode = "ü".repeat(64);
    assert!(matches!(counters.id_from_str(&unicode), Err(Error::InvalidId(_))));
}

#[tokio::test]
async fn ids_of_another_namespace_or_cluster_are_refused() {
    let rt = runtime("a cluster secret of some length").await;
    let other_cluster = runtime("another cluster's secret!!").await;
    let room_id = rt.namespace::<Room>().unique_id().to_string();
    let Err(Error::InvalidId(message)) = rt.namespace::<Counter>().id_from_str(&room_id) else {
        panic!("a Room id was accepted by the Counter namespace")
    };
    assert!(message.contains("not minted by the namespace of `Counter`"), "{message}");

    let foreign = other_cluster.namespace::<Counter>().id_from_name("alice").to_string();
    assert!(matches!(rt.namespace::<Counter>().id_from_str(&foreign), Err(Error::InvalidId(_))));

    // Flipping any single bit of a genuine id makes it foreign.
    let genuine = rt.namespace::<Counter>().unique_id().to_string();
    let mut chars: Vec<char> = genuine.chars().collect();
    chars[40] = if chars[40] == '0' { '1' } else { '0' };
    let tampered: String = chars.into_iter().collect();
    assert!(matches!(rt.namespace::<Counter>().id_from_str(&tampered), Err(Error::InvalidId(_))));
}

#[tokio::test]
async fn a_parsed_id_reaches_the_same_object() {
    let rt = runtime("a cluster secret of some length").await;
    let counters = rt.namespace::<Counter>();
    let id = counters.unique_id();
    assert_eq!(counters.stub(&id).increment(1).await.unwrap(), 1);
    let parsed = counters.id_from_str(&id.to_string()).unwrap();
    assert_eq!(counters.stub(&parsed).increment(1).await.unwrap(), 2);
}

#[tokio::test]
async fn a_secret_shorter_than_16_bytes_is_a_config_error() {
    let err = Runtime::builder().in_memory().secret("short").build().await.unwrap_err();
    assert!(matches!(err, Error::Config(_)), "{err}");
}
