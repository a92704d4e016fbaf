//! The QUIC cluster, with real separate processes on loopback.
//!
//! Every process here is this test binary: the ignored test `node_process`
//! runs a node, `worker_process` a client-only worker, selected by
//! environment variables. Ports are chosen by the OS; every child is killed
//! when its guard is dropped.

#![allow(missing_docs)] // test objects are exercised, not documented

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use stead::{Context, Error, Runtime, durable_object};

#[path = "common/process.rs"]
mod process;
use process::{ChildGuard, free_addrs};

const ROLE: &str = "STEAD_CLUSTER_ROLE";
const NAME: &str = "STEAD_CLUSTER_NAME";
const PEERS: &str = "STEAD_CLUSTER_PEERS";
const TLS_DIR: &str = "STEAD_CLUSTER_TLS";
const DATA_DIR: &str = "STEAD_CLUSTER_DATA";
const OBJECT_ID: &str = "STEAD_CLUSTER_ID";
const MAILBOX: &str = "STEAD_CLUSTER_MAILBOX";
const SHUTDOWN_AFTER: &str = "STEAD_CLUSTER_SHUTDOWN_AFTER_MS";
const SECRET: &str = "the cluster test secret, shared by every process";

pub struct Counter {
    ctx: Context,
    value: u64,
}

#[durable_object]
impl Counter {
    pub async fn new(ctx: Context) -> stead::Result<Self> {
        // Nodes print their activations; the parent counts them.
        println!("constructed {}", ctx.id());
        let value = ctx.storage().get("value")?.unwrap_or(0);
        Ok(Counter { ctx, value })
    }

    pub fn increment(&mut self, by: u64) -> stead::Result<u64> {
        self.value += by;
        self.ctx.storage().put("value", &self.value)?;
        Ok(self.value)
    }

    pub fn get(&self) -> u64 {
        self.value
    }
}

pub struct Log {
    seen: Vec<u64>,
}

#[durable_object]
impl Log {
    pub async fn new(_ctx: Context) -> Self {
        Log { seen: Vec::new() }
    }

    pub fn record(&mut self, n: u64) -> usize {
        self.seen.push(n);
        self.seen.len()
    }

    pub fn seen(&self) -> Vec<u64> {
        self.seen.clone()
    }
}

pub struct Register {
    ctx: Context,
}

#[durable_object]
impl Register {
    pub async fn new(ctx: Context) -> Self {
        Register { ctx }
    }

    pub fn set(&mut self, value: String) -> stead::Result<()> {
        self.ctx.storage().put("value", &value)
    }

    pub fn get(&self) -> stead::Result<Option<String>> {
        self.ctx.storage().get("value")
    }
}

/// Makes the node it lives on call a `Counter` (so that the node is its
/// first caller).
pub struct Trigger {
    ctx: Context,
}

#[durable_object]
impl Trigger {
    pub async fn new(ctx: Context) -> Self {
        Trigger { ctx }
    }

    pub async fn increment(&mut self, counter: String, times: u64) -> stead::Result<u64> {
        let counters = self.ctx.namespace::<Counter>();
        let stub = counters.stub(&counters.id_from_name(&counter));
        let calls: Vec<_> = (0..times).map(|_| stub.increment(1)).collect();
        let mut last = 0;
        for call in calls {
            last = call.await??;
        }
        Ok(last)
    }
}

/// Named like `Counter` with another signature: a caller built from a
/// different version of the type.
pub struct CounterV2;

#[durable_object(name = "Counter")]
impl CounterV2 {
    pub async fn new(_ctx: Context) -> Self {
        CounterV2
    }

    pub fn increment(&mut self, by: u32) -> u32 {
        by
    }
}

/// Large arguments and results.
pub struct Blob {
    received: u64,
}

#[durable_object]
impl Blob {
    pub async fn new(_ctx: Context) -> Self {
        Blob { received: 0 }
    }

    /// Returns `len` bytes.
    pub fn make(&self, len: u64) -> Vec<u8> {
        vec![7; len as usize]
    }

    /// Takes `data`; returns how many bytes it has taken so far.
    pub fn take(&mut self, data: Vec<u8>) -> u64 {
        self.received += data.len() as u64;
        self.received
    }
}

/// A log whose turns wait a moment, so that its mailbox fills.
pub struct SlowLog {
    seen: Vec<u64>,
}

#[durable_object]
impl SlowLog {
    pub async fn new(_ctx: Context) -> Self {
        SlowLog { seen: Vec::new() }
    }

    pub async fn record(&mut self, n: u64) -> usize {
        tokio::task::yield_now().await;
        self.seen.push(n);
        self.seen.len()
    }

    pub fn seen(&self) -> Vec<u64> {
        self.seen.clone()
    }
}

/// Floods a `SlowLog` of its own node with pipelined calls (through the
/// cluster route, relayed to the local mailbox).
pub struct Flooder {
    ctx: Context,
}

#[durable_object]
impl Flooder {
    pub async fn new(ctx: Context) -> Self {
        Flooder { ctx }
    }

    /// Records 0..count in the log `log` (an id string); returns each
    /// call's outcome, in issue order, as `Ok(len)` or `Err(retryable)`.
    pub async fn flood(&mut self, log: String, count: u64) -> stead::Result<Vec<Result<usize, bool>>> {
        let logs = self.ctx.namespace::<SlowLog>();
        let stub = logs.stub(&logs.id_from_str(&log)?);
        let mut calls = Vec::new();
        for n in 0..count {
            calls.push(stub.record(n));
            if n % 8 == 0 {
                tokio::task::yield_now().await;
            }
        }
        let mut outcomes = Vec::new();
        for call in calls {
            outcomes.push(call.await.map_err(|err| err.is_retryable()));
        }
        Ok(outcomes)
    }
}

/// A method that never returns.
pub struct Stuck;

#[durable_object]
impl Stuck {
    pub async fn new(_ctx: Context) -> Self {
        Stuck
    }

    pub async fn hang(&self) {
        std::future::pending::<()>().await
    }

    /// Queued behind `hang`, never runs: its argument waits in the mailbox.
    pub fn take(&mut self, data: Vec<u8>) -> usize {
        data.len()
    }
}

/// A type only the node "seoul" hosts.
pub struct SeoulOnly;

