//! `stead nodes --postgres` and `stead objects --postgres`: the real binary
//! reads a throw-away PostgreSQL in which a real node (an in-process runtime)
//! has registered and placed objects.

mod common;

use std::ffi::OsStr;
use std::net::TcpListener;

use common::{Account, Ledger, Run, SECRET, stead};
use stead::Runtime;
use stead_pgtemp::TempPostgres;

/// A PostgreSQL cluster of one node, `ohio`, hosting the test types.
struct Cluster {
    pg: TempPostgres,
    rt: Runtime,
    _dir: tempfile::TempDir,
}

/// The objects `Cluster::fill` places, by id (64 hex digits).
struct Placed {
    alice: String,
    bob: String,
    unnamed: String,
    books: String,
}

impl Cluster {
    async fn start() -> Cluster {
        let pg = TempPostgres::start().unwrap();
        let dir = tempfile::tempdir().unwrap();
        let identity = stead::tls::dev_identity(&dir.path().join("tls"), "ohio").unwrap();
        let rt = Runtime::builder()
            .node("ohio")
            .postgres(pg.conninfo())
            .listen("127.0.0.1:0".parse().unwrap())
            .tls(identity)
            .secret(SECRET)
            .in_memory()
            .host::<Account>()
            .host::<Ledger>()
            .build()
            .await
            .unwrap();
        Cluster { pg, rt, _dir: dir }
    }

    /// Places objects on the node through calls: three accounts (two named)
    /// and a named ledger.
    async fn fill(&self) -> Placed {
        let accounts = self.rt.namespace::<Account>();
        let alice = accounts.id_from_name("alice");
        accounts.stub(&alice).put("balance".into(), vec![1]).await.unwrap().unwrap();
        let bob = accounts.id_from_name("bob");
        accounts.stub(&bob).put("balance".into(), vec![2]).await.unwrap().unwrap();
        let unnamed = accounts.unique_id();
        accounts.stub(&unnamed).put("kind".into(), vec![3]).await.unwrap().unwrap();
        let ledgers = self.rt.namespace::<Ledger>();
        let books = ledgers.id_from_name("books");
        ledgers.stub(&books).record("opening".into()).await.unwrap().unwrap();
        Placed {
            alice: alice.to_string(),
            bob: bob.to_string(),
            unnamed: unnamed.to_string(),
            books: books.to_string(),
        }
    }

    fn stead(&self, command: &str, extra: &[&str]) -> Run {
        let conninfo = self.pg.conninfo();
        let mut args = vec![command, "--postgres", conninfo.as_str()];
        args.extend_from_slice(extra);
        stead(args)
    }

    /// A connection of the test's own, to change the tables under the tool.
    async fn sql(&self) -> tokio_postgres::Client {
        sql(&self.pg.conninfo()).await
    }
}

async fn sql(conninfo: &str) -> tokio_postgres::Client {
    let (client, connection) = tokio_postgres::connect(conninfo, tokio_postgres::NoTls).await.unwrap();
    tokio::spawn(connection);
    client
}

/// The cells of a table's lines (header checked to be `header`), split on
/// runs of two spaces or more, so that a cell may hold single spaces.
fn table(run: &Run, header: &[&str]) -> Vec<Vec<String>> {
    let lines = run.ok().lines().collect::<Vec<_>>();
    if lines.is_empty() {
        return Vec::new();
    }
    let cells = |line: &str| -> Vec<String> {
        line.split("  ").map(str::trim).filter(|cell| !cell.is_empty()).map(String::from).collect()
    };
    assert_eq!(cells(lines[0]), header, "{}", lines[0]);
    lines[1..].iter().map(|line| cells(line)).collect()
}

const NODES_HEADER: [&str; 7] =
    ["NAME", "ADDRESS", "ALIVE", "INCARNATION", "LEASE UNTIL", "LEASE LEFT", "HOSTS"];
const OBJECTS_HEADER: [&str; 6] = ["TYPE", "ID", "OWNER", "EPOCH", "ALIVE", "NAME"];

