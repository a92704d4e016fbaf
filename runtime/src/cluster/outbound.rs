//! The requests going out on a stub's stream, written by those who make them.
//!
//! Once the stub's pump has opened the stream (see `route.rs`), a call is
//! encoded and written to the stream by the caller itself, at the moment it
//! is made: its sequence number and its place on the stream are fixed there,
//! which keeps E-order, and no task is woken to carry it. What the stream
//! cannot take at once (flow control) stays in a buffer that the pump
//! writes out when the stream is ready again.
//!
//! A stream wakes one writer only: the last task that found it full. So
//! once a write has blocked, callers only append to the buffer and the pump
//! alone writes, with its own waker, until the buffer is empty; a caller's
//! write (which registers no real waker) would otherwise replace the pump's,
//! and nobody would be woken when the peer reads on. Calls made before the stream
//! is open wait in the stub's queue (`route.rs`); the first call's search
//! moves them to the stream, in order, before it opens it to callers.

use std::pin::Pin;
use std::sync::Mutex;
use std::task::{Context as TaskContext, Poll, Waker};

use stead_transport::SendStream;
use stead_transport::codec;
use stead_transport::frame::MAX_FRAME_LEN;
use tokio::sync::Notify;

use super::inbound::Inbound;
use crate::error::{Error, Result};
use crate::local::Call;
use crate::sync::lock;
use crate::wire::Request;

/// The sending side of one stub's stream.
pub(crate) struct Outbound {
    state: Mutex<State>,
    /// Wakes the pump: bytes are left to write, or the stub is gone.
    pub(crate) pump: Notify,
}

#[derive(Default)]
struct State {
    /// Bytes of requests the stub may hold unsent.
    max_buffered: usize,
    /// Calls the stub may have in flight (sent, not answered).
    max_in_flight: usize,
    /// The first call refused for a bound: every later call is refused
    /// too, so that none runs after the gap.
    refused: Option<Error>,
    /// The stream, once open to callers.
    send: Option<SendStream>,
    /// Frames the stream has not taken yet.
    buf: Vec<u8>,
    /// The last sequence number given to a request.
    seq: u64,
    /// The stream took no more at the last write: the pump is waiting to
    /// write `buf`, and callers must not write meanwhile.
    blocked: bool,
    /// The stub is gone: the pump finishes the stream once `buf` is written.
    closing: bool,
}

/// What a write to the stream came to.
pub(crate) enum Flushed {
    /// Everything was written.
    Done,
    /// The stream takes no more for now; the pump must finish the job.
    Blocked,
    /// The stream is broken.
    Failed,
}

impl Outbound {
    /// The sending side of a stub that may hold `max_buffered` bytes unsent
    /// and have `max_in_flight` calls unanswered.
    pub(crate) fn new(max_buffered: usize, max_in_flight: usize) -> Self {
        Outbound {
            state: Mutex::new(State { max_buffered, max_in_flight, ..State::default() }),
            pump: Notify::new(),
        }
    }

    /// Sends `call` on the stream, which the stub's first call opened,
    /// returning its sequence number. A call beyond the stub's bounds is
    /// refused with `Overloaded`.
    pub(crate) fn send(&self, call: Call, inbound: &Inbound) -> Result<Option<u64>> {
        let mut state = lock(&self.state);
        if state.send.is_none() {
            // Never open, or finished: nothing is sent on it any more.
            return Err(inbound.broken_error());
        }
        let seq = state.push(call, inbound)?;
        if state.blocked {
            // The pump writes it, with everything before it, when the stream
            // takes more.
            return Ok(seq);
        }
        match state.flush(&mut TaskContext::from_waker(Waker::noop())) {
            Flushed::Done => {}
            Flushed::Blocked => self.pump.notify_one(),
            Flushed::Failed => {
                drop(state);
                inbound.fail_all();
            }
        }
        Ok(seq)
    }

    /// Opens the stream to callers, after moving the calls queued so far
    /// (`queued` yields them in order) onto it.
    pub(crate) fn open(&self, send: SendStream, inbound: &Inbound, queued: impl Iterator<Item = Call>) {
        let mut state = lock(&self.state);
        for call in queued {
            if let Err((err, call)) = state.push_or_refuse(call, inbound) {
                let _ = call.reply.send(Err(err));
            }
        }
        state.send = Some(send);
        drop(state);
        self.pump.notify_one();
    }

