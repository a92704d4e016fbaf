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

use super::visit::Visit;
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
    /// A turn asked for by `stead::testing` (see `visit.rs`).
    Visit(Visit),
}

impl Message {
    /// What may already wait before this message is refused: calls are
    /// bounded by `capacity` messages and `bytes` of arguments, the
    /// runtime's own messages are not bounded.
    pub(crate) fn bound(&self, capacity: usize, bytes: usize) -> Option<Bound> {
        match self {
            Message::Call(_) => Some(Bound { messages: capacity, bytes }),
            Message::Alarm(_) | Message::Visit(_) => None,
        }
    }

    /// The bytes this message holds, as counted against [`Bound::bytes`].
    pub(crate) fn size(&self) -> usize {
        match self {
            Message::Call(call) => call.args.len(),
            Message::Alarm(_) | Message::Visit(_) => 0,
        }
    }
}

/// How much may wait in a mailbox before a message is refused.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Bound {
    pub(crate) messages: usize,
    pub(crate) bytes: usize,
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

/// A bounded FIFO of messages, by count and by bytes. Not synchronised:
/// its owner locks it.
pub(crate) struct Mailbox<M> {
    /// The messages, each with its size.
    queue: VecDeque<(M, usize)>,
    /// The sum of the sizes of the queued messages.
    bytes: usize,
}

impl<M> Mailbox<M> {
    pub(crate) fn new() -> Self {
        // An empty VecDeque does not allocate: idle objects cost no queue memory.
        Mailbox { queue: VecDeque::new(), bytes: 0 }
    }

    /// Queues `message` of `size` bytes, or hands it back when what waits
    /// already reaches `bound` (a message larger than the byte bound is
    /// taken when nothing waits, so that it can run at all).
    pub(crate) fn push(
        &mut self,
        message: M,
        size: usize,
        bound: Option<Bound>,
    ) -> std::result::Result<(), M> {
        if let Some(bound) = bound {
            let over_bytes = !self.queue.is_empty() && self.bytes.saturating_add(size) > bound.bytes;
            if self.queue.len() >= bound.messages || over_bytes {
                return Err(message);
            }
        }
        self.bytes += size;
        self.queue.push_back((message, size));
        Ok(())
    }

    /// The oldest message, if any.
    pub(crate) fn pop(&mut self) -> Option<M> {
        let (message, size) = self.queue.pop_front()?;
        self.bytes -= size;
        if self.queue.is_empty() && self.queue.capacity() > 64 {
            // A burst is over: give its memory back.
            self.queue = VecDeque::new();
        }
        Some(message)
    }

    pub(crate) fn is_empty(&self) -> bool {
        self.queue.is_empty()
    }
}
