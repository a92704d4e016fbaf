//! The bounded queue of messages in front of each object, and the messages.
//!
//! A mailbox holds the calls that reached an object while it was busy with
//! another turn. It is bounded: when it holds `capacity` calls, the next call
//! is refused at once with [`Error::Overloaded`](crate::Error::Overloaded)
//! instead of waiting, so that no queue anywhere grows without limit and a
//! caller learns immediately that the object is saturated. Messages the
//! runtime sends itself (alarms) are not refused.
//!
//! The queue keeps the order in which calls were pushed; since a stub pushes
//! when its method is *called*, that is the order in which the caller issued
//! them (E-order).

use std::collections::VecDeque;

use tokio::sync::oneshot;

use crate::error::Result;
use crate::storage::AlarmDue;

/// Where the outcome of a call goes: the encoded result, or the error.
pub(crate) type ReplySender = oneshot::Sender<Result<Vec<u8>>>;

/// One message for an object.
pub(crate) enum Message {
    /// A call of a remote method.
    Call(Call),
    /// An entry of the node's alarm index is due.
    Alarm(AlarmDue),
}

impl Message {
    /// The most messages that may wait before this one is refused: calls
    /// are bounded by `capacity`, the runtime's own messages are not.
    pub(crate) fn limit(&self, capacity: usize) -> Option<usize> {
        match self {
            Message::Call(_) => Some(capacity),
            Message::Alarm(_) => None,
        }
    }
}

/// A call of a remote method, with its arguments already encoded.
pub(crate) struct Call {
    /// Index of the method in the type's method table.
    pub(crate) method: u32,
    /// The caller's fingerprint of the method's signature.
    pub(crate) fingerprint: u64,
    /// The encoded tuple of arguments.
    pub(crate) args: Vec<u8>,
    /// Where the outcome goes.
    pub(crate) reply: ReplySender,
}

/// A bounded FIFO of messages. Not synchronised: its owner locks it.
pub(crate) struct Mailbox<M> {
    queue: VecDeque<M>,
}

impl<M> Mailbox<M> {
    pub(crate) fn new() -> Self {
        // An empty VecDeque does not allocate: idle objects cost no queue memory.
        Mailbox { queue: VecDeque::new() }
    }

    /// Queues `message`, or hands it back when `limit` messages already wait.
    pub(crate) fn push(&mut self, message: M, limit: Option<usize>) -> std::result::Result<(), M> {
        if limit.is_some_and(|limit| self.queue.len() >= limit) {
            return Err(message);
        }
        self.queue.push_back(message);
        Ok(())
    }

    /// The oldest message, if any.
    pub(crate) fn pop(&mut self) -> Option<M> {
        let message = self.queue.pop_front();
        if self.queue.is_empty() && self.queue.capacity() > 64 {
            // A burst is over: give its memory back.
            self.queue = VecDeque::new();
        }
        message
    }

    pub(crate) fn is_empty(&self) -> bool {
        self.queue.is_empty()
    }
}
