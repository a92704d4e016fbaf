//! A stub's first call in a cluster: finding the object, in the caller.
//!
//! The first call through a stub does not know where its object lives. Its
//! reply future ([`FirstReply`]) finds out itself when it is polled: it asks
//! the cache or the directory (in PostgreSQL a node places an object it
//! hosts with one claim), opens a stream if the object lives on another
//! node, and then hands the calls queued meanwhile on, in order. No task
//! stands between the caller and PostgreSQL or the network, and an object
//! placed on the caller's own node runs the first turn in the caller's
//! poll, as a call outside a cluster does.
//!
//! A call, once made, is delivered whether or not its caller waits: the
//! search moves to a task when the first reply is dropped before it is
//! done, when a second call queues behind it (its caller may await that one
//! first), and when the watchdog finds it still going after 10 to 20 ms (its
//! caller may keep the future and never poll it). The first reply then waits
//! for its response like any queued call. The search is bounded by
//! `call_timeout`.

use std::future::Future;
use std::mem;
use std::pin::Pin;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex, Weak};
use std::task::{Context as TaskContext, Poll, Waker};

use tokio::sync::oneshot;

use super::inbound::{Inbound, RemoteReply};
use super::outbound::Outbound;
use super::route::{self, ClusterRoute, Destination, Pump, Stage, Stream};
use crate::error::{Error, Result};
use crate::local::watchdog::Watched;
use crate::local::{Activation, Driver, HostedType, LocalReply};
use crate::sync::lock;

/// The search for a stub's object, started by its first call, with what it
/// needs to hand the queued calls on once it is done.
pub(super) struct Search {
    /// Finding the owner and opening the stream, while nobody else has it
    /// (the first reply polls it here; a task takes it out).
    future: Mutex<Option<SearchFuture>>,
    stage: Arc<Mutex<Stage>>,
    outbound: Arc<Outbound>,
    inbound: Arc<Inbound>,
    destination: Destination,
}

type SearchFuture = Pin<Box<dyn Future<Output = Result<Option<Stream>>> + Send>>;

/// Where a stub's object turned out to be.
enum Found {
    /// On this node, which hosts its type.
    Here(Arc<HostedType>),
    /// On another node: the stream to it.
    There(Stream),
    /// Nowhere it can be reached: the reason.
    Failed(Error),
}

impl Search {
    /// The search for the object of `route`, whose first call is being
    /// queued; it does nothing until it is polled. The watchdog is told, in
    /// case its caller never polls.
    pub(super) fn start(route: &ClusterRoute) -> Arc<Search> {
        let future = route::open(route.destination.clone(), route.inbound.clone());
        let search = Arc::new(Search {
            future: Mutex::new(Some(Box::pin(future))),
            stage: route.stage.clone(),
            outbound: route.outbound.clone(),
            inbound: route.inbound.clone(),
            destination: route.destination.clone(),
        });
        let watched: Weak<dyn Watched> = Arc::downgrade(&search) as Weak<Search>;
        route.destination.host.watchdog().watch(watched);
        search
    }

    /// Goes on searching in the caller's task, unless a task took over
    /// (`None`). Once the object is found, the queued calls go to it; the
    /// first one, this caller's, is queued to be run by this caller's poll
    /// if the object lives here: its activation is returned then.
    fn poll_here(&self, cx: &mut TaskContext<'_>) -> Poll<Option<Option<Arc<Activation>>>> {
        let found = {
            let mut future = lock(&self.future);
            let Some(search) = future.as_mut() else { return Poll::Ready(None) };
            // PostgreSQL's client and the timers belong to the object's
            // runtime, whichever executor polls the caller.
            let _runtime = self.destination.host.enter();
            let found = std::task::ready!(search.as_mut().poll(cx));
            *future = None;
            found
        };
        Poll::Ready(Some(self.found(found, Driver::Caller)))
    }

    /// Moves the search to a task, unless it is done or a task has it.
    pub(super) fn hand_over(self: Arc<Self>) {
        let Some(future) = lock(&self.future).take() else { return };
        let host = self.destination.host.clone();
        host.spawn(async move {
            let found = future.await;
            self.found(found, Driver::Task);
        });
    }

