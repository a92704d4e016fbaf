//! The responses coming back on a stub's stream, read by those who wait.
//!
//! A remote call's reply future ([`RemoteReply`]) reads the stub's stream
//! itself when it is polled, and hands every response it finds to its
//! caller: the task that waits for a response is the one the network wakes,
//! with no task in between (on a small machine, one more task wake-up costs
//! more than the whole QUIC round trip). Several callers may take turns at
//! reading: what has been read is kept in the shared [`FrameReader`].
//!
//! The network wakes only the last task that polled the stream. So a caller
//! that stops waiting (its reply came, or it dropped its future) while other
//! calls still wait hands the reading to the stub's *reader task*, which
//! reads until no call waits. That task also reads the first responses,
//! before the stream exists for callers to poll, and ends with the stream.

use std::collections::HashMap;
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context as TaskContext, Poll};

use stead_transport::codec;
use stead_transport::frame::FrameReader;
use tokio::sync::{Notify, oneshot};

use crate::error::{Error, Result};
use crate::id::ObjectId;
use crate::local::ReplySender;
use crate::sync::lock;
use crate::wire::Response;

/// The receiving side of one stub's stream.
pub(crate) struct Inbound {
    state: Mutex<State>,
    /// Wakes the reader task: a caller stopped reading while calls wait.
    reader: Notify,
    /// The stub sends no more calls (set on a failure: see `route.rs`).
    pub(crate) broken: Arc<AtomicBool>,
    type_name: &'static str,
    id: ObjectId,
}

#[derive(Default)]
struct State {
    /// The stream, once the stub's pump has opened it, until it ends.
    frames: Option<FrameReader>,
    /// The calls sent and not answered yet, by sequence number.
    pending: HashMap<u64, ReplySender>,
    /// The pump is done: the reader task ends once no call waits.
    closed: bool,
    /// The stream ended (cleanly or not): no response will come any more.
    ended: bool,
}

impl Inbound {
    pub(crate) fn new(type_name: &'static str, id: ObjectId) -> Self {
        Inbound {
            state: Mutex::default(),
            reader: Notify::new(),
            broken: Arc::new(AtomicBool::new(false)),
            type_name,
            id,
        }
    }

    /// Hands the stream to the callers, and starts its reader task.
    pub(crate) fn open(self: &Arc<Self>, frames: FrameReader, spawn: impl FnOnce(BoxedReader)) {
        lock(&self.state).frames = Some(frames);
        spawn(Box::pin(self.clone().read_when_needed()));
        self.reader.notify_one();
    }

    /// Records that the call `seq` waits for its response; fails it at once
    /// if the stream has ended already (the node finished it, at shutdown),
    /// since no response can come any more.
    pub(crate) fn expect(&self, seq: u64, reply: ReplySender) {
        let mut state = lock(&self.state);
        if !state.ended {
            state.pending.insert(seq, reply);
            return;
        }
        drop(state);
        self.broken.store(true, Ordering::Release);
        let _ = reply.send(Err(self.broken_error()));
    }

    /// How many calls wait for their responses.
    pub(crate) fn in_flight(&self) -> usize {
        lock(&self.state).pending.len()
    }

    /// Fails every waiting call: the stream broke.
    pub(crate) fn fail_all(&self) {
        self.broken.store(true, Ordering::Release);
        let pending: Vec<ReplySender> = lock(&self.state).pending.drain().map(|(_, reply)| reply).collect();
        for reply in pending {
            let _ = reply.send(Err(self.broken_error()));
        }
    }

    /// The stub's pump is done: no call will be added.
    pub(crate) fn close(&self) {
        lock(&self.state).closed = true;
        self.reader.notify_one();
    }

    pub(crate) fn broken_error(&self) -> Error {
        broken(self.type_name, self.id)
    }

