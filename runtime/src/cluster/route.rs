//! Calls across the network, the caller's side: a stub's route in a
//! cluster. (The node's side is `serve.rs`.)
//!
//! A stub's first call finds its object (`opening.rs`): in the caller's
//! poll, it places the object or learns its owner, and opens a stream to
//! the owner's node unless that is this node. Calls made meanwhile wait in
//! the stub's bounded queue, and are then handed on in order. An object on
//! this node gets the calls in its mailbox directly, and its callers run
//! its turns, as outside a cluster (still fenced: a node that may not serve
//! refuses them).
//!
//! E-order over QUIC: each stub (with its clones) gets one bidirectional
//! stream to the object's node. Once it is open, the stub method writes its
//! request to the stream itself, synchronously, when it is called
//! (`outbound.rs`), without waiting for replies (pipelining), and the
//! caller reads its own response (`inbound.rs`): no task stands between a
//! caller and the network; the stub's pump task writes only what the stream
//! could not take at once. The node pushes each request into the object's
//! mailbox in the order it reads them. QUIC delivers a stream's bytes in
//! order, so calls run in issue order. One stream per stub-object pair was
//! chosen over sequence numbers with a reorder buffer because QUIC already
//! does the reordering, streams are cheap, and a lost stream breaks exactly
//! the stubs that used it.
//!
//! A stub whose stream or connection fails is *broken*: calls in flight get
//! `Disconnected` (they may or may not have run), and so does every later
//! call, so that no call is silently skipped while later ones run. A new
//! stub starts a new order.

use std::collections::VecDeque;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex, Weak};
use std::task::Poll;

use stead_transport::frame::{FrameReader, MAX_FRAME_LEN, write_frame};
use stead_transport::{RecvStream, SendStream, codec};

use super::connections::connection_lost;
use super::inbound::Inbound;
use super::opening::{Opening, Search};
use super::outbound::{Flushed, Outbound};
use super::placement::{Cluster, Placed};
use crate::error::{Error, Result};
use crate::host::Host;
use crate::id::ObjectId;
use crate::local::{Activation, Call, Driver, HostedType, Message};
use crate::sync::lock;
use crate::wire::Hello;

/// The cluster route of a stub: where its calls stand, and its stream's
/// two sides.
pub(crate) struct ClusterRoute {
    /// How far the stub got in finding its object, shared with the search
    /// its first call started.
    pub(super) stage: Arc<Mutex<Stage>>,
    /// The stream's sending side, written by the callers (see `outbound.rs`).
    pub(super) outbound: Arc<Outbound>,
    /// The stream's receiving side, read by the callers (see `inbound.rs`).
    pub(crate) inbound: Arc<Inbound>,
    /// What the first call needs to find the object and reach it.
    pub(super) destination: Destination,
}

/// How far a stub got in finding its object. Every change happens under
/// the route's lock, together with the calls it moves, so that no call can
/// slip past the ones queued before it.
pub(super) enum Stage {
    /// No call yet.
    New,
    /// The first call is finding the object (with this search); the calls
    /// wait here, in order (at most `mailbox_capacity`).
    Opening(VecDeque<Call>, Weak<Search>),
    /// The object lives on this node: calls go into its mailbox, and their
    /// callers run its turns, as outside a cluster. `refused` is the first
    /// call this node refused to serve: every later call fails after it.
    Local { hosted: Arc<HostedType>, refused: Option<Error> },
    /// The stream is open: callers write to it (see `outbound.rs`).
    Remote,
    /// Finding the object failed: the stub is broken.
    Broken,
}

/// Where a stub's call went.
pub(crate) enum Sent {
    /// Onto the stream (with its sequence number), or into the queue of a
    /// stub whose first call is still finding the object (`None`).
    Remote(Option<u64>),
    /// Into the mailbox of the object, on this node (queued with
    /// `Driver::Caller`: the caller's poll runs the turn).
    Local(Arc<Activation>),
    /// It is the stub's first call: its reply finds the object first.
    First(Opening),
}

