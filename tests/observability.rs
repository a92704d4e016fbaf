//! Observability: the spans and warnings a subscriber receives, and the
//! metrics the Prometheus endpoint serves over HTTP.
//!
//! The tests of this package build stead-runtime with its `prometheus`
//! feature (a dev-dependency turns it on), so `cargo test --workspace`
//! runs the endpoint's tests too.

#![allow(missing_docs)] // test objects are exercised, not documented

use std::collections::HashMap;
use std::net::{SocketAddr, UdpSocket};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use stead::{AlarmInfo, Context, Error, Runtime, durable_object};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tracing::field::{Field, Visit};
use tracing::span::{Attributes, Id, Record};
use tracing::{Event, Level, Subscriber};
use tracing_subscriber::layer::{Context as LayerContext, Layer, SubscriberExt};
use tracing_subscriber::registry::LookupSpan;

pub struct Ledger {
    ctx: Context,
    total: u64,
}

#[durable_object]
impl Ledger {
    pub async fn new(ctx: Context) -> Self {
        let total = ctx.storage().get("total").unwrap().unwrap_or(0);
        Ledger { ctx, total }
    }

    /// A plain `fn`: its turn runs without a future.
    pub fn add(&mut self, n: u64) -> stead::Result<u64> {
        self.total += n;
        self.ctx.storage().put("total", &self.total)?;
        Ok(self.total)
    }

    /// An `async fn` that waits: its turn moves to a task.
    pub async fn add_later(&mut self, n: u64) -> stead::Result<u64> {
        tokio::task::yield_now().await;
        self.add(n)
    }

    pub fn total(&self) -> u64 {
        self.total
    }

    pub fn fail(&self) {
        panic!("the ledger does not balance");
    }

    pub fn wake_now(&self) -> stead::Result<()> {
        self.ctx.storage().set_alarm(SystemTime::now())
    }

    #[alarm]
    async fn alarm(&mut self, _info: AlarmInfo) {
        self.total += 1000;
        self.ctx.storage().put("total", &self.total).unwrap();
    }
}

/// A span or event as the capturing layer saw it: its name, fields and
/// parent's name.
#[derive(Debug, Clone, Default)]
struct Seen {
    name: String,
    level: Option<Level>,
    fields: HashMap<String, String>,
    parent: Option<String>,
}

impl Visit for Seen {
    fn record_debug(&mut self, field: &Field, value: &dyn std::fmt::Debug) {
        self.fields.insert(field.name().to_string(), format!("{value:?}"));
    }

    fn record_str(&mut self, field: &Field, value: &str) {
        self.fields.insert(field.name().to_string(), value.to_string());
    }
}

/// Collects every closed span and every event.
#[derive(Clone, Default)]
struct Capture {
    open: Arc<Mutex<HashMap<u64, Seen>>>,
    closed: Arc<Mutex<Vec<Seen>>>,
    events: Arc<Mutex<Vec<Seen>>>,
}

impl<S: Subscriber + for<'a> LookupSpan<'a>> Layer<S> for Capture {
    fn on_new_span(&self, attrs: &Attributes<'_>, id: &Id, ctx: LayerContext<'_, S>) {
        let mut seen = Seen {
            name: attrs.metadata().name().to_string(),
            level: Some(*attrs.metadata().level()),
            ..Seen::default()
        };
        seen.parent = ctx.span_scope(id).and_then(|mut scope| {
            scope.next();
            scope.next().map(|parent| parent.name().to_string())
        });
        attrs.record(&mut seen);
        self.open.lock().unwrap().insert(id.into_u64(), seen);
    }

    fn on_record(&self, id: &Id, values: &Record<'_>, _ctx: LayerContext<'_, S>) {
        if let Some(seen) = self.open.lock().unwrap().get_mut(&id.into_u64()) {
            values.record(seen);
        }
    }

    fn on_event(&self, event: &Event<'_>, _ctx: LayerContext<'_, S>) {
        let mut seen = Seen {
            name: event.metadata().name().to_string(),
            level: Some(*event.metadata().level()),
            ..Seen::default()
        };
        event.record(&mut seen);
        self.events.lock().unwrap().push(seen);
    }

    fn on_close(&self, id: Id, _ctx: LayerContext<'_, S>) {
        if let Some(seen) = self.open.lock().unwrap().remove(&id.into_u64()) {
            self.closed.lock().unwrap().push(seen);
        }
    }
}

impl Capture {
    fn spans(&self, name: &str) -> Vec<Seen> {
        self.closed.lock().unwrap().iter().filter(|seen| seen.name == name).cloned().collect()
    }

    fn warnings(&self) -> Vec<Seen> {
        self.events.lock().unwrap().iter().filter(|seen| seen.level == Some(Level::WARN)).cloned().collect()
    }
}

fn field<'a>(seen: &'a Seen, name: &str) -> &'a str {
    seen.fields
        .get(name)
        .map_or_else(|| panic!("{} has no field `{name}`: {seen:?}", seen.name), String::as_str)
}

