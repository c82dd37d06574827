//! End-to-end receipts: which of our lines the peer has confirmed, and when we owe it a
//! confirmation of its own.
//!
//! A receipt is a record inside the encrypted channel ([`Record::Ack`](crate::crypto::Record)):
//! "every record you numbered below `n` reached me", padded like any message, so the relay can
//! neither forge one nor tell it from a line. It is cumulative (one receipt covers every line
//! before it): sent at once, or, while lines keep arriving, at most every [`ACK_DELAY`]; and
//! before this side says done, bye or that the codes differ, so a peer that reads our notice
//! has every receipt we owe it. When both sides are done, each waits (at most [`FINISH_WAIT`])
//! for the receipts of its last lines before the session ends.
//!
//! Each line we send is kept (wiped on drop) until a receipt covers it; at most
//! [`MAX_UNCONFIRMED`] wait at once, beyond which no new line is sent until receipts arrive.
//! What is left when the session ends was never confirmed, and is reported by its text.
//!
//! Receipts are used only with a peer whose key announced them (`"ack":1`); nothing here does I/O.

use std::collections::VecDeque;
use std::time::Duration;
use zeroize::Zeroizing;

/// Lines sent and not yet confirmed, at most (then the outbox waits).
pub const MAX_UNCONFIRMED: usize = 1000;
/// How long a receipt we owe may wait for more lines to cover, after the last one sent.
pub const ACK_DELAY: Duration = Duration::from_millis(100);
/// How long a side that is done, with a peer that is done, waits for its last receipts.
pub const FINISH_WAIT: Duration = Duration::from_secs(10);

/// What a receipt said that it cannot say.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum ReceiptError {
    /// A receipt for records we never sent.
    #[error("the peer confirmed messages that were never sent")]
    Ahead,
    /// A receipt that goes back on an earlier one.
    #[error("the peer's receipts went backwards")]
    Backwards,
}

/// A record of ours kept until a receipt confirms it (to seal it again after a resume).
pub enum Pending {
    /// A line.
    Line(Zeroizing<String>),
    /// Another record, by kind and body (a file transfer's).
    Record {
        /// Its record kind.
        kind: u8,
        /// Its body.
        body: Zeroizing<Vec<u8>>,
    },
}

/// The receipts of one session.
#[derive(Default)]
pub struct Receipts {
    /// Our records not confirmed yet, with the number each went out as.
    waiting: VecDeque<(u64, Pending)>,
    /// Everything below this is confirmed.
    confirmed: u64,
    /// We received lines the peer has no receipt for yet.
    owed: bool,
    /// Lines confirmed since the driver last took them (to mark them delivered).
    delivered: Vec<Zeroizing<String>>,
}

impl Receipts {
    /// Our line `text` went out as record `number`.
    pub fn sent(&mut self, number: u64, text: &str) {
        self.waiting.push_back((number, Pending::Line(Zeroizing::new(text.to_owned()))));
    }

    /// Our record of `kind` went out as record `number`.
    pub fn sent_record(&mut self, number: u64, kind: u8, body: Zeroizing<Vec<u8>>) {
        self.waiting.push_back((number, Pending::Record { kind, body }));
    }

    /// Whether no further line may go out until receipts arrive.
    pub fn full(&self) -> bool {
        self.waiting.len() >= MAX_UNCONFIRMED
    }

    /// A receipt: every record below `next` arrived, of the `sent` records we numbered so far.
    /// Returns how many of our lines it confirms now.
    ///
    /// # Errors
    /// A [`ReceiptError`] for a receipt that cannot be honest.
    pub fn confirm(&mut self, next: u64, sent: u64) -> Result<usize, ReceiptError> {
        if next > sent {
            return Err(ReceiptError::Ahead);
        }
        if next < self.confirmed {
            return Err(ReceiptError::Backwards);
        }
        self.confirmed = next;
        let before = self.waiting.len();
        while self.waiting.front().is_some_and(|(n, _)| *n < next) {
            if let Some((_, Pending::Line(text))) = self.waiting.pop_front() {
                self.delivered.push(text);
            }
        }
        Ok(before - self.waiting.len())
    }

    /// The lines confirmed since this was last called, oldest first (to mark them delivered).
    pub fn take_delivered(&mut self) -> Vec<Zeroizing<String>> {
        std::mem::take(&mut self.delivered)
    }

    /// After a resume, every line still waiting is sealed again by `seal`, in order, and
    /// renumbered with the number `seal` returns. Returns how many.
    pub fn reseal(&mut self, mut seal: impl FnMut(&Pending) -> u64) -> usize {
        for (number, pending) in &mut self.waiting {
            *number = seal(pending);
        }
        self.waiting.len()
    }

    /// The peer sent us a line: we owe it a receipt.
    pub fn received(&mut self) {
        self.owed = true;
    }

    /// Whether we owe the peer a receipt; taking it (the caller sends it now).
    pub fn take_owed(&mut self) -> bool {
        std::mem::take(&mut self.owed)
    }

    /// Whether we owe the peer a receipt.
    pub fn owed(&self) -> bool {
        self.owed
    }

    /// Lines waiting for a receipt.
    pub fn unconfirmed(&self) -> usize {
        self.waiting.len()
    }

    /// The lines never confirmed, oldest first (the session is over).
    pub fn into_unconfirmed(self) -> Vec<Zeroizing<String>> {
        self.waiting
            .into_iter()
            .filter_map(|(_, p)| match p {
                Pending::Line(text) => Some(text),
                Pending::Record { .. } => None,
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn a_receipt_confirms_every_line_below_it_and_no_more() {
        let mut r = Receipts::default();
        // Records 0 and 2 were lines; record 1 was something else (a receipt of ours).
        r.sent(0, "one");
        r.sent(2, "two");
        r.sent(3, "three");
        assert_eq!(r.confirm(1, 4), Ok(1));
        assert_eq!(r.confirm(1, 4), Ok(0), "the same receipt again confirms nothing new");
        assert_eq!(r.confirm(3, 4), Ok(1));
        assert_eq!(r.confirm(5, 4), Err(ReceiptError::Ahead));
        assert_eq!(r.confirm(2, 4), Err(ReceiptError::Backwards));
        let left: Vec<String> = r.into_unconfirmed().into_iter().map(|t| t.to_string()).collect();
        assert_eq!(left, ["three"]);
    }

    #[test]
    fn receipts_are_owed_once_per_batch_of_lines() {
        let mut r = Receipts::default();
        assert!(!r.take_owed());
        r.received();
        r.received();
        assert!(r.owed());
        assert!(r.take_owed());
        assert!(!r.take_owed());
    }

    #[test]
    fn the_outbox_stops_at_the_bound() {
        let mut r = Receipts::default();
        for n in 0..MAX_UNCONFIRMED as u64 {
            assert!(!r.full());
            r.sent(n, "x");
        }
        assert!(r.full());
        r.confirm(1, MAX_UNCONFIRMED as u64).unwrap();
        assert!(!r.full());
    }
}
