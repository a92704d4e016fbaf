//! Length-prefixed frames on QUIC streams.
//!
//! A frame is a 4-byte little-endian length followed by that many bytes. A
//! length above the reader's limit is refused before anything is allocated,
//! so a hostile or broken peer cannot make a node allocate gigabytes.

use std::task::{Context, Poll};

use quinn::{RecvStream, SendStream};

use crate::TransportError;

/// The largest frame a node accepts by default: 16 MiB.
pub const MAX_FRAME_LEN: usize = 16 * 1024 * 1024;

/// Writes one frame.
///
/// Header and payload go to the stream in one write: written separately,
/// the header could leave in a packet of its own, and the peer would wake
/// up twice for one frame.
pub async fn write_frame(send: &mut SendStream, payload: &[u8]) -> Result<(), TransportError> {
    let len = u32::try_from(payload.len())
        .ok()
        .filter(|len| *len as usize <= MAX_FRAME_LEN)
        .ok_or(TransportError::FrameTooLarge { len: payload.len(), max: MAX_FRAME_LEN })?;
    let mut frame = Vec::with_capacity(4 + payload.len());
    frame.extend_from_slice(&len.to_le_bytes());
    frame.extend_from_slice(payload);
    send.write_all(&frame).await.map_err(|e| TransportError::Stream(e.to_string()))
}

/// Reads one frame of at most `max` bytes; `None` when the stream ended
/// cleanly between frames.
pub async fn read_frame(recv: &mut RecvStream, max: usize) -> Result<Option<Vec<u8>>, TransportError> {
    let mut len = [0u8; 4];
    match recv.read_exact(&mut len).await {
        Ok(()) => {}
        Err(quinn::ReadExactError::FinishedEarly(0)) => return Ok(None),
        Err(quinn::ReadExactError::FinishedEarly(_)) => {
            return Err(TransportError::Malformed("the stream ended inside a frame header".into()));
        }
        Err(quinn::ReadExactError::ReadError(e)) => return Err(TransportError::Stream(e.to_string())),
    }
    let len = announced_len(len, max)?;
    // The buffer grows as the bytes arrive: a header alone, announcing
    // megabytes that never come, reserves next to nothing.
    let mut payload = Vec::with_capacity(len.min(FIRST_CHUNK));
    while payload.len() < len {
        let chunk = recv
            .read_chunk(len - payload.len(), true)
            .await
            .map_err(|e| TransportError::Stream(e.to_string()))?
            .ok_or_else(|| TransportError::Malformed("the stream ended inside a frame".into()))?;
        payload.extend_from_slice(&chunk.bytes);
    }
    Ok(Some(payload))
}

/// What a frame's buffer reserves before its bytes arrive.
const FIRST_CHUNK: usize = 64 * 1024;

/// The payload length a frame header announces, refused above `max`
/// before anything is allocated for it.
fn announced_len(header: [u8; 4], max: usize) -> Result<usize, TransportError> {
    let len = u32::from_le_bytes(header) as usize;
    if len > max {
        return Err(TransportError::FrameTooLarge { len, max });
    }
    Ok(len)
}

/// Reads frames from a stream by polling, keeping what it has read between
/// polls: unlike [`read_frame`], it loses nothing if the task polling it
/// stops, so several tasks may take turns at reading one stream.
#[derive(Debug)]
pub struct FrameReader {
    recv: RecvStream,
    buf: Vec<u8>,
    max: usize,
}

impl FrameReader {
    /// Reads frames of at most `max` bytes from `recv`.
    pub fn new(recv: RecvStream, max: usize) -> Self {
        FrameReader { recv, buf: Vec::new(), max }
    }

    /// The next frame; `None` when the stream ended cleanly between frames.
    /// When nothing is there yet, the task of `cx` is woken when more arrives.
    pub fn poll_frame(&mut self, cx: &mut Context<'_>) -> Poll<Result<Option<Vec<u8>>, TransportError>> {
        loop {
            if let Some(frame) = self.take_frame()? {
                return Poll::Ready(Ok(Some(frame)));
            }
            let start = self.buf.len();
            self.buf.resize(start + 4096, 0);
            let read = self.recv.poll_read(cx, &mut self.buf[start..]);
            let read = match read {
                Poll::Ready(Ok(read)) => read,
                Poll::Ready(Err(err)) => {
                    self.buf.truncate(start);
                    return Poll::Ready(Err(TransportError::Stream(err.to_string())));
                }
                Poll::Pending => {
                    self.buf.truncate(start);
                    return Poll::Pending;
                }
            };
            self.buf.truncate(start + read);
            if read == 0 {
                return Poll::Ready(if self.buf.is_empty() {
                    Ok(None)
                } else {
                    Err(TransportError::Malformed("the stream ended inside a frame".into()))
                });
            }
        }
    }

    /// A whole frame from the buffer, if one is there.
    fn take_frame(&mut self) -> Result<Option<Vec<u8>>, TransportError> {
        let Some((payload, used)) = split_frame(&self.buf, self.max)? else { return Ok(None) };
        let frame = payload.to_vec();
        self.buf.drain(..used);
        Ok(Some(frame))
    }
}

/// The first frame in `buf`, which holds bytes read from a stream: its
/// payload and the number of bytes it takes, header included; `None` while
/// the frame is incomplete. A header announcing more than `max` bytes is an
/// error at once, however few bytes follow it.
///
/// This is how [`FrameReader`] cuts frames out of what it has read, kept
/// apart from the stream so that it can be tested (and fuzzed) on bytes alone.
///
/// ```
/// use stead_transport::frame::split_frame;
///
/// let buf = [3, 0, 0, 0, b'a', b'b', b'c', 1];
/// assert_eq!(split_frame(&buf, 16).unwrap(), Some((&b"abc"[..], 7)));
/// assert_eq!(split_frame(&buf[..6], 16).unwrap(), None);
/// assert!(split_frame(&[0xFF, 0xFF, 0xFF, 0xFF], 16).is_err());
/// ```
pub fn split_frame(buf: &[u8], max: usize) -> Result<Option<(&[u8], usize)>, TransportError> {
    let Some((header, rest)) = buf.split_first_chunk::<4>() else { return Ok(None) };
    let len = announced_len(*header, max)?;
    Ok(rest.get(..len).map(|payload| (payload, 4 + len)))
}
