//! Calls across the network, the caller's side: a stub's route in a
//! cluster. (The node's side is `serve.rs`.)
//!
//! E-order over QUIC: each stub (with its clones) gets one bidirectional
//! stream to the object's node, opened on its first call by the stub's pump
//! task. Until the stream is open, calls wait in the stub's bounded queue,
//! which the pump then moves onto the stream in order; from then on the stub
//! method writes its request to the stream itself, synchronously, when it is
//! called (`outbound.rs`), without waiting for replies (pipelining), and the
//! caller reads its own response (`inbound.rs`): no task stands between a
//! caller and the network. The node pushes each request into the object's
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

use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::task::Poll;

use stead_transport::frame::{FrameReader, MAX_FRAME_LEN, write_frame};
use stead_transport::{RecvStream, SendStream, codec};
use tokio::sync::mpsc;

use super::connections::connection_lost;
use super::inbound::Inbound;
use super::outbound::{Flushed, Outbound};
use super::placement::{Cluster, Placed};
use crate::error::{Error, Result};
use crate::host::Host;
use crate::id::ObjectId;
use crate::local::{Call, Driver, HostedType, Message};
use crate::sync::lock;
use crate::wire::Hello;

/// The cluster route of a stub: its stream's two sides, and the queue of
/// calls made before the stream is open.
pub(crate) struct ClusterRoute {
    tx: mpsc::Sender<Call>,
    /// The pump's end of the queue, until the first call starts the pump.
    rx: Mutex<Option<mpsc::Receiver<Call>>>,
    /// The stream's sending side, written by the callers (see `outbound.rs`).
    outbound: Arc<Outbound>,
    /// The stream's receiving side, read by the callers (see `inbound.rs`).
    pub(crate) inbound: Arc<Inbound>,
    /// What the pump needs to find the object and reach it.
    destination: Destination,
}

/// Where a route's calls go: the cluster, this process's objects of the
/// type (when it hosts them), and the node to place the object on if it has
/// no owner yet.
#[derive(Clone)]
struct Destination {
    host: Host,
    cluster: Arc<Cluster>,
    hosted: Option<Arc<HostedType>>,
    target: Option<String>,
}

impl ClusterRoute {
    /// A route that places the object on node `target`, if it is not placed
    /// yet (by default: this node if it hosts the type, else the
    /// coordinator, or in PostgreSQL a live node that hosts it). Does no I/O: the pump starts with the first call.
    pub(crate) fn new(
        host: Host,
        cluster: Arc<Cluster>,
        hosted: Option<Arc<HostedType>>,
        type_name: &'static str,
        id: ObjectId,
        target: Option<String>,
    ) -> Self {
        let config = host.config();
        let (tx, rx) = mpsc::channel(config.mailbox_capacity);
        let outbound = Outbound::new(config.limits.stub_buffer_bytes, config.limits.stub_calls_in_flight);
        ClusterRoute {
            tx,
            rx: Mutex::new(Some(rx)),
            outbound: Arc::new(outbound),
            inbound: Arc::new(Inbound::new(type_name, id)),
            destination: Destination { host, cluster, hosted, target },
        }
    }

    /// Sends `call`, or queues it until the stream is open (synchronously
    /// either way, which fixes its place in the order). Returns the call's
    /// sequence number on the stream when it was sent at once.
    pub(crate) fn send(&self, call: Call) -> Result<Option<u64>> {
        let inbound = &self.inbound;
        if inbound.broken.load(Ordering::Acquire) {
            return Err(inbound.broken_error());
        }
        // The first call is queued before the pump starts: a pump that
        // failed at once (a node known to be down) would otherwise close
        // the queue first, and the call would get the broken stub's error
        // instead of the reason.
        let start = lock(&self.rx).take();
        let sent = self.outbound.send(call, inbound, |call| {
            self.tx.try_send(call).map_err(|err| match err {
                mpsc::error::TrySendError::Full(_) => Error::Overloaded(format!(
                    "{} calls to `{}` object {} are waiting to be sent; retry later",
                    self.tx.max_capacity(),
                    inbound.type_name(),
                    inbound.id()
                )),
                mpsc::error::TrySendError::Closed(_) => inbound.broken_error(),
            })
        });
        if let Some(rx) = start {
            let pump = Pump {
                destination: self.destination.clone(),
                inbound: inbound.clone(),
                outbound: self.outbound.clone(),
            };
            self.destination.host.spawn(pump.run(rx));
        }
        sent
    }
}

