//! Files sent to the person you are talking to, inside the session (issue 28, first part: one
//! file at a time each way, offered and accepted at a terminal).
//!
//! **On the wire.** A transfer is records of its own kinds in the encrypted channel, numbered,
//! confirmed by the same receipts as lines and sealed again after a resume like them:
//! `OFFER` (a transfer id, the size, the name), `ACCEPT` / `REJECT`, `CHUNK` (the id and up to
//! [`CHUNK`] bytes of the file, in order), `END` (the id and the file's SHA-256), `VERIFIED` /
//! `FAILED` (the receiver's verdict) and `CANCEL` (either side). Every chunk is sealed into one
//! size class of its own, [`CHUNK_PLAIN`] bytes (the last one padded), so the relay sees a
//! transfer's length and pace, not its content; every other record pads like a short line.
//! Chunks are interleaved with lines (a typed line goes first) and at most [`WINDOW`] are
//! unconfirmed at once, so a transfer never holds a line back for long, the relay's queue for
//! the peer is never filled by it, and memory stays bounded (the unconfirmed chunks are kept
//! for a resume: 2 MiB).
//!
//! **The receiver** writes through [`crate::files`]: under the directory the person chose, a
//! checked name, `NAME.part`, the SHA-256 checked before the file takes its name, never over
//! anything. A piped session declines every offer (its input is data, it cannot be asked).
//!
//! Nothing here does network I/O: the session seals and sends what [`Transfers`] returns.

use crate::files::{self, Incoming};
use crate::ui::Tone;
use sha2::{Digest, Sha256};
use std::io::Read;
use std::path::{Path, PathBuf};
use zeroize::Zeroizing;

/// Record kinds of a transfer (after the lines', notices' and receipts', 0 to 4).
pub const FIRST_KIND: u8 = 5;
const OFFER: u8 = 5;
const ACCEPT: u8 = 6;
const REJECT: u8 = 7;
/// The kind of a chunk record, which has a size class of its own.
pub const CHUNK_KIND: u8 = 8;
const END: u8 = 9;
const VERIFIED: u8 = 10;
const FAILED: u8 = 11;
const CANCEL: u8 = 12;
/// The last kind of a transfer.
pub const LAST_KIND: u8 = CANCEL;

/// The padded plaintext of every chunk record: 32 KiB.
pub const CHUNK_PLAIN: usize = 32 * 1024;
/// File bytes per chunk: the class minus the record header (12) and the transfer id (4).
pub const CHUNK: usize = CHUNK_PLAIN - 12 - 4;
/// Chunks sent and not yet confirmed, at most.
pub const WINDOW: usize = 64;
/// Longest reason in a FAILED record, in characters.
const MAX_WHY: usize = 200;

/// A record of a transfer.
#[derive(Debug, PartialEq, Eq)]
pub enum FileRecord {
    /// "May I send you this?"
    Offer {
        /// The transfer.
        id: u32,
        /// Its size in bytes.
        size: u64,
        /// Its name (the receiver checks it).
        name: String,
    },
    /// The receiver takes it.
    Accept(u32),
    /// The receiver declines.
    Reject(u32),
    /// The next bytes of the file.
    Chunk {
        /// The transfer.
        id: u32,
        /// Up to [`CHUNK`] bytes.
        data: Zeroizing<Vec<u8>>,
    },
    /// Every chunk is sent: the file's SHA-256.
    End {
        /// The transfer.
        id: u32,
        /// SHA-256 of the whole file.
        sha256: [u8; 32],
    },
    /// The receiver has the file, its hash checked, under its name.
    Verified(u32),
    /// The receiver could not keep it, and why.
    Failed {
        /// The transfer.
        id: u32,
        /// Why, in a few words.
        why: String,
    },
    /// Either side stops the transfer.
    Cancel(u32),
}

/// A record body that does not parse.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("a file transfer record is malformed")]
pub struct Malformed;

fn id_of(body: &[u8]) -> Result<u32, Malformed> {
    let id: [u8; 4] = body.get(..4).and_then(|b| b.try_into().ok()).ok_or(Malformed)?;
    Ok(u32::from_be_bytes(id))
}

