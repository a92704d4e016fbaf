//! Calls across the network: the caller's side of a stub in a cluster, and
//! the serving side of a node.
//!
//! E-order over QUIC: each stub (with its clones) gets one bidirectional
//! stream to the object's node, opened on its first call. The stub method
//! puts the call into the stub's bounded queue synchronously, a pump task
//! writes the queued calls to the stream in that order without waiting for
//! replies (pipelining), and the node pushes each request into the object's
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

use std::collections::HashMap;
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context as TaskContext, Poll, Waker};

use stead_transport::frame::{MAX_FRAME_LEN, read_frame, write_frame};
use stead_transport::{Endpoint, RecvStream, SendStream, codec};
use tokio::sync::{mpsc, oneshot};

use crate::activation::HostedType;
use crate::cluster::connection_lost;
use crate::drive::{Driver, Outcome};
use crate::error::{Error, Result};
use crate::id::ObjectId;
use crate::mailbox::{Call, Message, Reply};
use crate::runtime::{Runtime, WeakRuntime};
use crate::sync::lock;
use crate::wire::{Hello, MAX_CONTROL_FRAME, Place, Placed, Request, Response};

/// QUIC error code for a stream closed because of a bad frame.
const BAD_FRAME: u32 = 1;

/// The cluster route of a stub: its queue of calls and whether it broke.
pub(crate) struct ClusterRoute {
    tx: mpsc::Sender<Call>,
    /// The pump's end of the queue, until the first call starts the pump.
    rx: Mutex<Option<mpsc::Receiver<Call>>>,
    broken: Arc<AtomicBool>,
    hint: Option<String>,
}

impl ClusterRoute {
    /// A route that places the object on `hint`, if it is not placed yet.
    /// Does no I/O: the pump starts with the first call.
    pub(crate) fn new(hint: Option<String>, capacity: usize) -> Self {
        let (tx, rx) = mpsc::channel(capacity);
        ClusterRoute { tx, rx: Mutex::new(Some(rx)), broken: Arc::new(AtomicBool::new(false)), hint }
    }

    /// Queues `call` (synchronously, which fixes its place in the order).
    pub(crate) fn send(
        &self,
        runtime: &Runtime,
        type_name: &'static str,
        id: ObjectId,
        call: Call,
    ) -> Result<()> {
        if self.broken.load(Ordering::Acquire) {
            return Err(broken(type_name, id));
        }
        if let Some(rx) = lock(&self.rx).take() {
            let pump = Pump { runtime: runtime.clone(), type_name, id, broken: self.broken.clone() };
            runtime.spawn(pump.run(rx, self.hint.clone()));
        }
        self.tx.try_send(call).map_err(|err| match err {
            mpsc::error::TrySendError::Full(_) => Error::Overloaded(format!(
                "{} calls to `{type_name}` object {id} are waiting to be sent; retry later",
                self.tx.max_capacity()
            )),
            mpsc::error::TrySendError::Closed(_) => broken(type_name, id),
        })
    }
}

fn broken(type_name: &str, id: ObjectId) -> Error {
    Error::Disconnected(format!(
        "this stub of `{type_name}` object {id} lost its connection; calls sent before may or may not \
         have run, so it sends no more: make a new stub (which starts a new order)"
    ))
}

/// The task that delivers one stub's calls, in order.
struct Pump {
    runtime: Runtime,
    type_name: &'static str,
    id: ObjectId,
    broken: Arc<AtomicBool>,
}

impl Pump {
    async fn run(self, mut rx: mpsc::Receiver<Call>, hint: Option<String>) {
        match self.deliver(&mut rx, hint).await {
            Ok(()) => {}
            Err(err) => {
                self.broken.store(true, Ordering::Release);
                rx.close();
                while let Some(call) = rx.recv().await {
                    let _ = call.reply.send(Err(err.clone()));
                }
            }
        }
    }

