//! A yamux peer written by hand, for tests that must send what no well-behaved yamux sends: 1-byte
//! DATA frames, as many as the window allows, as fast as the socket takes them. It keeps the rules
//! a server checks (stream ids, send credit, ping answers), so only the frame sizes are hostile.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use ncx_proto::Message;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, WriteHalf};
use tokio::sync::{mpsc, watch};

pub const DATA: u8 = 0;
pub const WINDOW_UPDATE: u8 = 1;
pub const PING: u8 = 2;
pub const GO_AWAY: u8 = 3;
pub const SYN: u16 = 1;
pub const ACK: u16 = 2;
pub const RST: u16 = 8;

/// Every stream's initial send window in yamux.
pub const INITIAL_CREDIT: u64 = 256 * 1024;

/// One yamux frame: the 12-byte header (version 0) and the body. `length` overrides the length
/// field, for frames that lie about it.
pub fn frame(kind: u8, flags: u16, stream: u32, body: &[u8], length: Option<u32>) -> Vec<u8> {
    let mut f = vec![0, kind];
    f.extend_from_slice(&flags.to_be_bytes());
    f.extend_from_slice(&stream.to_be_bytes());
    let len = length.unwrap_or(u32::try_from(body.len()).unwrap());
    f.extend_from_slice(&len.to_be_bytes());
    f.extend_from_slice(body);
    f
}

/// What the other side did, as this peer saw it.
#[derive(Debug)]
pub enum Event {
    /// The other side opened this stream.
    Opened(u32),
    /// A whole protocol message arrived on this stream.
    Message(u32, Message),
    /// Bytes arrived on a stream that is not decoded (see [`RawPeer::raw_on`]); dropped when
    /// nobody takes the events.
    Bytes(u32, usize),
}

struct Credits {
    /// Send credit per stream.
    left: Mutex<HashMap<u32, u64>>,
    /// Bumped whenever credit grows.
    grew: watch::Sender<u64>,
}

/// A hand-made yamux session over `io`. Data that arrives is decoded as protocol messages on the
/// streams either side opened, until it stops making sense on that stream, and is dropped after
/// that; this peer never sends a window update, so whatever the other side sends on a stream is
/// limited to one initial window.
pub struct RawPeer<S> {
    writer: Arc<tokio::sync::Mutex<WriteHalf<S>>>,
    credits: Arc<Credits>,
    decoded: Arc<Mutex<HashMap<u32, ncx_proto::FrameDecoder>>>,
    pub events: mpsc::Receiver<Event>,
    pongs: watch::Receiver<u32>,
    next_ping: std::sync::atomic::AtomicU32,
    reader: tokio::task::JoinHandle<()>,
}

