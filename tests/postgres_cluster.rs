//! The cluster on PostgreSQL, with a real throw-away PostgreSQL server and
//! real node processes on loopback: no peer list anywhere.
//!
//! Every node here is this test binary: the ignored test `pg_node_process`
//! runs one, selected by environment variables. Clients run in the test's
//! own process. Leases are short (2-3 s) so that failures show quickly.

#![allow(missing_docs)] // test objects are exercised, not documented

use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use stead::{AlarmInfo, Context, Error, Runtime, durable_object};
use stead_pgtemp::TempPostgres;

#[path = "common/pg_nodes.rs"]
mod pg_nodes;
#[path = "common/process.rs"]
mod process;
use pg_nodes::{NodeEnv, PgNodes, SECRET, eventually, liveness};

/// The lease of most tests: a dead node is noticed within it.
const LEASE: Duration = Duration::from_secs(2);

pub struct Register {
    ctx: Context,
}

#[durable_object]
impl Register {
    pub async fn new(ctx: Context) -> Self {
        // Nodes print their activations; the test counts them.
        println!("constructed {}", ctx.id());
        Register { ctx }
    }

    pub fn set(&mut self, value: String) -> stead::Result<()> {
        self.ctx.storage().put("value", &value)
    }

    pub fn get(&self) -> stead::Result<Option<String>> {
        self.ctx.storage().get("value")
    }

    pub fn add(&mut self, n: u64) -> stead::Result<u64> {
        let total = self.ctx.storage().get::<u64>("total")?.unwrap_or(0) + n;
        self.ctx.storage().put("total", &total)?;
        Ok(total)
    }

    /// Sets the alarm `millis` from now.
    pub fn alarm_in(&mut self, millis: u64) -> stead::Result<()> {
        self.ctx.storage().set_alarm(SystemTime::now() + Duration::from_millis(millis))
    }

    /// When the alarm fired (milliseconds since the epoch), if it did.
    pub fn fired_at(&self) -> stead::Result<Option<u64>> {
        self.ctx.storage().get("fired_at")
    }

    #[alarm]
    async fn alarm(&mut self, _info: AlarmInfo) -> Result<(), String> {
        let now = SystemTime::now().duration_since(UNIX_EPOCH).map_err(|e| e.to_string())?;
        self.ctx.storage().put("fired_at", &(now.as_millis() as u64)).map_err(|e| e.to_string())
    }
}

// ---------------------------------------------------------------- children

/// A node: hosts `Register` until it is killed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "run by the PostgreSQL cluster tests as a child process"]
async fn pg_node_process() {
    let Some(node) = NodeEnv::from_env() else { return };
    NodeEnv::serve(node.builder().host::<Register>().build().await.unwrap()).await;
}

/// The cluster of these tests: nodes that run `pg_node_process`.
fn cluster(names: &[&str], lease: Duration) -> PgNodes {
    PgNodes::start("pg_node_process", names, lease)
}

/// How many times object `id` was constructed on each running node.
fn activations(cluster: &PgNodes, id: &stead::ObjectId) -> usize {
    let line = format!("constructed {id}");
    cluster.running().map(|node| node.count(&line)).sum()
}