#[tokio::test]
async fn every_call_turn_and_commit_has_a_span_with_its_fields() {
    let capture = Capture::default();
    let _subscriber = tracing::subscriber::set_default(tracing_subscriber::registry().with(capture.clone()));
    let rt = Runtime::builder().in_memory().host::<Ledger>().build().await.unwrap();
    let ledgers = rt.namespace::<Ledger>();
    let id = ledgers.id_from_name("books");
    let stub: LedgerStub = ledgers.stub(&id);

    assert_eq!(stub.add(5).await.unwrap().unwrap(), 5);
    assert_eq!(stub.add_later(2).await.unwrap().unwrap(), 7);
    assert!(matches!(stub.fail().await, Err(Error::Panicked(_))));
    rt.shutdown().await.unwrap();

    let calls = capture.spans("stead.call");
    let methods: Vec<&str> = calls.iter().map(|call| field(call, "method")).collect();
    assert_eq!(methods, ["add", "add_later", "fail"]);
    for call in &calls {
        assert_eq!(call.level, Some(Level::DEBUG));
        assert_eq!(field(call, "type"), "Ledger");
        assert_eq!(field(call, "id"), id.to_string());
        assert_eq!(field(call, "node"), "local");
        assert!(field(call, "duration").ends_with('s'), "a duration with its unit: {call:?}");
    }
    let outcomes: Vec<&str> = calls.iter().map(|call| field(call, "outcome")).collect();
    assert_eq!(outcomes, ["ok", "ok", "panicked"]);

    let turns = capture.spans("stead.turn");
    let turns: Vec<(&str, &str)> =
        turns.iter().map(|turn| (field(turn, "method"), field(turn, "outcome"))).collect();
    assert_eq!(turns, [("add", "ok"), ("add_later", "ok"), ("fail", "panicked")]);
    // The first turn ran in the caller's task, inside its call's span.
    assert_eq!(capture.spans("stead.turn")[0].parent.as_deref(), Some("stead.call"));

    // Two turns wrote (the panicking one rolled back and committed nothing):
    // the key "total" (5 bytes) and its encoded value (1 byte).
    let commits = capture.spans("stead.commit");
    assert_eq!(commits.len(), 2, "{commits:?}");
    for commit in &commits {
        assert_eq!(commit.level, Some(Level::TRACE));
        assert_eq!(field(commit, "bytes"), "6");
        assert_eq!(commit.parent.as_deref(), Some("stead.turn"));
        assert!(field(commit, "duration").ends_with('s'));
    }
}

#[tokio::test]
async fn a_stub_that_breaks_is_reported_as_a_warning() {
    let capture = Capture::default();
    let _subscriber = tracing::subscriber::set_default(tracing_subscriber::registry().with(capture.clone()));
    let rt = Runtime::builder().in_memory().mailbox_capacity(1).host::<Ledger>().build().await.unwrap();
    let stub: LedgerStub = rt.namespace::<Ledger>().stub(&rt.namespace::<Ledger>().unique_id());
    // The first call waits, unpolled, in the mailbox; the second finds it full.
    let first = stub.add(1);
    let refused = stub.add(1).await;
    assert!(matches!(refused, Err(Error::Overloaded(_))), "{refused:?}");
    assert!(first.await.is_ok());

    let warnings = capture.warnings();
    assert_eq!(warnings.len(), 1, "{warnings:?}");
    assert!(field(&warnings[0], "message").starts_with("a stub broke"), "{warnings:?}");
    assert_eq!(field(&warnings[0], "type"), "Ledger");
    let refused_call =
        capture.spans("stead.call").into_iter().find(|call| field(call, "outcome") == "overloaded");
    assert!(refused_call.is_some(), "the refused call's span says so");
    rt.shutdown().await.unwrap();
}

/// Sends `request` to the endpoint and returns the status line and body.
async fn http(addr: SocketAddr, request: &[u8]) -> (String, String) {
    let mut stream = tokio::net::TcpStream::connect(addr).await.unwrap();
    stream.write_all(request).await.unwrap();
    let mut response = String::new();
    stream.read_to_string(&mut response).await.unwrap();
    let (head, body) = response.split_once("\r\n\r\n").unwrap_or((&response, ""));
    (head.lines().next().unwrap_or_default().to_string(), body.to_string())
}

async fn scrape(addr: SocketAddr) -> String {
    let (status, body) = http(addr, b"GET /metrics HTTP/1.1\r\nHost: localhost\r\n\r\n").await;
    assert_eq!(status, "HTTP/1.1 200 OK");
    body
}

/// The value of the sample `name` whose labels include all of `labels`.
fn sample(body: &str, name: &str, labels: &[(&str, &str)]) -> Option<f64> {
    body.lines().find_map(|line| {
        let (series, value) = line.rsplit_once(' ')?;
        let (metric, rest) = series.split_once('{').unwrap_or((series, ""));
        let wanted = labels.iter().all(|(key, value)| rest.contains(&format!("{key}=\"{value}\"")));
        (metric == name && wanted).then(|| value.parse().ok()).flatten()
    })
}

