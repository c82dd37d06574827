//! A minimal WebSocket client for load generation.
//!
//! The generator must cost far less per frame than the relay it measures, so
//! the hot path avoids a general WebSocket library: the upgrade is written by
//! hand, outgoing frames are precomputed bytes (masked with the all-zero key,
//! which RFC 6455 allows, so masking is a copy), and incoming frames are
//! parsed in place from one reusable buffer that is never zero-filled.

use std::io;
use std::net::{IpAddr, SocketAddr};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpSocket, TcpStream};

/// Opens a TCP connection (from `src` if given) and performs the WebSocket upgrade on `/`.
pub async fn connect(addr: SocketAddr, src: Option<IpAddr>) -> io::Result<TcpStream> {
    let socket = if addr.is_ipv4() { TcpSocket::new_v4()? } else { TcpSocket::new_v6()? };
    if let Some(ip) = src {
        socket.bind(SocketAddr::new(ip, 0))?;
    }
    let mut stream = socket.connect(addr).await?;
    stream.set_nodelay(true)?;
    let request = format!(
        "GET / HTTP/1.1\r\nHost: {addr}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
         Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n"
    );
    stream.write_all(request.as_bytes()).await?;
    // Nothing follows the 101 until we send JOIN, so reading up to the blank line is exact.
    let mut head = Vec::with_capacity(256);
    let mut byte = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") {
        if stream.read(&mut byte).await? == 0 || head.len() > 8192 {
            return Err(io::Error::new(io::ErrorKind::UnexpectedEof, "upgrade response cut short"));
        }
        head.push(byte[0]);
    }
    if !head.starts_with(b"HTTP/1.1 101") {
        let line = String::from_utf8_lossy(&head).lines().next().unwrap_or("").to_owned();
        return Err(io::Error::other(format!("upgrade refused: {line}")));
    }
    Ok(stream)
}

/// A client text frame carrying `payload`, masked with the zero key.
pub fn text_frame(payload: &[u8]) -> Vec<u8> {
    client_frame(0x1, payload)
}

/// A client frame of `opcode` (FIN set), masked with the zero key.
pub fn client_frame(opcode: u8, payload: &[u8]) -> Vec<u8> {
    let mut f = Vec::with_capacity(payload.len() + 14);
    push_frame(&mut f, opcode, payload);
    f
}

/// Appends a client frame of `opcode` carrying `payload` to `f`, masked with the zero key.
pub fn push_frame(f: &mut Vec<u8>, opcode: u8, payload: &[u8]) {
    f.push(0x80 | opcode);
    match payload.len() {
        n if n < 126 => f.push(0x80 | n as u8),
        n if n <= 0xffff => {
            f.push(0x80 | 126);
            f.extend_from_slice(&(n as u16).to_be_bytes());
        }
        n => {
            f.push(0x80 | 127);
            f.extend_from_slice(&(n as u64).to_be_bytes());
        }
    }
    f.extend_from_slice(&[0, 0, 0, 0]);
    f.extend_from_slice(payload);
}

/// Reads server frames from a stream through one reusable buffer.
pub struct Reader {
    buf: Vec<u8>,
    start: usize,
    end: usize,
}

/// One frame from the server.
pub struct Frame<'a> {
    /// The opcode (1 text, 8 close, 9 ping, ...).
    pub opcode: u8,
    /// The payload (servers do not mask).
    pub payload: &'a [u8],
}

impl Reader {
    /// A reader with `capacity` bytes of buffer.
    pub fn new(capacity: usize) -> Reader {
        Reader { buf: vec![0; capacity], start: 0, end: 0 }
    }

    /// Reads more bytes from `stream`; `Ok(false)` at end of stream.
    pub async fn fill(&mut self, stream: &mut (impl tokio::io::AsyncRead + Unpin)) -> io::Result<bool> {
        if self.start > 0 && self.start == self.end {
            self.start = 0;
            self.end = 0;
        }
        if self.end == self.buf.len() {
            // Move the partial frame to the front, or grow for a frame larger than the buffer.
            if self.start > 0 {
                self.buf.copy_within(self.start..self.end, 0);
                self.end -= self.start;
                self.start = 0;
            } else {
                self.buf.resize(self.buf.len() * 2, 0);
            }
        }
        let n = stream.read(&mut self.buf[self.end..]).await?;
        self.end += n;
        Ok(n > 0)
    }

    /// The next complete frame in the buffer, if any.
    pub fn next_frame(&mut self) -> Option<Frame<'_>> {
        let b = &self.buf[self.start..self.end];
        if b.len() < 2 {
            return None;
        }
        let opcode = b[0] & 0x0f;
        let (len, head) = match b[1] & 0x7f {
            126 if b.len() >= 4 => (u16::from_be_bytes([b[2], b[3]]) as usize, 4),
            127 if b.len() >= 10 => {
                let mut l = [0u8; 8];
                l.copy_from_slice(&b[2..10]);
                (u64::from_be_bytes(l) as usize, 10)
            }
            126 | 127 => return None,
            n => (n as usize, 2),
        };
        if b.len() < head + len {
            return None;
        }
        let at = self.start;
        self.start += head + len;
        Some(Frame { opcode, payload: &self.buf[at + head..at + head + len] })
    }
}
