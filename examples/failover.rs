//! Failover with replicated storage: an account lives on one of three
//! nodes; its node is killed with `kill -9` during a stream of deposits;
//! the account comes back on another node with every acknowledged deposit.
//! Prints the failover time (from the kill to the first successful call on
//! the new node), three rounds.
//!
//! One command (starts a throw-away PostgreSQL when none is given):
//!     cargo run --release --example failover
//!     cargo run --release --example failover -- --postgres "host=localhost user=stead dbname=stead"
//!
//! The throw-away server needs PostgreSQL's binaries (`initdb`, `postgres`;
//! Debian: `apt-get install postgresql`).

use std::path::PathBuf;
use std::time::{Duration, Instant};

use stead::{Context, Runtime, durable_object};

#[path = "support/nodes.rs"]
mod nodes;
use nodes::Nodes;

/// A list of deposits.
pub struct Account {
    ctx: Context,
}

#[durable_object]
impl Account {
    /// Constructs the account (on the node it lives on now).
    pub async fn new(ctx: Context) -> Self {
        Account { ctx }
    }

    /// Records a deposit; returns how many there are.
    pub fn deposit(&mut self, cents: u64) -> stead::Result<usize> {
        let mut deposits: Vec<u64> = self.ctx.storage().get("deposits")?.unwrap_or_default();
        deposits.push(cents);
        self.ctx.storage().put("deposits", &deposits)?;
        Ok(deposits.len())
    }

    /// Every deposit, in order.
    pub fn deposits(&self) -> stead::Result<Vec<u64>> {
        Ok(self.ctx.storage().get("deposits")?.unwrap_or_default())
    }
}

const SECRET: &str = "the secret of the stead failover example";
const POSTGRES_VAR: &str = "STEAD_EXAMPLE_POSTGRES";
/// Short, to fail over in seconds (the default is 10 s).
const LEASE: Duration = Duration::from_secs(2);
const NODES: [&str; 3] = ["ohio", "seoul", "osaka"];

fn base_dir() -> PathBuf {
    std::env::temp_dir().join(format!("stead-failover-example-{}", std::process::id()))
}

fn builder(name: &str, conninfo: &str, base: &std::path::Path) -> stead::Result<stead::RuntimeBuilder> {
    let identity =
        stead::tls::dev_identity(&base.join("tls"), name).map_err(|e| stead::Error::Config(e.to_string()))?;
    Ok(Runtime::builder()
        .postgres(conninfo)
        .lease(LEASE)
        .secret(SECRET)
        .tls(identity)
        .keep_alive(Duration::from_millis(250))
        .peer_timeout(Duration::from_secs(2)))
}

/// A node process: hosts accounts until killed.
async fn node(name: &str, base: &str) -> stead::Result<()> {
    let conninfo = std::env::var(POSTGRES_VAR)
        .map_err(|_| stead::Error::Config(format!("set {POSTGRES_VAR} to the PostgreSQL conninfo")))?;
    let base = PathBuf::from(base);
    let rt = builder(name, &conninfo, &base)?
        .node(name)
        .listen("127.0.0.1:0".parse().map_err(|_| stead::Error::Config("bad address".into()))?)
        .data_dir(base.join(name))
        .host::<Account>()
        .build()
        .await?;
    println!("ready");
    tokio::signal::ctrl_c().await.ok();
    rt.shutdown().await
}

async fn owner(conninfo: &str, id: &stead::ObjectId) -> stead::Result<String> {
    let unavailable = |e: tokio_postgres::Error| stead::Error::Unavailable(e.to_string());
    let (client, connection) =
        tokio_postgres::connect(conninfo, tokio_postgres::NoTls).await.map_err(unavailable)?;
    tokio::spawn(connection);
    let row = client
        .query_one("SELECT owner FROM stead_objects WHERE id = $1", &[&id.as_bytes().as_slice()])
        .await
        .map_err(unavailable)?;
    Ok(row.get(0))
}

async fn everything(conninfo: &str) -> stead::Result<()> {
    let io = |e: std::io::Error| stead::Error::Transport(e.to_string());
    let base = base_dir();
    let base_arg = base.display().to_string();
    let mut nodes = Nodes::default();
    for name in NODES {
        nodes.start(name, &[&base_arg], (POSTGRES_VAR, conninfo), "ready").map_err(io)?;
    }
    let client = builder("client", conninfo, &base)?.client().in_memory().build().await?;
    let accounts = client.namespace::<Account>();
    let id = accounts.id_from_name("alice");
    let mut acknowledged = 0;
    for round in 1..=3 {
        let stub = accounts.stub(&id);
        for _ in 0..50 {
            stub.deposit(100).await??;
            acknowledged += 1;
        }
        let victim = owner(conninfo, &id).await?;
        nodes.kill(&victim).map_err(io)?;
        let killed = Instant::now();
        let count = loop {
            match accounts.stub(&id).deposits().await {
                Ok(deposits) => break deposits?.len(),
                Err(err) if err.is_retryable() && killed.elapsed() < Duration::from_secs(60) => {
                    tokio::time::sleep(Duration::from_millis(20)).await;
                }
                Err(err) => return Err(err),
            }
        };
        let failover = killed.elapsed();
        println!(
            "round {round}: kill -9 {victim}; alice answered from {} after {failover:.2?} (lease {LEASE:?}), \
             with {count} deposits ({acknowledged} acknowledged)",
            owner(conninfo, &id).await?
        );
        assert!(count >= acknowledged, "an acknowledged deposit was lost");
        acknowledged = count;
        // The killed node comes back, empty-handed: a new incarnation.
        nodes.start(&victim, &[&base_arg], (POSTGRES_VAR, conninfo), "ready").map_err(io)?;
    }
    client.shutdown().await?;
    drop(nodes);
    let _ = std::fs::remove_dir_all(base);
    Ok(())
}

#[tokio::main]
async fn main() -> stead::Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    match args.iter().map(String::as_str).collect::<Vec<_>>().as_slice() {
        ["node", name, base] => node(name, base).await,
        ["--postgres", conninfo] => everything(conninfo).await,
        [] => {
            println!("starting a throw-away PostgreSQL...");
            let pg = stead_pgtemp::TempPostgres::start().map_err(|e| stead::Error::Config(e.to_string()))?;
            everything(&pg.conninfo()).await
        }
        _ => {
            eprintln!("usage: failover [--postgres CONNINFO]");
            Ok(())
        }
    }
}
