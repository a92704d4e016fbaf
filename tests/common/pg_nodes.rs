//! A throw-away PostgreSQL server and the node processes of one cluster on
//! it, for the tests of the cluster on PostgreSQL (`postgres_cluster.rs`)
//! and of replicated storage (`failover.rs`). Included by path, after
//! `common/process.rs`:
//!
//! ```ignore
//! #[path = "common/process.rs"]
//! mod process;
//! #[path = "common/pg_nodes.rs"]
//! mod pg_nodes;
//! ```
//!
//! Each node is the test binary itself, running the file's ignored node
//! test (named when the cluster starts), which finds what it is in
//! [`NodeEnv::from_env`] and serves with [`NodeEnv::serve`].

#![allow(dead_code)] // each test file uses its own part

use std::future::Future;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use stead::{ObjectId, Runtime, RuntimeBuilder};
use stead_pgtemp::TempPostgres;

use crate::process::ChildGuard;

const ROLE: &str = "STEAD_PG_ROLE";
const NAME: &str = "STEAD_PG_NAME";
const CONNINFO: &str = "STEAD_PG_CONNINFO";
const TLS_DIR: &str = "STEAD_PG_TLS";
const DATA_DIR: &str = "STEAD_PG_DATA";
const LEASE_MS: &str = "STEAD_PG_LEASE_MS";

/// The cluster secret of every process of these tests.
pub(crate) const SECRET: &str = "the postgres cluster test secret, shared by every process";

/// What a node process is, from the environment its cluster gave it.
pub(crate) struct NodeEnv {
    pub(crate) name: String,
    pub(crate) conninfo: String,
    pub(crate) tls_dir: PathBuf,
    pub(crate) data_dir: PathBuf,
    pub(crate) lease: Duration,
}

impl NodeEnv {
    /// The node this process is, if it is one.
    pub(crate) fn from_env() -> Option<NodeEnv> {
        if std::env::var(ROLE).as_deref() != Ok("node") {
            return None;
        }
        let var = |name: &str| std::env::var(name).unwrap();
        Some(NodeEnv {
            name: var(NAME),
            conninfo: var(CONNINFO),
            tls_dir: var(TLS_DIR).into(),
            data_dir: var(DATA_DIR).into(),
            lease: Duration::from_millis(var(LEASE_MS).parse().unwrap()),
        })
    }

    /// The node's builder: its name, the cluster's PostgreSQL, its data
    /// and certificate; the caller adds the types it hosts.
    pub(crate) fn builder(&self) -> RuntimeBuilder {
        node_builder(&self.name, &self.conninfo, &self.tls_dir, &self.data_dir, self.lease)
    }

    /// Says the node is ready, then serves until it is killed.
    pub(crate) async fn serve(rt: Runtime) {
        println!("listening {}", rt.local_addr().unwrap());
        println!("ready");
        loop {
            tokio::time::sleep(Duration::from_secs(60)).await;
        }
    }
}

/// A node's builder, in this process or in a node process.
pub(crate) fn node_builder(
    name: &str,
    conninfo: &str,
    tls_dir: &std::path::Path,
    data_dir: &std::path::Path,
    lease: Duration,
) -> RuntimeBuilder {
    let builder = Runtime::builder()
        .node(name)
        .postgres(conninfo)
        .listen("127.0.0.1:0".parse().unwrap())
        .lease(lease)
        .tls(stead::tls::dev_identity(tls_dir, name).unwrap())
        .secret(SECRET)
        .data_dir(data_dir);
    liveness(builder)
}

/// Failure detection fit for one busy machine.
pub(crate) fn liveness(builder: RuntimeBuilder) -> RuntimeBuilder {
    builder
        .keep_alive(Duration::from_millis(250))
        .peer_timeout(Duration::from_secs(3))
        .connect_timeout(Duration::from_secs(3))
}

/// A PostgreSQL server and the nodes of one cluster on it.
pub(crate) struct PgNodes {
    pub(crate) pg: TempPostgres,
    pub(crate) dir: tempfile::TempDir,
    pub(crate) lease: Duration,
    /// The ignored test that runs a node.
    node_test: &'static str,
    nodes: Vec<(String, Option<ChildGuard>)>,
}

