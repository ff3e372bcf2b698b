//! A small Socket.IO v5 client: Engine.IO v4 over WebSocket only, the default
//! namespace, JSON events with acks.
//!
//! Hand-written rather than taken from `rust_socketio`: under load that crate
//! panicked on a late ack and dropped acks emitted right after connect, and a
//! load tool that loses its own requests measures nothing. What a load tool
//! needs of the protocol is small: the open packet, CONNECT (with `auth`),
//! answering pings, EVENT with an ack id, ACK, CONNECT_ERROR and DISCONNECT.
//!
//! One task per connection owns the WebSocket: it writes what the handle
//! queues (batched, one flush per burst), answers pings, hands acks to their
//! waiting callers and server events to an optional channel.

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures::{SinkExt, StreamExt};
use serde_json::value::RawValue;
use serde_json::Value;
use tokio::net::TcpSocket;
use tokio::sync::{mpsc, oneshot};
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;
use tokio_tungstenite::tungstenite::Message;

/// Why a connection or a request failed. `code()` is what the report counts.
#[derive(Debug, thiserror::Error)]
pub enum SioError {
    /// The URL is not `http://`, `ws://` (host and port) or cannot be resolved.
    #[error("bad url {0}")]
    BadUrl(String),
    /// TCP or the WebSocket upgrade failed.
    #[error("connect failed: {0}")]
    Connect(String),
    /// The server refused the Socket.IO CONNECT (`connect_error`).
    #[error("connect refused: {0}")]
    Refused(String),
    /// The server spoke something this client does not understand.
    #[error("protocol: {0}")]
    Protocol(String),
    /// The connection closed before the answer came.
    #[error("connection closed")]
    Closed,
    /// No answer within the deadline.
    #[error("timed out")]
    Timeout,
}

impl SioError {
    /// A short stable name, the key of the report's error counts.
    pub fn code(&self) -> &'static str {
        match self {
            SioError::BadUrl(_) => "bad_url",
            SioError::Connect(_) => "connect_failed",
            SioError::Refused(_) => "connect_refused",
            SioError::Protocol(_) => "protocol",
            SioError::Closed => "closed",
            SioError::Timeout => "timeout",
        }
    }
}

/// Something the server sent that is not an ack.
#[derive(Debug)]
pub enum Incoming {
    /// A server event: its name and first argument (`Null` when none).
    Event(String, Value),
    /// The connection ended (the server disconnected us, or the socket broke).
    Closed,
}

/// Where and how to connect.
#[derive(Debug, Clone)]
pub struct Target {
    /// The node's address as `host:port`, resolved once.
    pub addr: SocketAddr,
    /// The `Host` the upgrade request names.
    pub host: String,
    /// Local address to bind (lets one machine open more than one source
    /// address's worth of ephemeral ports to one node); `None` = any.
    pub local_ip: Option<IpAddr>,
}

impl Target {
    /// Parses `http://host:port`, `ws://host:port` or `host:port` (a path is
    /// ignored: the Socket.IO path is always `/socket.io/`).
    pub fn parse(url: &str) -> Result<Target, SioError> {
        if url.starts_with("wss://") || url.starts_with("https://") {
            return Err(SioError::BadUrl(format!(
                "{url}: TLS is not supported, point the tool at the nodes over plain ws://"
            )));
        }
        let rest = url
            .strip_prefix("http://")
            .or_else(|| url.strip_prefix("ws://"))
            .unwrap_or(url);
        let host = rest.split('/').next().unwrap_or_default().to_owned();
        if host.is_empty() {
            return Err(SioError::BadUrl(url.to_owned()));
        }
        let with_port = if host.contains(':') {
            host.clone()
        } else {
            format!("{host}:80")
        };
        let addr = std::net::ToSocketAddrs::to_socket_addrs(&with_port)
            .map_err(|e| SioError::BadUrl(format!("{url}: {e}")))?
            .next()
            .ok_or_else(|| SioError::BadUrl(url.to_owned()))?;
        Ok(Target {
            addr,
            host,
            local_ip: None,
        })
    }
}

/// Counters shared by every connection of a run.
#[derive(Debug, Default)]
pub struct Wire {
    /// Server events received (diffs, snapshots, signals...).
    pub events_in: AtomicU64,
    /// Bytes of every text frame received.
    pub bytes_in: AtomicU64,
    /// Bytes of every text frame sent.
    pub bytes_out: AtomicU64,
}