fn json_lines(run: &Run) -> Vec<serde_json::Value> {
    run.ok().lines().map(|line| serde_json::from_str(line).unwrap()).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nodes_lists_a_live_node_with_its_address_lease_and_types_then_dead_once_it_left() {
    let cluster = Cluster::start().await;
    let addr = cluster.rt.local_addr().unwrap().to_string();

    let run = cluster.stead("nodes", &[]);
    assert_eq!(run.stderr, "");
    let rows = table(&run, &NODES_HEADER);
    assert_eq!(rows.len(), 1, "{}", run.stdout);
    let row = &rows[0];
    assert_eq!(
        (row[0].as_str(), row[1].as_str(), row[2].as_str(), row[3].as_str()),
        ("ohio", addr.as_str(), "yes", "1")
    );
    assert!(row[4].ends_with('Z') && row[4].len() == 20, "a UTC time to the second: {}", row[4]);
    assert!(!row[5].starts_with('-'), "a live lease has time left: {}", row[5]);
    let mut hosts: Vec<&str> = row[6].split(", ").collect();
    hosts.sort();
    assert_eq!(hosts, ["Account", "Ledger"]);

    let json = json_lines(&cluster.stead("nodes", &["--json"]));
    assert_eq!(json.len(), 1);
    let node = &json[0];
    assert_eq!((node["name"].as_str(), node["addr"].as_str()), (Some("ohio"), Some(addr.as_str())));
    assert_eq!((node["alive"].as_bool(), node["incarnation"].as_i64()), (Some(true), Some(1)));
    assert!(node["lease_left_ms"].as_i64().unwrap() > 0, "{node}");
    assert!(node["lease_until"].as_str().unwrap().ends_with('Z'), "{node}");
    assert!(node["lease_until_unix_ms"].as_i64().unwrap() > node["started_at_unix_ms"].as_i64().unwrap());
    assert_eq!(node["hosts"].as_array().unwrap().len(), 2, "{node}");

    // A node that shuts down ends its lease at once.
    cluster.rt.shutdown().await.unwrap();
    let rows = table(&cluster.stead("nodes", &[]), &NODES_HEADER);
    assert_eq!((rows[0][0].as_str(), rows[0][2].as_str()), ("ohio", "no"));
    let json = json_lines(&cluster.stead("nodes", &["--json"]));
    assert_eq!(json[0]["alive"].as_bool(), Some(false));
    assert!(json[0]["lease_left_ms"].as_i64().unwrap() <= 0, "{}", json[0]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn objects_with_postgres_lists_the_directory_by_type_then_id_with_owner_epoch_liveness_and_name() {
    let cluster = Cluster::start().await;
    let placed = cluster.fill().await;

    let run = cluster.stead("objects", &[]);
    assert_eq!(run.stderr, "");
    let rows = table(&run, &OBJECTS_HEADER);
    let mut accounts = vec![placed.alice.as_str(), placed.bob.as_str(), placed.unnamed.as_str()];
    accounts.sort();
    let mut expected: Vec<(&str, &str)> = accounts.into_iter().map(|id| ("Account", id)).collect();
    expected.push(("Ledger", placed.books.as_str()));
    let listed: Vec<(&str, &str)> = rows.iter().map(|row| (row[0].as_str(), row[1].as_str())).collect();
    assert_eq!(listed, expected);
    for row in &rows {
        assert_eq!((row[2].as_str(), row[3].as_str(), row[4].as_str()), ("ohio", "1", "yes"), "{row:?}");
    }
    let name = |id: &str| rows.iter().find(|row| row[1] == id).unwrap().get(5).cloned().unwrap_or_default();
    assert_eq!(name(&placed.alice), "alice");
    assert_eq!(name(&placed.bob), "bob");
    assert_eq!(name(&placed.unnamed), "", "an object made with unique_id has no name");
    assert_eq!(name(&placed.books), "books");

    let json = json_lines(&cluster.stead("objects", &["--json"]));
    assert_eq!(json.len(), 4);
    let alice = json.iter().find(|row| row["id"] == placed.alice.as_str()).unwrap();
    assert_eq!(alice["type"], "Account");
    assert_eq!(alice["name"], "alice");
    assert_eq!(alice["owner"], "ohio");
    assert_eq!((alice["epoch"].as_i64(), alice["owner_alive"].as_bool()), (Some(1), Some(true)));
    assert!(alice["placed_at"].as_str().unwrap().ends_with('Z'), "{alice}");
    let unnamed = json.iter().find(|row| row["id"] == placed.unnamed.as_str()).unwrap();
    assert!(unnamed["name"].is_null(), "{unnamed}");

    // Its owner gone, an object is listed with a dead owner.
    cluster.rt.shutdown().await.unwrap();
    let rows = table(&cluster.stead("objects", &[]), &OBJECTS_HEADER);
    assert_eq!(rows.len(), 4);
    assert!(rows.iter().all(|row| row[4] == "no"), "{rows:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn objects_with_postgres_filters_by_type_name_and_owner_and_stops_at_the_limit() {
    let cluster = Cluster::start().await;
    let placed = cluster.fill().await;
    let ids = |extra: &[&str]| -> Vec<String> {
        table(&cluster.stead("objects", extra), &OBJECTS_HEADER)
            .into_iter()
            .map(|row| row[1].clone())
            .collect()
    };
    assert_eq!(ids(&["--type", "Ledger"]), [placed.books.as_str()]);
    assert_eq!(ids(&["--name", "li"]), [placed.alice.as_str()]);
    assert_eq!(ids(&["--type", "Account", "--name", "o"]), [placed.bob.as_str()]);
    assert_eq!(ids(&["--owner", "ohio", "--type", "Ledger"]), [placed.books.as_str()]);
    assert_eq!(ids(&["--limit", "2"]).len(), 2);
    assert_eq!(json_lines(&cluster.stead("objects", &["--limit", "3", "--json"])).len(), 3);

    let run = cluster.stead("objects", &["--owner", "seoul"]);
    assert_eq!((run.ok(), run.stderr.trim_end()), ("", "stead: no objects match"));
    let run = cluster.stead("objects", &["--type", "Acount"]);
    assert_eq!(run.ok(), "");
    assert!(
        run.stderr.contains("no objects of type `Acount`") && run.stderr.contains("`Account`, `Ledger`"),
        "{}",
        run.stderr
    );

    // `--with-alarm` reads the nodes' storage, which PostgreSQL does not hold.
    let run = cluster.stead("objects", &["--with-alarm"]);
    assert_eq!(run.code, Some(2), "clap refuses it: {}", run.stderr);
    assert!(run.stderr.contains("--with-alarm"), "{}", run.stderr);
    // And `--owner` needs the directory that knows owners.
    let dir = tempfile::tempdir().unwrap();
    let error =
        stead([OsStr::new("objects"), OsStr::new("--owner"), OsStr::new("ohio"), dir.path().as_os_str()]);
    assert!(
        error.failed().contains("`--owner` applies to a PostgreSQL cluster's directory"),
        "{}",
        error.stderr
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_database_without_stead_tables_or_with_newer_ones_is_refused_saying_what_to_do() {
    let pg = TempPostgres::start().unwrap();
    let conninfo = pg.conninfo();
    let admin = sql(&conninfo).await;
    // One statement each: CREATE DATABASE refuses to share a query string.
    admin.batch_execute("CREATE DATABASE empty").await.unwrap();
    admin.batch_execute("CREATE DATABASE newer").await.unwrap();

    let empty = format!("{conninfo} dbname=empty");
    for command in ["nodes", "objects"] {
        let run = stead([command, "--postgres", empty.as_str()]);
        let error = run.failed();
        assert!(error.contains("holds no stead cluster (no table `stead_schema`)"), "{error}");
        assert!(error.contains("start a node of the cluster first"), "{error}");
    }

    let newer = format!("{conninfo} dbname=newer");
    sql(&newer)
        .await
        .batch_execute(
            "CREATE TABLE stead_schema (version integer NOT NULL, cluster_id text NOT NULL);
             INSERT INTO stead_schema VALUES (99, 'from a later release');",
        )
        .await
        .unwrap();
    for command in ["nodes", "objects"] {
        let run = stead([command, "--postgres", newer.as_str()]);
        let error = run.failed();
        assert!(error.contains("tables of version 99, newer than version 3"), "{error}");
        assert!(error.contains("use the `stead` command of the release the cluster's nodes run"), "{error}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_tool_reads_without_writing_anything() {
    let cluster = Cluster::start().await;
    cluster.fill().await;
    cluster.rt.shutdown().await.unwrap();
    let snapshot = || async {
        let rows = cluster
            .sql()
            .await
            .query(
                "SELECT (SELECT string_agg(t::text, ';' ORDER BY t::text) FROM stead_nodes t) || '|' ||
                        (SELECT string_agg(o::text, ';' ORDER BY o::text) FROM stead_objects o) || '|' ||
                        (SELECT string_agg(s::text, ';') FROM stead_schema s)",
                &[],
            )
            .await
            .unwrap();
        rows[0].get::<_, String>(0)
    };
    let before = snapshot().await;
    cluster.stead("nodes", &[]).ok();
    cluster.stead("objects", &["--json"]).ok();
    assert_eq!(snapshot().await, before);
}

#[test]
fn a_postgres_that_refuses_or_never_answers_is_reported_with_what_to_check() {
    // A port nobody listens on any more: the connection is refused.
    let port = TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let refused = format!("host=127.0.0.1 port={port} user=postgres");
    for command in ["nodes", "objects"] {
        let error = stead([command, "--postgres", refused.as_str()]).failed().to_string();
        assert!(error.contains("cannot connect to PostgreSQL"), "{error}");
        assert!(error.contains("check that it runs and that the conninfo reaches it"), "{error}");
    }

    // A listener that never accepts: the connection hangs until the timeout.
    let silent = TcpListener::bind("127.0.0.1:0").unwrap();
    let conninfo = format!("host=127.0.0.1 port={} user=postgres", silent.local_addr().unwrap().port());
    let error = stead(["nodes", "--postgres", conninfo.as_str(), "--timeout", "300ms"]).failed().to_string();
    assert!(error.contains("within 300ms"), "{error}");
    assert!(error.contains("check that it runs and that the conninfo reaches it"), "{error}");

    let error = stead(["objects", "--postgres", "host=127.0.0.1 port=not-a-port"]).failed().to_string();
    assert!(error.contains("the conninfo cannot be read"), "{error}");
}
