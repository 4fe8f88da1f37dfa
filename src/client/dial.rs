//! Reaching the server: TCP, directly or through the proxy, and inside a WebSocket (with TLS of
//! its own for `wss://`) when that is the transport, each within the connect timeout.

use tokio::net::TcpStream;

use super::error::ClientError;
use super::Client;
use crate::proxy::Transport;

impl Client {
    /// The connection to the server, directly or through the proxy, tuned for the tunnel, and
    /// inside a WebSocket when that is the transport.
    pub(super) async fn dial(&self) -> Result<Transport, ClientError> {
        let s = &self.settings;
        let transport = self.dial_tcp().await?;
        let Some(ws) = &s.websocket else {
            return Ok(transport);
        };
        let fail = |message: String, permanent: bool| {
            ClientError::WebSocket(crate::proxy::ProxyFailure {
                message: format!("through the WebSocket {}: {message}", ws.url),
                permanent,
            })
        };
        let open = async {
            let under = match &self.web_tls {
                Some(config) => {
                    let name = rustls::pki_types::ServerName::try_from(ws.url.host.clone())
                        .map_err(|e| fail(format!("its host name: {e}"), true))?;
                    let tls = tokio_rustls::TlsConnector::from(config.clone())
                        .connect(name, transport)
                        .await
                        .map_err(|e| {
                            let permanent = crate::tls::handshake_error_is_permanent(&e);
                            fail(format!("its TLS: {e}"), permanent)
                        })?;
                    Transport::WebTls(Box::new(tls))
                }
                None => transport,
            };
            crate::websocket::handshake::open(under, &ws.host_header, &ws.url.path)
                .await
                .map(|ws| Transport::WebSocket(Box::new(ws)))
                .map_err(|e| fail(e.to_string(), e.is_permanent()))
        };
        match tokio::time::timeout(s.connect_timeout, open).await {
            Ok(r) => r,
            Err(_) => Err(ClientError::Timeout {
                stage: "opening the WebSocket",
                after: s.connect_timeout,
            }),
        }
    }

    /// The TCP connection: to the server, or through the proxy to it.
    async fn dial_tcp(&self) -> Result<Transport, ClientError> {
        let s = &self.settings;
        if let Some((chosen, tls)) = &self.proxy {
            let (host, port) = crate::proxy::host_and_port(&s.server);
            return crate::proxy::dial(&chosen.url, &host, port, s.connect_timeout, tls.as_ref())
                .await
                .map_err(ClientError::Proxy);
        }
        let tcp = match tokio::time::timeout(s.connect_timeout, TcpStream::connect(&s.server)).await
        {
            Ok(Ok(tcp)) => tcp,
            Ok(Err(source)) => {
                return Err(ClientError::Connect {
                    addr: s.server.clone(),
                    cause: source,
                })
            }
            Err(_) => {
                return Err(ClientError::Timeout {
                    stage: "connecting to the server",
                    after: s.connect_timeout,
                })
            }
        };
        crate::net::tune_tunnel(&tcp);
        Ok(Transport::Tcp(tcp))
    }
}