impl Drop for ClusterRoute {
    fn drop(&mut self) {
        // The pump finishes the stream once what was sent is written.
        self.outbound.close();
    }
}

/// The task that sets up one stub's stream, delivers the calls made before
/// it was open, and writes what callers could not.
struct Pump {
    destination: Destination,
    inbound: Arc<Inbound>,
    outbound: Arc<Outbound>,
}

impl Pump {
    async fn run(self, mut rx: mpsc::Receiver<Call>) {
        let delivered = self.deliver(&mut rx).await;
        self.inbound.close();
        if let Err(err) = delivered {
            self.inbound.broken.store(true, Ordering::Release);
            rx.close();
            while let Some(call) = rx.recv().await {
                let _ = call.reply.send(Err(err.clone()));
            }
        }
    }

    async fn deliver(&self, rx: &mut mpsc::Receiver<Call>) -> Result<()> {
        let host = &self.destination.host;
        // Placing, connecting and opening the stream are bounded like a call.
        let timeout = host.config().call_timeout;
        let opened = tokio::time::timeout(timeout, self.open()).await.unwrap_or_else(|_| {
            Err(Error::Timeout(format!(
                "could not reach `{}` object {} within {timeout:?} (`call_timeout`): placing it, or \
                 connecting to its node, took too long; retry later",
                self.inbound.type_name(),
                self.inbound.id()
            )))
        })?;
        let Some((send, recv)) = opened else { return self.deliver_locally(rx).await };

        // The calls queued so far are registered as waiting for their
        // responses before the reader task starts: a reader that started
        // first could find nothing waiting, go idle, and leave their
        // responses unread (their callers poll no stream: they were queued
        // before it existed).
        let queued = std::iter::from_fn(|| rx.try_recv().ok());
        self.outbound.open(send, &self.inbound, queued);
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
                return Ok(());
            }
        }
    }

    /// Finds the object's owner (placing the object if it has none) and
    /// opens a stream to it; `None` when the object lives here.
    async fn open(&self) -> Result<Option<(SendStream, RecvStream)>> {
        let Destination { host, cluster, target, .. } = &self.destination;
        let (type_name, id) = (self.inbound.type_name(), self.inbound.id());
        let target = match target {
            Some(target) => target.clone(),
            None => cluster.default_target(type_name, &id).await?,
        };
        let name = host.names().get(&id);
        let owner = match cluster.route(type_name, &id, &target, name.as_deref()).await? {
            Placed::Owner(owner) => owner,
            Placed::Unplaced(target) => cluster.place_at(&target, type_name, &id, name.as_deref()).await?,
        };
        self.inbound.placed(&owner);
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

    /// The object turned out to live here: hand the calls to its mailbox.
    async fn deliver_locally(&self, rx: &mut mpsc::Receiver<Call>) -> Result<()> {
        let type_name = self.inbound.type_name();
        let hosted = self.destination.hosted.as_ref().ok_or_else(|| Error::not_hosted(type_name))?;
        // The first refused call; the ones after it must not run after the
        // gap.
        let mut refused: Option<Error> = None;
        while let Some(call) = rx.recv().await {
            if let Some(earlier) = &refused {
                let _ = call.reply.send(Err(earlier.after_break()));
                continue;
            }
            // A node cut off from the cluster's referee serves nothing,
            // its own callers included; the stub breaks, as for a refusal.
            if let Err(err) = self.destination.cluster.serving() {
                refused = Some(err.clone());
                let _ = call.reply.send(Err(err));
                continue;
            }
            if let Err((err, Message::Call(call))) =
                hosted.send(self.inbound.id(), Message::Call(call), Driver::Task)
            {
                if err.breaks_order() {
                    refused = Some(err.clone());
                }
                let _ = call.reply.send(Err(err));
            }
        }
        Ok(())
    }
}
