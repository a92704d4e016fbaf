//! Calls across the network, the node's side: accepts connections from
//! other processes of the cluster and serves their streams. An object
//! stream's requests are pushed into the object's mailbox in the order they
//! arrive (E-order) and answered on the same stream; a directory stream
//! carries one placement request to the coordinator. A bad frame stops its
//! stream with an error code: nothing a peer sends can panic the node.

use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Weak};
use std::task::{Context as TaskContext, Poll, Waker};
use std::time::Duration;

use stead_transport::frame::{MAX_FRAME_LEN, read_frame, write_frame};
use stead_transport::{Connection, Endpoint, RecvStream, SendStream, codec};
use tokio::sync::oneshot;

use super::placement::Cluster;
use crate::error::{Error, Result};
use crate::host::{Host, Tracked};
use crate::id::ObjectId;
use crate::local::{Call, Driver, HostedType, LocalReply, Message, Objects};
use crate::wire::{
    ClusterAnswer, DirectoryAnswer, DirectoryRequest, Hello, MAX_CONTROL_FRAME, Request, Response,
};

/// QUIC error code for a stream closed because of a bad frame.
const BAD_FRAME: u32 = 1;

/// What the serving side needs: this process's objects and the cluster,
/// held weakly so that serving ends with the runtime.
#[derive(Clone)]
struct Node {
    objects: Weak<Objects>,
    cluster: Weak<Cluster>,
}

impl Node {
    fn upgrade(&self) -> Option<(Arc<Objects>, Arc<Cluster>)> {
        Some((self.objects.upgrade()?, self.cluster.upgrade()?))
    }
}

/// Accepts connections until the endpoint closes or the runtime is gone.
pub(crate) async fn serve(objects: Weak<Objects>, cluster: Weak<Cluster>, endpoint: Endpoint) {
    let node = Node { objects, cluster };
    let connections = Arc::new(AtomicUsize::new(0));
    while let Some(incoming) = endpoint.accept().await {
        let Some((objects, _)) = node.upgrade() else { return };
        let limits = objects.host().config().limits;
        if connections.load(Ordering::SeqCst) >= limits.max_connections {
            tracing::warn!(peer = %incoming.remote_address(), max = limits.max_connections, "refused a connection: too many");
            incoming.refuse();
            continue;
        }
        connections.fetch_add(1, Ordering::SeqCst);
        let connected = Connected(connections.clone());
        let endpoint = endpoint.clone();
        let node = node.clone();
        let peer = incoming.remote_address();
        objects.host().spawn(async move {
            let _connected = connected;
            let conn = match endpoint.establish(incoming).await {
                Ok(conn) => conn,
                Err(err) => {
                    tracing::warn!(%peer, %err, "refused a peer: its connection failed the handshake (TLS or protocol version)");
                    return;
                }
            };
            // The first stream shows the caller's view of the cluster:
            // nothing else is served to a process of another cluster.
            let Ok((send, recv)) = conn.accept_bi().await else { return };
            let Some((_, cluster)) = node.upgrade() else { return };
            if !check_cluster(&node, &cluster, &conn, send, recv).await {
                return;
            }
            while let Ok((send, recv)) = conn.accept_bi().await {
                let Some((objects, _)) = node.upgrade() else { return };
                objects.host().spawn(serve_stream(node.clone(), conn.clone(), send, recv));
            }
        });
    }
}

/// Counts a connection from another process while it lives.
struct Connected(Arc<AtomicUsize>);

impl Drop for Connected {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::SeqCst);
    }
}

/// Reads a stream's first frame, which must come within the limit's time.
async fn first_frame(node: &Node, recv: &mut RecvStream) -> Option<Vec<u8>> {
    let wait = node.objects.upgrade()?.host().config().limits.first_frame_timeout;
    match tokio::time::timeout(wait, read_frame(recv, MAX_CONTROL_FRAME)).await {
        Ok(Ok(Some(bytes))) => Some(bytes),
        _ => None,
    }
}