struct Shared {
    pending: Mutex<HashMap<u64, oneshot::Sender<Value>>>,
    next_id: AtomicU64,
    closed: AtomicBool,
}

/// A connected Socket.IO client. Dropping it (or `close`) ends the connection.
pub struct Client {
    out: mpsc::UnboundedSender<Message>,
    shared: Arc<Shared>,
}

impl Client {
    /// Opens the WebSocket, sends CONNECT (with `auth: { token }` when given)
    /// and waits for the server's answer. Server events go to `events` if set.
    pub async fn connect(
        target: &Target,
        token: Option<&str>,
        events: Option<mpsc::UnboundedSender<Incoming>>,
        wire: Arc<Wire>,
        timeout: Duration,
    ) -> Result<Client, SioError> {
        tokio::time::timeout(timeout, Self::open(target, token, events, wire))
            .await
            .map_err(|_| SioError::Timeout)?
    }

    async fn open(
        target: &Target,
        token: Option<&str>,
        events: Option<mpsc::UnboundedSender<Incoming>>,
        wire: Arc<Wire>,
    ) -> Result<Client, SioError> {
        let socket = if target.addr.is_ipv4() {
            TcpSocket::new_v4()
        } else {
            TcpSocket::new_v6()
        }
        .map_err(|e| SioError::Connect(e.to_string()))?;
        if let Some(ip) = target.local_ip {
            socket
                .bind(SocketAddr::new(ip, 0))
                .map_err(|e| SioError::Connect(format!("bind {ip}: {e}")))?;
        }
        let tcp = socket
            .connect(target.addr)
            .await
            .map_err(|e| SioError::Connect(e.to_string()))?;
        let _ = tcp.set_nodelay(true);
        let url = format!("ws://{}/socket.io/?EIO=4&transport=websocket", target.host);
        // Small buffers: the default 128 KiB read buffer would cost the tool
        // over a GiB at 10k connections; frames here are small.
        let config = WebSocketConfig::default()
            .read_buffer_size(4096)
            .write_buffer_size(0);
        let (mut ws, _) = tokio_tungstenite::client_async_with_config(url, tcp, Some(config))
            .await
            .map_err(|e| SioError::Connect(e.to_string()))?;

        // Engine.IO open packet, then the Socket.IO CONNECT and its answer.
        match ws.next().await {
            Some(Ok(Message::Text(t))) if t.starts_with('0') => {}
            other => return Err(SioError::Protocol(format!("expected open, got {other:?}"))),
        }
        let connect = match token {
            Some(t) => format!("40{}", serde_json::json!({ "token": t })),
            None => "40".to_owned(),
        };
        ws.send(Message::text(connect))
            .await
            .map_err(|e| SioError::Connect(e.to_string()))?;
        loop {
            match ws.next().await {
                Some(Ok(Message::Text(t))) => {
                    if t.as_str() == "2" {
                        let _ = ws.send(Message::text("3")).await;
                    } else if t.starts_with("40") {
                        break;
                    } else if let Some(body) = t.strip_prefix("44") {
                        let msg = serde_json::from_str::<Value>(body)
                            .ok()
                            .and_then(|v| {
                                v.get("message").and_then(Value::as_str).map(str::to_owned)
                            })
                            .unwrap_or_else(|| body.to_owned());
                        return Err(SioError::Refused(msg));
                    }
                }
                Some(Ok(_)) => {}
                Some(Err(e)) => return Err(SioError::Connect(e.to_string())),
                None => return Err(SioError::Closed),
            }
        }

        let shared = Arc::new(Shared {
            pending: Mutex::new(HashMap::new()),
            next_id: AtomicU64::new(0),
            closed: AtomicBool::new(false),
        });
        let (out, rx) = mpsc::unbounded_channel();
        tokio::spawn(run(ws, rx, shared.clone(), events, wire));
        Ok(Client { out, shared })
    }

    /// Sends an event and waits for its ack (the ack's first argument).
    pub async fn call(
        &self,
        event: &str,
        payload: &Value,
        timeout: Duration,
    ) -> Result<Value, SioError> {
        if self.shared.closed.load(Ordering::Relaxed) {
            return Err(SioError::Closed);
        }
        let id = self.shared.next_id.fetch_add(1, Ordering::Relaxed);
        let (tx, rx) = oneshot::channel();
        self.shared.pending.lock().expect("pending").insert(id, tx);
        let frame = format!("42{id}{}", serde_json::json!([event, payload]));
        if self.out.send(Message::text(frame)).is_err() {
            self.shared.pending.lock().expect("pending").remove(&id);
            return Err(SioError::Closed);
        }
        match tokio::time::timeout(timeout, rx).await {
            Ok(Ok(v)) => Ok(v),
            Ok(Err(_)) => Err(SioError::Closed),
            Err(_) => {
                self.shared.pending.lock().expect("pending").remove(&id);
                Err(SioError::Timeout)
            }
        }
    }

