//! A connection's inbox: the frames its partner sent and the room's two notices.
//!
//! One small structure per connection instead of two channels: it allocates
//! nothing until frames arrive (an idle pair costs a few hundred bytes here,
//! where two tokio channels pre-allocate a 32-slot block each), the reader
//! takes everything queued in one lock and one swap, and a sender wakes the
//! reader only when the queue goes from empty to non-empty.
//!
//! Order: PEER_FOUND is seen before any frame (the partner can only send after
//! its join returned, and the notice is set before that); PEER_LEFT is seen
//! after every frame queued before it.
//!
//! The same queue, without its notices, carries a connection's frames the
//! other way to its seat on a distributed upstream
//! ([`link::Outbox`](super::link::Outbox)), where the seat takes a bounded
//! batch at a time ([`Inbox::take`]).

use super::{Frame, LinkError, PeerLink, SendError};
use futures_util::task::AtomicWaker;
use std::collections::VecDeque;
use std::sync::{Arc, Mutex, MutexGuard};
use std::task::{Context, Poll};

/// The shared half: senders push, the connection's task receives.
pub struct Inbox {
    state: Mutex<State>,
    reader: AtomicWaker,
    writer: AtomicWaker,
    cap: usize,
}

#[derive(Default)]
struct State {
    frames: VecDeque<Frame>,
    found: Option<Box<dyn PeerLink>>,
    left: bool,
    closed: bool,
}

/// What [`Inbox::poll_recv`] delivers.
pub enum Delivery {
    /// The partner arrived; send to it through this link.
    PeerFound(Box<dyn PeerLink>),
    /// Frames were moved into the caller's batch.
    Frames,
    /// The partner left; every frame it sent before has been delivered.
    PeerLeft,
}

impl Inbox {
    /// An inbox holding at most `cap` frames.
    pub fn new(cap: usize) -> Arc<Inbox> {
        Arc::new(Inbox {
            state: Mutex::default(),
            reader: AtomicWaker::new(),
            writer: AtomicWaker::new(),
            cap: cap.max(1),
        })
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        // Every critical section is a few field updates that cannot panic midway.
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Queues a frame without waiting.
    ///
    /// # Errors
    /// [`SendError::Full`] with the frame when `cap` frames are queued, [`SendError::Gone`] when
    /// the receiving connection has ended.
    pub fn push(&self, frame: Frame) -> Result<(), SendError> {
        let mut s = self.lock();
        if s.closed {
            return Err(SendError::Gone);
        }
        if s.frames.len() >= self.cap {
            return Err(SendError::Full(frame));
        }
        s.frames.push_back(frame);
        let first = s.frames.len() == 1;
        drop(s);
        if first {
            self.reader.wake();
        }
        Ok(())
    }

    /// Moves frames from the front of `frames` into the queue, as many as fit, under one lock
    /// (how a seat hands over a batch that arrived from another relay).
    ///
    /// # Errors
    /// [`LinkError::Gone`] when the receiving connection has ended (`frames` is left as it was).
    pub fn push_from(&self, frames: &mut VecDeque<Frame>) -> Result<(), LinkError> {
        let mut s = self.lock();
        if s.closed {
            return Err(LinkError::Gone);
        }
        let n = self.cap.saturating_sub(s.frames.len()).min(frames.len());
        let first = s.frames.is_empty() && n > 0;
        s.frames.extend(frames.drain(..n));
        drop(s);
        if first {
            self.reader.wake();
        }
        Ok(())
    }

    /// Tells the receiver its partner arrived.
    pub fn peer_found(&self, link: Box<dyn PeerLink>) {
        self.lock().found = Some(link);
        self.reader.wake();
    }

    /// Tells the receiver its partner left.
    pub fn peer_left(&self) {
        self.lock().left = true;
        self.reader.wake();
    }

    /// Ready when a frame fits again; `Gone` once the receiver has ended.
    pub fn poll_writable(&self, cx: &mut Context<'_>) -> Poll<Result<(), LinkError>> {
        self.writer.register(cx.waker());
        let s = self.lock();
        if s.closed {
            Poll::Ready(Err(LinkError::Gone))
        } else if s.frames.len() < self.cap {
            Poll::Ready(Ok(()))
        } else {
            Poll::Pending
        }
    }

    /// The next delivery. Frames are appended to `batch` (swapped in when `batch` is empty, so
    /// steady state allocates nothing).
    pub fn poll_recv(&self, cx: &mut Context<'_>, batch: &mut VecDeque<Frame>) -> Poll<Delivery> {
        self.reader.register(cx.waker());
        let mut s = self.lock();
        if let Some(link) = s.found.take() {
            return Poll::Ready(Delivery::PeerFound(link));
        }
        if !s.frames.is_empty() {
            let all = s.frames.len();
            self.move_frames(s, batch, all);
            return Poll::Ready(Delivery::Frames);
        }
        if s.left {
            return Poll::Ready(Delivery::PeerLeft);
        }
        Poll::Pending
    }

    /// Takes up to `max` queued frames, oldest first, into `batch` under one lock (waking a
    /// sender that waited for room); how many it took. How a seat takes what its connection
    /// queued for the partner's relay: a bounded number, so the seat's window is never passed.
    pub fn take(&self, batch: &mut VecDeque<Frame>, max: usize) -> usize {
        let s = self.lock();
        let n = max.min(s.frames.len());
        if n > 0 {
            self.move_frames(s, batch, n);
        }
        n
    }

    /// Moves the first `n` queued frames to `batch` (all of them into an empty batch by a swap,
    /// so steady state allocates nothing), then lets go of the lock and wakes a sender that
    /// waited for room.
    fn move_frames(&self, mut s: MutexGuard<'_, State>, batch: &mut VecDeque<Frame>, n: usize) {
        let was_full = s.frames.len() >= self.cap;
        if n == s.frames.len() && batch.is_empty() {
            std::mem::swap(batch, &mut s.frames);
        } else {
            batch.extend(s.frames.drain(..n));
        }
        drop(s);
        if was_full {
            self.writer.wake();
        }
    }

    /// [`take`](Self::take), ready once it took at least one frame (`max` ≥ 1).
    pub fn poll_take(&self, cx: &mut Context<'_>, batch: &mut VecDeque<Frame>, max: usize) -> Poll<usize> {
        self.reader.register(cx.waker());
        match self.take(batch, max) {
            0 => Poll::Pending,
            n => Poll::Ready(n),
        }
    }

    /// The receiver is gone: later pushes fail, a waiting sender is released.
    fn close(&self) {
        let mut s = self.lock();
        s.closed = true;
        s.frames.clear();
        s.found = None;
        drop(s);
        self.writer.wake();
    }
}

/// The receiving end, owned by the connection's task; dropping it closes the inbox.
pub struct Receiver(Arc<Inbox>);

impl Receiver {
    /// The receiving end of `inbox`.
    pub fn new(inbox: Arc<Inbox>) -> Receiver {
        Receiver(inbox)
    }