impl PgNodes {
    /// Starts a server and nodes `names`, each running `node_test`.
    pub(crate) fn start(node_test: &'static str, names: &[&str], lease: Duration) -> PgNodes {
        let pg = TempPostgres::start().unwrap();
        let dir = tempfile::tempdir().unwrap();
        let mut nodes = PgNodes { pg, dir, lease, node_test, nodes: Vec::new() };
        for name in names {
            nodes.start_node(name);
        }
        nodes
    }

    pub(crate) fn tls_dir(&self) -> PathBuf {
        self.dir.path().join("tls")
    }

    /// Starts node `name` (again, with its data, if it ran before).
    pub(crate) fn start_node(&mut self, name: &str) {
        let env = [
            (ROLE, "node".to_string()),
            (NAME, name.to_string()),
            (CONNINFO, self.pg.conninfo()),
            (TLS_DIR, self.tls_dir().display().to_string()),
            (DATA_DIR, self.dir.path().join(name).display().to_string()),
            (LEASE_MS, self.lease.as_millis().to_string()),
        ];
        let node = ChildGuard::spawn(self.node_test, &env);
        node.wait_for("ready");
        match self.nodes.iter_mut().find(|(n, _)| n == name) {
            Some((_, slot)) => *slot = Some(node),
            None => self.nodes.push((name.to_string(), Some(node))),
        }
    }

    /// `kill -9`.
    pub(crate) fn kill(&mut self, name: &str) {
        self.nodes.iter_mut().find(|(n, _)| n == name).unwrap().1 = None;
    }

    /// Sends `signal` (`-STOP`, `-CONT`) to node `name`.
    pub(crate) fn signal(&self, name: &str, signal: &str) {
        let pid = self.node(name).child.id().to_string();
        assert!(std::process::Command::new("kill").args([signal, &pid]).status().unwrap().success());
    }

    pub(crate) fn node(&self, name: &str) -> &ChildGuard {
        self.nodes.iter().find(|(n, _)| n == name).and_then(|(_, node)| node.as_ref()).unwrap()
    }

    /// The running nodes.
    pub(crate) fn running(&self) -> impl Iterator<Item = &ChildGuard> {
        self.nodes.iter().filter_map(|(_, node)| node.as_ref())
    }

    /// A client's builder, named `name` (its certificate's name).
    pub(crate) fn client_builder(&self, name: &str) -> RuntimeBuilder {
        let builder = Runtime::builder()
            .client()
            .postgres(self.pg.conninfo())
            .lease(self.lease)
            .tls(stead::tls::dev_identity(&self.tls_dir(), name).unwrap())
            .secret(SECRET)
            .in_memory();
        liveness(builder)
    }

    /// A client named `name`.
    pub(crate) async fn client(&self, name: &str) -> Runtime {
        self.client_builder(name).build().await.unwrap()
    }

    /// A connection of the test's own to the cluster's database.
    pub(crate) async fn sql(&self) -> tokio_postgres::Client {
        sql(&self.pg).await
    }

    /// The node that owns object `id`, as the directory says.
    pub(crate) async fn owner(&self, id: &ObjectId) -> String {
        let row = self
            .sql()
            .await
            .query_one("SELECT owner FROM stead_objects WHERE id = $1", &[&id.as_bytes().as_slice()])
            .await
            .unwrap();
        row.get(0)
    }
}

/// A connection of the test's own to `pg`.
pub(crate) async fn sql(pg: &TempPostgres) -> tokio_postgres::Client {
    let (client, connection) = tokio_postgres::connect(&pg.conninfo(), tokio_postgres::NoTls).await.unwrap();
    tokio::spawn(connection);
    client
}

/// Retries `call` (each time with what it makes anew, such as a new stub)
/// while it fails with a retryable error, for at most `within`.
pub(crate) async fn eventually<T, F: Future<Output = stead::Result<T>>>(
    within: Duration,
    mut call: impl FnMut() -> F,
) -> T {
    let deadline = Instant::now() + within;
    loop {
        match call().await {
            Ok(value) => return value,
            Err(err) if err.is_retryable() && Instant::now() < deadline => {
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            Err(err) => panic!("still failing after {within:?}: {err}"),
        }
    }
}
