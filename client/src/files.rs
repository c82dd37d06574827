//! Files from the peer, written only where the person said, never over anything.
//!
//! The sender names what it sends; the name is the sender's word, so it is checked before it
//! touches the disk ([`check_name`]): one path component, no `..`, no separator of any system,
//! no control character, no device name, no trailing dot or space, at most
//! [`MAX_NAME_BYTES`] bytes. A file arrives into `NAME.part`, created with `O_EXCL` and
//! `O_NOFOLLOW` (a link planted there is refused, never followed), and takes its name only once
//! every byte is in and the SHA-256 the sender announced matches, by a hard link that fails
//! rather than replace anything. A name already taken becomes `NAME (1)`, `NAME (2)`, ... An
//! [`Incoming`] dropped before it finished removes its `.part`: a failed or cancelled transfer
//! leaves no file.

use sha2::{Digest, Sha256};
use std::fs::{File, OpenOptions};
use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

/// Longest name accepted, in bytes (the usual file system limit, `.part` included).
pub const MAX_NAME_BYTES: usize = 250;
/// What a file being received is called until it is verified.
const PART: &str = ".part";
/// Numbered alternatives tried for a name that is taken, at most.
const ALTERNATIVES: u32 = 1000;

/// Why a name from the sender is refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum NameError {
    /// Nothing.
    #[error("the name is empty")]
    Empty,
    /// A separator, a drive or a stream: a path, not a name.
    #[error("the name is a path (it holds a / or \\), not a file name")]
    Path,
    /// `.` or `..`.
    #[error("the name is . or .., not a file name")]
    Dots,
    /// A control or invisible formatting character.
    #[error("the name holds a control character")]
    Control,
    /// A device name on some systems.
    #[error("the name is a device name ({0}) on some systems")]
    Device(String),
    /// A trailing dot or space (dropped by some systems, so two names could meet).
    #[error("the name ends with a dot or a space")]
    Trailing,
    /// Longer than [`MAX_NAME_BYTES`].
    #[error("the name is {0} bytes long; at most {MAX_NAME_BYTES} are taken")]
    TooLong(usize),
}

/// Why a file could not be received.
#[derive(Debug, thiserror::Error)]
pub enum FileError {
    /// The sender's name was refused.
    #[error("refused the sender's file name: {0}")]
    Name(#[from] NameError),
    /// Where it was to go is not a directory.
    #[error("{0} is not a directory")]
    NotADirectory(PathBuf),
    /// Every name tried is taken.
    #[error("the name {0} and its {ALTERNATIVES} numbered alternatives are all taken")]
    Taken(String),
    /// More bytes than announced.
    #[error("the sender sent more than the {0} bytes it announced")]
    TooMuch(u64),
    /// Fewer bytes than announced.
    #[error("the sender sent {got} bytes of the {announced} it announced")]
    Short {
        /// Received.
        got: u64,
        /// Announced.
        announced: u64,
    },
    /// The bytes are not those the sender hashed.
    #[error("the file's SHA-256 does not match the sender's: it was changed on the way or the sender lied")]
    Hash,
    /// The file system refused.
    #[error("cannot write {path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
}

/// Device names some systems treat specially whatever the extension (compared without case).
const DEVICES: [&str; 22] = [
    "CON", "PRN", "AUX", "NUL", "COM1", "COM2", "COM3", "COM4", "COM5", "COM6", "COM7", "COM8", "COM9", "LPT1", "LPT2",
    "LPT3", "LPT4", "LPT5", "LPT6", "LPT7", "LPT8", "LPT9",
];

/// Checks a file name the sender gave: a single, harmless path component.
///
/// # Errors
/// The [`NameError`] that says what is wrong with it.
pub fn check_name(name: &str) -> Result<&str, NameError> {
    if name.is_empty() {
        return Err(NameError::Empty);
    }
    if name.len() > MAX_NAME_BYTES {
        return Err(NameError::TooLong(name.len()));
    }
    if name.contains(['/', '\\']) {
        return Err(NameError::Path);
    }
    if name == "." || name == ".." {
        return Err(NameError::Dots);
    }
    if name.chars().any(|c| c.is_control() || crate::ui::hidden(c)) {
        return Err(NameError::Control);
    }
    // A drive ("C:") or an alternate data stream ("x:y") on Windows.
    if name.contains(':') {
        return Err(NameError::Path);
    }
    if name.ends_with(['.', ' ']) {
        return Err(NameError::Trailing);
    }
    let stem = name.split('.').next().unwrap_or(name).trim_end();
    if let Some(device) = DEVICES.iter().find(|d| d.eq_ignore_ascii_case(stem)) {
        return Err(NameError::Device((*device).to_owned()));
    }
    Ok(name)
}

/// `name` with ` (n)` before its extension: `notes.txt` → `notes (2).txt`.
fn numbered(name: &str, n: u32) -> String {
    match name.rfind('.').filter(|&i| i > 0) {
        Some(i) => format!("{} ({n}){}", &name[..i], &name[i..]),
        None => format!("{name} ({n})"),
    }
}

/// Whether anything at all (a dangling link included) is at `path`.
fn taken(path: &Path) -> bool {
    path.symlink_metadata().is_ok()
}

/// A file being received: its `.part`, written in order, hashed as it goes.
pub struct Incoming {
    part: PathBuf,
    target: PathBuf,
    file: Option<File>,
    hash: Sha256,
    size: u64,
    written: u64,
    kept: bool,
}

impl Incoming {
    /// Starts receiving `size` bytes named `name` into the directory `dir`: creates
    /// `NAME.part` (or, if NAME or its `.part` is taken, the first free `NAME (n)`).
    ///
    /// # Errors
    /// A refused name, a `dir` that is not a directory, or the file system's refusal.
    pub fn create(dir: &Path, name: &str, size: u64) -> Result<Incoming, FileError> {
        let name = check_name(name)?;
        if !dir.is_dir() {
            return Err(FileError::NotADirectory(dir.to_owned()));
        }
        for n in 0..=ALTERNATIVES {
            let candidate = if n == 0 { name.to_owned() } else { numbered(name, n) };
            let target = dir.join(&candidate);
            let part = dir.join(format!("{candidate}{PART}"));
            if taken(&target) || taken(&part) {
                continue;
            }
            let opened = OpenOptions::new()
                .write(true)
                .create_new(true)
                .mode(0o600)
                .custom_flags(nix::fcntl::OFlag::O_NOFOLLOW.bits())
                .open(&part);
            match opened {
                Ok(file) => {
                    let file = Some(file);
                    return Ok(Incoming { part, target, file, hash: Sha256::new(), size, written: 0, kept: false });
                }
                // Taken between the check and the create: try the next name.
                Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {}
                Err(source) => return Err(FileError::Io { path: part, source }),
            }
        }
        Err(FileError::Taken(name.to_owned()))
    }

