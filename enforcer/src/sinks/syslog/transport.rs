//! Getting messages to the server: one datagram per message over UDP, octet-counted frames
//! (RFC 6587 §3.4.1, `LEN SP MSG`) over TCP or TLS. Connecting and writing are bounded in time,
//! so a black-holed server is an error the fan-out retries, never a hang.

use std::{
    future::poll_fn,
    net::{Ipv4Addr, Ipv6Addr, SocketAddr},
    path::Path,
    pin::Pin,
    sync::Arc,
    task::Poll,
    time::Duration,
};

use rustls::{
    ClientConfig, RootCertStore,
    pki_types::{CertificateDer, ServerName, pem::PemObject},
};
use tokio::{
    io::{AsyncRead, AsyncWrite, AsyncWriteExt, ReadBuf},
    net::{TcpStream, UdpSocket},
};
use tokio_rustls::TlsConnector;

use crate::sinks::{SinkError, SyslogTransport};

const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// For a whole batch: a server that stops reading fills the socket buffers, and then a write
/// waits until this passes.
const WRITE_TIMEOUT: Duration = Duration::from_secs(5);
/// Longest datagram sent: rsyslog's and syslog-ng's default maximum message size. UDP is lossy
/// by design; a longer message is cut (at a character boundary) rather than lost.
pub(super) const DATAGRAM_LIMIT: usize = 8192;

/// How to reach the server, prepared once (the TLS configuration with its roots).
#[derive(Clone)]
pub(super) enum Connector {
    Udp,
    Tcp,
    Tls {
        connector: TlsConnector,
        server_name: ServerName<'static>,
    },
}

impl std::fmt::Debug for Connector {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Udp => f.write_str("Udp"),
            Self::Tcp => f.write_str("Tcp"),
            Self::Tls { server_name, .. } => f
                .debug_struct("Tls")
                .field("server_name", server_name)
                .finish_non_exhaustive(),
        }
    }
}

impl Connector {
    pub(super) fn new(transport: &SyslogTransport, address: SocketAddr) -> Result<Self, SinkError> {
        Ok(match transport {
            SyslogTransport::Udp => Self::Udp,
            SyslogTransport::Tcp => Self::Tcp,
            SyslogTransport::Tls {
                ca_file,
                server_name,
            } => Self::Tls {
                connector: TlsConnector::from(Arc::new(client_config(ca_file)?)),
                server_name: match server_name {
                    Some(name) => ServerName::try_from(name.clone()).map_err(|source| {
                        SinkError::ServerName {
                            name: name.clone(),
                            source,
                        }
                    })?,
                    None => ServerName::IpAddress(address.ip().into()),
                },
            },
        })
    }

    pub(super) async fn connect(&self, address: SocketAddr) -> Result<Connection, SinkError> {
        let connected = tokio::time::timeout(CONNECT_TIMEOUT, self.connect_now(address)).await;
        connected.unwrap_or(Err(SinkError::ConnectTimeout {
            address,
            timeout: CONNECT_TIMEOUT,
        }))
    }

    async fn connect_now(&self, address: SocketAddr) -> Result<Connection, SinkError> {
        let connect_error = |source| SinkError::Connect { address, source };
        match self {
            Self::Udp => {
                let local: SocketAddr = if address.is_ipv4() {
                    (Ipv4Addr::UNSPECIFIED, 0).into()
                } else {
                    (Ipv6Addr::UNSPECIFIED, 0).into()
                };
                let socket = UdpSocket::bind(local).await.map_err(connect_error)?;
                socket.connect(address).await.map_err(connect_error)?;
                Ok(Connection::Datagram(socket))
            }
            Self::Tcp => {
                let stream = TcpStream::connect(address).await.map_err(connect_error)?;
                Ok(Connection::Stream(Box::new(stream)))
            }
            Self::Tls {
                connector,
                server_name,
            } => {
                let stream = TcpStream::connect(address).await.map_err(connect_error)?;
                let stream = connector
                    .connect(server_name.clone(), stream)
                    .await
                    .map_err(|source| SinkError::Handshake { address, source })?;
                Ok(Connection::Stream(Box::new(stream)))
            }
        }
    }
}