#[durable_object]
impl SeoulOnly {
    pub async fn new(_ctx: Context) -> Self {
        SeoulOnly
    }

    pub fn hello(&self) -> String {
        "hello from seoul".into()
    }
}

/// A type no node hosts.
pub struct Stranger;

#[durable_object]
impl Stranger {
    pub async fn new(_ctx: Context) -> Self {
        Stranger
    }

    pub fn hello(&self) {}
}

// ---------------------------------------------------------------- children

fn parse_peers(text: &str) -> Vec<(String, SocketAddr)> {
    text.split(',')
        .map(|peer| {
            let (name, addr) = peer.split_once('=').unwrap();
            (name.to_string(), addr.parse().unwrap())
        })
        .collect()
}

/// Adds the peer list, and failure detection fit for one machine that may
/// be busy with dozens of test processes (the defaults are made for links
/// between regions: a 200 ms round trip).
fn with_peers(mut builder: stead::RuntimeBuilder, peers: &[(String, SocketAddr)]) -> stead::RuntimeBuilder {
    for (name, addr) in peers {
        builder = builder.peer(name.clone(), *addr);
    }
    builder
        .keep_alive(Duration::from_millis(250))
        .peer_timeout(Duration::from_secs(3))
        .connect_timeout(Duration::from_secs(3))
}

/// A node: hosts every test type until it is killed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "run by the cluster tests as a child process"]
async fn node_process() {
    if std::env::var(ROLE).as_deref() != Ok("node") {
        return;
    }
    let name = std::env::var(NAME).unwrap();
    let peers = parse_peers(&std::env::var(PEERS).unwrap());
    let identity = stead::tls::dev_identity(Path::new(&std::env::var(TLS_DIR).unwrap()), &name).unwrap();
    let builder = Runtime::builder()
        .node(name.clone())
        .tls(identity)
        .secret(SECRET)
        .data_dir(std::env::var(DATA_DIR).unwrap())
        .host::<Counter>()
        .host::<Log>()
        .host::<Register>()
        .host::<Trigger>()
        .host::<Blob>()
        .host::<Stuck>()
        .host::<SlowLog>()
        .host::<Flooder>();
    let builder = if name == "seoul" { builder.host::<SeoulOnly>() } else { builder };
    let builder = match std::env::var(MAILBOX) {
        Ok(capacity) => builder.mailbox_capacity(capacity.parse().unwrap()),
        Err(_) => builder,
    };
    let rt = with_peers(builder, &peers).build().await.unwrap();
    println!("ready");
    if let Ok(after) = std::env::var(SHUTDOWN_AFTER) {
        tokio::time::sleep(Duration::from_millis(after.parse().unwrap())).await;
        let started = Instant::now();
        let result = rt.shutdown().await;
        println!("shut down ok={} in {:?}", result.is_ok(), started.elapsed());
        // Stay a moment: an object constructed now would print it.
        tokio::time::sleep(Duration::from_secs(1)).await;
        println!("exiting");
        std::process::exit(0);
    }
    loop {
        tokio::time::sleep(Duration::from_secs(60)).await;
    }
}

/// A client-only worker: `write` mints an id and writes through it,
/// `read` parses an id and reads.
#[tokio::test]
#[ignore = "run by the cluster tests as a child process"]
async fn worker_process() {
    let Ok(role) = std::env::var(ROLE) else { return };
    if role != "write" && role != "read" {
        return;
    }
    let peers = parse_peers(&std::env::var(PEERS).unwrap());
    let rt = client(&peers, Path::new(&std::env::var(TLS_DIR).unwrap()), &role).await;
    let registers = rt.namespace::<Register>();
    if role == "write" {
        let id = registers.unique_id();
        registers.stub(&id).set("written by worker A".into()).await.unwrap().unwrap();
        println!("id {id}");
    } else {
        let id = registers.id_from_str(&std::env::var(OBJECT_ID).unwrap()).unwrap();
        let value = registers.stub(&id).get().await.unwrap().unwrap();
        println!("value {}", value.unwrap_or_default());
    }
}

async fn client(peers: &[(String, SocketAddr)], tls_dir: &Path, name: &str) -> Runtime {
    let identity = stead::tls::dev_identity(tls_dir, name).unwrap();
    let builder = Runtime::builder().client().tls(identity).secret(SECRET).in_memory();
    with_peers(builder, peers).build().await.unwrap()
}

// ---------------------------------------------------------------- harness

/// Two nodes, "ohio" (the coordinator) and "seoul", on loopback.
struct TestCluster {
    dir: tempfile::TempDir,
    peers: Vec<(String, SocketAddr)>,
    nodes: Vec<Option<ChildGuard>>,
    /// The nodes' mailbox capacity, when not the default.
    mailbox: Option<usize>,
}

impl TestCluster {
    fn start() -> TestCluster {
        TestCluster::start_with_mailbox(None)
    }

    fn start_with_mailbox(mailbox: Option<usize>) -> TestCluster {
        TestCluster::start_with_peers(2, mailbox)
    }

    /// A cluster of `n` nodes ("ohio", "seoul", "osaka") of which the first
    /// two are started.
    fn start_with_peers(n: usize, mailbox: Option<usize>) -> TestCluster {
        let dir = tempfile::tempdir().unwrap();
        let names = ["ohio", "seoul", "osaka"];
        let peers: Vec<_> = names[..n].iter().map(|name| name.to_string()).zip(free_addrs(n)).collect();
        let mut cluster = TestCluster { dir, peers, nodes: (0..n).map(|_| None).collect(), mailbox };
        for i in 0..2 {
            cluster.start_node(i);
        }
        cluster
    }

    fn tls_dir(&self) -> PathBuf {
        self.dir.path().join("tls")
    }

    fn peer_list(&self) -> String {
        self.peers.iter().map(|(name, addr)| format!("{name}={addr}")).collect::<Vec<_>>().join(",")
    }

    fn start_node(&mut self, i: usize) {
        self.start_node_with(i, &[]);
    }

