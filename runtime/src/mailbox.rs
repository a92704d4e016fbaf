//! The bounded queue of messages in front of each object.
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

use crate::alarm::AlarmDue;
use crate::error::Result;

/// Where the outcome of a call is sent: the encoded result, or the error.
pub(crate) type Reply = oneshot::Sender<Result<Vec<u8>>>;

/// One message for an object.
pub(crate) enum Message {
    /// A call of a remote method.
    Call(Call),
    /// An entry of the node's alarm index is due.
    Alarm(AlarmDue),
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
    pub(crate) reply: Reply,
}

/// A bounded FIFO of messages. Not synchronised: its owner locks it.
pub(crate) struct Mailbox {
    queue: VecDeque<Message>,
}

/// The mailbox is full: the call was not queued and is handed back.
pub(crate) struct Full(pub(crate) Message);

impl Mailbox {
    pub(crate) fn new() -> Self {
        // An empty VecDeque does not allocate: idle objects cost no queue memory.
        Mailbox { queue: VecDeque::new() }
    }

    /// Queues a call, or hands it back when `capacity` calls already wait.
    pub(crate) fn push(&mut self, message: Message, capacity: usize) -> Result<(), Full> {
        if matches!(message, Message::Call(_)) && self.queue.len() >= capacity {
            return Err(Full(message));
        }
        self.queue.push_back(message);
        Ok(())
    }

    /// The oldest message, if any.
    pub(crate) fn pop(&mut self) -> Option<Message> {
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