    /// Where the file will be once verified.
    pub fn target(&self) -> &Path {
        &self.target
    }

    /// Bytes written so far.
    pub fn written(&self) -> u64 {
        self.written
    }

    /// Appends the next bytes.
    ///
    /// # Errors
    /// More bytes than announced, or the file system's refusal.
    pub fn write(&mut self, data: &[u8]) -> Result<(), FileError> {
        let len = data.len() as u64;
        if self.written + len > self.size {
            return Err(FileError::TooMuch(self.size));
        }
        let file = self.file.as_mut().ok_or_else(|| FileError::Io {
            path: self.part.clone(),
            source: std::io::Error::other("already finished"),
        })?;
        file.write_all(data).map_err(|source| FileError::Io { path: self.part.clone(), source })?;
        self.hash.update(data);
        self.written += len;
        Ok(())
    }

    /// Every byte is in: checks the size and the sender's SHA-256, then gives the file its name
    /// (never replacing anything) and returns where it is.
    ///
    /// # Errors
    /// A short file, a hash that differs, or the file system's refusal; the `.part` is removed.
    pub fn finish(mut self, sha256: &[u8; 32]) -> Result<PathBuf, FileError> {
        if self.written != self.size {
            return Err(FileError::Short { got: self.written, announced: self.size });
        }
        let digest: [u8; 32] = std::mem::take(&mut self.hash).finalize().into();
        if !bool::from(subtle::ConstantTimeEq::ct_eq(&digest[..], &sha256[..])) {
            return Err(FileError::Hash);
        }
        if let Some(file) = self.file.take() {
            file.sync_all().map_err(|source| FileError::Io { path: self.part.clone(), source })?;
        }
        // A hard link fails if the name was taken meanwhile: nothing is ever replaced.
        std::fs::hard_link(&self.part, &self.target)
            .map_err(|source| FileError::Io { path: self.target.clone(), source })?;
        self.kept = true;
        let _ = std::fs::remove_file(&self.part);
        Ok(self.target.clone())
    }
}

impl Drop for Incoming {
    fn drop(&mut self) {
        self.file = None;
        if !self.kept {
            let _ = std::fs::remove_file(&self.part);
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    /// A directory of its own under the system's temporary directory, removed on drop.
    struct Dir(PathBuf);

    impl Dir {
        fn new(tag: &str) -> Dir {
            let d = std::env::temp_dir().join(format!("ghostwire-files-{tag}-{}", std::process::id()));
            let _ = std::fs::remove_dir_all(&d);
            std::fs::create_dir_all(&d).unwrap();
            Dir(d)
        }
        fn names(&self) -> Vec<String> {
            let mut v: Vec<String> =
                std::fs::read_dir(&self.0).unwrap().map(|e| e.unwrap().file_name().into_string().unwrap()).collect();
            v.sort();
            v
        }
    }

    impl Drop for Dir {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }

    fn sha(data: &[u8]) -> [u8; 32] {
        Sha256::digest(data).into()
    }

    #[test]
    fn hostile_names_are_refused_each_for_its_reason() {
        let long = "a".repeat(MAX_NAME_BYTES + 1);
        let cases: [(&str, NameError); 14] = [
            ("", NameError::Empty),
            ("/etc/passwd", NameError::Path),
            ("../../.bashrc", NameError::Path),
            ("..", NameError::Dots),
            (".", NameError::Dots),
            ("a/b", NameError::Path),
            ("..\\windows\\win.ini", NameError::Path),
            ("C:evil", NameError::Path),
            ("bell\u{7}", NameError::Control),
            ("right\u{202e}txt.exe", NameError::Control),
            ("NUL", NameError::Device("NUL".into())),
            ("com1.txt", NameError::Device("COM1".into())),
            ("trailing.", NameError::Trailing),
            (&long, NameError::TooLong(MAX_NAME_BYTES + 1)),
        ];
        for (name, why) in cases {
            assert_eq!(check_name(name), Err(why), "{name:?}");
        }
        for fine in ["notes.txt", ".hidden", "a b c.tar.gz", "résumé.pdf", "console.log", "nul-points"] {
            assert_eq!(check_name(fine), Ok(fine));
        }
    }

    #[test]
    fn a_verified_file_takes_its_name_and_nothing_else_is_left() {
        let d = Dir::new("ok");
        let mut f = Incoming::create(&d.0, "notes.txt", 11).unwrap();
        assert_eq!(d.names(), ["notes.txt.part"]);
        f.write(b"hello ").unwrap();
        f.write(b"world").unwrap();
        let at = f.finish(&sha(b"hello world")).unwrap();
        assert_eq!(at, d.0.join("notes.txt"));
        assert_eq!(std::fs::read(&at).unwrap(), b"hello world");
        assert_eq!(d.names(), ["notes.txt"]);
        let mode = std::os::unix::fs::PermissionsExt::mode(&std::fs::metadata(&at).unwrap().permissions());
        assert_eq!(mode & 0o077, 0, "readable by its owner only");
    }

    #[test]
    fn a_taken_name_is_never_overwritten() {
        let d = Dir::new("taken");
        std::fs::write(d.0.join("notes.txt"), b"mine").unwrap();
        std::fs::write(d.0.join("notes (1).txt.part"), b"someone's partial").unwrap();
        let mut f = Incoming::create(&d.0, "notes.txt", 3).unwrap();
        f.write(b"new").unwrap();
        let at = f.finish(&sha(b"new")).unwrap();
        assert_eq!(at, d.0.join("notes (2).txt"));
        assert_eq!(std::fs::read(d.0.join("notes.txt")).unwrap(), b"mine");
        assert_eq!(d.names(), ["notes (1).txt.part", "notes (2).txt", "notes.txt"]);
    }

    #[test]
    fn a_link_planted_at_the_part_name_is_not_followed() {
        let d = Dir::new("link");
        let victim = d.0.join("victim");
        std::fs::write(&victim, b"precious").unwrap();
        std::os::unix::fs::symlink(&victim, d.0.join("x.part")).unwrap();
        let mut f = Incoming::create(&d.0, "x", 4).unwrap();
        f.write(b"data").unwrap();
        assert_eq!(f.finish(&sha(b"data")).unwrap(), d.0.join("x (1)"));
        assert_eq!(std::fs::read(&victim).unwrap(), b"precious");
    }

    #[test]
    fn a_failed_or_abandoned_transfer_leaves_no_file() {
        let d = Dir::new("fail");
        // Wrong hash.
        let mut f = Incoming::create(&d.0, "a", 2).unwrap();
        f.write(b"ab").unwrap();
        assert!(matches!(f.finish(&sha(b"xx")), Err(FileError::Hash)));
        // Short.
        let mut f = Incoming::create(&d.0, "b", 3).unwrap();
        f.write(b"ab").unwrap();
        assert!(matches!(f.finish(&sha(b"ab")), Err(FileError::Short { got: 2, announced: 3 })));
        // More than announced.
        let mut f = Incoming::create(&d.0, "c", 1).unwrap();
        assert!(matches!(f.write(b"ab"), Err(FileError::TooMuch(1))));
        drop(f);
        // Cancelled half way.
        let mut f = Incoming::create(&d.0, "d", 4).unwrap();
        f.write(b"ab").unwrap();
        drop(f);
        assert!(d.names().is_empty(), "{:?}", d.names());
    }

    #[test]
    fn an_empty_file_arrives_too() {
        let d = Dir::new("empty");
        let f = Incoming::create(&d.0, "empty", 0).unwrap();
        assert_eq!(f.finish(&sha(b"")).unwrap(), d.0.join("empty"));
        assert_eq!(std::fs::read(d.0.join("empty")).unwrap(), b"");
    }
}