    async fn deliver(&self, rx: &mut mpsc::Receiver<Call>, hint: Option<String>) -> Result<()> {
        let Some(cluster) = self.runtime.cluster() else {
            return Err(Error::Config("this runtime is not part of a cluster".into()));
        };
        let hosts_type = self.runtime.hosted(self.type_name).is_some();
        let candidate = hint
            .or_else(|| cluster.me.clone().filter(|_| hosts_type))
            .unwrap_or_else(|| cluster.coordinator().to_string());
        let owner = cluster.locate(self.type_name, &self.id, &candidate).await?;
        if cluster.me.as_deref() == Some(owner.as_str()) {
            return self.deliver_locally(rx).await;
        }
        let conn = cluster.connection(&owner).await?;
        let lost = |what: String| connection_lost(&conn, &owner, what);
        let (mut send, recv) = conn.open_bi().await.map_err(|e| lost(e.to_string()))?;
        let hello = codec::encode(&Hello::Object { type_name: self.type_name.to_string(), id: self.id })?;
        write_frame(&mut send, &hello).await.map_err(|e| lost(e.to_string()))?;

        let pending: Arc<Mutex<HashMap<u64, Reply>>> = Arc::default();
        let reader = read_responses(recv, pending.clone(), self.broken.clone(), self.type_name, self.id);
        self.runtime.spawn(reader);
        let mut seq = 0u64;
        while let Some(call) = rx.recv().await {
            if self.broken.load(Ordering::Acquire) {
                let _ = call.reply.send(Err(broken(self.type_name, self.id)));
                continue;
            }
            seq += 1;
            let Call { method, fingerprint, args, reply } = call;
            let frame = codec::encode(&Request { seq, method, fingerprint, args })?;
            lock(&pending).insert(seq, reply);
            if write_frame(&mut send, &frame).await.is_err() {
                self.broken.store(true, Ordering::Release);
                fail_pending(&pending, self.type_name, self.id);
            }
        }
        let _ = send.finish();
        Ok(())
    }

    /// The object turned out to live here: hand the calls to its mailbox.
    async fn deliver_locally(&self, rx: &mut mpsc::Receiver<Call>) -> Result<()> {
        let hosted =
            self.runtime.hosted(self.type_name).cloned().ok_or_else(|| Error::not_hosted(self.type_name))?;
        while let Some(call) = rx.recv().await {
            if let Err((err, Message::Call(call))) =
                hosted.send(&self.runtime, self.id, Message::Call(call), Driver::Task)
            {
                let _ = call.reply.send(Err(err));
            }
        }
        Ok(())
    }
}

/// Reads a stream's responses and hands each to its caller.
async fn read_responses(
    mut recv: RecvStream,
    pending: Arc<Mutex<HashMap<u64, Reply>>>,
    broken: Arc<AtomicBool>,
    type_name: &'static str,
    id: ObjectId,
) {
    while let Ok(Some(bytes)) = read_frame(&mut recv, MAX_FRAME_LEN).await {
        let Ok(response) = codec::decode::<Response>(&bytes) else { break };
        if let Some(reply) = lock(&pending).remove(&response.seq) {
            let _ = reply.send(response.result);
        }
    }
    if !lock(&pending).is_empty() {
        broken.store(true, Ordering::Release);
        fail_pending(&pending, type_name, id);
    }
}

fn fail_pending(pending: &Mutex<HashMap<u64, Reply>>, type_name: &str, id: ObjectId) {
    for (_, reply) in lock(pending).drain() {
        let _ = reply.send(Err(broken(type_name, id)));
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

async fn serve_object(
    rt: Runtime,
    type_name: &str,
    id: ObjectId,
    mut send: SendStream,
    mut recv: RecvStream,
) {
    let admitted = admit(&rt, type_name, id).await;
    let (responses, mut queued) = mpsc::channel::<Response>(rt.config().mailbox_capacity);
    let writer = async move {
        while let Some(response) = queued.recv().await {
            let Ok(frame) = codec::encode(&response) else { continue };
            if write_frame(&mut send, &frame).await.is_err() {
                return;
            }
        }
        let _ = send.finish();
    };
    rt.spawn(writer);
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
                let _ = responses.send(Response { seq, result: Err(err.clone()) }).await;
                continue;
            }
        };
        let (reply, outcome) = oneshot::channel();
        let call =
            Call { method: request.method, fingerprint: request.fingerprint, args: request.args, reply };
        match hosted.send(&rt, id, Message::Call(call), Driver::Caller) {
            Ok(activation) => {
                // An idle object runs the turn right here, in this poll; a
                // busy one answers later, to a task that waits for it.
                let mut outcome = Outcome::driven(outcome, activation);
                let polled = Pin::new(&mut outcome).poll(&mut TaskContext::from_waker(Waker::noop()));
                match polled {
                    Poll::Ready(result) => {
                        let _ = responses.send(Response { seq, result }).await;
                    }
                    Poll::Pending => {
                        let responses = responses.clone();
                        rt.spawn(async move {
                            let result = outcome.await;
                            let _ = responses.send(Response { seq, result }).await;
                        });
                    }
                }
            }
            Err((err, _)) => {
                let _ = responses.send(Response { seq, result: Err(err) }).await;
            }
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
