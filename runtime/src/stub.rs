//! The untyped core of every generated `{Type}Stub`.
//!
//! A stub is an address plus a route: building one does no I/O and never
//! creates the object. Each stub method encodes its arguments and *queues the
//! request when it is called*, then returns a [`PendingCall`] future that
//! waits for the reply (running the turn itself if the object is idle, see
//! `local/drive.rs`). Queueing at call time is what gives E-order: calls issued through one
//! stub (or its clones) are delivered in the order they were issued, even if
//! their futures are awaited in another order or not at all.

use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, OnceLock};
use std::task::{Context as TaskContext, Poll};

use serde::Serialize;
use serde::de::DeserializeOwned;
use stead_transport::codec;
use tokio::sync::oneshot;

use crate::cluster::{Cluster, ClusterRoute, FirstReply, RemoteReply, Sent};
use crate::error::{Error, Result};
use crate::host::Host;
use crate::id::ObjectId;
use crate::local::{Call, Driver, HostedType, LocalReply, Message, MethodInfo};
use crate::object::DurableObject;
use crate::observe::{CallWatch, Outcome, Place, RemoteMetrics};
use crate::runtime::{Runtime, WeakRuntime};
use crate::storage::Storage;

/// A typed stub: what `#[durable_object]` generates as `{Type}Stub`.
///
/// Every generated stub implements it, so that functions can take the stub
/// of any object type (those of [`testing`](crate::testing) do). Do not
/// implement it by hand.
pub trait ObjectStub: Clone + Send + Sync + fmt::Debug + 'static {
    /// The object type this stub calls.
    type Object: DurableObject;

    /// The untyped core of the stub.
    #[doc(hidden)]
    fn __core(&self) -> &StubCore;
}

/// The address and route shared by a stub and its clones.
#[doc(hidden)]
#[derive(Clone)]
pub struct StubCore {
    address: Arc<Address>,
}

/// Which object a stub addresses, and how its calls get there.
struct Address {
    id: ObjectId,
    type_name: &'static str,
    /// The type's methods, by method id (for their names in spans).
    methods: &'static [MethodInfo],
    host: Host,
    /// The runtime the stub was made by (weak: objects keep stubs, and the
    /// runtime keeps the objects), for `stead::testing`.
    runtime: WeakRuntime,
    route: Route,
    /// The metrics of calls that go to another node, when recorded.
    remote: Option<Arc<RemoteMetrics>>,
    /// The first refusal or loss of a call through this stub (and its
    /// clones): every later call fails with it, so that no call runs after a
    /// gap in the stub's order.
    broken: OnceLock<Error>,
}

impl Address {
    /// Records that a call through this stub failed with `err`, if that
    /// breaks the stub's order.
    fn note(&self, err: &Error) {
        if err.breaks_order() && self.broken.set(err.clone()).is_ok() {
            tracing::warn!(
                r#type = self.type_name, object = %self.id, %err,
                "a stub broke: its later calls fail until the caller makes a new stub (no call runs after \
                 a gap in a stub's order)"
            );
        }
    }

    /// Where the stub's calls go, for a call's span and metrics.
    fn place(&self) -> Place<'_> {
        match &self.route {
            Route::Local(_) => Place { node: self.host.observe().node(), remote: false },
            Route::NotHosted => Place { node: "", remote: false },
            Route::Cluster(route) => match route.inbound.owner() {
                Some(owner) => Place { node: owner, remote: owner != self.host.observe().node() },
                // Not placed (yet): the call went no further than the network.
                None => Place { node: "", remote: true },
            },
        }
    }
}

