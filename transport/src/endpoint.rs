//! The QUIC endpoint of a node or client: quinn with rustls (ring), mutual
//! TLS, and an ALPN that carries the protocol version.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use quinn::crypto::rustls::{HandshakeData, QuicClientConfig, QuicServerConfig};
use quinn::{Connection, Endpoint as QuinnEndpoint, Incoming, TransportConfig, VarInt};

use crate::TransportError;
use crate::tls::{Identity, client_crypto, server_crypto};

/// The version of stead's wire protocol, carried in the ALPN as `stead/N`.
pub const PROTOCOL_VERSION: u32 = 1;

/// The highest version a server advertises, so that a peer speaking any
/// version up to it completes the handshake and learns, in the close
/// reason, which version this node speaks.
const HIGHEST_ADVERTISED: u32 = 64;

/// Application close code: the peer speaks another protocol version.
pub const CLOSE_VERSION_MISMATCH: u32 = 2;

/// How an endpoint notices that a peer is gone.
///
/// A peer that sends nothing for `peer_timeout` is dead: its connection
/// closes and calls in flight on it fail. Each side sends a keep-alive
/// every `keep_alive` so that a live but idle peer is never taken for dead.
/// QUIC also waits at least three probe timeouts (a few round trips), so on
/// a slow link detection takes the longer of the two.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Liveness {
    /// How often an idle connection sends a keep-alive (default 1 s).
    pub keep_alive: Duration,
    /// How long a silent peer is waited for before it counts as dead
    /// (default 5 s).
    pub peer_timeout: Duration,
    /// How long a connection attempt may take (default 5 s).
    pub connect_timeout: Duration,
}

/// How much one peer may make an endpoint hold: streams and the bytes
/// received but not yet read.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Flow {
    /// Streams a peer may have open on one connection at once (default
    /// 4,096; a stub uses one per node it calls).
    pub max_streams: u32,
    /// Bytes a peer may send on one stream ahead of what was read (default
    /// 1 MiB).
    pub stream_window: u32,
    /// Bytes a peer may send on one connection ahead of what was read
    /// (default 16 MiB).
    pub connection_window: u32,
}

impl Default for Flow {
    fn default() -> Self {
        Flow { max_streams: 4_096, stream_window: 1 << 20, connection_window: 16 << 20 }
    }
}

impl Default for Liveness {
    /// Settings that survive a 200 ms round trip between regions: a dead
    /// peer is noticed about 5 s after it last sent something.
    fn default() -> Self {
        Liveness {
            keep_alive: Duration::from_secs(1),
            peer_timeout: Duration::from_secs(5),
            connect_timeout: Duration::from_secs(5),
        }
    }
}

fn alpn(version: u32) -> Vec<u8> {
    format!("stead/{version}").into_bytes()
}

/// Transport settings: many streams in flight, and a dead peer noticed
/// after `liveness.peer_timeout`.
fn transport_config(liveness: &Liveness, flow: &Flow) -> Result<Arc<TransportConfig>, TransportError> {
    let mut config = TransportConfig::default();
    // One stream per stub-object pair; no unidirectional streams at all.
    config.max_concurrent_bidi_streams(VarInt::from_u32(flow.max_streams));
    config.max_concurrent_uni_streams(VarInt::from_u32(0));
    config.stream_receive_window(VarInt::from_u32(flow.stream_window));
    config.receive_window(VarInt::from_u32(flow.connection_window));
    config.keep_alive_interval(Some(liveness.keep_alive));
    let idle = quinn::IdleTimeout::try_from(liveness.peer_timeout).map_err(|_| {
        TransportError::Config(format!("a peer timeout of {:?} is too long", liveness.peer_timeout))
    })?;
    config.max_idle_timeout(Some(idle));
    Ok(Arc::new(config))
}

/// A QUIC endpoint: a server when it listens, always a client.
#[derive(Clone, Debug)]
pub struct Endpoint {
    inner: QuinnEndpoint,
    version: u32,
    connect_timeout: Duration,
}

impl Endpoint {
    /// Binds an endpoint that presents `identity`, with the default
    /// [`Liveness`]; with `listen`, it also accepts connections there.
    pub fn bind(identity: &Identity, listen: Option<SocketAddr>) -> Result<Self, TransportError> {
        Endpoint::bind_with(identity, listen, Liveness::default(), Flow::default(), PROTOCOL_VERSION)
    }

