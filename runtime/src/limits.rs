//! How much memory any peer or caller can make a process hold: every bound
//! in one place, with its default.

use std::time::Duration;

/// The bounds a runtime keeps, whatever its peers do. Set them with
/// [`RuntimeBuilder::limits`](crate::RuntimeBuilder::limits):
///
/// ```
/// let mut limits = stead_runtime::Limits::default();
/// limits.mailbox_bytes = 256 << 20;
/// ```
///
/// (New bounds may be added in later releases, so the type is
/// `#[non_exhaustive]`: start from the default and set what you need.)
///
/// With the defaults, one authenticated peer can make a node hold at most
/// about `max_streams_per_connection` × 64 KiB of frame buffers plus
/// `connection_window` per connection, `max_connections` connections, and
/// `mailbox_bytes` of arguments per object it calls: the node keeps
/// serving others (see the README's "Guarantees and limits").
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub struct Limits {
    /// Bytes of arguments that may wait in one object's mailbox (default
    /// 64 MiB); a call beyond that is refused with `Overloaded`, like one
    /// beyond `mailbox_capacity` calls.
    pub mailbox_bytes: usize,
    /// Connections from other processes a node keeps at once (default
    /// 1,024); more are refused at once.
    pub max_connections: usize,
    /// Streams a peer may open on one connection (default 4,096: a stub
    /// uses one per node it calls).
    pub max_streams_per_connection: u32,
    /// Bytes a peer may send on one stream ahead of what the node read
    /// (default 1 MiB).
    pub stream_window: u32,
    /// Bytes a peer may send on one connection ahead of what the node read
    /// (default 16 MiB).
    pub connection_window: u32,
    /// How long a new stream may take to say what it is for (default 10 s);
    /// then it is closed.
    pub first_frame_timeout: Duration,
    /// Bytes of requests one stub may hold unsent while its stream is full
    /// (default 64 MiB); a call beyond that is refused with `Overloaded`.
    pub stub_buffer_bytes: usize,
    /// Calls one stub may have sent and not had answered (default 65,536);
    /// a call beyond that is refused with `Overloaded`.
    pub stub_calls_in_flight: usize,
    /// Object owners a process remembers (default 100,000); the oldest are
    /// forgotten first, and looked up again when needed.
    pub placement_cache: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            mailbox_bytes: 64 << 20,
            max_connections: 1_024,
            max_streams_per_connection: 4_096,
            stream_window: 1 << 20,
            connection_window: 16 << 20,
            first_frame_timeout: Duration::from_secs(10),
            stub_buffer_bytes: 64 << 20,
            stub_calls_in_flight: 65_536,
            placement_cache: 100_000,
        }
    }
}