// ---------------------------------------------------------------- tests

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_nodes_and_two_clients_through_one_postgres_read_each_others_writes() {
    let cluster = cluster(&["ohio", "seoul", "osaka"], LEASE);
    let a = cluster.client("worker-a").await;
    let b = cluster.client("worker-b").await;

    let nodes = a.nodes().await.unwrap();
    let names: Vec<_> = nodes.iter().map(|n| (n.name.as_str(), n.alive)).collect();
    assert_eq!(names, [("ohio", true), ("osaka", true), ("seoul", true)]);
    assert!(nodes.iter().all(|n| n.hosts == ["Register"]), "{nodes:?}");

    // Strong read-after-write: what A wrote, B reads at once, through an
    // id it only has as text.
    let (registers_a, registers_b) = (a.namespace::<Register>(), b.namespace::<Register>());
    let mut ids = Vec::new();
    for i in 0..60 {
        let id = registers_a.unique_id();
        registers_a.stub(&id).set(format!("written by A, {i}")).await.unwrap().unwrap();
        let same = registers_b.id_from_str(&id.to_string()).unwrap();
        assert_eq!(registers_b.stub(&same).get().await.unwrap().unwrap(), Some(format!("written by A, {i}")));
        ids.push(id);
    }
    // Every node took part, found through PostgreSQL alone; each object
    // was made once.
    for name in ["ohio", "seoul", "osaka"] {
        let hosted = cluster.node(name).lines().iter().filter(|l| l.contains("constructed ")).count();
        assert!(hosted > 0, "node {name} hosts nothing");
    }
    for id in &ids {
        assert_eq!(activations(&cluster, id), 1);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_nodes_racing_for_one_named_object_end_with_one_activation() {
    let cluster = cluster(&["ohio", "seoul", "osaka"], LEASE);
    let client = cluster.client("client").await;
    let registers = client.namespace::<Register>();
    for round in 0..5 {
        let name = format!("contested-{round}");
        let id = registers.id_from_name(&name);
        // One stub aimed at each node, all first calls at once.
        let calls: Vec<_> =
            ["ohio", "seoul", "osaka"].iter().map(|node| registers.stub_at(&id, node).add(1)).collect();
        let mut totals = Vec::new();
        for call in calls {
            totals.push(call.await.unwrap().unwrap());
        }
        totals.sort();
        assert_eq!(totals, [1, 2, 3], "all three calls reached one object");
        assert_eq!(activations(&cluster, &id), 1, "one activation in the whole cluster");
    }
    // The directory keeps each object's name and its single owner.
    let rows =
        cluster.sql().await.query("SELECT name, owner, epoch FROM stead_objects ORDER BY name", &[]).await;
    let rows = rows.unwrap();
    assert_eq!(rows.len(), 5);
    for (round, row) in rows.iter().enumerate() {
        assert_eq!(row.get::<_, Option<String>>(0), Some(format!("contested-{round}")));
        assert_eq!(row.get::<_, i64>(2), 1);
    }
}

/// The race above, many times over, from two clients at once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "heavy: a hundred races; run with --ignored"]
async fn a_hundred_races_from_two_clients_each_end_with_one_activation() {
    let cluster = cluster(&["ohio", "seoul", "osaka"], LEASE);
    let (a, b) = (cluster.client("worker-a").await, cluster.client("worker-b").await);
    let (registers_a, registers_b) = (a.namespace::<Register>(), b.namespace::<Register>());
    for round in 0..100 {
        let name = format!("contested-{round}");
        let id = registers_a.id_from_name(&name);
        let mut calls = Vec::new();
        for node in ["ohio", "seoul", "osaka"] {
            calls.push(registers_a.stub_at(&id, node).add(1));
            calls.push(registers_b.stub_at(&id, node).add(1));
        }
        let mut totals = Vec::new();
        for call in calls {
            totals.push(call.await.unwrap().unwrap());
        }
        totals.sort();
        assert_eq!(totals, [1, 2, 3, 4, 5, 6]);
        assert_eq!(activations(&cluster, &id), 1);
    }
}

/// A node's own first call places the object in the caller's task; the
/// calls of its stub still run in issue order when their futures are
/// awaited in another order, and a first call whose future is kept but
/// never polled still runs.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_nodes_own_first_calls_run_however_their_futures_are_polled() {
    let cluster = cluster(&[], LEASE);
    let identity = stead::tls::dev_identity(&cluster.tls_dir(), "lagos").unwrap();
    let builder = Runtime::builder()
        .node("lagos")
        .postgres(cluster.pg.conninfo())
        .listen("127.0.0.1:0".parse().unwrap())
        .lease(LEASE)
        .tls(identity)
        .secret(SECRET)
        .in_memory()
        .host::<Register>();
    let node = liveness(builder).build().await.unwrap();
    let registers = node.namespace::<Register>();
    let within = Duration::from_secs(10);

    // The second call is awaited first: it runs after the first all the same.
    let stub = registers.stub(&registers.unique_id());
    let (first, second) = (stub.add(1), stub.add(2));
    let second = tokio::time::timeout(within, second).await.expect("the second call got no reply");
    assert_eq!(second.unwrap().unwrap(), 3);
    assert_eq!(first.await.unwrap().unwrap(), 1);
    assert_eq!(stub.add(3).await.unwrap().unwrap(), 6, "later calls go to the object here");

    // A first call kept and never polled is placed and run all the same.
    let id = registers.unique_id();
    let kept = registers.stub(&id).add(5);
    let deadline = Instant::now() + within;
    while registers.stub(&id).add(0).await.unwrap().unwrap() != 5 {
        assert!(Instant::now() < deadline, "a first call that was never polled did not run");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    drop(kept);
    node.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_that_joins_late_is_discovered_and_used() {
    let mut cluster = cluster(&["ohio", "seoul"], LEASE);
    let client = cluster.client("client").await;
    let registers = client.namespace::<Register>();
    registers.stub(&registers.unique_id()).set("before".into()).await.unwrap().unwrap();
    assert_eq!(client.nodes().await.unwrap().len(), 2);

    cluster.start_node("osaka");
    let id = registers.id_from_name("late");
    // Nobody told the client about osaka: it finds it in PostgreSQL.
    registers.stub_at(&id, "osaka").set("on osaka".into()).await.unwrap().unwrap();
    assert_eq!(cluster.node("osaka").count(&format!("constructed {id}")), 1);
    assert_eq!(registers.stub(&id).get().await.unwrap().unwrap().as_deref(), Some("on osaka"));
    let nodes = client.nodes().await.unwrap();
    assert!(nodes.iter().any(|n| n.name == "osaka" && n.alive), "{nodes:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_node_is_dead_within_its_lease_and_its_objects_move_to_a_live_node() {
    let mut cluster = cluster(&["ohio", "seoul"], LEASE);
    let client = cluster.client("client").await;
    let registers = client.namespace::<Register>();
    let id = registers.id_from_name("on seoul");
    registers.stub_at(&id, "seoul").set("kept".into()).await.unwrap().unwrap();
    let sql = cluster.sql().await;
    let incarnation = |rows: Vec<tokio_postgres::Row>| rows[0].get::<_, i64>(0);
    let before = incarnation(
        sql.query("SELECT incarnation FROM stead_nodes WHERE name = 'seoul'", &[]).await.unwrap(),
    );

    cluster.kill("seoul");
    let killed = Instant::now();
    loop {
        let nodes = client.nodes().await.unwrap();
        if nodes.iter().any(|n| n.name == "seoul" && !n.alive) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let detected = killed.elapsed();
    println!("seoul was marked dead {detected:?} after kill -9 (lease {LEASE:?})");
    // The lease, plus the time of one poll.
    assert!(detected <= LEASE + Duration::from_millis(200), "dead after {detected:?}");

    // Its object comes back on the live node, with its storage: the nodes
    // replicate it in PostgreSQL (see tests/failover.rs).
    let value = eventually(Duration::from_secs(10), || registers.stub(&id).get()).await.unwrap();
    assert_eq!(value.as_deref(), Some("kept"), "moved with its storage");
    assert_eq!(cluster.node("ohio").count(&format!("constructed {id}")), 1);

    // The restarted node is a new incarnation, and serves again.
    cluster.start_node("seoul");
    let fresh = registers.unique_id();
    eventually(Duration::from_secs(10), || registers.stub_at(&fresh, "seoul").set("new".into()))
        .await
        .unwrap();
    assert_eq!(cluster.node("seoul").count(&format!("constructed {fresh}")), 1);
    let after = incarnation(
        sql.query("SELECT incarnation FROM stead_nodes WHERE name = 'seoul'", &[]).await.unwrap(),
    );
    assert_eq!(after, before + 1, "the restarted node is a new incarnation");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn placed_objects_keep_answering_while_postgres_restarts_and_new_placements_resume() {
    // A long lease: the restart must fit in its two thirds.
    let mut cluster = cluster(&["ohio"], Duration::from_secs(6));
    let client = cluster.client("client").await;
    let registers = client.namespace::<Register>();
    let id = registers.unique_id();
    registers.stub(&id).set("placed".into()).await.unwrap().unwrap();

    cluster.pg.stop();
    // Placed: answers, through new stubs too.
    for _ in 0..3 {
        assert_eq!(registers.stub(&id).get().await.unwrap().unwrap().as_deref(), Some("placed"));
    }
    // Not placed yet: fails at once, retryable.
    let err = registers.stub(&registers.unique_id()).get().await.unwrap_err();
    assert!(matches!(err, Error::Unavailable(_)), "{err}");

    cluster.pg.start_again().unwrap();
    let fresh = registers.unique_id();
    eventually(Duration::from_secs(10), || registers.stub(&fresh).set("after".into())).await.unwrap();
    assert_eq!(registers.stub(&fresh).get().await.unwrap().unwrap().as_deref(), Some("after"));
    assert_eq!(registers.stub(&id).get().await.unwrap().unwrap().as_deref(), Some("placed"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_cut_off_from_postgres_stops_serving_before_its_lease_runs_out() {
    let lease = Duration::from_secs(3);
    let cluster = cluster(&["ohio"], lease);
    let client = cluster.client("client").await;
    let registers = client.namespace::<Register>();
    let id = registers.unique_id();
    registers.stub(&id).set("placed".into()).await.unwrap().unwrap();

    // Freeze PostgreSQL: no renewal gets through. Every lease PostgreSQL
    // granted ends at most `lease` after now.
    cluster.pg.pause();
    let paused = Instant::now();
    let mut last_success = None;
    let mut first_refusal = None;
    while paused.elapsed() < lease + Duration::from_secs(1) {
        match registers.stub(&id).get().await {
            Ok(_) => {
                assert!(first_refusal.is_none(), "served again after it stopped, while cut off");
                last_success = Some(paused.elapsed());
            }
            Err(err) => {
                assert!(matches!(err, Error::Unavailable(_)), "{err}");
                first_refusal.get_or_insert(paused.elapsed());
            }
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let (last_success, first_refusal) = (last_success.unwrap(), first_refusal.unwrap());
    println!(
        "cut off: last answer {last_success:?}, first refusal {first_refusal:?} after the pause (lease {lease:?})"
    );
    assert!(last_success < lease, "answered {last_success:?} after the pause, past its lease");
    assert!(first_refusal < lease, "still serving {first_refusal:?} after the pause");

    cluster.pg.resume();
    let value = eventually(Duration::from_secs(10), || registers.stub(&id).get()).await.unwrap();
    assert_eq!(value.as_deref(), Some("placed"), "serves again once it renewed");
}

/// A node cut off from PostgreSQL fires no alarm once it has stopped
/// serving (the cluster may count it dead): an alarm that comes due then
/// fires only after the node renewed its lease again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_cut_off_from_postgres_fires_no_alarm_until_it_serves_again() {
    let lease = Duration::from_secs(3);
    let cluster = cluster(&["ohio"], lease);
    let client = cluster.client("client").await;
    let registers = client.namespace::<Register>();
    let id = registers.unique_id();
    // Due well after the node has fenced itself (at most two thirds of the
    // lease after its last renewal), well before PostgreSQL comes back.
    registers.stub(&id).alarm_in(2_500).await.unwrap().unwrap();
    cluster.pg.pause();
    let paused = Instant::now();
    // Fenced: it refuses calls.
    while registers.stub(&id).get().await.is_ok() {
        assert!(paused.elapsed() < lease, "still serving {:?} after the pause", paused.elapsed());
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // The alarm comes due while the node is fenced; give it time to fire.
    tokio::time::sleep(Duration::from_millis(4_500).saturating_sub(paused.elapsed())).await;
    let resumed = SystemTime::now().duration_since(UNIX_EPOCH).unwrap().as_millis() as u64;
    cluster.pg.resume();
    let fired_at = eventually(Duration::from_secs(15), || async {
        match registers.stub(&id).fired_at().await? {
            Ok(Some(at)) => Ok(at),
            Ok(None) => Err(Error::Unavailable("the alarm has not fired yet".into())),
            Err(err) => Err(err),
        }
    })
    .await;
    assert!(
        fired_at >= resumed,
        "the alarm fired {} ms before PostgreSQL came back, while the node was fenced",
        resumed - fired_at
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_certificate_that_does_not_name_the_node_it_claims_is_refused() {
    let cluster = cluster(&["ohio", "seoul"], LEASE);
    // A process with mallory's certificate cannot start as ohio...
    let mallory = stead::tls::dev_identity(&cluster.tls_dir(), "mallory").unwrap();
    let err = Runtime::builder()
        .node("ohio")
        .postgres(cluster.pg.conninfo())
        .listen("127.0.0.1:0".parse().unwrap())
        .tls(mallory)
        .secret(SECRET)
        .in_memory()
        .build()
        .await
        .unwrap_err();
    assert!(matches!(err, Error::Config(_)), "{err}");
    assert!(err.to_string().contains("does not name node `ohio`"), "{err}");

    // ...and a row that sends callers of ohio to seoul's address makes
    // seoul no ohio: its certificate names seoul, and callers check.
    let sql = cluster.sql().await;
    sql.execute("UPDATE stead_nodes SET addr = (SELECT addr FROM stead_nodes WHERE name = 'seoul') WHERE name = 'ohio'", &[])
        .await
        .unwrap();
    let client = cluster.client("client").await;
    let registers = client.namespace::<Register>();
    let id = registers.unique_id();
    let err = registers.stub_at(&id, "ohio").set("for ohio".into()).await.unwrap_err();
    assert!(err.is_retryable(), "{err}");
    assert_eq!(activations(&cluster, &id), 0, "nothing was placed or run");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_database_with_newer_tables_is_refused_with_a_clear_error() {
    let cluster = cluster(&["ohio"], LEASE);
    cluster.sql().await.execute("UPDATE stead_schema SET version = 99", &[]).await.unwrap();
    let identity = stead::tls::dev_identity(&cluster.tls_dir(), "seoul").unwrap();
    let err = Runtime::builder()
        .node("seoul")
        .postgres(cluster.pg.conninfo())
        .listen("127.0.0.1:0".parse().unwrap())
        .tls(identity)
        .secret(SECRET)
        .in_memory()
        .host::<Register>()
        .build()
        .await
        .unwrap_err();
    assert!(matches!(err, Error::Config(_)), "{err}");
    assert!(err.to_string().contains("version 99, newer than version 3"), "{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_never_creates_the_tables() {
    let pg = TempPostgres::start().unwrap();
    let dir = tempfile::tempdir().unwrap();
    let identity = stead::tls::dev_identity(dir.path(), "client").unwrap();
    let err =
        Runtime::builder().client().postgres(pg.conninfo()).tls(identity).secret(SECRET).in_memory().build();
    let err = err.await.unwrap_err();
    assert!(err.to_string().contains("start a node of the cluster first"), "{err}");
}

#[tokio::test]
async fn postgres_and_a_peer_list_at_once_are_refused_naming_both() {
    let dir = tempfile::tempdir().unwrap();
    let identity = stead::tls::dev_identity(dir.path(), "ohio").unwrap();
    let err = Runtime::builder()
        .node("ohio")
        .postgres("host=127.0.0.1 user=postgres")
        .peer("ohio", "127.0.0.1:4701".parse().unwrap())
        .tls(identity)
        .in_memory()
        .build()
        .await
        .unwrap_err();
    assert!(matches!(err, Error::Config(_)), "{err}");
    let message = err.to_string();
    assert!(message.contains("`.postgres(..)`") && message.contains("`.peer(\"ohio\", ..)`"), "{message}");
}