    fn start_node_with(&mut self, i: usize, extra: &[(&str, String)]) {
        let name = self.peers[i].0.clone();
        let mut env = vec![
            (ROLE, "node".into()),
            (NAME, name.clone()),
            (PEERS, self.peer_list()),
            (TLS_DIR, self.tls_dir().display().to_string()),
            (DATA_DIR, self.dir.path().join(&name).display().to_string()),
        ];
        if let Some(capacity) = self.mailbox {
            env.push((MAILBOX, capacity.to_string()));
        }
        env.extend(extra.iter().cloned());
        let node = ChildGuard::spawn("node_process", &env);
        node.wait_for("ready");
        self.nodes[i] = Some(node);
    }

    fn kill_node(&mut self, i: usize) {
        self.nodes[i] = None;
    }

    fn node(&self, i: usize) -> &ChildGuard {
        self.nodes[i].as_ref().unwrap()
    }

    async fn client(&self, name: &str) -> Runtime {
        client(&self.peers, &self.tls_dir(), name).await
    }
}

// ---------------------------------------------------------------- tests

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_remote_call_round_trips_and_keeps_state_on_the_node() {
    let cluster = TestCluster::start();
    let rt = cluster.client("client").await;
    let counters = rt.namespace::<Counter>();
    let id = counters.id_from_name("remote");
    let counter = counters.stub_at(&id, "seoul");
    assert_eq!(counter.increment(2).await.unwrap().unwrap(), 2);
    assert_eq!(counter.increment(3).await.unwrap().unwrap(), 5);
    assert_eq!(counters.stub(&id).get().await.unwrap(), 5);
    assert_eq!(cluster.node(1).count(&format!("constructed {id}")), 1, "the object lives on seoul");
    assert_eq!(cluster.node(0).count(&format!("constructed {id}")), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_thousand_pipelined_calls_through_one_remote_stub_arrive_in_issue_order() {
    let cluster = TestCluster::start();
    let rt = cluster.client("client").await;
    let logs = rt.namespace::<Log>();
    let log = logs.stub_at(&logs.unique_id(), "seoul");
    let pending: Vec<_> = (0..1_000).map(|n| log.record(n)).collect();
    for (i, call) in pending.into_iter().enumerate().rev() {
        assert_eq!(call.await.unwrap(), i + 1);
    }
    assert_eq!(log.seen().await.unwrap(), (0..1_000).collect::<Vec<_>>());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tasks_sharing_a_remote_stub_all_get_their_replies_even_when_some_give_up() {
    let cluster = TestCluster::start();
    let rt = cluster.client("client").await;
    let counters = rt.namespace::<Counter>();
    let counter = counters.stub_at(&counters.unique_id(), "seoul");
    counter.increment(0).await.unwrap().unwrap();
    // Callers read the stream themselves; one that gives up while reading
    // must leave the reading to someone, or the others would wait forever.
    let tasks: Vec<_> = (0..8)
        .map(|task| {
            let counter = counter.clone();
            tokio::spawn(async move {
                for call in 0..100 {
                    let increment = counter.increment(1);
                    if (task + call) % 10 == 0 {
                        let _ = tokio::time::timeout(Duration::from_micros(50), increment).await;
                    } else {
                        increment.await.unwrap().unwrap();
                    }
                }
            })
        })
        .collect();
    let all = async {
        for task in tasks {
            task.await.unwrap();
        }
    };
    tokio::time::timeout(Duration::from_secs(30), all).await.expect("a caller waited forever");
    assert_eq!(counter.get().await.unwrap(), 800, "calls whose callers gave up ran too");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_call_too_large_to_send_fails_alone_and_the_stub_keeps_working() {
    let cluster = TestCluster::start();
    let rt = cluster.client("client").await;
    let registers = rt.namespace::<Register>();
    let register = registers.stub_at(&registers.unique_id(), "seoul");
    // Before the stream is open (queued), and after (written by the caller).
    for _ in 0..2 {
        let err = register.set("x".repeat(17 << 20)).await.unwrap_err();
        assert!(matches!(&err, Error::Codec(m) if m.contains("more than")), "{err:?}");
        register.set("small".into()).await.unwrap().unwrap();
        assert_eq!(register.get().await.unwrap().unwrap(), Some("small".into()));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn worker_b_reads_what_worker_a_wrote_through_an_id_string() {
    let cluster = TestCluster::start();
    let env = |role: &str| {
        vec![
            (ROLE, role.to_string()),
            (PEERS, cluster.peer_list()),
            (TLS_DIR, cluster.tls_dir().display().to_string()),
        ]
    };
    let writer = ChildGuard::spawn("worker_process", &env("write"));
    let id = writer.wait_for("id ");
    let mut reader_env = env("read");
    reader_env.push((OBJECT_ID, id));
    let reader = ChildGuard::spawn("worker_process", &reader_env);
    assert_eq!(reader.wait_for("value "), "written by worker A");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_nodes_racing_to_create_one_named_object_end_with_one_activation() {
    let cluster = TestCluster::start();
    let rt = cluster.client("client").await;
    let triggers = rt.namespace::<Trigger>();
    let at_ohio = triggers.stub_at(&triggers.id_from_name("t-ohio"), "ohio");
    let at_seoul = triggers.stub_at(&triggers.id_from_name("t-seoul"), "seoul");
    // Both nodes call the same named counter as its first callers, at once.
    let (a, b) =
        tokio::join!(at_ohio.increment("contested".into(), 50), at_seoul.increment("contested".into(), 50));
    a.unwrap().unwrap();
    b.unwrap().unwrap();
    let counters = rt.namespace::<Counter>();
    let id = counters.id_from_name("contested");
    assert_eq!(counters.stub(&id).get().await.unwrap(), 100, "every increment reached the one object");
    let line = format!("constructed {id}");
    assert_eq!(cluster.node(0).count(&line) + cluster.node(1).count(&line), 1, "exactly one activation");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_peer_without_a_certificate_from_the_cluster_ca_is_refused() {
    let cluster = TestCluster::start();
    let stranger = stead::tls::stranger_identity("client").unwrap();
    let builder = Runtime::builder().client().tls(stranger).secret(SECRET).in_memory();
    let rt = with_peers(builder, &cluster.peers).build().await.unwrap();
    let counters = rt.namespace::<Counter>();
    let err = counters.stub_at(&counters.unique_id(), "seoul").get().await.unwrap_err();
    assert!(matches!(err, Error::Unavailable(_)), "{err}");

    // The cluster keeps serving its own clients.
    let rt = cluster.client("client").await;
    let counters = rt.namespace::<Counter>();
    assert_eq!(counters.stub(&counters.unique_id()).increment(1).await.unwrap().unwrap(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_peer_on_another_protocol_version_is_refused_with_both_versions_named() {
    let cluster = TestCluster::start();
    let identity = stead::tls::dev_identity(&cluster.tls_dir(), "future").unwrap();
    let builder =
        Runtime::builder().client().tls(identity).secret(SECRET).in_memory().protocol_version_for_tests(2);
    let rt = with_peers(builder, &cluster.peers).build().await.unwrap();
    let counters = rt.namespace::<Counter>();
    let err = counters.stub_at(&counters.unique_id(), "seoul").get().await.unwrap_err();
    let Error::Incompatible(message) = &err else { panic!("expected Incompatible, got {err:?}") };
    assert!(message.contains("stead/1") && message.contains("stead/2"), "{message}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn oversized_frames_and_random_bytes_leave_the_node_serving_others() {
    let cluster = TestCluster::start();
    let identity = stead::tls::dev_identity(&cluster.tls_dir(), "prober").unwrap();
    let endpoint = stead_transport::Endpoint::bind(&identity, None).unwrap();
    let conn = endpoint.connect(cluster.peers[1].1, "seoul").await.unwrap();
    raw::join(&conn, &cluster.peers, SECRET).await.unwrap();

    // A frame header claiming 1 GiB: the node stops the stream.
    let (mut send, mut recv) = conn.open_bi().await.unwrap();
    send.write_all(&(1u32 << 30).to_le_bytes()).await.unwrap();
    let mut buf = [0u8; 16];
    assert!(recv.read(&mut buf).await.is_err() || recv.read(&mut buf).await.unwrap_or(None).is_none());

    // Random bytes: the node stops that stream too.
    let (mut send, mut recv) = conn.open_bi().await.unwrap();
    let garbage: Vec<u8> = (0..4096u32).map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8).collect();
    let _ = send.write_all(&garbage).await;
    let _ = send.finish();
    assert!(recv.read(&mut buf).await.is_err() || recv.read(&mut buf).await.unwrap_or(None).is_none());

    // A valid hello, then a frame that is not a request: that stream stops.
    let rt = cluster.client("client").await;
    let id = rt.namespace::<Counter>().unique_id();
    let hello =
        stead_transport::codec::encode(&raw::Hello::Object { type_name: "Counter".into(), id, name: None })
            .unwrap();
    let (mut send, mut recv) = conn.open_bi().await.unwrap();
    stead_transport::frame::write_frame(&mut send, &hello).await.unwrap();
    stead_transport::frame::write_frame(&mut send, &garbage[..100]).await.unwrap();
    assert!(recv.read(&mut buf).await.is_err() || recv.read(&mut buf).await.unwrap_or(None).is_none());

    let counters = rt.namespace::<Counter>();
    let stub = counters.stub_at(&counters.unique_id(), "seoul");
    assert_eq!(stub.increment(7).await.unwrap().unwrap(), 7, "the node still serves");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dead_node_makes_its_objects_unavailable_fast_and_a_restarted_node_serves_them_again() {
    let mut cluster = TestCluster::start();
    // This client notices a silent node after 500 ms (a connection's idle
    // timeout is the shorter of its two sides').
    let identity = stead::tls::dev_identity(&cluster.tls_dir(), "client").unwrap();
    let builder = Runtime::builder().client().tls(identity).secret(SECRET).in_memory();
    let rt = with_peers(builder, &cluster.peers)
        .keep_alive(Duration::from_millis(100))
        .peer_timeout(Duration::from_millis(500))
        .build()
        .await
        .unwrap();
    let counters = rt.namespace::<Counter>();
    let id = counters.id_from_name("survivor");
    let used_before = counters.stub_at(&id, "seoul");
    assert_eq!(used_before.increment(41).await.unwrap().unwrap(), 41);
    // Let the connection's round-trip estimate settle, as on any connection
    // in use: QUIC declares a silent peer dead after the idle timeout or
    // three probe timeouts, whichever is longer, and the first samples of a
    // brand-new connection make the probe timeout long.
    tokio::time::sleep(Duration::from_millis(500)).await;

    cluster.kill_node(1);
    let started = Instant::now();
    let err = counters.stub(&id).get().await.unwrap_err();
    let elapsed = started.elapsed();
    assert!(err.is_retryable(), "{err}");
    assert!(matches!(err, Error::Unavailable(_) | Error::Disconnected(_)), "{err}");
    // Typically about 0.6 s (the 500 ms idle timeout after the last keep-alive);
    // QUIC never declares a peer dead before three probe timeouts, which an
    // overloaded machine's round-trip estimates stretch (1.6 s measured with
    // two CPU hogs on two cores). The bound is far below QUIC's default 30 s.
    assert!(elapsed < Duration::from_millis(2500), "callers learnt it only after {elapsed:?}: {err}");

    // Never re-created elsewhere with empty storage: still unavailable.
    let err = counters.stub(&id).get().await.unwrap_err();
    assert!(matches!(err, Error::Unavailable(_)), "{err}");
    assert_eq!(cluster.node(0).count(&format!("constructed {id}")), 0);

    // A stub whose stream broke stays broken, so no later call can overtake
    // one that was lost: it reports `Disconnected` until replaced.
    assert!(used_before.get().await.is_err());

    cluster.start_node(1);
    let Err(Error::Disconnected(_)) = used_before.get().await else {
        panic!("a broken stub must stay broken")
    };
    assert_eq!(counters.stub(&id).increment(1).await.unwrap().unwrap(), 42, "state survived the restart");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_caller_from_another_build_gets_incompatible_and_an_unhosted_type_not_hosted() {
    let cluster = TestCluster::start();
    let rt = cluster.client("client").await;
    let v2 = rt.namespace::<CounterV2>();
    let err = v2.stub_at(&v2.unique_id(), "seoul").increment(1).await.unwrap_err();
    let Error::Incompatible(message) = &err else { panic!("expected Incompatible, got {err:?}") };
    assert!(message.contains("Counter::increment"), "{message}");

    let strangers = rt.namespace::<Stranger>();
    let err = strangers.stub_at(&strangers.unique_id(), "seoul").hello().await.unwrap_err();
    assert!(matches!(err, Error::NotHosted(_)), "{err}");
}

#[tokio::test]
async fn misconfigured_clusters_fail_at_build_with_what_to_fix() {
    let dir = tempfile::tempdir().unwrap();
    let identity = || stead::tls::dev_identity(dir.path(), "ohio").unwrap();
    let addr: SocketAddr = "127.0.0.1:1".parse().unwrap();
    let cases = [
        (
            Runtime::builder().in_memory().node("ohio").tls(identity()).peer("seoul", addr),
            "not in the peer list",
        ),
        (
            Runtime::builder().in_memory().node("ohio").tls(identity()).peer("ohio", addr).peer("ohio", addr),
            "appears twice",
        ),
        (Runtime::builder().in_memory().node("ohio").peer("ohio", addr), "TLS identity"),
        (
            Runtime::builder().in_memory().client().node("ohio").tls(identity()).peer("ohio", addr),
            "one or the other",
        ),
        (
            Runtime::builder()
                .in_memory()
                .node("ohio")
                .tls(identity())
                .peer("ohio", addr)
                .keep_alive(Duration::from_secs(5))
                .peer_timeout(Duration::from_secs(1)),
            "must be longer than `keep_alive`",
        ),
    ];
    for (builder, expected) in cases {
        let err = builder.build().await.unwrap_err();
        let Error::Config(message) = &err else { panic!("{err:?}") };
        assert!(message.contains(expected), "{message}");
    }
    let missing = dir.path().join("missing.pem");
    let unreadable = Runtime::builder()
        .in_memory()
        .node("ohio")
        .peer("ohio", addr)
        .tls_pem_files(&missing, &missing, &missing)
        .build()
        .await
        .unwrap_err();
    let Error::Config(message) = &unreadable else { panic!("{unreadable:?}") };
    assert!(message.contains("missing.pem"), "{message}");
}

#[tokio::test]
async fn a_listen_address_already_in_use_is_a_transport_error_not_a_config_error() {
    let dir = tempfile::tempdir().unwrap();
    let identity = stead::tls::dev_identity(dir.path(), "ohio").unwrap();
    // QUIC listens on UDP: hold the port with a UDP socket of our own.
    let taken = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
    let addr = taken.local_addr().unwrap();
    let err = Runtime::builder()
        .in_memory()
        .node("ohio")
        .tls(identity)
        .peer("ohio", addr)
        .build()
        .await
        .unwrap_err();
    let Error::Transport(message) = &err else { panic!("expected Transport, got {err:?}") };
    assert!(message.contains(&addr.port().to_string()) || message.contains("in use"), "{message}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reply_over_the_frame_limit_fails_its_call_and_the_stub_keeps_working() {
    let cluster = TestCluster::start();
    let rt = cluster.client("client").await;
    let blobs = rt.namespace::<Blob>();
    let stub = blobs.stub_at(&blobs.id_from_name("big reply"), "seoul");
    let too_big = 17 * 1024 * 1024;
    let err = tokio::time::timeout(Duration::from_secs(30), stub.make(too_big))
        .await
        .expect("the caller of a reply too large to send waited forever")
        .unwrap_err();
    let Error::Codec(message) = &err else { panic!("expected Codec, got {err:?}") };
    assert!(message.contains("frame"), "{message}");
    assert_eq!(stub.make(10).await.unwrap(), vec![7; 10], "the stub keeps working");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn calls_made_before_a_stubs_stream_opens_get_their_replies_however_its_opening_interleaves() {
    let cluster = TestCluster::start();
    let identity = stead::tls::dev_identity(&cluster.tls_dir(), "client").unwrap();
    // The pump pauses between its two steps of opening the stream: whichever
    // it takes first, the stub's reader task (spawned by one of them) gets
    // to run before the other. Had the reader started before the queued
    // calls were registered, it would have found none waiting, gone idle,
    // and left their replies unread until the calls' own timers woke their
    // callers. So that only a lost reply can keep a caller waiting here,
    // `call_timeout` is far beyond the 30 s this test waits.
    let builder = Runtime::builder()
        .client()
        .tls(identity)
        .secret(SECRET)
        .in_memory()
        .call_timeout(Duration::from_secs(600))
        .stream_open_pause_for_tests(Duration::from_millis(200));
    let rt = with_peers(builder, &cluster.peers).build().await.unwrap();
    let counters = rt.namespace::<Counter>();
    for round in 0..3 {
        let stub = counters.stub_at(&counters.id_from_name(&format!("queued {round}")), "seoul");
        // Both calls wait in the pump's queue: placing the object and
        // connecting to seoul take round trips, and their task polls them
        // at once, before any stream exists, so it reads no stream itself.
        // They are awaited in a task of their own: the timeout below then
        // never polls them (which would read the stream on their behalf).
        let calls = tokio::spawn(futures::future::join(stub.increment(1), stub.increment(2)));
        let (first, second) = tokio::time::timeout(Duration::from_secs(30), calls)
            .await
            .unwrap_or_else(|_| panic!("round {round}: the calls made before the stream opened got no reply"))
            .unwrap();
        assert_eq!((first.unwrap().unwrap(), second.unwrap().unwrap()), (1, 3), "round {round}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn megabytes_of_pipelined_arguments_on_one_stub_all_arrive() {
    let cluster = TestCluster::start();
    let rt = cluster.client("client").await;
    let blobs = rt.namespace::<Blob>();
    let stub = blobs.stub_at(&blobs.id_from_name("flow control"), "seoul");
    assert_eq!(stub.take(vec![1; 10]).await.unwrap(), 10, "the stream is open");
    // 48 MiB in flight on one stream, far beyond its flow-control window:
    // the stream blocks, and must be written on when the node reads on.
    let mib = 1024 * 1024;
    let calls: Vec<_> = (0..48).map(|_| stub.take(vec![1; mib])).collect();
    let received = tokio::time::timeout(Duration::from_secs(60), futures::future::join_all(calls))
        .await
        .expect("pipelined calls under flow control never completed");
    let last = received.into_iter().map(|r| r.unwrap()).max().unwrap();
    assert_eq!(last, 10 + 48 * mib as u64);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_peer_that_does_not_answer_stalls_only_the_calls_to_it() {
    // The cluster has a third node, "osaka", that never started.
    let cluster = TestCluster::start_with_peers(3, None);
    let rt = cluster.client("client").await;
    let counters = rt.namespace::<Counter>();
    let to_osaka = counters.stub_at(&counters.id_from_name("stranded"), "osaka");
    let stalled = tokio::spawn(async move { to_osaka.get().await });
    // Let the call to osaka reach its connection attempt.
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert!(!stalled.is_finished(), "the connection attempt to osaka ended early: {stalled:?}");
    let to_seoul = counters.stub_at(&counters.id_from_name("reachable"), "seoul");
    assert_eq!(to_seoul.increment(1).await.unwrap().unwrap(), 1);
    assert!(!stalled.is_finished(), "the call to seoul waited for the attempt to reach osaka");
    let err = stalled.await.unwrap().unwrap_err();
    assert!(err.is_retryable(), "{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_remote_method_that_never_returns_gives_its_caller_timeout() {
    let cluster = TestCluster::start();
    let identity = stead::tls::dev_identity(&cluster.tls_dir(), "client").unwrap();
    let builder = Runtime::builder()
        .client()
        .tls(identity)
        .secret(SECRET)
        .in_memory()
        .call_timeout(Duration::from_millis(500));
    let rt = with_peers(builder, &cluster.peers).build().await.unwrap();
    let stuck = rt.namespace::<Stuck>();
    let stub = stuck.stub_at(&stuck.id_from_name("stuck"), "seoul");
    let err = tokio::time::timeout(Duration::from_secs(30), stub.hang())
        .await
        .expect("the remote caller waited forever")
        .unwrap_err();
    assert!(matches!(err, Error::Timeout(_)), "{err:?}");
}

/// Checks a stub's call outcomes, in issue order: once one failed, none
/// after it ran, and what ran is the log.
fn assert_no_gap(outcomes: &[Result<usize, bool>], log: &[u64]) {
    let first_failed = outcomes.iter().position(|r| r.is_err()).expect("the test must overload the mailbox");
    for (n, later) in outcomes.iter().enumerate().skip(first_failed) {
        let Err(retryable) = later else {
            panic!("call {n} ran after call {first_failed} was refused: a gap")
        };
        assert!(retryable, "call {n} failed with an error that is not retryable");
    }
    let ran: Vec<u64> = (0..first_failed as u64).collect();
    assert_eq!(log, ran, "the object ran exactly the calls before the first refusal");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn after_a_remote_call_is_refused_no_later_call_of_the_stub_runs() {
    let cluster = TestCluster::start_with_mailbox(Some(2));
    let rt = cluster.client("client").await;
    let logs = rt.namespace::<SlowLog>();
    let id = logs.unique_id();
    let stub = logs.stub_at(&id, "seoul");
    let calls: Vec<_> = (0..500).map(|n| stub.record(n)).collect();
    let mut outcomes = Vec::new();
    for call in calls {
        outcomes.push(call.await.map_err(|err| err.is_retryable()));
    }
    let log = logs.stub(&id).seen().await.unwrap();
    assert_no_gap(&outcomes, &log);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn after_a_relayed_call_is_refused_no_later_call_of_the_stub_runs() {
    let cluster = TestCluster::start_with_mailbox(Some(2));
    let rt = cluster.client("client").await;
    let logs = rt.namespace::<SlowLog>();
    let id = logs.unique_id();
    // Place the log on seoul, then flood it from an object on seoul: its
    // calls go through the cluster route and are relayed to the local
    // mailbox.
    assert_eq!(logs.stub_at(&id, "seoul").seen().await.unwrap(), Vec::<u64>::new());
    let flooders = rt.namespace::<Flooder>();
    let flooder = flooders.stub_at(&flooders.unique_id(), "seoul");
    let outcomes = flooder.flood(id.to_string(), 500).await.unwrap().unwrap();
    let log = logs.stub(&id).seen().await.unwrap();
    assert_no_gap(&outcomes, &log);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_under_steady_remote_traffic_finishes_and_every_committed_call_got_its_reply() {
    let mut cluster = TestCluster::start();
    cluster.kill_node(1);
    cluster.start_node_with(1, &[(SHUTDOWN_AFTER, "2000".into())]);
    let rt = cluster.client("client").await;
    let counters = rt.namespace::<Counter>();
    // Eight callers, each incrementing its own counter on seoul one call
    // after another until a call fails; one more making new objects.
    let callers: Vec<_> = (0..8)
        .map(|k| {
            let stub = counters.stub_at(&counters.id_from_name(&format!("load {k}")), "seoul");
            tokio::spawn(async move {
                let mut replied = 0u64;
                loop {
                    match stub.increment(1).await {
                        Ok(Ok(value)) => {
                            replied += 1;
                            assert_eq!(value, replied, "caller {k}");
                        }
                        Ok(Err(err)) => panic!("caller {k}: {err}"),
                        Err(err) => {
                            assert!(err.is_retryable(), "caller {k}: {err}");
                            return replied;
                        }
                    }
                }
            })
        })
        .collect();
    let creator = {
        let counters = counters.clone();
        tokio::spawn(async move {
            let started = Instant::now();
            while started.elapsed() < Duration::from_secs(4) {
                let stub = counters.stub_at(&counters.unique_id(), "seoul");
                if stub.increment(1).await.is_err() {
                    tokio::time::sleep(Duration::from_millis(5)).await;
                }
            }
        })
    };
    let shut_down = cluster.node(1).wait_for("shut down ok=");
    assert!(shut_down.starts_with("true"), "shutdown did not finish cleanly: {shut_down}");
    // Every caller learns of the shutdown from the node, well before its
    // calls would time out (`call_timeout`, 30 s): a call sent on a stream
    // the node has finished fails at once.
    let mut replied = Vec::new();
    for caller in callers {
        let caller = tokio::time::timeout(Duration::from_secs(15), caller);
        replied.push(caller.await.expect("a caller waited for a reply the node never sent").unwrap());
    }
    creator.await.unwrap();
    cluster.node(1).wait_for("exiting");
    let lines = cluster.node(1).lines();
    let done = lines.iter().position(|l| l.contains("shut down ok=")).unwrap();
    assert!(
        !lines[done..].iter().any(|l| l.contains("constructed")),
        "an object was constructed after shutdown returned: {:?}",
        &lines[done..]
    );

    // Back with its storage: every committed increment was answered.
    cluster.kill_node(1);
    cluster.start_node(1);
    let rt = cluster.client("checker").await;
    let counters = rt.namespace::<Counter>();
    assert!(replied.iter().sum::<u64>() > 0, "no caller got through before the shutdown");
    for (k, replied) in replied.into_iter().enumerate() {
        let stub = counters.stub(&counters.id_from_name(&format!("load {k}")));
        let value = stub.get().await.unwrap();
        assert_eq!(
            value, replied,
            "caller {k}: the object committed {value} increments, its caller got {replied} replies"
        );
    }
}

/// The directory's messages, as the wire carries them (the runtime's own
/// types are private): a raw peer speaks them here.
mod raw {
    #[derive(serde::Serialize)]
    pub(crate) enum Hello {
        Object { type_name: String, id: stead::ObjectId, name: Option<String> },
        Directory,
        Cluster(ClusterView),
    }

    #[derive(serde::Serialize)]
    pub(crate) struct ClusterView {
        peers: Vec<(String, String)>,
        secret: [u8; 8],
    }

    #[derive(serde::Serialize)]
    pub(crate) enum DirectoryRequest {
        Lookup { type_name: String, id: stead::ObjectId },
        Claim { type_name: String, id: stead::ObjectId },
    }

    fn send_and_read<T: serde::de::DeserializeOwned>(
        conn: &stead_transport::Connection,
        frames: Vec<Vec<u8>>,
    ) -> impl std::future::Future<Output = T> + '_ {
        use stead_transport::{codec, frame};
        async move {
            let (mut send, mut recv) = conn.open_bi().await.unwrap();
            for payload in &frames {
                frame::write_frame(&mut send, payload).await.unwrap();
            }
            let answer =
                frame::read_frame(&mut recv, 64 * 1024).await.unwrap().expect("the node answered nothing");
            codec::decode(&answer).unwrap()
        }
    }

    /// Shows the node the view of the cluster every process of it has
    /// (the first stream of a connection must): its peer list and the
    /// fingerprint of the secret, derived as the runtime derives it.
    pub(crate) async fn join(
        conn: &stead_transport::Connection,
        peers: &[(String, std::net::SocketAddr)],
        secret: &str,
    ) -> Result<(), stead::Error> {
        let key = blake3::derive_key("stead 2026 cluster secret", secret.as_bytes());
        let hash = blake3::derive_key("stead 2026 cluster secret fingerprint", &key);
        let mut fingerprint = [0u8; 8];
        fingerprint.copy_from_slice(&hash[..8]);
        let view = ClusterView {
            peers: peers.iter().map(|(name, addr)| (name.clone(), addr.to_string())).collect(),
            secret: fingerprint,
        };
        let hello = stead_transport::codec::encode(&Hello::Cluster(view)).unwrap();
        send_and_read(conn, vec![hello]).await
    }

    /// Asks the directory on `conn` and returns its answer.
    pub(crate) async fn ask(
        conn: &stead_transport::Connection,
        request: &DirectoryRequest,
    ) -> Result<Option<String>, stead::Error> {
        use stead_transport::codec;
        send_and_read(conn, vec![codec::encode(&Hello::Directory).unwrap(), codec::encode(request).unwrap()])
            .await
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn only_a_node_places_objects_and_only_on_itself() {
    let cluster = TestCluster::start();
    let rt = cluster.client("client").await;
    let id = rt.namespace::<Counter>().unique_id();
    // A process with a valid certificate of the cluster that names no node.
    let identity = stead::tls::dev_identity(&cluster.tls_dir(), "prober").unwrap();
    let endpoint = stead_transport::Endpoint::bind(&identity, None).unwrap();
    let conn = endpoint.connect(cluster.peers[0].1, "ohio").await.unwrap();
    raw::join(&conn, &cluster.peers, SECRET).await.unwrap();
    let claim = raw::DirectoryRequest::Claim { type_name: "Counter".into(), id };
    let err = raw::ask(&conn, &claim).await.unwrap_err();
    assert!(err.to_string().contains("names no node"), "{err}");
    let lookup = raw::DirectoryRequest::Lookup { type_name: "Counter".into(), id };
    assert_eq!(raw::ask(&conn, &lookup).await.unwrap(), None, "a refused claim placed nothing");
    // No rows with huge type names either.
    let huge = raw::DirectoryRequest::Lookup { type_name: "x".repeat(64 * 1024 - 100), id };
    assert!(raw::ask(&conn, &huge).await.is_err());

    // The object is placed by the node its first call reaches, on itself.
    let counters = rt.namespace::<Counter>();
    assert_eq!(counters.stub_at(&id, "seoul").increment(1).await.unwrap().unwrap(), 1);
    assert_eq!(raw::ask(&conn, &lookup).await.unwrap().as_deref(), Some("seoul"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_first_call_to_a_node_that_does_not_host_the_type_pins_nothing() {
    let cluster = TestCluster::start();
    let rt = cluster.client("client").await;
    let ns = rt.namespace::<SeoulOnly>();
    let id = ns.id_from_name("only in seoul");
    // A client's call without a target goes to the coordinator, ohio,
    // which does not host the type.
    let err = ns.stub(&id).hello().await.unwrap_err();
    assert!(matches!(err, Error::NotHosted(_)), "{err:?}");
    // That placed nothing: seoul can still take the object.
    assert_eq!(ns.stub_at(&id, "seoul").hello().await.unwrap(), "hello from seoul");
    assert_eq!(ns.stub(&id).hello().await.unwrap(), "hello from seoul", "and everyone finds it there");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn processes_of_different_clusters_refuse_each_other_naming_the_difference() {
    let cluster = TestCluster::start();
    // Another secret (as when a process forgot `.secret(..)` and made its own).
    let identity = stead::tls::dev_identity(&cluster.tls_dir(), "stranger-secret").unwrap();
    let builder =
        Runtime::builder().client().tls(identity).secret("another secret, not this cluster's").in_memory();
    let rt = with_peers(builder, &cluster.peers).build().await.unwrap();
    let counters = rt.namespace::<Counter>();
    let err = counters.stub_at(&counters.unique_id(), "seoul").get().await.unwrap_err();
    let Error::Config(message) = &err else { panic!("expected Config, got {err:?}") };
    assert!(message.contains("secrets differ"), "{message}");

    // Another peer list: the nodes' coordinator would not be its coordinator.
    let mut peers = cluster.peers.clone();
    peers.reverse();
    let identity = stead::tls::dev_identity(&cluster.tls_dir(), "stranger-peers").unwrap();
    let builder = Runtime::builder().client().tls(identity).secret(SECRET).in_memory();
    let rt = with_peers(builder, &peers).build().await.unwrap();
    let counters = rt.namespace::<Counter>();
    let err = counters.stub_at(&counters.unique_id(), "seoul").get().await.unwrap_err();
    let Error::Config(message) = &err else { panic!("expected Config, got {err:?}") };
    assert!(message.contains("peer lists differ") && message.contains("ohio="), "{message}");

    // The nodes keep serving their own cluster.
    let rt = cluster.client("client").await;
    let counters = rt.namespace::<Counter>();
    assert_eq!(counters.stub_at(&counters.unique_id(), "seoul").increment(3).await.unwrap().unwrap(), 3);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_flood_of_large_calls_from_one_peer_leaves_the_node_within_its_memory_bound() {
    let cluster = TestCluster::start();
    let before = cluster.node(1).peak_memory();
    // Calls still waiting after 5 s give up (`Timeout`): they were accepted.
    let identity = stead::tls::dev_identity(&cluster.tls_dir(), "flooder").unwrap();
    let builder = Runtime::builder()
        .client()
        .tls(identity)
        .secret(SECRET)
        .in_memory()
        .call_timeout(Duration::from_secs(5));
    let rt = with_peers(builder, &cluster.peers).build().await.unwrap();
    let stuck = rt.namespace::<Stuck>();
    let stub = stuck.stub_at(&stuck.unique_id(), "seoul");
    // The object's first turn never ends: every later call waits in its
    // mailbox, with its arguments.
    let _hung = stub.hang();
    let mib = 1 << 20;
    let calls: Vec<_> = (0..96).map(|_| stub.take(vec![1; 4 * mib])).collect();
    let outcomes = tokio::time::timeout(Duration::from_secs(120), futures::future::join_all(calls))
        .await
        .expect("the flood's calls never completed");
    let mut refused = 0;
    for outcome in outcomes {
        match outcome {
            Err(Error::Timeout(_)) => {}
            Err(err @ Error::Overloaded(_)) => {
                assert!(err.is_retryable());
                refused += 1;
            }
            other => panic!("no call can run behind the stuck turn: {other:?}"),
        }
    }
    assert!(refused > 0, "384 MiB of arguments were all accepted into one mailbox");
    // The node keeps serving others.
    let other = cluster.client("other").await;
    let counters = other.namespace::<Counter>();
    assert_eq!(counters.stub_at(&counters.unique_id(), "seoul").increment(1).await.unwrap().unwrap(), 1);
    let grew = cluster.node(1).peak_memory().saturating_sub(before);
    // The documented bound for this flood: `Limits::mailbox_bytes` (64 MiB)
    // of waiting arguments, plus the frames being read and the
    // connection's window; 384 MiB were sent.
    println!(
        "after 384 MiB of calls to a stuck object, the node's peak memory grew by {} MiB",
        grew / mib as u64
    );
    assert!(grew < 192 * mib as u64, "the node's peak memory grew by {} MiB", grew / mib as u64);

    // Then many connections, each with many streams whose frames announce
    // 16 MiB, send 64 KiB and stall: the node holds what arrived, not what
    // was announced (1,024 streams announce 16 GiB).
    let identity = stead::tls::dev_identity(&cluster.tls_dir(), "stalling").unwrap();
    let (mut held, mut connections) = (Vec::new(), Vec::new());
    for _ in 0..16 {
        let endpoint = stead_transport::Endpoint::bind(&identity, None).unwrap();
        let conn = endpoint.connect(cluster.peers[1].1, "seoul").await.unwrap();
        raw::join(&conn, &cluster.peers, SECRET).await.unwrap();
        for _ in 0..64 {
            let id = counters.unique_id();
            let hello = stead_transport::codec::encode(&raw::Hello::Object {
                type_name: "Counter".into(),
                id,
                name: None,
            })
            .unwrap();
            let (mut send, recv) = conn.open_bi().await.unwrap();
            stead_transport::frame::write_frame(&mut send, &hello).await.unwrap();
            send.write_all(&(16u32 << 20).to_le_bytes()).await.unwrap();
            send.write_all(&vec![0u8; 64 * 1024]).await.unwrap();
            held.push((send, recv));
        }
        connections.push((endpoint, conn));
    }
    assert_eq!(counters.stub_at(&counters.unique_id(), "seoul").increment(1).await.unwrap().unwrap(), 1);
    let grew = cluster.node(1).peak_memory().saturating_sub(before);
    // Documented: what arrived (64 MiB here) plus frame buffers, on top of
    // the first flood's bound.
    println!("after 1,024 stalled streams on 16 connections, it had grown by {} MiB", grew / mib as u64);
    assert!(grew < 320 * mib as u64, "the node's peak memory grew by {} MiB", grew / mib as u64);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_name_of_an_object_made_by_a_client_is_kept_on_its_node() {
    let mut cluster = TestCluster::start();
    let rt = cluster.client("client").await;
    let counters = rt.namespace::<Counter>();
    let id = counters.id_from_name("visits of the home page");
    assert_eq!(counters.stub_at(&id, "seoul").increment(1).await.unwrap().unwrap(), 1);
    // The node holds the database while the object is active.
    cluster.kill_node(1);
    let hex = id.to_string();
    let path = cluster.dir.path().join("seoul/objects/Counter").join(&hex[..2]).join(format!("{hex}.sqlite"));
    let conn = stead::rusqlite::Connection::open(path).unwrap();
    let name: String =
        conn.query_row("SELECT value FROM _stead_meta WHERE name = 'name'", [], |row| row.get(0)).unwrap();
    assert_eq!(name, "visits of the home page");
}