    /// Waits for the next delivery (cancel-safe: nothing is taken until it is returned).
    pub async fn recv(&self, batch: &mut VecDeque<Frame>) -> Delivery {
        std::future::poll_fn(|cx| self.0.poll_recv(cx, batch)).await
    }
}

impl Drop for Receiver {
    fn drop(&mut self) {
        self.0.close();
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use futures_util::task::noop_waker_ref;

    fn frame(s: &'static str) -> Frame {
        Frame::from_static(s)
    }

    #[test]
    fn bounded_ordered_and_closed_on_drop() {
        let inbox = Inbox::new(2);
        let rx = Receiver::new(Arc::clone(&inbox));
        let mut cx = Context::from_waker(noop_waker_ref());
        let mut batch = VecDeque::new();
        assert!(inbox.poll_recv(&mut cx, &mut batch).is_pending());
        assert!(inbox.push(frame("a")).is_ok());
        assert!(inbox.push(frame("b")).is_ok());
        assert!(matches!(inbox.push(frame("c")), Err(SendError::Full(_))));
        assert!(inbox.poll_writable(&mut cx).is_pending());
        inbox.peer_left();
        assert!(matches!(inbox.poll_recv(&mut cx, &mut batch), Poll::Ready(Delivery::Frames)));
        assert_eq!(batch.iter().map(|f| f.as_str()).collect::<Vec<_>>(), ["a", "b"]);
        assert!(matches!(inbox.poll_writable(&mut cx), Poll::Ready(Ok(()))));
        // Frames first, then the departure.
        assert!(matches!(inbox.poll_recv(&mut cx, &mut batch), Poll::Ready(Delivery::PeerLeft)));
        drop(rx);
        assert!(matches!(inbox.push(frame("d")), Err(SendError::Gone)));
        assert!(matches!(inbox.poll_writable(&mut cx), Poll::Ready(Err(LinkError::Gone))));
    }

    #[test]
    fn a_batch_moves_in_as_far_as_it_fits_and_the_rest_keeps_its_order() {
        let inbox = Inbox::new(3);
        let rx = Receiver::new(Arc::clone(&inbox));
        let mut cx = Context::from_waker(noop_waker_ref());
        assert!(inbox.push(frame("a")).is_ok());
        let mut more: VecDeque<Frame> = ["b", "c", "d", "e"].into_iter().map(frame).collect();
        inbox.push_from(&mut more).unwrap();
        assert_eq!(more.iter().map(|f| f.as_str()).collect::<Vec<_>>(), ["d", "e"], "only two fitted");
        let mut batch = VecDeque::new();
        assert!(matches!(inbox.poll_recv(&mut cx, &mut batch), Poll::Ready(Delivery::Frames)));
        inbox.push_from(&mut more).unwrap();
        assert!(more.is_empty());
        assert!(matches!(inbox.poll_recv(&mut cx, &mut batch), Poll::Ready(Delivery::Frames)));
        assert_eq!(batch.iter().map(|f| f.as_str()).collect::<Vec<_>>(), ["a", "b", "c", "d", "e"]);
        drop(rx);
        let mut late: VecDeque<Frame> = [frame("f")].into();
        assert_eq!(inbox.push_from(&mut late), Err(LinkError::Gone));
        assert_eq!(late.len(), 1, "nothing taken from a closed inbox");
    }
}