impl<S: AsyncRead + AsyncWrite + Send + 'static> RawPeer<S> {
    pub fn start(io: S) -> Self {
        Self::start_with(io, true)
    }

    /// Like [`RawPeer::start`], but yamux pings are never answered, so the other side never
    /// learns a round-trip time and its window policy keeps every stream at the initial 256 KiB
    /// (the patched yamux grows a window only from a measured round trip): tests of what a window
    /// of tiny frames costs then know the window they fill.
    pub fn start_without_pongs(io: S) -> Self {
        Self::start_with(io, false)
    }

    fn start_with(io: S, pongs_on: bool) -> Self {
        let (mut rd, wr) = tokio::io::split(io);
        let writer = Arc::new(tokio::sync::Mutex::new(wr));
        let credits = Arc::new(Credits {
            left: Mutex::new(HashMap::new()),
            grew: watch::channel(0).0,
        });
        let decoded: Arc<Mutex<HashMap<u32, ncx_proto::FrameDecoder>>> = Default::default();
        let (tx, events) = mpsc::channel(4096);
        let (pong_tx, pongs) = watch::channel(0);
        let reader = tokio::spawn({
            let writer = writer.clone();
            let credits = credits.clone();
            let decoded = decoded.clone();
            async move {
                let mut header = [0u8; 12];
                let mut body = Vec::new();
                loop {
                    if rd.read_exact(&mut header).await.is_err() {
                        return;
                    }
                    let kind = header[1];
                    let flags = u16::from_be_bytes([header[2], header[3]]);
                    let stream = u32::from_be_bytes(header[4..8].try_into().unwrap());
                    let len = u32::from_be_bytes(header[8..12].try_into().unwrap());
                    // Events are dropped once nobody listens; reading goes on until the end.
                    if flags & SYN != 0 && kind != PING && kind != GO_AWAY {
                        credits.left.lock().unwrap().insert(stream, INITIAL_CREDIT);
                        decoded.lock().unwrap().entry(stream).or_default();
                        let _ = tx.send(Event::Opened(stream)).await;
                    }
                    match kind {
                        DATA => {
                            body.resize(len as usize, 0);
                            if rd.read_exact(&mut body).await.is_err() {
                                return;
                            }
                            let msgs = {
                                let mut d = decoded.lock().unwrap();
                                let mut msgs = Vec::new();
                                if !d.contains_key(&stream) && !body.is_empty() {
                                    let _ = tx.try_send(Event::Bytes(stream, body.len()));
                                }
                                if let Some(dec) = d.get_mut(&stream) {
                                    dec.push(&body);
                                    loop {
                                        match dec.next_message() {
                                            Ok(Some(m)) => msgs.push(m),
                                            Ok(None) => break,
                                            Err(_) => {
                                                d.remove(&stream);
                                                break;
                                            }
                                        }
                                    }
                                }
                                msgs
                            };
                            for m in msgs {
                                // A heartbeat is answered, so the other side keeps the session.
                                if let Message::Ping(v) = m {
                                    let pong = ncx_proto::encode_to_vec(&Message::Pong(v));
                                    if let Some(c) = credits.left.lock().unwrap().get_mut(&stream) {
                                        *c = c.saturating_sub(pong.len() as u64);
                                    }
                                    let f = frame(DATA, 0, stream, &pong, None);
                                    if writer.lock().await.write_all(&f).await.is_err() {
                                        return;
                                    }
                                    continue;
                                }
                                let _ = tx.send(Event::Message(stream, m)).await;
                            }
                        }
                        WINDOW_UPDATE => {
                            *credits.left.lock().unwrap().entry(stream).or_insert(0) +=
                                u64::from(len);
                            credits.grew.send_modify(|v| *v += 1);
                        }
                        PING if flags & SYN != 0 && !pongs_on => {}
                        PING if flags & SYN != 0 => {
                            let pong = frame(PING, ACK, 0, &[], Some(len));
                            if writer.lock().await.write_all(&pong).await.is_err() {
                                return;
                            }
                        }
                        PING if flags & ACK != 0 => {
                            pong_tx.send_replace(len);
                        }
                        _ => {}
                    }
                }
            }
        });
        RawPeer {
            writer,
            credits,
            decoded,
            events,
            pongs,
            next_ping: std::sync::atomic::AtomicU32::new(1),
            reader,
        }
    }

    /// Plays the server for a client that has just connected: takes its control stream and its
    /// Hello, welcomes it, and grants its one registration on `remote_port`. Returns the
    /// service's name.
    pub async fn welcome_one_service(
        &mut self,
        remote_port: u16,
        within: Duration,
    ) -> ncx_proto::Name {
        match self.next_event(within).await {
            Event::Opened(1) => {}
            other => panic!("expected the control stream, got {other:?}"),
        }
        let m = self.message_on(1, within).await;
        assert!(matches!(m, Message::Hello { .. }), "got {m:?}");
        let welcome = Message::Welcome {
            version: ncx_proto::PROTOCOL_VERSION,
        };
        self.send_on(1, ACK, &welcome).await.unwrap();
        let service = match self.message_on(1, within).await {
            Message::Register { service, .. } => service,
            other => panic!("expected a registration, got {other:?}"),
        };
        let registered = Message::Registered {
            service: service.clone(),
            remote_port,
        };
        self.send_on(1, 0, &registered).await.unwrap();
        service
    }

    /// Report what arrives on `stream` as plain bytes ([`Event::Bytes`]) from now on.
    pub fn raw_on(&self, stream: u32) {
        self.decoded.lock().unwrap().remove(&stream);
    }

    /// The send credit left on `stream`: what the other side granted and was not sent yet.
    pub fn credit_left(&self, stream: u32) -> u64 {
        self.credits
            .left
            .lock()
            .unwrap()
            .get(&stream)
            .copied()
            .unwrap_or(0)
    }

    /// Sends up to `n` bytes on `stream` in DATA frames of at most 64 KiB, as far as the credit
    /// goes, without waiting for more; the bytes sent.
    pub async fn send_data(&self, stream: u32, n: u64) -> std::io::Result<u64> {
        let n = self.take_credit(stream, n);
        let body = vec![b'w'; 64 * 1024];
        let mut left = n;
        while left > 0 {
            let k = left.min(body.len() as u64) as usize;
            self.send_raw(&frame(DATA, 0, stream, &body[..k], None))
                .await?;
            left -= k as u64;
        }
        Ok(n)
    }

    /// Waits until the credit on `stream` grows, at most `within`; false if it did not.
    pub async fn credit_grows(&self, within: Duration) -> bool {
        let mut grew = self.credits.grew.subscribe();
        grew.borrow_and_update();
        matches!(
            tokio::time::timeout(within, grew.changed()).await,
            Ok(Ok(()))
        )
    }

    /// Decode what arrives on `stream` as protocol messages (reported as [`Event::Message`]).
    pub fn decode_on(&self, stream: u32) {
        self.decoded.lock().unwrap().entry(stream).or_default();
    }

    /// Writes raw bytes.
    pub async fn send_raw(&self, bytes: &[u8]) -> std::io::Result<()> {
        let mut w = self.writer.lock().await;
        w.write_all(bytes).await?;
        w.flush().await
    }

    /// Opens `stream` with `msg` as its first data, and decodes what comes back on it.
    pub async fn open(&self, stream: u32, msg: &Message) -> std::io::Result<()> {
        self.open_with(stream, &ncx_proto::encode_to_vec(msg)).await
    }

    /// Opens `stream` with `body` as its first data, and decodes what comes back on it.
    pub async fn open_with(&self, stream: u32, body: &[u8]) -> std::io::Result<()> {
        self.decode_on(stream);
        self.credits
            .left
            .lock()
            .unwrap()
            .entry(stream)
            .or_insert(INITIAL_CREDIT);
        self.take_credit(stream, body.len() as u64);
        self.send_raw(&frame(DATA, SYN, stream, body, None)).await
    }

    /// Sends `msg` as one data frame on `stream` with `flags` (ACK for the first answer on a
    /// stream the other side opened).
    pub async fn send_on(&self, stream: u32, flags: u16, msg: &Message) -> std::io::Result<()> {
        let body = ncx_proto::encode_to_vec(msg);
        self.take_credit(stream, body.len() as u64);
        self.send_raw(&frame(DATA, flags, stream, &body, None))
            .await
    }

    fn take_credit(&self, stream: u32, n: u64) -> u64 {
        let mut left = self.credits.left.lock().unwrap();
        let c = left.entry(stream).or_insert(0);
        let n = n.min(*c);
        *c -= n;
        n
    }

    /// Sends `total` bytes on `stream` as 1-byte DATA frames, never beyond the send credit. Returns
    /// the bytes sent: fewer than `total` when the credit stayed at zero for `shut`, or when the
    /// connection failed.
    pub async fn dribble(&self, stream: u32, total: u64, shut: Duration) -> u64 {
        self.fill(stream, 0, total, shut).await
    }

    /// Like [`RawPeer::dribble`], but the first `bulk` bytes go as 16 KiB frames, so buffers
    /// beyond the other side's yamux (a kernel's socket buffers) fill at full speed first.
    pub async fn fill(&self, stream: u32, bulk: u64, total: u64, shut: Duration) -> u64 {
        const BATCH: u64 = 16 * 1024;
        let tiny: Vec<u8> = (0..BATCH)
            .flat_map(|_| frame(DATA, 0, stream, b"x", None))
            .collect();
        let big = frame(DATA, 0, stream, &[b'x'; BATCH as usize], None);
        let mut grew = self.credits.grew.subscribe();
        let mut sent = 0;
        while sent < total {
            grew.borrow_and_update();
            let (n, bytes) = if sent + BATCH <= bulk {
                let n = self.take_credit_exactly(stream, BATCH);
                (n, &big[..])
            } else {
                let n = self.take_credit(stream, (total - sent).min(BATCH));
                (n, &tiny[..13 * n as usize])
            };
            if n == 0 {
                match tokio::time::timeout(shut, grew.changed()).await {
                    Ok(Ok(())) => continue,
                    _ => return sent,
                }
            }
            if self.writer.lock().await.write_all(bytes).await.is_err() {
                return sent;
            }
            sent += n;
        }
        sent
    }

    /// Takes `n` of the credit if that much is left, or none.
    fn take_credit_exactly(&self, stream: u32, n: u64) -> u64 {
        let mut left = self.credits.left.lock().unwrap();
        match left.get_mut(&stream) {
            Some(c) if *c >= n => {
                *c -= n;
                n
            }
            _ => 0,
        }
    }

    /// The next event, within `within`.
    pub async fn next_event(&mut self, within: Duration) -> Event {
        tokio::time::timeout(within, self.events.recv())
            .await
            .expect("an event in time")
            .expect("the connection is open")
    }

    /// The next message on `stream`, skipping other events.
    pub async fn message_on(&mut self, stream: u32, within: Duration) -> Message {
        tokio::time::timeout(within, async {
            loop {
                match self.events.recv().await {
                    Some(Event::Message(s, m)) if s == stream => return m,
                    Some(_) => continue,
                    None => panic!("the connection closed before a message on stream {stream}"),
                }
            }
        })
        .await
        .expect("a message in time")
    }

    /// Sends a ping and waits for its answer: the other side has then read every frame written
    /// before it.
    pub async fn ping_and_wait(&self, within: Duration) {
        let v = self
            .next_ping
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let mut pongs = self.pongs.clone();
        self.send_raw(&frame(PING, SYN, 0, &[], Some(v)))
            .await
            .expect("the ping is sent");
        tokio::time::timeout(within, pongs.wait_for(|p| *p == v))
            .await
            .expect("the ping is answered in time")
            .expect("the connection is open");
    }

    /// Ends the session from this side and waits until the other side has closed it too: it has
    /// then let go of everything this session held.
    pub async fn close_and_wait(self, within: Duration) {
        drop(self.events);
        let _ = self.writer.lock().await.shutdown().await;
        tokio::time::timeout(within, self.reader)
            .await
            .expect("the other side closes the connection")
            .unwrap();
    }
}

/// A client TLS connection, as [`tls_to`] makes it.
pub type Tls = tokio_rustls::client::TlsStream<tokio::net::TcpStream>;

/// TLS to the server started in `dir`, pinned to its certificate.
pub async fn tls_to(server: std::net::SocketAddr, dir: &std::path::Path) -> Tls {
    let fp = ncx::certs::load_or_create_self_signed(dir)
        .unwrap()
        .0
        .fingerprint();
    let cfg = ncx::tls::client_config(&ncx::tls::ServerTrust::Pinned(vec![fp]), None).unwrap();
    let tcp = tokio::net::TcpStream::connect(server).await.unwrap();
    tokio_rustls::TlsConnector::from(Arc::new(cfg))
        .connect(
            rustls::pki_types::ServerName::try_from("localhost").unwrap(),
            tcp,
        )
        .await
        .unwrap()
}