    /// Writes what is left (the pump's part): `Done` once the buffer is
    /// empty, `Blocked` while the stream takes no more (the task of `cx` is
    /// woken when it does).
    pub(crate) fn poll_flush(&self, cx: &mut TaskContext<'_>) -> Flushed {
        lock(&self.state).flush(cx)
    }

    /// The stub is gone.
    pub(crate) fn close(&self) {
        lock(&self.state).closing = true;
        self.pump.notify_one();
    }

    /// Whether the stub is gone and everything it sent is written.
    pub(crate) fn is_finished(&self) -> bool {
        let state = lock(&self.state);
        state.closing && state.buf.is_empty()
    }

    /// Finishes the stream (no more requests).
    pub(crate) fn finish(&self) {
        if let Some(send) = lock(&self.state).send.as_mut() {
            let _ = send.finish();
        }
    }
}

impl State {
    /// Encodes `call` into the buffer and records that it waits for its
    /// response, returning its sequence number; a call that cannot be sent
    /// is answered with the error, and one beyond the stub's bounds is
    /// refused (and every later one with it).
    fn push(&mut self, call: Call, inbound: &Inbound) -> Result<Option<u64>> {
        self.push_or_refuse(call, inbound).map_err(|(err, _)| err)
    }

    /// Like `push`, handing a refused call back with the error.
    fn push_or_refuse(
        &mut self,
        call: Call,
        inbound: &Inbound,
    ) -> std::result::Result<Option<u64>, (Error, Call)> {
        if let Some(earlier) = &self.refused {
            return Err((earlier.after_break(), call));
        }
        if inbound.in_flight() >= self.max_in_flight {
            return Err(self.refuse(
                format!(
                    "{} calls of this stub are unanswered, as many as `Limits::stub_calls_in_flight` \
                     allows; the call was not sent, make a new stub and retry later",
                    self.max_in_flight
                ),
                call,
            ));
        }
        let Call { method, fingerprint, args, reply } = call;
        let seq = self.seq + 1;
        let request = codec::encode(&Request { seq, method, fingerprint, args });
        let frame = match request {
            Ok(frame) if frame.len() <= MAX_FRAME_LEN => frame,
            Ok(frame) => {
                let err = Error::Codec(format!(
                    "the call's arguments take {} bytes encoded, more than the {MAX_FRAME_LEN} a \
                     request may; pass large data in several calls",
                    frame.len()
                ));
                let _ = reply.send(Err(err));
                return Ok(None);
            }
            Err(err) => {
                let _ = reply.send(Err(Error::from(err)));
                return Ok(None);
            }
        };
        if !self.buf.is_empty() && self.buf.len().saturating_add(frame.len()) > self.max_buffered {
            let call = Call { method, fingerprint, args: Vec::new(), reply };
            return Err(self.refuse(
                format!(
                    "this stub holds {} bytes of requests its node has not taken yet, and \
                     `Limits::stub_buffer_bytes` allows {}; the call was not sent, make a new stub and \
                     retry later",
                    self.buf.len(),
                    self.max_buffered
                ),
                call,
            ));
        }
        self.seq = seq;
        let len = u32::try_from(frame.len()).unwrap_or(u32::MAX);
        self.buf.extend_from_slice(&len.to_le_bytes());
        self.buf.extend_from_slice(&frame);
        inbound.expect(seq, reply);
        Ok(Some(seq))
    }

    /// Refuses `call` for a bound, and every later call of the stub.
    fn refuse(&mut self, why: String, call: Call) -> (Error, Call) {
        let err = Error::Overloaded(why);
        self.refused = Some(err.clone());
        (err, call)
    }

    /// Writes what the stream takes of the buffer; `Blocked` (and the
    /// stream then wakes the task of `cx`) when it takes no more.
    fn flush(&mut self, cx: &mut TaskContext<'_>) -> Flushed {
        let Some(send) = self.send.as_mut() else { return Flushed::Blocked };
        while !self.buf.is_empty() {
            match Pin::new(&mut *send).poll_write(cx, &self.buf) {
                Poll::Ready(Ok(written)) => {
                    self.buf.drain(..written);
                }
                Poll::Ready(Err(_)) => return Flushed::Failed,
                Poll::Pending => {
                    self.blocked = true;
                    return Flushed::Blocked;
                }
            }
        }
        self.blocked = false;
        Flushed::Done
    }
}
