//! The record layer: what travels inside the encrypted channel once the keys are agreed.
//!
//! [`Records`] seals our lines and notices into MSG frames and opens the peer's, keeping the
//! numbering ([`Channel`]), the receipts both ways ([`Receipts`]: which of our lines the peer
//! confirmed, and the receipt we owe it), and what resuming needs ([`Resumption`]): the
//! handshake of each generation, the new keys, and sealing again, renumbered, exactly what the
//! peer says it did not receive. Later the ratchet and file streams belong here too.
//!
//! No I/O happens here, and nothing here decides how a session goes: the state machine
//! (`state`) calls it and turns what it returns into actions; the UI never sees it. The
//! receipts are passed in rather than owned, because the lines they hold outlive the channel:
//! they are reported when the session ends.

use crate::crypto::{Channel, Notice, Record};
use crate::end::End;
use crate::proto;
use crate::receipts::{Pending, Receipts};
use crate::resume::{Hello, NewKeys, Opening, Resumption};
use ghostwire_shared::RoomCode;

/// The sealed side of an established session.
pub struct Records {
    channel: Channel,
    /// What resuming needs, when both sides resume.
    resumption: Option<Resumption>,
    /// The number of the record that said we are done, to seal it again after a resume if the
    /// peer missed it.
    done_record: Option<u64>,
}

impl Records {
    /// The record layer over `channel`, resuming with `resumption` if both sides resume.
    pub fn new(channel: Channel, resumption: Option<Resumption>) -> Records {
        Records { channel, resumption, done_record: None }
    }

    /// The room where the two sides meet again after a drop, if they resume.
    pub fn rendezvous(&self) -> Option<&RoomCode> {
        self.resumption.as_ref().map(Resumption::room)
    }

    /// Our line `text`, sealed into a MSG frame (and kept by the receipts until confirmed).
    pub fn seal_text(&mut self, text: &str, receipts: Option<&mut Receipts>) -> String {
        if let Some(r) = receipts {
            r.sent(self.channel.sealed(), text);
        }
        proto::msg_frame(&self.channel.seal(text))
    }

    /// A record of a file transfer, sealed into a MSG frame (and kept by the receipts until
    /// confirmed, to go again after a resume); `None` in v1.
    pub fn seal_file(
        &mut self,
        record: &crate::transfer::FileRecord,
        receipts: Option<&mut Receipts>,
    ) -> Option<String> {
        let (number, kind, body) = (self.channel.sealed(), record.kind(), record.encode());
        let sealed = self.channel.seal_file(kind, &body)?;
        if let Some(r) = receipts {
            r.sent_record(number, kind, body);
        }
        Some(proto::msg_frame(&sealed))
    }

    /// A notice, sealed into a MSG frame (`None` in v1, which cannot say it).
    pub fn seal_notice(&mut self, notice: Notice) -> Option<String> {
        let number = self.channel.sealed();
        let sealed = self.channel.seal_notice(notice)?;
        if notice == Notice::Done {
            self.done_record = Some(number);
        }
        Some(proto::msg_frame(&sealed))
    }

    /// The receipt we owe, sealed, if we owe one (it is then no longer owed).
    pub fn seal_owed_ack(&mut self, receipts: Option<&mut Receipts>) -> Option<String> {
        let owed = receipts.is_some_and(Receipts::take_owed);
        owed.then(|| self.channel.seal_ack()).flatten().map(|sealed| proto::msg_frame(&sealed))
    }

    /// Opens a record from the peer. A receipt confirms our lines below it; any other record
    /// makes a receipt owed.
    ///
    /// # Errors
    /// The [`End`] the record calls for: it failed a check (security), or it is a receipt that
    /// cannot be honest or was never announced (protocol).
    pub fn open(&mut self, payload: &[u8], receipts: Option<&mut Receipts>) -> Result<Record, End> {
        let record = self.channel.open(payload).map_err(End::Security)?;
        // A record under the current keys: the peer is at this generation too.
        if let Some(r) = self.resumption.as_mut() {
            r.confirmed();
        }
        match (&record, receipts) {
            (Record::Ack(next), Some(r)) => {
                r.confirm(*next, self.channel.sealed()).map_err(|e| End::Protocol(e.to_string()))?;
            }
            (Record::Ack(_), None) => {
                return Err(End::Protocol("the peer sent a receipt without announcing receipts".into()));
            }
            (_, Some(r)) => r.received(),
            (_, None) => {}
        }
        Ok(record)
    }

    /// Met again after a drop: our opening (if we are the side that opens), and its frame.
    pub fn open_resume(&self) -> Option<(Opening, String)> {
        let resumption = self.resumption.as_ref().filter(|r| r.opener())?;
        let opening = resumption.open(self.channel.received());
        let frame = proto::resume_frame(opening.hello());
        Some((opening, frame))
    }

    /// The peer's half of the resume handshake (`opening`: ours, if we opened). Returns the
    /// frames to send, in order (our answer, if we answer; then what the peer missed, sealed
    /// again under the new keys; then a receipt, which proves the keys to the peer), and how
    /// many of our lines were sealed again.
    ///
    /// # Errors
    /// The [`End`]: a resume that fails its checks destroys the session.
    pub fn resume(
        &mut self,
        opening: Option<Opening>,
        hello: &Hello,
        receipts: Option<&mut Receipts>,
    ) -> Result<(Vec<String>, usize), End> {
        let received = self.channel.received();
        let Some(resumption) = self.resumption.as_mut() else {
            return Err(End::Protocol("a resume in a session that does not resume".into()));
        };
        let mut frames = vec![];
        let keys: NewKeys = match opening {
            Some(opening) => resumption.finish(opening, hello),
            None => resumption.answer(hello, received).map(|(answer, keys)| {
                frames.push(proto::resume_frame(&answer));
                keys
            }),
        }
        .map_err(End::ResumeFailed)?;
        let Some(receipts) = receipts else {
            return Err(End::Protocol("a resume without receipts".into()));
        };
        receipts
            .confirm(keys.peer_received, self.channel.sealed())
            .map_err(|e| End::Protocol(format!("resume: {e}")))?;
        self.channel.rekey(&keys.key, keys.peer_received);
        let channel = &mut self.channel;
        let resent = receipts.reseal(|pending| {
            let number = channel.sealed();
            let sealed = match pending {
                Pending::Line(text) => channel.seal(text),
                Pending::Record { kind, body } => channel.seal_body(*kind, body),
            };
            frames.push(proto::msg_frame(&sealed));
            number
        });
        if self.done_record.is_some_and(|n| n >= keys.peer_received) {
            frames.extend(self.seal_notice(Notice::Done));
        }
        receipts.take_owed();
        frames.extend(self.channel.seal_ack().map(|sealed| proto::msg_frame(&sealed)));
        Ok((frames, resent))
    }
}
