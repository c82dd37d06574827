//! A socket whose read buffer exists only while data is moving.
//!
//! tungstenite allocates its read buffer when a connection opens and keeps it
//! for the connection's life, so every idle connection held `--read-buffer`
//! bytes that were used only while a frame arrived. Beneath tungstenite sits
//! this wrapper: each read from the socket goes into a buffer of
//! `--read-buffer` bytes taken for that read, whatever tungstenite does not
//! take at once is kept for its next read, and the buffer is freed as soon as
//! it is empty. tungstenite itself then gets a small frame buffer
//! ([`FRAME_BUFFER`]) that grows to a frame's size while one is assembled.
//!
//! An idle connection (its last read found nothing) holds no read buffer; a
//! busy one reads as much per syscall as before or more, at the cost of one
//! copy of each byte into tungstenite's buffer. Writes pass straight through.

use bytes::{Buf, BytesMut};
use std::io;
use std::pin::Pin;
use std::task::{ready, Context, Poll};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

/// The read buffer given to tungstenite: frames are assembled in it, and it is what an idle
/// connection keeps. (It grows to a frame's size for larger frames while they arrive.)
pub const FRAME_BUFFER: usize = 512;

/// A stream that reads through a buffer borrowed per read.
pub struct Borrowed<S> {
    inner: S,
    /// Bytes read and not yet taken; empty (and unallocated) between reads.
    held: BytesMut,
    /// Bytes asked of the socket per read.
    chunk: usize,
}

impl<S> Borrowed<S> {
    /// Wraps `inner`, reading up to `chunk` bytes per syscall.
    pub fn new(inner: S, chunk: usize) -> Self {
        Borrowed { inner, held: BytesMut::new(), chunk: chunk.max(1) }
    }

    /// Copies held bytes into `out`, freeing the buffer once all are taken.
    fn hand_out(&mut self, out: &mut ReadBuf<'_>) {
        let n = out.remaining().min(self.held.len());
        out.put_slice(&self.held[..n]);
        self.held.advance(n);
        if self.held.is_empty() {
            self.held = BytesMut::new();
        }
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for Borrowed<S> {
    fn poll_read(mut self: Pin<&mut Self>, cx: &mut Context<'_>, out: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        let this = &mut *self;
        if !this.held.is_empty() {
            this.hand_out(out);
            return Poll::Ready(Ok(()));
        }
        if out.remaining() >= this.chunk {
            // The caller's buffer is large enough: read into it directly.
            return Pin::new(&mut this.inner).poll_read(cx, out);
        }
        let mut buf = BytesMut::with_capacity(this.chunk);
        // On Pending the buffer is dropped here: nothing is held while the socket is quiet.
        ready!(tokio_util::io::poll_read_buf(Pin::new(&mut this.inner), cx, &mut buf))?;
        this.held = buf;
        this.hand_out(out);
        Poll::Ready(Ok(()))
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for Borrowed<S> {
    fn poll_write(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    /// Small reads get every byte in order across borrowed chunks; between reads nothing is held.
    #[tokio::test]
    async fn small_reads_see_every_byte_and_nothing_is_held_when_drained() {
        let (mut tx, rx) = tokio::io::duplex(1 << 16);
        let mut rx = Borrowed::new(rx, 1000);
        let sent: Vec<u8> = (0..5000u32).map(|i| (i % 251) as u8).collect();
        tx.write_all(&sent).await.unwrap();
        drop(tx);
        let mut got = Vec::new();
        let mut small = [0u8; 37];
        loop {
            let n =
                tokio::time::timeout(std::time::Duration::from_secs(5), rx.read(&mut small)).await.unwrap().unwrap();
            if n == 0 {
                break;
            }
            got.extend_from_slice(&small[..n]);
            if rx.held.is_empty() {
                assert_eq!(rx.held.capacity(), 0, "a drained buffer is freed");
            }
        }
        assert_eq!(got, sent);
    }

    /// A pending read keeps no buffer.
    #[tokio::test]
    async fn a_read_that_waits_holds_no_buffer() {
        let (_tx, rx) = tokio::io::duplex(64);
        let mut rx = Borrowed::new(rx, 4096);
        let mut small = [0u8; 16];
        assert!(futures_util::FutureExt::now_or_never(rx.read(&mut small)).is_none(), "nothing was sent");
        assert_eq!(rx.held.capacity(), 0);
    }
}