impl FileRecord {
    /// Its record kind.
    pub fn kind(&self) -> u8 {
        match self {
            FileRecord::Offer { .. } => OFFER,
            FileRecord::Accept(_) => ACCEPT,
            FileRecord::Reject(_) => REJECT,
            FileRecord::Chunk { .. } => CHUNK_KIND,
            FileRecord::End { .. } => END,
            FileRecord::Verified(_) => VERIFIED,
            FileRecord::Failed { .. } => FAILED,
            FileRecord::Cancel(_) => CANCEL,
        }
    }

    /// Its body: the transfer id, then what the kind carries.
    pub fn encode(&self) -> Zeroizing<Vec<u8>> {
        let (id, rest): (u32, &[u8]) = match self {
            FileRecord::Offer { id, name, .. } => (*id, name.as_bytes()),
            FileRecord::Chunk { id, data } => (*id, data),
            FileRecord::End { id, sha256 } => (*id, sha256),
            FileRecord::Failed { id, why } => (*id, why.as_bytes()),
            FileRecord::Accept(id) | FileRecord::Reject(id) | FileRecord::Verified(id) | FileRecord::Cancel(id) => {
                (*id, &[])
            }
        };
        let mut out = Zeroizing::new(Vec::with_capacity(12 + rest.len()));
        out.extend_from_slice(&id.to_be_bytes());
        if let FileRecord::Offer { size, .. } = self {
            out.extend_from_slice(&size.to_be_bytes());
        }
        out.extend_from_slice(rest);
        out
    }

    /// The record of `kind` in `body`.
    ///
    /// # Errors
    /// [`Malformed`] for a body that does not fit its kind.
    pub fn decode(kind: u8, body: &[u8]) -> Result<FileRecord, Malformed> {
        let id = id_of(body)?;
        let rest = &body[4..];
        let text = || std::str::from_utf8(rest).map(str::to_owned).map_err(|_| Malformed);
        let bare = |r: FileRecord| if rest.is_empty() { Ok(r) } else { Err(Malformed) };
        match kind {
            OFFER => {
                let size: [u8; 8] = rest.get(..8).and_then(|b| b.try_into().ok()).ok_or(Malformed)?;
                let name = std::str::from_utf8(&rest[8..]).map_err(|_| Malformed)?.to_owned();
                Ok(FileRecord::Offer { id, size: u64::from_be_bytes(size), name })
            }
            ACCEPT => bare(FileRecord::Accept(id)),
            REJECT => bare(FileRecord::Reject(id)),
            CHUNK_KIND if rest.len() <= CHUNK => Ok(FileRecord::Chunk { id, data: Zeroizing::new(rest.to_vec()) }),
            END => Ok(FileRecord::End { id, sha256: rest.try_into().map_err(|_| Malformed)? }),
            VERIFIED => bare(FileRecord::Verified(id)),
            FAILED => Ok(FileRecord::Failed { id, why: text()?.chars().take(MAX_WHY).collect() }),
            CANCEL => bare(FileRecord::Cancel(id)),
            _ => Err(Malformed),
        }
    }
}

/// A size for people: `1.2 MiB`.
pub fn human(bytes: u64) -> String {
    const UNITS: [&str; 5] = ["bytes", "KiB", "MiB", "GiB", "TiB"];
    let mut value = bytes as f64;
    let mut unit = 0;
    while value >= 1024.0 && unit < UNITS.len() - 1 {
        value /= 1024.0;
        unit += 1;
    }
    if unit == 0 {
        format!("{bytes} bytes")
    } else {
        format!("{value:.1} {}", UNITS[unit])
    }
}

/// What the session must do after a step: records to seal and send, in order, and lines to
/// show.
#[derive(Debug, Default)]
pub struct Step {
    /// Records for the peer.
    pub send: Vec<FileRecord>,
    /// Status lines.
    pub say: Vec<(Tone, String)>,
}

impl Step {
    fn say(mut self, tone: Tone, text: impl Into<String>) -> Step {
        self.say.push((tone, text.into()));
        self
    }
    fn send(mut self, record: FileRecord) -> Step {
        self.send.push(record);
        self
    }
}