/// Why a stub does not reach its object in this runtime directly.
pub(crate) enum Unreached {
    /// The type is not hosted here, and there is no cluster.
    NotHosted,
    /// The stub routes through a cluster.
    Cluster,
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
    /// A stub core for object `id` of type `type_name`: routed through
    /// `cluster` if there is one, else to this process's `hosted` type.
    /// `target` names the node to place the object on if its first call
    /// comes through this stub (cluster only).
    #[allow(clippy::too_many_arguments)]
    pub(crate) fn new(
        host: Host,
        runtime: WeakRuntime,
        cluster: Option<Arc<Cluster>>,
        hosted: Option<Arc<HostedType>>,
        type_name: &'static str,
        methods: &'static [MethodInfo],
        remote: Option<Arc<RemoteMetrics>>,
        id: ObjectId,
        target: Option<String>,
    ) -> Self {
        let route = match (cluster, hosted) {
            (Some(cluster), hosted) => {
                Route::Cluster(ClusterRoute::new(host.clone(), cluster, hosted, type_name, id, target))
            }
            (None, Some(hosted)) => Route::Local(hosted),
            (None, None) => Route::NotHosted,
        };
        // Only calls through the cluster can go to another node.
        let remote = remote.filter(|_| matches!(route, Route::Cluster(_)));
        let address =
            Address { id, type_name, methods, host, runtime, route, remote, broken: OnceLock::new() };
        StubCore { address: Arc::new(address) }
    }

    /// The id of the object this stub addresses.
    pub fn id(&self) -> ObjectId {
        self.address.id
    }

    /// The name of the object's type.
    pub(crate) fn type_name(&self) -> &'static str {
        self.address.type_name
    }

    /// The runtime that made this stub, unless it is gone.
    pub(crate) fn runtime(&self) -> Option<Runtime> {
        self.address.runtime.upgrade()
    }

    /// The object's type as hosted by this runtime, when the stub reaches
    /// it here directly (not through a cluster): else why not.
    pub(crate) fn hosted_here(&self) -> std::result::Result<&Arc<HostedType>, Unreached> {
        match &self.address.route {
            Route::Local(hosted) => Ok(hosted),
            Route::NotHosted => Err(Unreached::NotHosted),
            Route::Cluster(_) => Err(Unreached::Cluster),
        }
    }

    /// Queues a call of method `method` with already encoded arguments.
    fn send(&self, method: u32, fingerprint: u64, args: Vec<u8>) -> Result<Reply> {
        let address = &*self.address;
        if let Some(earlier) = address.broken.get() {
            return Err(earlier.after_break());
        }
        let sent = self.route(method, fingerprint, args);
        if let Err(err) = &sent {
            address.note(err);
        }
        sent
    }

    fn route(&self, method: u32, fingerprint: u64, args: Vec<u8>) -> Result<Reply> {
        let address = &*self.address;
        address.host.check_accepting()?;
        // A call made by a turn is output: it waits until the turns of the
        // caller's object before this one are durable (`storage/flush.rs`).
        Storage::hold_output();
        let (reply, receiver) = oneshot::channel();
        let call = Call { method, fingerprint, args, reply };
        match &address.route {
            Route::Local(hosted) => {
                let activation =
                    hosted.send(address.id, Message::Call(call), Driver::Caller).map_err(|(err, _)| err)?;
                Ok(Reply::Local(LocalReply::new(receiver, activation)))
            }
            Route::Cluster(route) => Ok(match route.send(call)? {
                Sent::Remote(seq) => Reply::Remote(RemoteReply::new(receiver, route.inbound.clone(), seq)),
                Sent::Local(activation) => Reply::Local(LocalReply::new(receiver, activation)),
                Sent::First(opening) => Reply::First(FirstReply::new(opening, receiver)),
            }),
            Route::NotHosted => Err(Error::not_hosted(address.type_name)),
        }
    }
}

impl fmt::Debug for StubCore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}({})", self.address.type_name, self.address.id)
    }
}

/// The reply to a queued call: from an object of this runtime, or through
/// the cluster (the first call of a cluster stub finds its object first).
enum Reply {
    Local(LocalReply),
    Remote(RemoteReply),
    First(FirstReply),
}

impl Future for Reply {
    type Output = Result<Vec<u8>>;