/// Where a route's calls go: the cluster, this process's objects of the
/// type (when it hosts them), and the node to place the object on if it has
/// no owner yet.
#[derive(Clone)]
pub(super) struct Destination {
    pub(super) host: Host,
    pub(super) cluster: Arc<Cluster>,
    pub(super) hosted: Option<Arc<HostedType>>,
    pub(super) target: Option<String>,
}

impl ClusterRoute {
    /// A route that places the object on node `target`, if it is not placed
    /// yet (by default: this node if it hosts the type, else the
    /// coordinator, or in PostgreSQL a live node that hosts it). Does no
    /// I/O: the first call finds the object.
    pub(crate) fn new(
        host: Host,
        cluster: Arc<Cluster>,
        hosted: Option<Arc<HostedType>>,
        type_name: &'static str,
        id: ObjectId,
        target: Option<String>,
    ) -> Self {
        let config = host.config();
        let outbound = Outbound::new(config.limits.stub_buffer_bytes, config.limits.stub_calls_in_flight);
        ClusterRoute {
            stage: Arc::new(Mutex::new(Stage::New)),
            outbound: Arc::new(outbound),
            inbound: Arc::new(Inbound::new(type_name, id)),
            destination: Destination { host, cluster, hosted, target },
        }
    }

    /// Sends `call`: writes it to the stream, puts it into the object's
    /// mailbox here, or queues it until the object is found (synchronously
    /// in every case, which fixes its place in the order). The stub's first
    /// call comes back as an [`Opening`]: its reply finds the object.
    pub(crate) fn send(&self, call: Call) -> Result<Sent> {
        let inbound = &self.inbound;
        if inbound.broken.load(Ordering::Acquire) {
            return Err(inbound.broken_error());
        }
        let mut stage = lock(&self.stage);
        match &mut *stage {
            Stage::Remote => {
                drop(stage);
                let seq = self.outbound.send(call, inbound)?;
                Ok(Sent::Remote(seq))
            }
            Stage::Local { hosted, refused } => {
                let hosted = hosted.clone();
                deliver(&self.destination.cluster, &hosted, inbound.id(), call, Driver::Caller, refused)
                    .map(Sent::Local)
                    .map_err(|(err, _)| err)
            }
            Stage::Opening(queue, search) => {
                let capacity = self.destination.host.config().mailbox_capacity;
                if queue.len() >= capacity {
                    return Err(Error::Overloaded(format!(
                        "{capacity} calls to `{}` object {} are waiting to be sent; retry later",
                        inbound.type_name(),
                        inbound.id()
                    )));
                }
                queue.push_back(call);
                // Its caller may await this call before the first one: the
                // search must go on without the first caller.
                let search = search.upgrade();
                drop(stage);
                if let Some(search) = search {
                    search.hand_over();
                }
                Ok(Sent::Remote(None))
            }
            Stage::New => {
                let search = Search::start(self);
                *stage = Stage::Opening(VecDeque::from([call]), Arc::downgrade(&search));
                drop(stage);
                Ok(Sent::First(Opening::new(search)))
            }
            Stage::Broken => Err(inbound.broken_error()),
        }
    }
}

/// Puts `call` into the mailbox of object `id` on this node, unless this
/// node may not serve now (a node cut off from the cluster's referee serves
/// nothing, its own callers included) or refused an earlier call of the
/// stub (`refused`, which the first refusal that breaks the order sets: no
/// call runs after a gap). Returns the activation the call was queued on,
/// or the error with the call, to answer its reply channel with.
pub(super) fn deliver(
    cluster: &Cluster,
    hosted: &Arc<HostedType>,
    id: ObjectId,
    call: Call,
    driver: Driver,
    refused: &mut Option<Error>,
) -> std::result::Result<Arc<Activation>, (Error, Option<Call>)> {
    if let Some(earlier) = refused {
        return Err((earlier.after_break(), Some(call)));
    }
    if let Err(err) = cluster.serving() {
        *refused = Some(err.clone());
        return Err((err, Some(call)));
    }
    hosted.send(id, Message::Call(call), driver).map_err(|(err, message)| {
        if err.breaks_order() {
            *refused = Some(err.clone());
        }
        match message {
            Message::Call(call) => (err, Some(call)),
            _ => (err, None),
        }
    })
}