    /// Like [`bind`](Self::bind), with the given liveness and flow
    /// settings, speaking protocol `version` (another version than
    /// [`PROTOCOL_VERSION`] only to test how nodes of different versions
    /// refuse each other).
    pub fn bind_with(
        identity: &Identity,
        listen: Option<SocketAddr>,
        liveness: Liveness,
        flow: Flow,
        version: u32,
    ) -> Result<Self, TransportError> {
        let transport = transport_config(&liveness, &flow)?;
        let client = client_crypto(identity, vec![alpn(version)])?;
        let client = QuicClientConfig::try_from(client).map_err(|e| TransportError::Tls(e.to_string()))?;
        let mut client = quinn::ClientConfig::new(Arc::new(client));
        client.transport_config(transport.clone());
        let mut endpoint = match listen {
            Some(addr) => {
                let server = server_crypto(identity, (1..=HIGHEST_ADVERTISED).map(alpn).collect())?;
                let server =
                    QuicServerConfig::try_from(server).map_err(|e| TransportError::Tls(e.to_string()))?;
                let mut server = quinn::ServerConfig::with_crypto(Arc::new(server));
                server.transport_config(transport);
                QuinnEndpoint::server(server, addr)
                    .map_err(|e| TransportError::Bind(format!("cannot listen on {addr}: {e}")))?
            }
            None => QuinnEndpoint::client(SocketAddr::from(([0, 0, 0, 0], 0)))
                .map_err(|e| TransportError::Bind(format!("cannot open a client socket: {e}")))?,
        };
        endpoint.set_default_client_config(client);
        Ok(Endpoint { inner: endpoint, version, connect_timeout: liveness.connect_timeout })
    }

    /// How long [`connect`](Self::connect) waits for a peer to answer.
    pub fn connect_timeout(&self) -> Duration {
        self.connect_timeout
    }

    /// The address the endpoint is bound to.
    pub fn local_addr(&self) -> Result<SocketAddr, TransportError> {
        self.inner.local_addr().map_err(|e| TransportError::Bind(e.to_string()))
    }

    /// Connects to node `name` at `addr`, checking its certificate; waits
    /// at most the connect timeout.
    pub async fn connect(&self, addr: SocketAddr, name: &str) -> Result<Connection, TransportError> {
        self.connect_within(addr, name, self.connect_timeout).await
    }

    /// [`connect`](Self::connect), waiting at most `timeout` (a caller that
    /// knows the node's lease ends sooner than the connect timeout gives up
    /// then: see the runtime's membership).
    pub async fn connect_within(
        &self,
        addr: SocketAddr,
        name: &str,
        timeout: Duration,
    ) -> Result<Connection, TransportError> {
        let connecting = self
            .inner
            .connect(addr, name)
            .map_err(|e| TransportError::Connect(format!("cannot connect to `{name}` at {addr}: {e}")))?;
        match tokio::time::timeout(timeout, connecting).await {
            Ok(Ok(conn)) => Ok(conn),
            Ok(Err(e)) => Err(connection_error(&format!("`{name}` at {addr}"), e)),
            Err(_) => Err(TransportError::Connect(format!(
                "`{name}` at {addr} did not answer within {timeout:?} (the connect timeout, or less when \
                 the node's lease ends sooner)"
            ))),
        }
    }

    /// The next incoming connection; `None` once the endpoint is closed.
    pub async fn accept(&self) -> Option<Incoming> {
        self.inner.accept().await
    }

    /// Completes an incoming connection and checks the protocol version;
    /// a peer on another version is closed with a reason naming both.
    pub async fn establish(&self, incoming: Incoming) -> Result<Connection, TransportError> {
        let remote = incoming.remote_address();
        let conn = incoming
            .await
            .map_err(|e| TransportError::Handshake(format!("handshake with {remote} failed: {e}")))?;
        let offered = conn
            .handshake_data()
            .and_then(|data| data.downcast::<HandshakeData>().ok())
            .and_then(|data| data.protocol)
            .map(|p| String::from_utf8_lossy(&p).into_owned())
            .unwrap_or_default();
        let ours = String::from_utf8_lossy(&alpn(self.version)).into_owned();
        if offered != ours {
            let reason = format!(
                "protocol version mismatch: this node speaks {ours}, the peer speaks {offered}; run \
                 the same stead version on every node"
            );
            conn.close(VarInt::from_u32(CLOSE_VERSION_MISMATCH), reason.as_bytes());
            return Err(TransportError::Version(reason));
        }
        Ok(conn)
    }

    /// Whether the peer of `conn` presented a certificate that names
    /// `name` (a DNS subject alternative name): the certificate is the
    /// identity of a node. (Every peer's certificate was already checked
    /// against the cluster's CA at the handshake.)
    pub fn certifies(conn: &Connection, name: &str) -> bool {
        let Some(chain) = conn
            .peer_identity()
            .and_then(|identity| identity.downcast::<Vec<rustls::pki_types::CertificateDer<'static>>>().ok())
        else {
            return false;
        };
        let Some(leaf) = chain.first() else { return false };
        let Ok(name) = rustls::pki_types::ServerName::try_from(name) else { return false };
        webpki::EndEntityCert::try_from(leaf)
            .is_ok_and(|cert| cert.verify_is_valid_for_subject_name(&name).is_ok())
    }

    /// Closes every connection.
    pub fn close(&self) {
        self.inner.close(VarInt::from_u32(0), b"shutting down");
    }
}

/// Describes why a connection to `peer` failed or closed, telling a version
/// mismatch apart.
pub fn connection_error(peer: &str, err: quinn::ConnectionError) -> TransportError {
    match err {
        quinn::ConnectionError::ApplicationClosed(close)
            if close.error_code == VarInt::from_u32(CLOSE_VERSION_MISMATCH) =>
        {
            TransportError::Version(String::from_utf8_lossy(&close.reason).into_owned())
        }
        other => TransportError::Connect(format!("connection to {peer} failed: {other}")),
    }
}