/// The server's CA certificates (PEM) as the only roots: a syslog server is the operator's own,
/// never one the public roots vouch for.
fn client_config(ca_file: &Path) -> Result<ClientConfig, SinkError> {
    let ca_error = |source| SinkError::CaFile {
        path: ca_file.to_owned(),
        source,
    };
    let mut roots = RootCertStore::empty();
    for certificate in CertificateDer::pem_file_iter(ca_file).map_err(ca_error)? {
        roots
            .add(certificate.map_err(ca_error)?)
            .map_err(|source| SinkError::CaCertificate {
                path: ca_file.to_owned(),
                source,
            })?;
    }
    if roots.is_empty() {
        return Err(SinkError::NoCaCertificate {
            path: ca_file.to_owned(),
        });
    }
    Ok(
        ClientConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
            .with_safe_default_protocol_versions()
            .map_err(SinkError::TlsConfig)?
            .with_root_certificates(roots)
            .with_no_client_auth(),
    )
}

pub(super) trait Stream: AsyncRead + AsyncWrite + Unpin + Send {}
impl<T: AsyncRead + AsyncWrite + Unpin + Send> Stream for T {}

/// An open connection to the server.
pub(super) enum Connection {
    Datagram(UdpSocket),
    Stream(Box<dyn Stream>),
}

impl std::fmt::Debug for Connection {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Self::Datagram(_) => "Datagram",
            Self::Stream(_) => "Stream",
        })
    }
}

impl Connection {
    /// Sends every message, in order, within [`WRITE_TIMEOUT`].
    pub(super) async fn send(
        &mut self,
        messages: &[String],
        address: SocketAddr,
    ) -> Result<(), SinkError> {
        let sent = tokio::time::timeout(WRITE_TIMEOUT, self.send_now(messages, address)).await;
        sent.unwrap_or(Err(SinkError::SendTimeout {
            address,
            timeout: WRITE_TIMEOUT,
        }))
    }

    async fn send_now(
        &mut self,
        messages: &[String],
        address: SocketAddr,
    ) -> Result<(), SinkError> {
        let send_error = |source| SinkError::Send { address, source };
        match self {
            Self::Datagram(socket) => {
                for message in messages {
                    socket
                        .send(truncate(message, DATAGRAM_LIMIT).as_bytes())
                        .await
                        .map_err(send_error)?;
                }
                Ok(())
            }
            Self::Stream(stream) => {
                // A server that closed the connection (restarted, idle timeout) is seen here
                // rather than after the kernel has taken a batch it will never deliver.
                if peer_closed(stream.as_mut()).await {
                    return Err(SinkError::Closed { address });
                }
                let mut frames = Vec::new();
                for message in messages {
                    frames.extend_from_slice(format!("{} ", message.len()).as_bytes());
                    frames.extend_from_slice(message.as_bytes());
                }
                stream.write_all(&frames).await.map_err(send_error)?;
                stream.flush().await.map_err(send_error)
            }
        }
    }
}

/// Whether the server has closed its end: a syslog server never sends, so anything readable
/// now (end of stream, an error; data too, which a server has no business sending) says the
/// connection is no longer one to write to. Polls once, without waiting.
async fn peer_closed(stream: &mut dyn Stream) -> bool {
    let mut buffer = [0_u8; 64];
    let mut read = ReadBuf::new(&mut buffer);
    poll_fn(
        |context| match Pin::new(&mut *stream).poll_read(context, &mut read) {
            Poll::Pending => Poll::Ready(false),
            Poll::Ready(_) => Poll::Ready(true),
        },
    )
    .await
}

/// `message` cut to at most `limit` bytes at a character boundary.
pub(super) fn truncate(message: &str, limit: usize) -> &str {
    if message.len() <= limit {
        return message;
    }
    let mut end = limit;
    while !message.is_char_boundary(end) {
        end -= 1;
    }
    &message[..end]
}
