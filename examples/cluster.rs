//! Two nodes and two workers: the seed's strong read-after-write.
//!
//! Worker A (a client-only process) mints an id, writes through the object,
//! and prints the id string. Worker B (another process) parses the string
//! with `id_from_str` and reads what A wrote: both reach the one object, on
//! the one node where it lives, so B's read sees A's write.
//!
//! One command (starts everything, then stops the nodes):
//!     cargo run --example cluster
//! Or by hand, each in its own terminal:
//!     cargo run --example cluster -- node ohio
//!     cargo run --example cluster -- node seoul
//!     cargo run --example cluster -- write            # prints: id <64 hex digits>
//!     cargo run --example cluster -- read <id>

use std::io::{BufRead, BufReader};
use std::net::{SocketAddr, UdpSocket};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};

use stead::{Context, Runtime, durable_object};

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

/// Every process of the example shares this secret (ids) and this CA (TLS).
const SECRET: &str = "the secret of the stead cluster example";
const PEERS_VAR: &str = "STEAD_EXAMPLE_PEERS";

fn base_dir() -> PathBuf {
    PathBuf::from("data").join("cluster-example")
}

/// The peer list: from the environment (one-command mode) or fixed ports.
fn peers() -> Vec<(String, SocketAddr)> {
    let text = std::env::var(PEERS_VAR).unwrap_or_else(|_| "ohio=127.0.0.1:4701,seoul=127.0.0.1:4702".into());
    text.split(',')
        .filter_map(|peer| {
            let (name, addr) = peer.split_once('=')?;
            Some((name.to_string(), addr.parse().ok()?))
        })
        .collect()
}

fn builder(name: &str) -> stead::Result<stead::RuntimeBuilder> {
    let identity = stead::tls::dev_identity(&base_dir().join("tls"), name)
        .map_err(|e| stead::Error::Config(e.to_string()))?;
    let mut builder = Runtime::builder().secret(SECRET).tls(identity);
    for (peer, addr) in peers() {
        builder = builder.peer(peer, addr);
    }
    Ok(builder)
}

async fn node(name: &str) -> stead::Result<()> {
    let rt = builder(name)?.node(name).data_dir(base_dir().join(name)).host::<Document>().build().await?;
    println!("node {name} listening on {}", rt.local_addr().map_or("?".into(), |a| a.to_string()));
    tokio::signal::ctrl_c().await.ok();
    rt.shutdown().await
}

async fn write() -> stead::Result<()> {
    let rt = builder("worker-a")?.client().in_memory().build().await?;
    let documents = rt.namespace::<Document>();
    let id = documents.unique_id();
    // Placed on seoul: the first call names where the object lives.
    documents.stub_at(&id, "seoul").write("hello from worker A".into()).await??;
    println!("id {id}");
    rt.shutdown().await
}

async fn read(text: &str) -> stead::Result<()> {
    let rt = builder("worker-b")?.client().in_memory().build().await?;
    let documents = rt.namespace::<Document>();
    let id = documents.id_from_str(text)?;
    let value = documents.stub(&id).read().await??;
    println!("worker B read: {}", value.unwrap_or_default());
    rt.shutdown().await
}

/// Runs this example's own binary with `args`, its stdout piped.
fn spawn(args: &[&str], peers: &str) -> std::io::Result<Child> {
    Command::new(std::env::current_exe()?).args(args).env(PEERS_VAR, peers).stdout(Stdio::piped()).spawn()
}

/// The first line of `child`'s output that starts with `prefix`.
fn line_starting(child: &mut Child, prefix: &str) -> Option<String> {
    let stdout = child.stdout.take()?;
    let mut lines = BufReader::new(stdout).lines();
    let found = lines.by_ref().map_while(Result::ok).find(|line| line.starts_with(prefix));
    // Keep draining so the child never blocks on a full pipe.
    std::thread::spawn(move || lines.for_each(drop));
    found
}

/// The one-command mode: two nodes on OS-chosen ports, then both workers.
fn everything() -> std::io::Result<()> {
    let sockets: Vec<_> = (0..2).map(|_| UdpSocket::bind("127.0.0.1:0")).collect::<Result<_, _>>()?;
    let addrs: Vec<_> = sockets.iter().map(|s| s.local_addr()).collect::<Result<_, _>>()?;
    drop(sockets);
    let peers = format!("ohio={},seoul={}", addrs[0], addrs[1]);
    let mut nodes = Vec::new();
    for name in ["ohio", "seoul"] {
        let mut node = spawn(&["node", name], &peers)?;
        if let Some(line) = line_starting(&mut node, "node") {
            println!("{line}");
        }
        nodes.push(node);
    }
    let mut writer = spawn(&["write"], &peers)?;
    let id = line_starting(&mut writer, "id ").unwrap_or_default();
    println!("worker A wrote through {id}");
    let id = id.trim_start_matches("id ").to_string();
    let mut reader = spawn(&["read", &id], &peers)?;
    if let Some(line) = line_starting(&mut reader, "worker B") {
        println!("{line}");
    }
    for mut child in nodes.into_iter().chain([writer, reader]) {
        let _ = child.kill();
        let _ = child.wait();
    }
    Ok(())
}

#[tokio::main]
async fn main() -> stead::Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    match args.iter().map(String::as_str).collect::<Vec<_>>().as_slice() {
        ["node", name] => node(name).await,
        ["write"] => write().await,
        ["read", id] => read(id).await,
        [] => everything().map_err(|e| stead::Error::Transport(e.to_string())),
        _ => {
            eprintln!("usage: cluster [node NAME | write | read ID]");
            Ok(())
        }
    }
}