    /// The object was found (or not): hands the queued calls on, the first
    /// with `first` as its driver, and sets the route's stage. Returns the
    /// first call's activation when it was queued here.
    fn found(&self, found: Result<Option<Stream>>, first: Driver) -> Option<Arc<Activation>> {
        let mut stage = lock(&self.stage);
        let Stage::Opening(queue, _) = mem::replace(&mut *stage, Stage::Broken) else {
            debug_assert!(false, "a stub's object is found once");
            return None;
        };
        let found = match (found, &self.destination.hosted) {
            (Ok(None), Some(hosted)) => Found::Here(hosted.clone()),
            (Ok(None), None) => Found::Failed(Error::not_hosted(self.inbound.type_name())),
            (Ok(Some(stream)), _) => Found::There(stream),
            (Err(err), _) => Found::Failed(err),
        };
        match found {
            Found::Failed(err) => {
                // The stub is broken: the queued calls get the reason, later
                // ones the broken stub's error.
                self.inbound.broken.store(true, Ordering::Release);
                drop(stage);
                self.inbound.close();
                for call in queue {
                    let _ = call.reply.send(Err(err.clone()));
                }
                None
            }
            Found::There((send, recv)) => {
                // The queued calls are registered as waiting for their
                // responses before the reader starts: a reader that started
                // first could find nothing waiting, go idle, and leave their
                // responses unread (their callers poll no stream: they were
                // queued before it existed).
                self.outbound.open(send, &self.inbound, queue.into_iter());
                *stage = Stage::Remote;
                drop(stage);
                let host = self.destination.host.clone();
                let (inbound, outbound) = (self.inbound.clone(), self.outbound.clone());
                host.spawn(Pump { host: host.clone(), inbound, outbound }.run(recv));
                None
            }
            Found::Here(hosted) => {
                // No stream: no response will ever be read.
                self.inbound.close();
                let (cluster, id) = (&self.destination.cluster, self.inbound.id());
                let mut refused = None;
                let mut mine = None;
                for (i, call) in queue.into_iter().enumerate() {
                    let driver = if i == 0 { first } else { Driver::Task };
                    match route::deliver(cluster, &hosted, id, call, driver, &mut refused) {
                        Ok(activation) if driver == Driver::Caller => mine = Some(activation),
                        Ok(_) | Err((_, None)) => {}
                        Err((err, Some(call))) => {
                            let _ = call.reply.send(Err(err));
                        }
                    }
                }
                *stage = Stage::Local { hosted, refused };
                mine
            }
        }
    }
}

impl Watched for Search {
    fn rescue(self: Arc<Self>) {
        self.hand_over();
    }
}

/// The first call's handle on its stub's search.
pub(crate) struct Opening {
    search: Arc<Search>,
}

impl Opening {
    pub(super) fn new(search: Arc<Search>) -> Self {
        Opening { search }
    }
}

impl Drop for Opening {
    fn drop(&mut self) {
        // The caller stopped waiting before the object was found.
        self.search.clone().hand_over();
    }
}

/// The reply to a stub's first call in a cluster: it finds the object
/// first, then waits like any other reply (see the module docs).
pub(crate) struct FirstReply {
    state: State,
}

enum State {
    /// Finding the object; the call waits in the stub's queue.
    Opening(Opening, oneshot::Receiver<Result<Vec<u8>>>),
    /// The object lives here: the caller's poll runs its turn.
    Local(LocalReply),
    /// The call went to the object's node, failed, or was handed on by a
    /// task: its response comes like a queued call's.
    Remote(RemoteReply),
    /// Between two states (only while polled).
    Moving,
}

impl FirstReply {
    /// The reply of the first call, queued in its stub while `opening`
    /// finds its object.
    pub(crate) fn new(opening: Opening, receiver: oneshot::Receiver<Result<Vec<u8>>>) -> Self {
        FirstReply { state: State::Opening(opening, receiver) }
    }
}

/// A first call's reply, from its channel.
fn answered(reply: std::result::Result<Result<Vec<u8>>, oneshot::error::RecvError>) -> Result<Vec<u8>> {
    reply.unwrap_or_else(|_| Err(Error::Disconnected("the call was dropped before it was answered".into())))
}

impl Future for FirstReply {
    type Output = Result<Vec<u8>>;

    fn poll(self: Pin<&mut Self>, cx: &mut TaskContext<'_>) -> Poll<Self::Output> {
        let this = self.get_mut();
        if let State::Opening(opening, receiver) = &mut this.state {
            let Poll::Ready(mine) = opening.search.poll_here(cx) else {
                // A task may take the search over (it then wakes whoever
                // polled it last, not this caller): the response wakes
                // this caller then.
                return Pin::new(receiver).poll(cx).map(answered);
            };
            let mine = mine.flatten();
            if let State::Opening(opening, mut receiver) = mem::replace(&mut this.state, State::Moving) {
                this.state = match mine {
                    Some(activation) => {
                        // The receiver still holds this task's waker from
                        // the polls that waited for the search. The turn,
                        // run in this poll, would wake this very task with
                        // its reply, which tokio takes for a yield: it
                        // queues the task again and wakes another worker,
                        // a thread that then competes for the CPUs with
                        // what the caller waits for next (PostgreSQL, for
                        // a caller placing objects). The reply registers
                        // the caller's waker again whenever it waits.
                        let mut nobody = TaskContext::from_waker(Waker::noop());
                        if let Poll::Ready(reply) = Pin::new(&mut receiver).poll(&mut nobody) {
                            return Poll::Ready(answered(reply));
                        }
                        State::Local(LocalReply::new(receiver, activation))
                    }
                    None => State::Remote(RemoteReply::new(receiver, opening.search.inbound.clone(), None)),
                };
            }
        }
        match &mut this.state {
            State::Local(reply) => Pin::new(reply).poll(cx),
            State::Remote(reply) => Pin::new(reply).poll(cx),
            State::Opening(..) | State::Moving => {
                Poll::Ready(Err(Error::Disconnected("this call's reply was polled after it failed".into())))
            }
        }
    }
}
