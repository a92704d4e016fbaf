//! A cluster on PostgreSQL: three nodes find each other in PostgreSQL (no
//! peer list), two workers read each other's writes, and a node killed with
//! `kill -9` is noticed within its lease, its document moves to a live node
//! with its storage (replicated in PostgreSQL), and the node rejoins once
//! restarted. (`examples/failover.rs` measures the failover time.)
//!
//! One command (starts a throw-away PostgreSQL when none is given):
//!     cargo run --example postgres_cluster
//!     cargo run --example postgres_cluster -- --postgres "host=localhost user=stead dbname=stead"
//! By hand, one terminal each, against your own PostgreSQL:
//!     STEAD_EXAMPLE_POSTGRES="host=..." cargo run --example postgres_cluster -- node ohio
//!
//! The throw-away server needs PostgreSQL's binaries (`initdb`, `postgres`;
//! Debian: `apt-get install postgresql`).

use std::path::PathBuf;
use std::time::{Duration, Instant};

use stead::{Context, Runtime, durable_object};

#[path = "support/nodes.rs"]
mod nodes;
use nodes::Nodes;

/// A text document that lives on one node.
pub struct Document {
    ctx: Context,
}

#[durable_object]
impl Document {
    /// Constructs the document (on the node it lives on).
    pub async fn new(ctx: Context) -> Self {
        Document { ctx }
    }

    /// Replaces the text.
    pub fn write(&mut self, text: String) -> stead::Result<()> {
        self.ctx.storage().put("text", &text)
    }

    /// The text, if any was written.
    pub fn read(&self) -> stead::Result<Option<String>> {
        self.ctx.storage().get("text")
    }
}

/// Every process shares this secret (ids), this CA (TLS), this PostgreSQL.
const SECRET: &str = "the secret of the stead PostgreSQL example";
const POSTGRES_VAR: &str = "STEAD_EXAMPLE_POSTGRES";
/// Short, to show failure detection in seconds (the default is 10 s).
const LEASE: Duration = Duration::from_secs(3);

fn base_dir() -> PathBuf {
    PathBuf::from("data").join("postgres-example")
}

fn builder(name: &str, conninfo: &str) -> stead::Result<stead::RuntimeBuilder> {
    let identity = stead::tls::dev_identity(&base_dir().join("tls"), name)
        .map_err(|e| stead::Error::Config(e.to_string()))?;
    Ok(Runtime::builder().postgres(conninfo).lease(LEASE).secret(SECRET).tls(identity))
}

async fn node(name: &str) -> stead::Result<()> {
    let conninfo = std::env::var(POSTGRES_VAR)
        .map_err(|_| stead::Error::Config(format!("set {POSTGRES_VAR} to the PostgreSQL conninfo")))?;
    let rt = builder(name, &conninfo)?
        .node(name)
        .listen("127.0.0.1:0".parse().map_err(|_| stead::Error::Config("bad address".into()))?)
        .data_dir(base_dir().join(name))
        .host::<Document>()
        .build()
        .await?;
    println!("node {name} listening on {}", rt.local_addr().map_or("?".into(), |a| a.to_string()));
    tokio::signal::ctrl_c().await.ok();
    rt.shutdown().await
}

/// The one-command tour.
async fn everything(conninfo: &str) -> stead::Result<()> {
    let io = |e: std::io::Error| stead::Error::Transport(e.to_string());
    println!("three nodes register in PostgreSQL (no peer list):");
    let mut nodes = Nodes::default();
    for name in ["ohio", "seoul", "osaka"] {
        println!("  {}", nodes.start(name, &[], (POSTGRES_VAR, conninfo), "node ").map_err(io)?);
    }

    let a = builder("worker-a", conninfo)?.client().in_memory().build().await?;
    let b = builder("worker-b", conninfo)?.client().in_memory().build().await?;
    for node in a.nodes().await? {
        println!("  member {} at {}, alive: {}, hosts {:?}", node.name, node.addr, node.alive, node.hosts);
    }

    let documents = a.namespace::<Document>();
    let id = documents.unique_id();
    documents.stub_at(&id, "seoul").write("hello from worker A".into()).await??;
    let same = b.namespace::<Document>().id_from_str(&id.to_string())?;
    let read = b.namespace::<Document>().stub(&same).read().await??;
    println!("worker A wrote on seoul, worker B read: {}", read.unwrap_or_default());

    println!("kill -9 seoul (lease {LEASE:?}):");
    nodes.kill("seoul").map_err(io)?;
    let killed = Instant::now();
    while a.nodes().await?.iter().any(|n| n.name == "seoul" && n.alive) {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    println!("  PostgreSQL counts seoul dead after {:.1?}", killed.elapsed());
    let moved = Instant::now();
    loop {
        match b.namespace::<Document>().stub(&same).read().await {
            Ok(read) => {
                println!(
                    "  {:.1?} later, worker B reads it from another node: {}",
                    moved.elapsed(),
                    read?.unwrap_or_default()
                );
                break;
            }
            Err(err) if err.is_retryable() && moved.elapsed() < Duration::from_secs(30) => {
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            Err(err) => return Err(err),
        }
    }

    println!("restart seoul:");
    println!("  {}", nodes.start("seoul", &[], (POSTGRES_VAR, conninfo), "node ").map_err(io)?);
    let fresh = documents.unique_id();
    let back = Instant::now();
    // Callers see the new incarnation once they read the members again.
    while let Err(err) = documents.stub_at(&fresh, "seoul").write("a new document".into()).await {
        if !err.is_retryable() || back.elapsed() > Duration::from_secs(30) {
            return Err(err);
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    println!("  after {:.1?}, seoul is back and hosts new documents", back.elapsed());
    a.shutdown().await?;
    b.shutdown().await?;
    drop(nodes);
    Ok(())
}

#[tokio::main]
async fn main() -> stead::Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    match args.iter().map(String::as_str).collect::<Vec<_>>().as_slice() {
        ["node", name] => node(name).await,
        ["--postgres", conninfo] => everything(conninfo).await,
        [] => {
            println!("starting a throw-away PostgreSQL...");
            let pg = stead_pgtemp::TempPostgres::start().map_err(|e| stead::Error::Config(e.to_string()))?;
            everything(&pg.conninfo()).await
        }
        _ => {
            eprintln!("usage: postgres_cluster [--postgres CONNINFO | node NAME]");
            Ok(())
        }
    }
}