impl Drop for ClusterRoute {
    fn drop(&mut self) {
        // The pump finishes the stream once what was sent is written.
        self.outbound.close();
    }
}

/// The task that writes what one stub's callers could not write to its
/// stream, once the first call opened it, and finishes the stream when the
/// stub is gone.
pub(super) struct Pump {
    pub(super) host: Host,
    pub(super) inbound: Arc<Inbound>,
    pub(super) outbound: Arc<Outbound>,
}

impl Pump {
    /// Starts reading the stream (after the test pause, if configured),
    /// then writes until the stub is gone.
    pub(super) async fn run(self, recv: RecvStream) {
        let host = &self.host;
        if let Some(pause) = host.config().stream_open_pause {
            tokio::time::sleep(pause).await;
        }
        self.inbound.open(FrameReader::new(recv, MAX_FRAME_LEN), |reader| host.spawn(reader));
        // From now on callers write; the pump writes what they could not.
        loop {
            self.outbound.pump.notified().await;
            let flushed = std::future::poll_fn(|cx| match self.outbound.poll_flush(cx) {
                Flushed::Blocked => Poll::Pending,
                done => Poll::Ready(done),
            })
            .await;
            if matches!(flushed, Flushed::Failed) {
                self.inbound.fail_all();
            }
            if self.outbound.is_finished() || matches!(flushed, Flushed::Failed) {
                self.outbound.finish();
                break;
            }
        }
        self.inbound.close();
    }
}

/// A stream to the object's node, and its two sides.
pub(super) type Stream = (SendStream, RecvStream);

/// Finds the owner of object `id` of `type_name` (placing the object if it
/// has none) and opens a stream to it; `None` when the object lives here.
/// Bounded by `call_timeout`, like a call.
pub(super) async fn open(destination: Destination, inbound: Arc<Inbound>) -> Result<Option<Stream>> {
    let timeout = destination.host.config().call_timeout;
    let (type_name, id) = (inbound.type_name(), inbound.id());
    tokio::time::timeout(timeout, open_now(&destination, &inbound)).await.unwrap_or_else(|_| {
        Err(Error::Timeout(format!(
            "could not reach `{type_name}` object {id} within {timeout:?} (`call_timeout`): placing it, or \
             connecting to its node, took too long; retry later"
        )))
    })
}

async fn open_now(destination: &Destination, inbound: &Inbound) -> Result<Option<Stream>> {
    let Destination { host, cluster, target, .. } = destination;
    let (type_name, id) = (inbound.type_name(), inbound.id());
    let target = match target {
        Some(target) => target.clone(),
        None => cluster.default_target(type_name, &id).await?,
    };
    let name = host.names().get(&id);
    let owner = match cluster.route(type_name, &id, &target, name.as_deref()).await? {
        Placed::Owner(owner) => owner,
        Placed::Unplaced(target) => cluster.place_at(&target, type_name, &id, name.as_deref()).await?,
    };
    inbound.placed(&owner);
    if cluster.me.as_deref() == Some(owner.as_str()) {
        return Ok(None);
    }
    let conn = cluster.connection(&owner).await?;
    let lost = |what: String| connection_lost(&conn, &owner, what);
    let (mut send, recv) = conn.open_bi().await.map_err(|e| lost(e.to_string()))?;
    let hello = codec::encode(&Hello::Object { type_name: type_name.to_string(), id, name })?;
    write_frame(&mut send, &hello).await.map_err(|e| lost(e.to_string()))?;
    Ok(Some((send, recv)))
}
