//! The frame reader: cuts length-prefixed frames out of bytes read from a
//! stream, as `FrameReader` does, with the stream arriving in arbitrary
//! pieces.
//!
//! Checks that cutting never panics, that a frame is exactly what its header
//! announced, that a header above the limit is refused (and only then), and
//! that how the bytes were split into reads changes nothing.

#![no_main]

use arbitrary::Arbitrary;
use libfuzzer_sys::fuzz_target;
use stead_transport::TransportError;
use stead_transport::frame::{MAX_FRAME_LEN, split_frame};

#[derive(Arbitrary, Debug)]
struct Input {
    /// The reader's limit: the node's own when `None`.
    max: Option<u16>,
    /// Sizes of the successive reads (cycled; zero means one byte).
    reads: Vec<u8>,
    stream: Vec<u8>,
}

/// What the reader ends with: the frames it cut, then an error or the
/// number of bytes left over (an incomplete frame).
#[derive(Debug, PartialEq)]
enum End {
    Error(String),
    Leftover(usize),
}

fuzz_target!(|input: Input| {
    let max = input.max.map_or(MAX_FRAME_LEN, usize::from);
    let whole = cut_all(&input.stream, max, &[usize::MAX]);
    let reads: Vec<usize> = input.reads.iter().map(|n| usize::from(*n).max(1)).collect();
    let pieces = cut_all(&input.stream, max, if reads.is_empty() { &[1] } else { &reads });
    assert_eq!(whole, pieces, "the frames depend on how the stream was read");

    // The frames, headers put back, are the start of the stream.
    let (frames, end) = whole;
    let mut rebuilt = Vec::new();
    for frame in &frames {
        rebuilt.extend_from_slice(&(frame.len() as u32).to_le_bytes());
        rebuilt.extend_from_slice(frame);
    }
    assert_eq!(&input.stream[..rebuilt.len()], &rebuilt[..]);
    let rest = &input.stream[rebuilt.len()..];
    match end {
        End::Leftover(left) => {
            assert_eq!(left, rest.len());
            let announced = rest.first_chunk::<4>().map(|h| u32::from_le_bytes(*h) as usize);
            assert!(announced.is_none_or(|len| len <= max && rest.len() < 4 + len));
        }
        End::Error(_) => {
            let announced = u32::from_le_bytes(*rest.first_chunk::<4>().unwrap()) as usize;
            assert!(announced > max);
        }
    }
});

/// Feeds `stream` to a reader buffer in reads of the sizes in `reads`
/// (cycled), cutting frames after each read, as `FrameReader::poll_frame`
/// does.
fn cut_all(stream: &[u8], max: usize, reads: &[usize]) -> (Vec<Vec<u8>>, End) {
    let mut frames = Vec::new();
    let mut buf = Vec::new();
    let mut at = 0;
    for read in reads.iter().cycle() {
        loop {
            match split_frame(&buf, max) {
                Ok(Some((payload, used))) => {
                    assert_eq!(used, 4 + payload.len());
                    assert!(payload.len() <= max);
                    frames.push(payload.to_vec());
                    buf.drain(..used);
                }
                Ok(None) => break,
                Err(err @ TransportError::FrameTooLarge { len, max: limit }) => {
                    assert!(len > max && limit == max);
                    assert!(!err.to_string().is_empty());
                    return (frames, End::Error(err.to_string()));
                }
                Err(other) => panic!("unexpected error: {other}"),
            }
        }
        if at == stream.len() {
            return (frames, End::Leftover(buf.len()));
        }
        let end = at.saturating_add(*read).min(stream.len());
        buf.extend_from_slice(&stream[at..end]);
        at = end;
    }
    unreachable!("`reads` is not empty, so the cycle never ends")
}
