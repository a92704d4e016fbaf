//! A PostgreSQL connection driven by the task that uses it, not by a task
//! of its own: the lane's (see `replication.rs`).
//!
//! tokio-postgres splits a connection in two: the `Client`, which queues
//! requests, and the `Connection`, a future that does the socket's I/O and
//! is usually spawned. Every request then hops from the caller's task to
//! the connection's task, and every answer back. A worker of a
//! multi-threaded tokio runtime runs at most three tasks in a row that
//! wake one another (its next-task slot); the next one it queues, and
//! wakes another worker to take it. A lone replicated write was such a
//! chain: the connection's task read the answer and woke the lane's task,
//! which woke the caller, which called the object; the object's task, the
//! third, spawned the lane's task for the next entry, which went to the
//! other worker, on the other core, woken for it (and PostgreSQL's server
//! process, woken from there, then ran on a core of its own, woken too).
//! Driven by the lane's task itself, the connection's hop is gone and the
//! whole write stays on one worker, as a bare tokio-postgres round trip
//! does.
//!
//! A driven connection is polled only while one of its uses runs, so it
//! serves one use at a time (the lane ships one entry at a time), and
//! between uses nothing reads what the server sends: [`Driver::alive`]
//! reads it before the next use, so that a connection the server closed
//! in between (a restart) is made again instead of failing that use.

use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicU8, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll, Wake, Waker};

use futures_util::task::AtomicWaker;
use tokio_postgres::tls::NoTlsStream;
use tokio_postgres::{Connection, Socket};

use crate::sync::lock;

/// The I/O half of a connection to PostgreSQL (without TLS).
pub(crate) type PgConnection = Connection<Socket, NoTlsStream>;

/// The `Connection` half of a client that nobody spawned.
pub(crate) struct Driver {
    /// `None` once the connection ended (the client is closed then).
    connection: Mutex<Option<Pin<Box<PgConnection>>>>,
}

impl Driver {
    pub(crate) fn new(connection: PgConnection) -> Self {
        Driver { connection: Mutex::new(Some(Box::pin(connection))) }
    }

    /// Whether the connection still runs, after reading whatever the
    /// server sent while nobody drove it (an error, the end).
    pub(crate) fn alive(&self) -> bool {
        self.poll(&mut Context::from_waker(Waker::noop()));
        lock(&self.connection).is_some()
    }

    /// Does the connection's pending I/O.
    fn poll(&self, cx: &mut Context<'_>) {
        let mut connection = lock(&self.connection);
        if let Some(running) = connection.as_mut()
            && let Poll::Ready(ended) = running.as_mut().poll(cx)
        {
            if let Err(err) = ended {
                tracing::debug!(%err, "a connection to PostgreSQL ended");
            }
            *connection = None;
        }
    }

    /// Runs `work`, a use of this connection's client, driving the
    /// connection meanwhile in the same task.
    ///
    /// Wake-ups during the poll (the client queueing a request wakes the
    /// connection, an answer wakes `work`) only make the poll go round
    /// again: passed on to the task, they would make it yield and wake
    /// another worker. After [`ROUNDS`] rounds the task yields anyway, so
    /// that a wake-up that asks for exactly that (tokio's budget of work
    /// per poll, spent) is not taken for more work forever.
    pub(crate) async fn drive<F: Future>(&self, mut work: Pin<&mut F>) -> F::Output {
        let relay = Arc::new(Relay { task: AtomicWaker::new(), state: AtomicU8::new(IDLE) });
        let waker = Waker::from(relay.clone());
        std::future::poll_fn(|cx| {
            relay.task.register(cx.waker());
            let mut inner = Context::from_waker(&waker);
            for _ in 0..ROUNDS {
                relay.state.store(POLLING, Ordering::SeqCst);
                self.poll(&mut inner);
                if let Poll::Ready(output) = work.as_mut().poll(&mut inner) {
                    relay.state.store(IDLE, Ordering::SeqCst);
                    return Poll::Ready(output);
                }
                // Sends what `work` just queued.
                self.poll(&mut inner);
                if relay.state.swap(IDLE, Ordering::SeqCst) != WOKEN {
                    return Poll::Pending;
                }
            }
            cx.waker().wake_by_ref();
            Poll::Pending
        })
        .await
    }
}

/// The most rounds of one poll of [`Driver::drive`] (a write takes one or
/// two).
const ROUNDS: usize = 16;

/// [`Relay::state`]: not in [`Driver::drive`]'s poll.
const IDLE: u8 = 0;
/// In the poll, not woken yet.
const POLLING: u8 = 1;
/// In the poll, and woken: it goes round again.
const WOKEN: u8 = 2;

/// The waker [`Driver::drive`] polls with: wakes the task only outside
/// the poll; within, it marks the poll to go round again.
struct Relay {
    task: AtomicWaker,
    state: AtomicU8,
}

impl Wake for Relay {
    fn wake(self: Arc<Self>) {
        self.wake_by_ref();
    }

    fn wake_by_ref(self: &Arc<Self>) {
        match self.state.compare_exchange(POLLING, WOKEN, Ordering::SeqCst, Ordering::SeqCst) {
            Ok(_) | Err(WOKEN) => {}
            Err(_) => self.task.wake(),
        }
    }
}