    fn poll(self: Pin<&mut Self>, cx: &mut TaskContext<'_>) -> Poll<Self::Output> {
        match self.get_mut() {
            Reply::Local(reply) => Pin::new(reply).poll(cx),
            Reply::Remote(reply) => Pin::new(reply).poll(cx),
            Reply::First(reply) => Pin::new(reply).poll(cx),
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
    let address = &core.address;
    let name = address.methods.get(method as usize).map_or("unknown", |info| info.name);
    let mut watch = CallWatch::start(address.type_name, &address.id, method, name, address.remote.as_ref());
    let sent = match args.error {
        Some(err) => Err(err),
        None => core.send(method, fingerprint, args.buf),
    };
    PendingCall {
        state: match sent {
            Ok(reply) => Pending::Waiting(reply, Deadline { address: address.clone(), timer: None }),
            Err(err) => {
                watch.end(Outcome::error(&err), || address.place());
                Pending::Failed(Some(err))
            }
        },
        decode: decode_reply::<R>,
        watch,
    }
}

fn decode_reply<R: DeserializeOwned>(bytes: &[u8]) -> Result<R> {
    codec::decode(bytes).map_err(Error::from)
}

/// The reply to a call that has already been queued.
///
/// Awaiting it may run the object's turn right in the awaiting task, when
/// the object is idle (nothing is spawned then). Dropping it does not cancel
/// the call: the object still runs it, the reply is discarded. A reply that
/// has not come `call_timeout` after the caller started waiting fails the
/// call with [`Error::Timeout`].
#[must_use = "the call is already queued; await this future to learn its outcome"]
pub struct PendingCall<R> {
    state: Pending,
    decode: fn(&[u8]) -> Result<R>,
    /// The call's span and, for remote calls, its metrics.
    watch: CallWatch,
}

enum Pending {
    Waiting(Reply, Deadline),
    Failed(Option<Error>),
}

/// When a waiting call gives up: `call_timeout` after its caller first
/// waited for it. The timer is made only then, so a call whose turn runs
/// in the caller's first poll costs no timer.
struct Deadline {
    address: Arc<Address>,
    timer: Option<Pin<Box<tokio::time::Sleep>>>,
}

impl Deadline {
    /// Ready with the error once the time is up.
    fn poll_expired(&mut self, cx: &mut TaskContext<'_>) -> Poll<Error> {
        let address = &self.address;
        let timeout = address.host.config().call_timeout;
        let timer = self.timer.get_or_insert_with(|| {
            // The object's runtime keeps time, whichever executor polls.
            let _runtime = address.host.enter();
            Box::pin(tokio::time::sleep(timeout))
        });
        timer.as_mut().poll(cx).map(|()| {
            Error::Timeout(format!(
                "`{}` object {} did not reply within {timeout:?} (`call_timeout`); the call may still \
                 run, or have run: retry only what is safe to repeat",
                address.type_name, address.id
            ))
        })
    }
}

impl<R> Future for PendingCall<R> {
    type Output = Result<R>;

    fn poll(self: Pin<&mut Self>, cx: &mut TaskContext<'_>) -> Poll<Result<R>> {
        let this = self.get_mut();
        // A turn run right here, in the caller's task, is the call's child.
        let _entered = (!this.watch.span().is_disabled()).then(|| this.watch.span().clone().entered());
        match &mut this.state {
            Pending::Failed(err) => Poll::Ready(Err(err.take().unwrap_or_else(|| {
                Error::Disconnected("this call's future was polled after it completed".into())
            }))),
            Pending::Waiting(reply, deadline) => {
                let mut expired = false;
                let result = match Pin::new(reply).poll(cx) {
                    Poll::Pending => match deadline.poll_expired(cx) {
                        Poll::Pending => return Poll::Pending,
                        Poll::Ready(err) => {
                            expired = true;
                            Err(err)
                        }
                    },
                    Poll::Ready(Ok(bytes)) => (this.decode)(&bytes),
                    Poll::Ready(Err(err)) => {
                        deadline.address.note(&err);
                        Err(err)
                    }
                };
                let address = &deadline.address;
                this.watch.end(Outcome::of(&result), || address.place());
                if expired {
                    // Dropping the reply does not cancel the call.
                    this.state = Pending::Failed(None);
                }
                Poll::Ready(result)
            }
        }
    }
}

impl<R> Drop for PendingCall<R> {
    fn drop(&mut self) {
        // A call whose outcome was seen has ended already: this is a no-op.
        if let Pending::Waiting(_, deadline) = &self.state {
            let address = &deadline.address;
            self.watch.abandon(|| address.place());
        }
    }
}

impl<R> fmt::Debug for PendingCall<R> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("PendingCall")
    }
}