fn free_port() -> SocketAddr {
    UdpSocket::bind("127.0.0.1:0").unwrap().local_addr().unwrap()
}

/// Waits until `done` holds, checking every 10 ms; the test's own timeout
/// bounds it.
async fn until(mut done: impl FnMut() -> bool) {
    while !done() {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_prometheus_endpoint_serves_the_metrics_of_local_and_remote_calls_over_http() {
    let tls = tempfile::tempdir().unwrap();
    let ohio = free_port();
    let node = Runtime::builder()
        .node("ohio")
        .peer("ohio", ohio)
        .secret("the secret of the observability test")
        .tls(stead::tls::dev_identity(tls.path(), "ohio").unwrap())
        .in_memory()
        .idle_timeout(Duration::from_millis(200))
        .alarm_retry_delay(Duration::from_millis(10))
        .host::<Ledger>()
        .metrics_listen("127.0.0.1:0".parse().unwrap())
        .build()
        .await
        .unwrap();
    let addr = node.metrics_addr().expect("the endpoint listens");
    let client = Runtime::builder()
        .client()
        .peer("ohio", ohio)
        .secret("the secret of the observability test")
        .tls(stead::tls::dev_identity(tls.path(), "worker").unwrap())
        .in_memory()
        .record_metrics()
        .build()
        .await
        .unwrap();

    // Three calls from the client, one of which panics on the node.
    let remote: LedgerStub =
        client.namespace::<Ledger>().stub(&client.namespace::<Ledger>().id_from_name("far"));
    assert_eq!(remote.add(2).await.unwrap().unwrap(), 2);
    assert_eq!(remote.add(3).await.unwrap().unwrap(), 5);
    assert!(matches!(remote.fail().await, Err(Error::Panicked(_))));
    // One call on the node itself, which sets an alarm that fires at once.
    let near: LedgerStub = node.namespace::<Ledger>().stub(&node.namespace::<Ledger>().id_from_name("near"));
    near.wake_now().await.unwrap().unwrap();
    while near.total().await.unwrap() < 1000 {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    until(|| node.active_objects() == 0).await;

    let body = scrape(addr).await;
    let ledger = ("type", "Ledger");
    let value = |name: &str, labels: &[(&str, &str)]| sample(&body, name, labels);
    // The node's side: every call that reached its objects, by outcome.
    let add_ok = [ledger, ("method", "add"), ("outcome", "ok")];
    assert_eq!(value("stead_calls_total", &add_ok), Some(2.0), "{body}");
    let fail = [ledger, ("method", "fail"), ("outcome", "panicked")];
    assert_eq!(value("stead_calls_total", &fail), Some(1.0), "{body}");
    assert_eq!(value("stead_turn_seconds_count", &[ledger, ("method", "add")]), Some(2.0), "{body}");
    assert_eq!(value("stead_turn_seconds_count", &[ledger, ("method", "alarm")]), Some(1.0), "{body}");
    // Writing turns: two adds, `wake_now` (its alarm) and the alarm's turn.
    assert_eq!(value("stead_commit_seconds_count", &[ledger]), Some(4.0), "{body}");
    assert_eq!(value("stead_alarms_total", &[ledger, ("event", "fired")]), Some(1.0), "{body}");
    // Both objects came into memory, went idle, and were evicted (a slow
    // machine may evict one between two calls, and activate it again).
    assert_eq!(value("stead_activations", &[ledger]), Some(0.0), "{body}");
    let evicted = value("stead_evictions_total", &[ledger, ("reason", "idle")]).unwrap_or_default();
    assert!(evicted >= 2.0, "{body}");
    assert!(value("stead_mailbox_depth", &[ledger]).is_some(), "{body}");
    // The client's side: its calls to the node, by outcome, and their time.
    assert_eq!(value("stead_remote_calls_total", &add_ok), Some(2.0), "{body}");
    assert_eq!(value("stead_remote_calls_total", &fail), Some(1.0), "{body}");
    assert_eq!(value("stead_remote_call_seconds_count", &[ledger, ("method", "add")]), Some(2.0), "{body}");
    // The node's own call did not go through the network.
    let near_remote = [ledger, ("method", "wake_now")];
    assert_eq!(value("stead_remote_calls_total", &near_remote), None, "{body}");

    // Anything but `GET /metrics` gets an error status, and the endpoint
    // keeps serving.
    assert_eq!(http(addr, b"GET /other HTTP/1.1\r\n\r\n").await.0, "HTTP/1.1 404 Not Found");
    assert_eq!(http(addr, b"POST /metrics HTTP/1.1\r\n\r\n").await.0, "HTTP/1.1 405 Method Not Allowed");
    assert_eq!(http(addr, &[0xff; 20_000]).await.0, "HTTP/1.1 405 Method Not Allowed");
    assert!(scrape(addr).await.contains("stead_calls_total"));

    client.shutdown().await.unwrap();
    node.shutdown().await.unwrap();
}