    /// Sends an event without an ack.
    pub fn emit(&self, event: &str, payload: &Value) {
        let frame = format!("42{}", serde_json::json!([event, payload]));
        let _ = self.out.send(Message::text(frame));
    }

    /// Whether the connection has ended.
    pub fn is_closed(&self) -> bool {
        self.shared.closed.load(Ordering::Relaxed)
    }

    /// Ends the connection (a Socket.IO DISCONNECT, then the WebSocket close).
    pub fn close(&self) {
        let _ = self.out.send(Message::text("41"));
        let _ = self.out.send(Message::Close(None));
    }
}

impl Drop for Client {
    fn drop(&mut self) {
        self.close();
    }
}

/// The connection's task: writes what the handle queued, reads what the
/// server sends, until either side ends it.
async fn run<S>(
    ws: tokio_tungstenite::WebSocketStream<S>,
    mut rx: mpsc::UnboundedReceiver<Message>,
    shared: Arc<Shared>,
    events: Option<mpsc::UnboundedSender<Incoming>>,
    wire: Arc<Wire>,
) where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
{
    let (mut sink, mut stream) = ws.split();
    'conn: loop {
        tokio::select! {
            m = rx.recv() => {
                let Some(m) = m else { break };
                // Everything already queued goes out with one flush.
                let mut next = Some(m);
                while let Some(m) = next.take() {
                    let closing = matches!(m, Message::Close(_));
                    if let Message::Text(t) = &m {
                        wire.bytes_out.fetch_add(t.len() as u64, Ordering::Relaxed);
                    }
                    if sink.feed(m).await.is_err() || closing {
                        let _ = sink.flush().await;
                        break 'conn;
                    }
                    next = rx.try_recv().ok();
                }
                if sink.flush().await.is_err() {
                    break;
                }
            }
            m = stream.next() => {
                let t = match m {
                    Some(Ok(Message::Text(t))) => t,
                    Some(Ok(Message::Close(_))) | Some(Err(_)) | None => break,
                    Some(Ok(_)) => continue,
                };
                wire.bytes_in.fetch_add(t.len() as u64, Ordering::Relaxed);
                match parse(t.as_str(), events.is_some()) {
                    Packet::Ping => {
                        if sink.send(Message::text("3")).await.is_err() {
                            break;
                        }
                    }
                    Packet::Ack(id, v) => {
                        let waiter = shared.pending.lock().expect("pending").remove(&id);
                        if let Some(w) = waiter {
                            let _ = w.send(v);
                        }
                    }
                    Packet::Event(name, v) => {
                        wire.events_in.fetch_add(1, Ordering::Relaxed);
                        if let Some(tx) = &events {
                            let _ = tx.send(Incoming::Event(name, v));
                        }
                    }
                    Packet::Close => break,
                    Packet::Other => {}
                }
            }
        }
    }
    shared.closed.store(true, Ordering::Relaxed);
    // Waiters see `Closed` when their sender is dropped.
    shared.pending.lock().expect("pending").clear();
    if let Some(tx) = &events {
        let _ = tx.send(Incoming::Closed);
    }
}

/// One Engine.IO text frame, as far as this client cares.
#[derive(Debug, PartialEq)]
pub(crate) enum Packet {
    Ping,
    Ack(u64, Value),
    Event(String, Value),
    Close,
    Other,
}

