//! Calls across the network: the caller's side of a stub in a cluster, and
//! the serving side of a node.
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

use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::task::{Context as TaskContext, Poll, Waker};

use stead_transport::frame::{FrameReader, MAX_FRAME_LEN, read_frame, write_frame};
use stead_transport::{Endpoint, RecvStream, SendStream, codec};
use tokio::sync::{mpsc, oneshot};

use crate::activation::HostedType;
use crate::cluster::connection_lost;
use crate::drive::{Driver, Outcome};
use crate::error::{Error, Result};
use crate::id::ObjectId;
use crate::inbound::Inbound;
use crate::mailbox::{Call, Message};
use crate::outbound::{Flushed, Outbound};
use crate::runtime::{Runtime, WeakRuntime};
use crate::sync::lock;
use crate::wire::{Hello, MAX_CONTROL_FRAME, Place, Placed, Request, Response};

/// QUIC error code for a stream closed because of a bad frame.
const BAD_FRAME: u32 = 1;

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
    hint: Option<String>,
}

impl ClusterRoute {
    /// A route that places the object on `hint`, if it is not placed yet.
    /// Does no I/O: the pump starts with the first call.
    pub(crate) fn new(type_name: &'static str, id: ObjectId, hint: Option<String>, capacity: usize) -> Self {
        let (tx, rx) = mpsc::channel(capacity);
        ClusterRoute {
            tx,
            rx: Mutex::new(Some(rx)),
            outbound: Arc::default(),
            inbound: Arc::new(Inbound::new(type_name, id)),
            hint,
        }
    }

    /// Sends `call`, or queues it until the stream is open (synchronously
    /// either way, which fixes its place in the order). Returns the call's
    /// sequence number on the stream when it was sent at once.
    pub(crate) fn send(&self, runtime: &Runtime, call: Call) -> Result<Option<u64>> {
        let inbound = &self.inbound;
        if inbound.broken.load(Ordering::Acquire) {
            return Err(inbound.broken_error());
        }
        if let Some(rx) = lock(&self.rx).take() {
            let pump =
                Pump { runtime: runtime.clone(), inbound: inbound.clone(), outbound: self.outbound.clone() };
            runtime.spawn(pump.run(rx, self.hint.clone()));
        }
        self.outbound.send(call, inbound, |call| {
            self.tx.try_send(call).map_err(|err| match err {
                mpsc::error::TrySendError::Full(_) => Error::Overloaded(format!(
                    "{} calls to `{}` object {} are waiting to be sent; retry later",
                    self.tx.max_capacity(),
                    inbound.type_name(),
                    inbound.id()
                )),
                mpsc::error::TrySendError::Closed(_) => inbound.broken_error(),
            })
        })
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
    runtime: Runtime,
    inbound: Arc<Inbound>,
    outbound: Arc<Outbound>,
}

impl Pump {
    async fn run(self, mut rx: mpsc::Receiver<Call>, hint: Option<String>) {
        let delivered = self.deliver(&mut rx, hint).await;
        self.inbound.close();
        if let Err(err) = delivered {
            self.inbound.broken.store(true, Ordering::Release);
            rx.close();
            while let Some(call) = rx.recv().await {
                let _ = call.reply.send(Err(err.clone()));
            }
        }
    }

