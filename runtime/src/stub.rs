//! The untyped core of every generated `{Type}Stub`.
//!
//! A stub is an address plus a route: building one does no I/O and never
//! creates the object. Each stub method encodes its arguments and *queues the
//! request when it is called*, then returns a [`PendingCall`] future that
//! waits for the reply (running the turn itself if the object is idle, see
//! `drive.rs`). Queueing at call time is what gives E-order: calls issued through one
//! stub (or its clones) are delivered in the order they were issued, even if
//! their futures are awaited in another order or not at all.

use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context as TaskContext, Poll};

use serde::Serialize;
use serde::de::DeserializeOwned;
use stead_transport::codec;
use tokio::sync::oneshot;

use crate::activation::HostedType;
use crate::drive::{Driver, Outcome};
use crate::error::{Error, Result};
use crate::id::ObjectId;
use crate::inbound::RemoteReply;
use crate::mailbox::{Call, Message};
use crate::remote::ClusterRoute;
use crate::runtime::Runtime;

/// The address and route shared by a stub and its clones.
#[doc(hidden)]
#[derive(Clone)]
pub struct StubCore {
    target: Arc<Target>,
}

struct Target {
    id: ObjectId,
    type_name: &'static str,
    runtime: Runtime,
    route: Route,
}

enum Route {
    /// The type is hosted by this runtime, which is not part of a cluster.
    Local(Arc<HostedType>),
    /// The type is not hosted here and there is nowhere else to send it.
    NotHosted,
    /// The object lives somewhere in the cluster (maybe here).
    Cluster(ClusterRoute),
}

impl StubCore {
    /// A stub core; `hint` names the node to place the object on if its
    /// first call comes through this stub (cluster only).
    pub(crate) fn new(
        runtime: Runtime,
        type_name: &'static str,
        id: ObjectId,
        hosted: Option<Arc<HostedType>>,
        hint: Option<String>,
    ) -> Self {
        let route = if runtime.cluster().is_some() {
            Route::Cluster(ClusterRoute::new(type_name, id, hint, runtime.config().mailbox_capacity))
        } else {
            match hosted {
                Some(hosted) => Route::Local(hosted),
                None => Route::NotHosted,
            }
        };
        StubCore { target: Arc::new(Target { id, type_name, runtime, route }) }
    }

    /// The id of the object this stub addresses.
    pub fn id(&self) -> ObjectId {
        self.target.id
    }

    /// Queues a call of method `method` with already encoded arguments.
    fn send(&self, method: u32, fingerprint: u64, args: Vec<u8>) -> Result<Answer> {
        let target = &*self.target;
        target.runtime.check_accepting()?;
        let (reply, receiver) = oneshot::channel();
        let call = Call { method, fingerprint, args, reply };
        match &target.route {
            Route::Local(hosted) => {
                let activation = hosted
                    .send(&target.runtime, target.id, Message::Call(call), Driver::Caller)
                    .map_err(|(err, _)| err)?;
                Ok(Answer::Local(Outcome::driven(receiver, activation)))
            }
            Route::Cluster(route) => {
                let seq = route.send(&target.runtime, call)?;
                Ok(Answer::Remote(RemoteReply::new(receiver, route.inbound.clone(), seq)))
            }
            Route::NotHosted => Err(Error::not_hosted(target.type_name)),
        }
    }
}

impl fmt::Debug for StubCore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}({})", self.target.type_name, self.target.id)
    }
}

/// The reply of a queued call: from an object of this runtime, or through
/// the cluster.
enum Answer {
    Local(Outcome),
    Remote(RemoteReply),
}

impl Future for Answer {
    type Output = Result<Vec<u8>>;

    fn poll(self: Pin<&mut Self>, cx: &mut TaskContext<'_>) -> Poll<Self::Output> {
        match self.get_mut() {
            Answer::Local(outcome) => Pin::new(outcome).poll(cx),
            Answer::Remote(reply) => Pin::new(reply).poll(cx),
        }
    }
}

/// The arguments of a call, encoded one by one as the stub receives them.
#[doc(hidden)]
pub struct ArgsWriter {
    buf: Vec<u8>,
    error: Option<Error>,
}

impl ArgsWriter {
    /// An empty argument list.
    pub fn new() -> Self {
        ArgsWriter { buf: codec::new_buffer(), error: None }
    }

    /// Appends one argument. (The generated code calls this at the span of
    /// the argument's type, so a type without `Serialize` is reported there.)
    pub fn push<T: Serialize + 'static>(&mut self, value: &T) {
        if self.error.is_none()
            && let Err(err) = codec::encode_owned_into(value, &mut self.buf)
        {
            self.error = Some(err.into());
        }
    }
}

impl Default for ArgsWriter {
    fn default() -> Self {
        ArgsWriter::new()
    }
}

/// Queues a call of `method` now and returns the future of its reply.
///
/// This is what every generated stub method calls.
#[doc(hidden)]
pub fn call<R: DeserializeOwned>(
    core: &StubCore,
    method: u32,
    fingerprint: u64,
    args: ArgsWriter,
) -> PendingCall<R> {
    let sent = match args.error {
        Some(err) => Err(err),
        None => core.send(method, fingerprint, args.buf),
    };
    PendingCall {
        state: match sent {
            Ok(outcome) => Pending::Waiting(outcome),
            Err(err) => Pending::Failed(Some(err)),
        },
        decode: decode_reply::<R>,
    }
}

fn decode_reply<R: DeserializeOwned>(bytes: &[u8]) -> Result<R> {
    codec::decode(bytes).map_err(Error::from)
}

/// The reply to a call that has already been queued.
///
/// Awaiting it may run the object's turn right in the awaiting task, when
/// the object is idle (nothing is spawned then). Dropping it does not cancel
/// the call: the object still runs it, the reply is discarded.
#[must_use = "the call is already queued; await this future to learn its outcome"]
pub struct PendingCall<R> {
    state: Pending,
    decode: fn(&[u8]) -> Result<R>,
}

enum Pending {
    Waiting(Answer),
    Failed(Option<Error>),
}

impl<R> Future for PendingCall<R> {
    type Output = Result<R>;

    fn poll(self: Pin<&mut Self>, cx: &mut TaskContext<'_>) -> Poll<Result<R>> {
        let this = self.get_mut();
        match &mut this.state {
            Pending::Failed(err) => Poll::Ready(Err(err.take().unwrap_or_else(|| {
                Error::Disconnected("this call's future was polled after it completed".into())
            }))),
            Pending::Waiting(outcome) => match Pin::new(outcome).poll(cx) {
                Poll::Pending => Poll::Pending,
                Poll::Ready(Ok(bytes)) => Poll::Ready((this.decode)(&bytes)),
                Poll::Ready(Err(err)) => Poll::Ready(Err(err)),
            },
        }
    }
}

impl<R> fmt::Debug for PendingCall<R> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("PendingCall")
    }
}