/// Parses an Engine.IO text frame carrying a Socket.IO packet of the default
/// namespace. Event arguments are decoded only when `decode_events` (a
/// connection nobody listens to only counts its events: in a big room they
/// are most of the traffic).
pub(crate) fn parse(t: &str, decode_events: bool) -> Packet {
    let b = t.as_bytes();
    match b.first() {
        Some(b'2') if b.len() == 1 => return Packet::Ping,
        Some(b'1') => return Packet::Close,
        Some(b'4') => {}
        _ => return Packet::Other,
    }
    let p = &t[1..];
    let (kind, rest) = match p.as_bytes().first() {
        Some(k) => (*k, &p[1..]),
        None => return Packet::Other,
    };
    let digits = rest.bytes().take_while(u8::is_ascii_digit).count();
    let id = rest[..digits].parse::<u64>().ok();
    let body = &rest[digits..];
    match kind {
        b'1' => Packet::Close,
        b'2' if !decode_events => Packet::Event(String::new(), Value::Null),
        b'2' => match serde_json::from_str::<Value>(body) {
            Ok(Value::Array(mut a)) if !a.is_empty() => {
                let name = a[0].as_str().unwrap_or_default().to_owned();
                let arg = if a.len() > 1 {
                    a.swap_remove(1)
                } else {
                    Value::Null
                };
                Packet::Event(name, arg)
            }
            _ => Packet::Other,
        },
        b'3' => match (id, decode_ack(body)) {
            (Some(id), Some(v)) => Packet::Ack(id, v),
            _ => Packet::Other,
        },
        _ => Packet::Other,
    }
}

/// Fields of an ack larger than this are not decoded (they become `null`).
const ACK_FIELD_LIMIT: usize = 16 * 1024;

/// The first argument of an ack. Its large fields (the snapshot of a big room
/// in a join ack: megabytes, for every joiner) are skipped rather than built
/// into a `Value` tree the tool never reads; that would cost the tool more CPU
/// than the node spends sending them.
fn decode_ack(body: &str) -> Option<Value> {
    let args: Vec<&RawValue> = serde_json::from_str(body).ok()?;
    let Some(first) = args.first() else {
        return Some(Value::Null);
    };
    let raw = first.get();
    if raw.len() <= ACK_FIELD_LIMIT || !raw.starts_with('{') {
        return serde_json::from_str(raw).ok();
    }
    let fields: std::collections::BTreeMap<String, &RawValue> = serde_json::from_str(raw).ok()?;
    let small = fields.into_iter().map(|(k, v)| {
        let v = if v.get().len() > ACK_FIELD_LIMIT {
            Value::Null
        } else {
            serde_json::from_str(v.get()).unwrap_or(Value::Null)
        };
        (k, v)
    });
    Some(Value::Object(small.collect()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn frames_are_parsed() {
        assert_eq!(parse("2", true), Packet::Ping);
        assert_eq!(parse("1", true), Packet::Close);
        assert_eq!(parse("41", true), Packet::Close);
        assert_eq!(
            parse("4317[{\"ok\":true}]", true),
            Packet::Ack(17, json!({"ok": true}))
        );
        assert_eq!(parse("430[]", true), Packet::Ack(0, Value::Null));
        assert_eq!(
            parse("42[\"presence:diff\",{\"seq\":3}]", true),
            Packet::Event("presence:diff".into(), json!({"seq": 3}))
        );
        assert_eq!(
            parse("42[\"presence:reconnect\"]", true),
            Packet::Event("presence:reconnect".into(), Value::Null)
        );
        assert_eq!(parse("43[{}]", true), Packet::Other, "an ack needs an id");
        let big = format!(
            "432[{{\"ok\":true,\"roomId\":\"r\",\"snapshot\":{{\"users\":\"{}\"}}}}]",
            "x".repeat(ACK_FIELD_LIMIT)
        );
        assert_eq!(
            parse(&big, true),
            Packet::Ack(2, json!({"ok": true, "roomId": "r", "snapshot": null})),
            "a big field is skipped, the others are read"
        );
        assert_eq!(parse("42not json", true), Packet::Other);
        assert_eq!(
            parse("42[\"presence:diff\",{\"seq\":3}]", false),
            Packet::Event(String::new(), Value::Null),
            "counted, not decoded"
        );
        assert_eq!(parse("3", true), Packet::Other);
        assert_eq!(parse("", true), Packet::Other);
    }

    #[test]
    fn urls_are_parsed() {
        let t = Target::parse("http://127.0.0.1:3000").unwrap();
        assert_eq!(t.addr, "127.0.0.1:3000".parse().unwrap());
        assert_eq!(t.host, "127.0.0.1:3000");
        let t = Target::parse("ws://127.0.0.1:4000/socket.io/").unwrap();
        assert_eq!(t.addr.port(), 4000);
        assert!(matches!(
            Target::parse("https://x:1"),
            Err(SioError::BadUrl(_))
        ));
        assert!(matches!(Target::parse("http://"), Err(SioError::BadUrl(_))));
    }
}