/// Reads the connection's first stream, the caller's view of the cluster,
/// and answers; on a difference, the answer names it and the connection is
/// closed. Returns whether the caller is of this cluster.
async fn check_cluster(
    node: &Node,
    cluster: &Cluster,
    conn: &Connection,
    mut send: SendStream,
    mut recv: RecvStream,
) -> bool {
    let hello = first_frame(node, &mut recv).await.and_then(|bytes| codec::decode::<Hello>(&bytes).ok());
    let answer: ClusterAnswer = match hello {
        Some(theirs @ (Hello::Cluster(_) | Hello::PostgresCluster(_))) => {
            match cluster.connections.view.difference(&theirs) {
                None => Ok(()),
                Some(difference) => {
                    Err(Error::Config(format!("this process is not of the node's cluster: {difference}")))
                }
            }
        }
        _ => Err(Error::Incompatible(
            "a connection must start by showing the caller's view of the cluster; the caller is not a \
             stead process of this version"
                .into(),
        )),
    };
    let agreed = answer.is_ok();
    if let Err(err) = &answer {
        tracing::warn!(peer = %conn.remote_address(), %err, "refused a peer");
    }
    if let Ok(frame) = codec::encode(&answer) {
        let _ = write_frame(&mut send, &frame).await;
    }
    let _ = send.finish();
    if !agreed {
        // Let the answer reach the caller before the connection closes.
        let _ = tokio::time::timeout(Duration::from_secs(1), send.stopped()).await;
        conn.close(0u32.into(), b"not the same cluster");
    }
    agreed
}

/// Serves one stream: reads its `Hello`, then what it announced. A bad
/// frame stops the stream with an error code; nothing a peer sends can
/// panic the node.
async fn serve_stream(node: Node, conn: Connection, mut send: SendStream, mut recv: RecvStream) {
    let hello = first_frame(&node, &mut recv).await.and_then(|bytes| codec::decode::<Hello>(&bytes).ok());
    let Some((objects, cluster)) = node.upgrade() else { return };
    match hello {
        Some(Hello::Object { type_name, id, name }) => {
            let name = genuine_name(&objects, &type_name, id, name);
            serve_object(&objects, &cluster, &type_name, id, name.as_deref(), send, recv).await;
        }
        Some(Hello::Directory) => serve_directory(&objects, &cluster, &conn, send, recv).await,
        // Only the first stream of a connection may show the cluster.
        Some(Hello::Cluster(_) | Hello::PostgresCluster(_)) => refuse(&mut send, &mut recv),
        None => refuse(&mut send, &mut recv),
    }
}