/// A peer that breaks the transfer protocol: the session ends, as for any deviation.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("the peer broke the file transfer protocol: {0}")]
pub struct Violation(pub &'static str);

/// The file we send.
struct Sending {
    id: u32,
    name: String,
    size: u64,
    file: std::fs::File,
    hash: Sha256,
    read: u64,
    /// Accepted (chunks flow); `false` while the offer waits.
    accepted: bool,
    /// Every chunk and the END are out; waiting for the verdict.
    ended: bool,
    progress: Progress,
}

/// The file we receive.
struct Receiving {
    id: u32,
    name: String,
    size: u64,
    /// Once accepted: the file being written.
    file: Option<Incoming>,
    progress: Progress,
}

/// This side's transfers: at most one each way.
#[derive(Default)]
pub struct Transfers {
    /// The id of our last offer (they count up from 1).
    next_id: u32,
    /// The id of the peer's last offer (they must count up).
    last_offer: u32,
    out: Option<Sending>,
    inc: Option<Receiving>,
}

impl Transfers {
    /// `/send PATH`: offers the file.
    ///
    /// # Errors
    /// Why it cannot be offered (shown to the person; nothing is sent).
    pub fn offer(&mut self, path: &Path) -> Result<Step, String> {
        if let Some(s) = &self.out {
            return Err(format!("already sending {} (/cancel stops it)", s.name));
        }
        let shown = path.display();
        let meta = std::fs::metadata(path).map_err(|e| format!("cannot send {shown}: {e}"))?;
        if meta.is_dir() {
            return Err(format!("{shown} is a folder: only files can be sent yet"));
        }
        if !meta.is_file() {
            return Err(format!("{shown} is not a regular file"));
        }
        let name = path
            .file_name()
            .and_then(|n| n.to_str())
            .ok_or_else(|| format!("{shown} has no file name that is valid UTF-8"))?
            .to_owned();
        files::check_name(&name).map_err(|e| format!("cannot send {shown}: {e}"))?;
        let file = std::fs::File::open(path).map_err(|e| format!("cannot read {shown}: {e}"))?;
        self.next_id += 1;
        let id = self.next_id;
        let size = meta.len();
        self.out = Some(Sending {
            id,
            name: name.clone(),
            size,
            file,
            hash: Sha256::new(),
            read: 0,
            accepted: false,
            ended: false,
            progress: Progress::new(),
        });
        Ok(Step::default()
            .send(FileRecord::Offer { id, size, name: name.clone() })
            .say(Tone::Info, format!("offered {name} ({}): waiting for your peer to /accept it", human(size))))
    }

    /// `/accept [DIR]`: takes the file on offer into `dir`.
    ///
    /// # Errors
    /// Why not (nothing on offer, a directory that is not one); a name that cannot be written
    /// declines the offer instead.
    pub fn accept(&mut self, dir: &Path) -> Result<Step, String> {
        let Some(r) = self.inc.as_mut().filter(|r| r.file.is_none()) else {
            return Err("no file is on offer".into());
        };
        if !dir.is_dir() {
            return Err(format!("{} is not a directory", dir.display()));
        }
        match Incoming::create(dir, &r.name, r.size) {
            Ok(file) => {
                let at = file.target().display().to_string();
                let id = r.id;
                r.file = Some(file);
                Ok(Step::default().send(FileRecord::Accept(id)).say(Tone::Info, format!("receiving into {at}")))
            }
            Err(e) => {
                let id = r.id;
                self.inc = None;
                Ok(Step::default()
                    .send(FileRecord::Failed { id, why: "the receiver cannot write it".into() })
                    .say(Tone::Bad, format!("declined: {e}")))
            }
        }
    }

    /// `/reject`: declines the file on offer.
    ///
    /// # Errors
    /// Nothing is on offer.
    pub fn reject(&mut self) -> Result<Step, String> {
        match self.inc.take() {
            Some(r) if r.file.is_none() => {
                Ok(Step::default().send(FileRecord::Reject(r.id)).say(Tone::Info, format!("declined {}", r.name)))
            }
            other => {
                self.inc = other;
                Err("no file is on offer".into())
            }
        }
    }

    /// `/cancel`: stops every transfer under way, either way; a partial file is removed.
    ///
    /// # Errors
    /// Nothing is under way.
    pub fn cancel(&mut self) -> Result<Step, String> {
        let mut step = Step::default();
        if let Some(s) = self.out.take() {
            step = step.send(FileRecord::Cancel(s.id)).say(Tone::Warn, format!("cancelled sending {}", s.name));
        }
        if let Some(r) = self.inc.take() {
            let what = if r.file.is_some() { "receiving" } else { "the offer of" };
            step = step.send(FileRecord::Cancel(r.id)).say(Tone::Warn, format!("cancelled {what} {}", r.name));
        }
        if step.send.is_empty() {
            return Err("no file transfer is under way".into());
        }
        Ok(step)
    }

    /// Whether chunks are ready to go (the offer was accepted and not all are out).
    pub fn has_chunks(&self) -> bool {
        self.out.as_ref().is_some_and(|s| s.accepted && !s.ended)
    }

    /// The next record of the file we send: a chunk, or the END after the last one.
    pub fn next_chunk(&mut self) -> Step {
        let Some(s) = self.out.as_mut().filter(|s| s.accepted && !s.ended) else { return Step::default() };
        let want = usize::try_from((s.size - s.read).min(CHUNK as u64)).unwrap_or(CHUNK);
        if want == 0 {
            s.ended = true;
            let sha256 = std::mem::take(&mut s.hash).finalize().into();
            return Step::default().send(FileRecord::End { id: s.id, sha256 });
        }
        let mut data = Zeroizing::new(vec![0u8; want]);
        if let Err(e) = s.file.read_exact(&mut data) {
            // The file shrank or cannot be read: stop, and say why.
            let (id, name) = (s.id, s.name.clone());
            self.out = None;
            return Step::default().send(FileRecord::Cancel(id)).say(Tone::Bad, format!("stopped sending {name}: {e}"));
        }
        s.hash.update(&data[..]);
        s.read += want as u64;
        let mut step = Step::default().send(FileRecord::Chunk { id: s.id, data });
        if let Some(line) = s.progress.line(s.read, s.size, "sending", &s.name) {
            step = step.say(Tone::Info, line);
        }
        step
    }

    /// A record of a transfer from the peer. `can_ask`: the person can be asked (a terminal);
    /// otherwise offers are declined.
    ///
    /// # Errors
    /// A [`Violation`]: a record no honest peer sends now.
    pub fn on_record(&mut self, record: FileRecord, can_ask: bool) -> Result<Step, Violation> {
        let ours = |id: u32, t: &Option<Sending>| t.as_ref().is_some_and(|s| s.id == id);
        let theirs = |id: u32, t: &Option<Receiving>| t.as_ref().is_some_and(|r| r.id == id);
        match record {
            FileRecord::Offer { id, size, name } => {
                if self.inc.is_some() {
                    return Err(Violation("a second offer before the first was settled"));
                }
                if id <= self.last_offer {
                    return Err(Violation("an offer that reuses an earlier one's id"));
                }
                self.last_offer = id;
                let shown = crate::ui::sanitize(&name).to_string();
                if !can_ask {
                    return Ok(Step::default().send(FileRecord::Reject(id)).say(
                        Tone::Warn,
                        format!("your peer offered {shown} ({}): declined, this side reads a pipe", human(size)),
                    ));
                }
                if let Err(e) = files::check_name(&name) {
                    return Ok(Step::default()
                        .send(FileRecord::Failed { id, why: "the receiver refuses its name".into() })
                        .say(Tone::Warn, format!("your peer offered a file whose name is refused ({e}): declined")));
                }
                self.inc = Some(Receiving { id, name, size, file: None, progress: Progress::new() });
                Ok(Step::default().say(
                    Tone::Info,
                    format!("your peer offers {shown} ({}): /accept [DIR] to take it, /reject to decline", human(size)),
                ))
            }
            FileRecord::Accept(id) if ours(id, &self.out) => {
                let s = self.out.as_mut().ok_or(Violation("accept"))?;
                if s.accepted {
                    return Err(Violation("an offer accepted twice"));
                }
                s.accepted = true;
                let name = s.name.clone();
                Ok(Step::default().say(Tone::Info, format!("your peer accepted {name}: sending")))
            }
            FileRecord::Reject(id) if ours(id, &self.out) => {
                let s = self.out.take().ok_or(Violation("reject"))?;
                Ok(Step::default().say(Tone::Warn, format!("your peer declined {}", s.name)))
            }
            FileRecord::Verified(id) if ours(id, &self.out) && self.out.as_ref().is_some_and(|s| s.ended) => {
                let s = self.out.take().ok_or(Violation("verified"))?;
                Ok(Step::default()
                    .say(Tone::Good, format!("sent {} ({}): your peer verified every byte", s.name, human(s.size))))
            }
            FileRecord::Failed { id, why } if ours(id, &self.out) => {
                let s = self.out.take().ok_or(Violation("failed"))?;
                Ok(Step::default()
                    .say(Tone::Bad, format!("{} was not delivered: {}", s.name, crate::ui::sanitize(&why).as_str())))
            }
            FileRecord::Cancel(id) if ours(id, &self.out) => {
                let s = self.out.take().ok_or(Violation("cancel"))?;
                Ok(Step::default().say(Tone::Warn, format!("your peer cancelled {}", s.name)))
            }
            FileRecord::Cancel(id) if theirs(id, &self.inc) => {
                let r = self.inc.take().ok_or(Violation("cancel"))?;
                // Dropping the file removes its .part.
                Ok(Step::default().say(Tone::Warn, format!("your peer cancelled {}: nothing was kept", r.name)))
            }
            FileRecord::Chunk { id, data } if theirs(id, &self.inc) => {
                let Some(r) = self.inc.as_mut() else { return Err(Violation("chunk")) };
                let Some(file) = r.file.as_mut() else {
                    return Err(Violation("a chunk before the offer was accepted"));
                };
                if let Err(e) = file.write(&data) {
                    let (id, name) = (r.id, r.name.clone());
                    self.inc = None;
                    let why = match e {
                        files::FileError::TooMuch(_) => "more bytes than offered",
                        _ => "the receiver could not write it",
                    };
                    return Ok(Step::default()
                        .send(FileRecord::Failed { id, why: why.into() })
                        .say(Tone::Bad, format!("stopped receiving {name}: {e}")));
                }
                let written = file.written();
                let mut step = Step::default();
                if let Some(line) = r.progress.line(written, r.size, "receiving", &r.name) {
                    step = step.say(Tone::Info, line);
                }
                Ok(step)
            }
            FileRecord::End { id, sha256 } if theirs(id, &self.inc) => {
                let Some(r) = self.inc.take() else { return Err(Violation("end")) };
                let Some(file) = r.file else { return Err(Violation("an end before the offer was accepted")) };
                Ok(match file.finish(&sha256) {
                    Ok(at) => Step::default().send(FileRecord::Verified(id)).say(
                        Tone::Good,
                        format!("received {} ({}), SHA-256 verified: {}", r.name, human(r.size), at.display()),
                    ),
                    Err(e) => Step::default()
                        .send(FileRecord::Failed { id, why: "its SHA-256 or size did not match".into() })
                        .say(Tone::Bad, format!("{} was not kept: {e}", r.name)),
                })
            }
            // Records of a transfer that is over (one side cancelled while the other's records
            // were on the way) are dropped; records of one that never was are a deviation.
            FileRecord::Chunk { id, .. } | FileRecord::End { id, .. } if id <= self.last_offer => Ok(Step::default()),
            FileRecord::Cancel(id) if id <= self.last_offer || id <= self.next_id => Ok(Step::default()),
            FileRecord::Accept(id)
            | FileRecord::Reject(id)
            | FileRecord::Verified(id)
            | FileRecord::Failed { id, .. }
                if id <= self.next_id && !ours(id, &self.out) =>
            {
                Ok(Step::default())
            }
            FileRecord::Chunk { .. } | FileRecord::End { .. } | FileRecord::Cancel(_) => {
                Err(Violation("a record of a transfer that was never offered"))
            }
            FileRecord::Accept(_) | FileRecord::Reject(_) | FileRecord::Verified(_) | FileRecord::Failed { .. } => {
                Err(Violation("an answer to no offer"))
            }
        }
    }

    /// The session ended: what did not finish, for the person (the partial file is removed).
    pub fn ended(&mut self) -> Vec<String> {
        let mut said = vec![];
        if let Some(s) = self.out.take() {
            said.push(format!("not sent: the file {} (the session ended first)", s.name));
        }
        if let Some(r) = self.inc.take() {
            if r.file.is_some() {
                said.push(format!("not received: the file {} (the session ended first; nothing was kept)", r.name));
            }
        }
        said
    }
}

/// Progress shown every tenth of a transfer, with its rate and the time left: plain lines, the
/// same in the editor, at a plain terminal or with `TERM=dumb`.
struct Progress {
    /// The next tenth to show.
    next: u64,
    /// When the first byte went (or came).
    since: Option<std::time::Instant>,
}

impl Progress {
    fn new() -> Progress {
        Progress { next: 1, since: None }
    }

    /// The line to show when `done` of `size` bytes passes the next tenth.
    fn line(&mut self, done: u64, size: u64, doing: &str, name: &str) -> Option<String> {
        let since = *self.since.get_or_insert_with(std::time::Instant::now);
        if size == 0 || done * 10 < self.next * size || done == size {
            return None;
        }
        let tenth = done * 10 / size;
        self.next = tenth + 1;
        let secs = since.elapsed().as_secs_f64().max(0.001);
        let rate = done as f64 / secs;
        let left = (size - done) as f64 / rate.max(1.0);
        Some(format!(
            "{doing} {name}: {}% ({} of {}, {}/s, about {:.0} s left)",
            tenth * 10,
            human(done),
            human(size),
            human(rate as u64),
            left.ceil()
        ))
    }
}

/// Where `/accept` puts a file when no directory is given: the current one.
pub fn default_dir() -> PathBuf {
    PathBuf::from(".")
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn every_record_survives_its_encoding() {
        let all = [
            FileRecord::Offer { id: 7, size: 1 << 40, name: "notes.txt".into() },
            FileRecord::Accept(7),
            FileRecord::Reject(7),
            FileRecord::Chunk { id: 7, data: Zeroizing::new(vec![1, 2, 3]) },
            FileRecord::Chunk { id: 7, data: Zeroizing::new(vec![9; CHUNK]) },
            FileRecord::End { id: 7, sha256: [5; 32] },
            FileRecord::Verified(7),
            FileRecord::Failed { id: 7, why: "disk full".into() },
            FileRecord::Cancel(7),
        ];
        for r in all {
            assert_eq!(FileRecord::decode(r.kind(), &r.encode()).unwrap(), r);
        }
        assert_eq!(FileRecord::decode(CHUNK_KIND, &[0; CHUNK + 5]), Err(Malformed), "a chunk over its class");
        assert_eq!(FileRecord::decode(ACCEPT, &[0, 0, 0, 1, 9]), Err(Malformed), "trailing bytes");
        assert_eq!(FileRecord::decode(END, &[0, 0, 0, 1, 9]), Err(Malformed), "a short hash");
        assert_eq!(FileRecord::decode(OFFER, &[0, 0]), Err(Malformed));
    }

    #[test]
    fn progress_is_shown_at_each_tenth_once() {
        let mut p = Progress::new();
        let lines: Vec<String> = (1..=100).filter_map(|done| p.line(done, 100, "sending", "f")).collect();
        assert_eq!(lines.len(), 9, "{lines:?}");
        assert!(
            lines[0].starts_with("sending f: 10% (10 bytes of 100 bytes, ") && lines[0].ends_with(" s left)"),
            "{}",
            lines[0]
        );
    }

    #[test]
    fn answers_to_no_offer_and_chunks_before_acceptance_are_violations() {
        let mut t = Transfers::default();
        assert!(t.on_record(FileRecord::Accept(1), true).is_err());
        assert!(t.on_record(FileRecord::Chunk { id: 3, data: Zeroizing::new(vec![1]) }, true).is_err());
        t.on_record(FileRecord::Offer { id: 1, size: 3, name: "a".into() }, true).unwrap();
        let early = FileRecord::Chunk { id: 1, data: Zeroizing::new(vec![1]) };
        assert!(t.on_record(early, true).is_err());
        let mut t = Transfers::default();
        t.on_record(FileRecord::Offer { id: 1, size: 3, name: "a".into() }, true).unwrap();
        assert!(t.on_record(FileRecord::Offer { id: 2, size: 3, name: "b".into() }, true).is_err());
        // An answer to an offer we cancelled meanwhile is dropped too.
        let mut sender = Transfers::default();
        let file = std::env::temp_dir().join(format!("ghostwire-cross-{}", std::process::id()));
        std::fs::write(&file, b"abc").unwrap();
        sender.offer(&file).unwrap();
        sender.cancel().unwrap();
        for late in [FileRecord::Accept(1), FileRecord::Verified(1), FileRecord::Failed { id: 1, why: "x".into() }] {
            assert!(sender.on_record(late, true).unwrap().send.is_empty());
        }
        assert!(sender.on_record(FileRecord::Accept(2), true).is_err(), "an offer never made");
        let _ = std::fs::remove_file(&file);
        // Cancelled here while the peer's chunks were on the way: they are dropped, quietly.
        t.cancel().unwrap();
        let late = FileRecord::Chunk { id: 1, data: Zeroizing::new(vec![1]) };
        assert!(t.on_record(late, true).unwrap().send.is_empty());
        assert!(t.on_record(FileRecord::Offer { id: 1, size: 3, name: "a".into() }, true).is_err(), "a reused id");
    }

    #[test]
    fn a_piped_side_declines_and_a_hostile_name_is_refused() {
        let mut t = Transfers::default();
        let step = t.on_record(FileRecord::Offer { id: 1, size: 3, name: "a".into() }, false).unwrap();
        assert_eq!(step.send, [FileRecord::Reject(1)]);
        let step = t.on_record(FileRecord::Offer { id: 2, size: 3, name: "../../.bashrc".into() }, true).unwrap();
        assert!(matches!(step.send[..], [FileRecord::Failed { id: 2, .. }]), "{step:?}");
        assert!(t.accept(Path::new(".")).is_err(), "nothing is on offer after a refused name");
    }

    #[test]
    fn a_file_goes_from_one_side_to_the_other_verified() {
        let dir = std::env::temp_dir().join(format!("ghostwire-transfer-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let (from, to) = (dir.join("from"), dir.join("to"));
        std::fs::create_dir_all(&from).unwrap();
        std::fs::create_dir_all(&to).unwrap();
        let content: Vec<u8> = (0..(CHUNK * 3 + 17)).map(|i| (i % 251) as u8).collect();
        std::fs::write(from.join("data.bin"), &content).unwrap();
        let (mut a, mut b) = (Transfers::default(), Transfers::default());
        let mut to_b: Vec<FileRecord> = a.offer(&from.join("data.bin")).unwrap().send;
        let mut to_a: Vec<FileRecord> = vec![];
        for r in to_b.drain(..) {
            to_a.extend(b.on_record(r, true).unwrap().send);
        }
        to_a.extend(b.accept(&to).unwrap().send);
        for r in to_a.drain(..) {
            to_b.extend(a.on_record(r, true).unwrap().send);
        }
        while a.has_chunks() {
            to_b.extend(a.next_chunk().send);
        }
        assert_eq!(to_b.len(), 5, "four chunks and the end");
        for r in to_b.drain(..) {
            to_a.extend(b.on_record(r, true).unwrap().send);
        }
        assert_eq!(to_a, [FileRecord::Verified(1)]);
        let said = a.on_record(to_a.remove(0), true).unwrap().say;
        assert!(said[0].1.contains("verified every byte"), "{said:?}");
        assert_eq!(std::fs::read(to.join("data.bin")).unwrap(), content);
        let _ = std::fs::remove_dir_all(&dir);
    }
}