    async fn deliver(&self, rx: &mut mpsc::Receiver<Call>, hint: Option<String>) -> Result<()> {
        let Some(cluster) = self.runtime.cluster() else {
            return Err(Error::Config("this runtime is not part of a cluster".into()));
        };
        let (type_name, id) = (self.inbound.type_name(), self.inbound.id());
        let hosts_type = self.runtime.hosted(type_name).is_some();
        let candidate = hint
            .or_else(|| cluster.me.clone().filter(|_| hosts_type))
            .unwrap_or_else(|| cluster.coordinator().to_string());
        let owner = cluster.locate(type_name, &id, &candidate).await?;
        if cluster.me.as_deref() == Some(owner.as_str()) {
            return self.deliver_locally(rx).await;
        }
        let conn = cluster.connection(&owner).await?;
        let lost = |what: String| connection_lost(&conn, &owner, what);
        let (mut send, recv) = conn.open_bi().await.map_err(|e| lost(e.to_string()))?;
        let hello = codec::encode(&Hello::Object { type_name: type_name.to_string(), id })?;
        write_frame(&mut send, &hello).await.map_err(|e| lost(e.to_string()))?;

        self.inbound.open(FrameReader::new(recv, MAX_FRAME_LEN), |reader| self.runtime.spawn(reader));
        let queued = std::iter::from_fn(|| rx.try_recv().ok());
        self.outbound.open(send, &self.inbound, queued);
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

    /// The object turned out to live here: hand the calls to its mailbox.
    async fn deliver_locally(&self, rx: &mut mpsc::Receiver<Call>) -> Result<()> {
        let type_name = self.inbound.type_name();
        let hosted = self.runtime.hosted(type_name).cloned().ok_or_else(|| Error::not_hosted(type_name))?;
        while let Some(call) = rx.recv().await {
            if let Err((err, Message::Call(call))) =
                hosted.send(&self.runtime, self.inbound.id(), Message::Call(call), Driver::Task)
            {
                let _ = call.reply.send(Err(err));
            }
        }
        Ok(())
    }
}

/// Accepts connections until the endpoint closes or the runtime is gone.
pub(crate) async fn serve(runtime: WeakRuntime, endpoint: Endpoint) {
    while let Some(incoming) = endpoint.accept().await {
        let Some(rt) = runtime.upgrade() else { return };
        let endpoint = endpoint.clone();
        let weak = runtime.clone();
        rt.spawn(async move {
            let conn = match endpoint.establish(incoming).await {
                Ok(conn) => conn,
                Err(err) => {
                    tracing::info!(%err, "refused a connection");
                    return;
                }
            };
            while let Ok((send, recv)) = conn.accept_bi().await {
                let Some(rt) = weak.upgrade() else { return };
                rt.spawn(serve_stream(weak.clone(), send, recv));
            }
        });
    }
}

/// Serves one stream: reads its `Hello`, then what it announced. A bad
/// frame stops the stream with an error code; nothing a peer sends can
/// panic the node.
async fn serve_stream(runtime: WeakRuntime, mut send: SendStream, mut recv: RecvStream) {
    let hello = match read_frame(&mut recv, MAX_CONTROL_FRAME).await {
        Ok(Some(bytes)) => codec::decode::<Hello>(&bytes).ok(),
        _ => None,
    };
    let Some(rt) = runtime.upgrade() else { return };
    match hello {
        Some(Hello::Object { type_name, id }) => serve_object(rt, &type_name, id, send, recv).await,
        Some(Hello::Directory) => serve_directory(rt, send, recv).await,
        None => refuse(&mut send, &mut recv),
    }
}

fn refuse(send: &mut SendStream, recv: &mut RecvStream) {
    let code = quinn_code(BAD_FRAME);
    let _ = recv.stop(code);
    let _ = send.reset(code);
}

fn quinn_code(code: u32) -> stead_transport::VarInt {
    stead_transport::VarInt::from_u32(code)
}

/// Whether this node may run object `id`: it hosts the type, the id is
/// genuine, and the directory places the object here.
async fn admit(rt: &Runtime, type_name: &str, id: ObjectId) -> Result<Arc<HostedType>> {
    let hosted = rt.hosted(type_name).cloned().ok_or_else(|| Error::not_hosted(type_name))?;
    hosted.keys.verify(&id)?;
    let cluster =
        rt.cluster().ok_or_else(|| Error::Config("this runtime is not part of a cluster".into()))?;
    let me = cluster.me.clone().ok_or_else(|| Error::Config("a client hosts no objects".into()))?;
    let owner = cluster.locate(type_name, &id, &me).await?;
    if owner != me {
        return Err(Error::Unavailable(format!(
            "`{type_name}` object {id} lives on node `{owner}`, not on `{me}`; the caller's directory cache is stale"
        )));
    }
    Ok(hosted)
}

/// The sending half of a served stream, shared by whoever has a response
/// to write: the stream's reader (a turn that ran inline) or a task waiting
/// for a busy object. Responses carry their sequence number, so their order
/// does not matter. The stream is finished when the last user is done.
struct Responder {
    send: tokio::sync::Mutex<SendStream>,
}

impl Responder {
    async fn respond(&self, response: Response) {
        let Ok(frame) = codec::encode(&response) else { return };
        // A failed write means the caller is gone: nobody is left to tell.
        let _ = write_frame(&mut *self.send.lock().await, &frame).await;
    }
}

impl Drop for Responder {
    fn drop(&mut self) {
        let _ = self.send.get_mut().finish();
    }
}

async fn serve_object(rt: Runtime, type_name: &str, id: ObjectId, send: SendStream, mut recv: RecvStream) {
    let admitted = admit(&rt, type_name, id).await;
    let responder = Arc::new(Responder { send: tokio::sync::Mutex::new(send) });
    loop {
        let request = match read_frame(&mut recv, MAX_FRAME_LEN).await {
            Ok(Some(bytes)) => match codec::decode::<Request>(&bytes) {
                Ok(request) => request,
                Err(_) => break,
            },
            Ok(None) => return,
            Err(_) => break,
        };
        let seq = request.seq;
        let hosted = match &admitted {
            Ok(hosted) => hosted,
            Err(err) => {
                responder.respond(Response { seq, result: Err(err.clone()) }).await;
                continue;
            }
        };
        let (reply, outcome) = oneshot::channel();
        let call =
            Call { method: request.method, fingerprint: request.fingerprint, args: request.args, reply };
        match hosted.send(&rt, id, Message::Call(call), Driver::Caller) {
            Ok(activation) => {
                // An idle object runs the turn right here, in this poll, and
                // the response is written from here too; a busy one answers
                // later, to a task that waits for it.
                let mut outcome = Outcome::driven(outcome, activation);
                let polled = Pin::new(&mut outcome).poll(&mut TaskContext::from_waker(Waker::noop()));
                match polled {
                    Poll::Ready(result) => responder.respond(Response { seq, result }).await,
                    Poll::Pending => {
                        let responder = responder.clone();
                        rt.spawn(async move {
                            let result = outcome.await;
                            responder.respond(Response { seq, result }).await;
                        });
                    }
                }
            }
            Err((err, _)) => responder.respond(Response { seq, result: Err(err) }).await,
        }
    }
    // A frame that was too long, cut short or not a request: stop the stream.
    let _ = recv.stop(quinn_code(BAD_FRAME));
}

async fn serve_directory(rt: Runtime, mut send: SendStream, mut recv: RecvStream) {
    let place = match read_frame(&mut recv, MAX_CONTROL_FRAME).await {
        Ok(Some(bytes)) => codec::decode::<Place>(&bytes).ok(),
        _ => None,
    };
    let Some(place) = place else { return refuse(&mut send, &mut recv) };
    let placed: Placed = match rt.cluster().and_then(|cluster| cluster.local_directory.clone()) {
        Some(directory) => directory.place_now(&place.type_name, &place.id, &place.node),
        None => {
            Err(Error::Config("this node is not the coordinator; the peer lists of the nodes differ".into()))
        }
    };
    if let Ok(frame) = codec::encode(&placed) {
        let _ = write_frame(&mut send, &frame).await;
    }
    let _ = send.finish();
}