/// The name a caller gave object `id`, if it is genuine (it hashes to the
/// id): kept for the activation, and for the directory.
fn genuine_name(objects: &Objects, type_name: &str, id: ObjectId, name: Option<String>) -> Option<String> {
    let name = name?;
    let hosted = objects.hosted(type_name)?;
    if hosted.keys.id_from_name(&name) != id {
        return None;
    }
    objects.host().names().remember(id, &name);
    Some(name)
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
async fn admit(
    objects: &Objects,
    cluster: &Cluster,
    type_name: &str,
    id: ObjectId,
    name: Option<&str>,
) -> Result<Arc<HostedType>> {
    let hosted = objects.hosted(type_name).cloned().ok_or_else(|| Error::not_hosted(type_name))?;
    hosted.keys.verify(&id)?;
    let me = cluster.me.clone().ok_or_else(|| Error::Config("a client hosts no objects".into()))?;
    cluster.serving()?;
    // The first call to an object that lives nowhere yet places it here:
    // this node hosts its type, and claims it for itself.
    let owner = cluster.claim(type_name, &id, name).await?;
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
    /// Replies that tasks still wait for (a busy object's, or one held by
    /// the output gate until its commit is durable), and a signal when one
    /// is written.
    awaited: AtomicUsize,
    written: tokio::sync::Notify,
}

impl Responder {
    /// Writes `response`; one that cannot be encoded, or is too large for
    /// a frame, is answered with a `Codec` error instead, so that its caller
    /// never waits for a reply that will not come.
    async fn respond(&self, response: Response) {
        let seq = response.seq;
        let frame = match codec::encode(&response) {
            Ok(frame) if frame.len() <= MAX_FRAME_LEN => frame,
            Ok(frame) => undeliverable(
                seq,
                format!(
                    "the reply takes {} bytes encoded, more than the {MAX_FRAME_LEN} a frame may carry; \
                     the call ran (its writes are committed), but its result is lost: return large \
                     data in parts, over several calls",
                    frame.len()
                ),
            ),
            Err(err) => undeliverable(seq, format!("the reply could not be encoded: {err}")),
        };
        // A failed write means the caller is gone: nobody is left to tell.
        let _ = write_frame(&mut *self.send.lock().await, &frame).await;
    }
}

/// A small frame that fails call `seq` with a `Codec` error saying why its
/// reply cannot be sent.
fn undeliverable(seq: u64, why: String) -> Vec<u8> {
    let response = Response { seq, result: Err(Error::Codec(why)) };
    // A response holding a short string always encodes.
    codec::encode(&response).unwrap_or_default()
}

impl Responder {
    /// Ends the stream at shutdown, once every reply is written: waits (at
    /// most `grace`) for the replies tasks still wait for, then until the
    /// peer has received all of it, so that closing the endpoint does not
    /// drop replies of turns that committed.
    async fn finish(&self, grace: Duration) {
        let _ = tokio::time::timeout(grace, async {
            loop {
                let written = self.written.notified();
                if self.awaited.load(Ordering::SeqCst) == 0 {
                    break;
                }
                written.await;
            }
            let mut send = self.send.lock().await;
            if send.finish().is_ok() {
                let _ = send.stopped().await;
            }
        })
        .await;
    }

    /// Writes the reply `reply` brings, from a task of its own.
    fn respond_later(self: &Arc<Self>, host: &Host, seq: u64, reply: LocalReply, replying: Tracked) {
        self.awaited.fetch_add(1, Ordering::SeqCst);
        let responder = self.clone();
        host.spawn(async move {
            let result = reply.await;
            responder.respond(Response { seq, result }).await;
            responder.awaited.fetch_sub(1, Ordering::SeqCst);
            responder.written.notify_waiters();
            drop(replying);
        });
    }
}

impl Drop for Responder {
    fn drop(&mut self) {
        let _ = self.send.get_mut().finish();
    }
}

async fn serve_object(
    objects: &Objects,
    cluster: &Cluster,
    type_name: &str,
    id: ObjectId,
    name: Option<&str>,
    send: SendStream,
    mut recv: RecvStream,
) {
    let host = objects.host();
    let _serving = host.serving();
    let mut closed = std::pin::pin!(host.lifecycle().closed());
    let timeout = host.config().call_timeout;
    let admitted = tokio::time::timeout(timeout, admit(objects, cluster, type_name, id, name))
        .await
        .unwrap_or_else(|_| {
            Err(Error::Timeout(format!(
                "could not confirm within {timeout:?} that `{type_name}` object {id} lives on this node (the \
                 directory did not answer); retry later"
            )))
        });
    let responder = Arc::new(Responder {
        send: tokio::sync::Mutex::new(send),
        awaited: Default::default(),
        written: tokio::sync::Notify::new(),
    });
    // The first call of this stream that was refused, if any.
    let mut refused: Option<Error> = None;
    loop {
        let frame = tokio::select! {
            biased;
            () = &mut closed => return responder.finish(host.config().shutdown_timeout).await,
            frame = read_frame(&mut recv, MAX_FRAME_LEN) => frame,
        };
        let request = match frame {
            Ok(Some(bytes)) => match codec::decode::<Request>(&bytes) {
                Ok(request) => request,
                Err(_) => break,
            },
            Ok(None) => return,
            Err(_) => break,
        };
        let seq = request.seq;
        if host.lifecycle().is_closing() {
            // Every later request is refused too: no gap in the order.
            let err = Error::Unavailable(format!(
                "the node is shutting down and takes no new calls; `{type_name}` object {id} is \
                 reachable again once its node is back: retry later"
            ));
            responder.respond(Response { seq, result: Err(err) }).await;
            continue;
        }
        if refused.is_none()
            && admitted.is_ok()
            && let Err(err) = cluster.serving()
        {
            // Cut off from the cluster's referee: this call and every later
            // one of the stream are refused (no gap in the order).
            responder.respond(Response { seq, result: Err(err.clone()) }).await;
            refused = Some(err);
            continue;
        }
        let hosted = match (&admitted, &refused) {
            (Ok(hosted), None) => hosted,
            (Err(err), _) => {
                responder.respond(Response { seq, result: Err(err.clone()) }).await;
                continue;
            }
            // A call of this stream was refused: the ones after it must
            // not run after the gap (the caller's stub is broken too).
            (_, Some(earlier)) => {
                responder.respond(Response { seq, result: Err(earlier.after_break()) }).await;
                continue;
            }
        };
        // Shutdown waits until this call's reply is written.
        let replying = host.replying();
        let (reply, receiver) = oneshot::channel();
        let call =
            Call { method: request.method, fingerprint: request.fingerprint, args: request.args, reply };
        match hosted.send(id, Message::Call(call), Driver::Caller) {
            Ok(activation) => {
                // An idle object runs the turn right here, in this poll, and
                // the response is written from here too; a busy one answers
                // later, to a task that waits for it.
                let mut reply = LocalReply::new(receiver, activation);
                let polled = Pin::new(&mut reply).poll(&mut TaskContext::from_waker(Waker::noop()));
                match polled {
                    Poll::Ready(result) => responder.respond(Response { seq, result }).await,
                    Poll::Pending => responder.respond_later(host, seq, reply, replying),
                }
            }
            Err((err, _)) => {
                if err.breaks_order() {
                    refused = Some(err.clone());
                }
                responder.respond(Response { seq, result: Err(err) }).await;
            }
        }
    }
    // A frame that was too long, cut short or not a request: stop the stream.
    let _ = recv.stop(quinn_code(BAD_FRAME));
}

async fn serve_directory(
    objects: &Objects,
    cluster: &Cluster,
    conn: &Connection,
    mut send: SendStream,
    mut recv: RecvStream,
) {
    let request = match read_frame(&mut recv, MAX_CONTROL_FRAME).await {
        Ok(Some(bytes)) => codec::decode::<DirectoryRequest>(&bytes).ok(),
        _ => None,
    };
    let Some(request) = request else { return refuse(&mut send, &mut recv) };
    let answer: DirectoryAnswer = match (&cluster.local_directory, request) {
        (_, DirectoryRequest::Place { type_name, id, name }) => {
            let timeout = objects.host().config().call_timeout;
            tokio::time::timeout(timeout, place_here(objects, cluster, &type_name, id, name))
                .await
                .unwrap_or_else(|_| {
                    Err(Error::Timeout(format!(
                        "node could not place `{type_name}` object {id} within {timeout:?}; retry later"
                    )))
                })
        }
        (None, _) => Err(Error::Config(
            "this node is not the coordinator; the peer lists of the processes differ".into(),
        )),
        (Some(directory), DirectoryRequest::Lookup { type_name, id }) => {
            directory.lookup_now(&type_name, &id)
        }
        (Some(directory), DirectoryRequest::Claim { type_name, id }) => {
            match cluster.connections.node_of(conn) {
                Some(node) => directory.claim_now(&type_name, &id, &node).map(Some),
                None => {
                    tracing::warn!(peer = %conn.remote_address(), "refused a claim from a peer that is no node");
                    Err(Error::Config(
                        "only a node places objects, and only on itself: this peer's certificate names no \
                         node of the cluster"
                            .into(),
                    ))
                }
            }
        }
    };
    if let Ok(frame) = codec::encode(&answer) {
        let _ = write_frame(&mut send, &frame).await;
    }
    let _ = send.finish();
}

/// Places object `id` on this node, unless it lives somewhere already
/// (PostgreSQL cluster); answers its owner.
async fn place_here(
    objects: &Objects,
    cluster: &Cluster,
    type_name: &str,
    id: ObjectId,
    name: Option<String>,
) -> Result<Option<String>> {
    let hosted = objects.hosted(type_name).ok_or_else(|| Error::not_hosted(type_name))?;
    hosted.keys.verify(&id)?;
    let name = genuine_name(objects, type_name, id, name);
    cluster.claim(type_name, &id, name.as_deref()).await.map(Some)
}