    pub(crate) fn type_name(&self) -> &'static str {
        self.type_name
    }

    pub(crate) fn id(&self) -> ObjectId {
        self.id
    }

    /// Reads every response that has arrived and hands it to its caller;
    /// the task of `cx` is woken when more arrives. The response to call
    /// `mine` is returned instead, with its reply channel: the caller reading
    /// is the one waiting for it, and waking it through the channel would
    /// only make the scheduler run it again. Also says whether no call waits
    /// any more (or nothing is left to read).
    fn poll_responses(&self, cx: &mut TaskContext<'_>, mine: Option<u64>) -> Polled {
        let mut answered = Vec::new();
        let mut own = None;
        let ended = {
            let mut state = lock(&self.state);
            let ended = loop {
                let Some(frames) = state.frames.as_mut() else { break false };
                match frames.poll_frame(cx) {
                    Poll::Pending => break false,
                    Poll::Ready(Ok(Some(bytes))) => match codec::decode::<Response>(&bytes) {
                        Ok(response) => {
                            if let Some(reply) = state.pending.remove(&response.seq) {
                                if Some(response.seq) == mine {
                                    own = Some((reply, response.result));
                                } else {
                                    answered.push((reply, response.result));
                                }
                            }
                        }
                        Err(_) => break true,
                    },
                    // Ended, cleanly or not: calls still waiting get no answer.
                    Poll::Ready(Ok(None) | Err(_)) => break true,
                }
            };
            if ended {
                state.frames = None;
                state.ended = true;
            }
            ended
        };
        // Outside the lock: a reply may wake its caller right here.
        for (reply, result) in answered {
            let _ = reply.send(result);
        }
        let state = lock(&self.state);
        let idle = if ended && !state.pending.is_empty() {
            drop(state);
            self.fail_all();
            true
        } else {
            state.frames.is_none() || state.pending.is_empty()
        };
        Polled { idle, own }
    }

    /// A caller stopped reading: if calls still wait, the reader task takes
    /// over, since the network may be set to wake only the caller that left.
    fn left(&self) {
        if !lock(&self.state).pending.is_empty() {
            self.reader.notify_one();
        }
    }

    /// The reader task: reads while calls wait and no caller does.
    async fn read_when_needed(self: Arc<Self>) {
        loop {
            self.reader.notified().await;
            // Read until no call waits. A caller may poll the stream
            // meanwhile (the network then wakes it instead) and leave again,
            // telling this task: read again then, to be the one woken.
            loop {
                let mut told = std::pin::pin!(self.reader.notified());
                let idle = std::future::poll_fn(|cx| {
                    if self.poll_responses(cx, None).idle {
                        Poll::Ready(true)
                    } else if told.as_mut().poll(cx).is_ready() {
                        Poll::Ready(false)
                    } else {
                        Poll::Pending
                    }
                })
                .await;
                if idle {
                    break;
                }
            }
            let state = lock(&self.state);
            if state.frames.is_none() || (state.closed && state.pending.is_empty()) {
                return;
            }
        }
    }
}

/// What reading the stream came to.
struct Polled {
    /// No call waits any more, or nothing is left to read.
    idle: bool,
    /// The reader's own response, with its unused reply channel.
    own: Option<(ReplySender, Result<Vec<u8>>)>,
}

/// The reader task of a stream, boxed to be spawned.
pub(crate) type BoxedReader = Pin<Box<dyn Future<Output = ()> + Send>>;

fn broken(type_name: &str, id: ObjectId) -> Error {
    Error::Disconnected(format!(
        "this stub of `{type_name}` object {id} lost its connection; calls sent before may or may not \
         have run, so it sends no more: make a new stub (which starts a new order)"
    ))
}

/// The reply to a call sent through a stub's cluster route: polling it reads
/// the stub's stream (see the module docs).
pub(crate) struct RemoteReply {
    receiver: oneshot::Receiver<Result<Vec<u8>>>,
    /// The stream's receiving side, while the reply has not come.
    inbound: Option<Arc<Inbound>>,
    /// The call's sequence number on the stream, when it was sent at once.
    seq: Option<u64>,
}

impl RemoteReply {
    pub(crate) fn new(
        receiver: oneshot::Receiver<Result<Vec<u8>>>,
        inbound: Arc<Inbound>,
        seq: Option<u64>,
    ) -> Self {
        RemoteReply { receiver, inbound: Some(inbound), seq }
    }

    fn done(&mut self) {
        if let Some(inbound) = self.inbound.take() {
            inbound.left();
        }
    }
}

impl Future for RemoteReply {
    type Output = Result<Vec<u8>>;

    fn poll(self: Pin<&mut Self>, cx: &mut TaskContext<'_>) -> Poll<Self::Output> {
        let this = self.get_mut();
        if this.receiver.is_empty()
            && let Some(inbound) = &this.inbound
            && let Some((reply, result)) = inbound.poll_responses(cx, this.seq).own
        {
            // Close our end first, so that dropping the sender wakes nobody.
            this.receiver.close();
            drop(reply);
            this.done();
            return Poll::Ready(result);
        }
        match Pin::new(&mut this.receiver).poll(cx) {
            Poll::Pending => Poll::Pending,
            Poll::Ready(reply) => {
                this.done();
                Poll::Ready(reply.unwrap_or_else(|_| {
                    Err(Error::Disconnected("the call was dropped before it was answered".into()))
                }))
            }
        }
    }
}

impl Drop for RemoteReply {
    fn drop(&mut self) {
        self.done();
    }
}
