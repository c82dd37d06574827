//! A strict one-pass reader of one JSON object, for the relay's view of a frame.
//!
//! The relay must check that every frame is exactly one well-formed JSON object
//! (RFC 8259) and read three of its top-level fields, `type`, `kind` and
//! `room`; everything else it validates and skips. serde_json did this through
//! its generic deserializer, and that was a tenth of the relay's time per frame
//! in the benchmark's profile. This reader makes the same decisions in one pass
//! over the bytes, without allocating unless a field it returns holds an escape
//! (or a skipped value nests arrays or objects, which needs a stack):
//!
//! * the grammar is JSON's: no trailing commas, comments, single quotes,
//!   leading zeros or bare words; only JSON's four whitespace bytes; nothing
//!   but whitespace after the object;
//! * a string holds no raw control character, and its escapes are JSON's;
//!   in keys and in the fields returned, `\u` escapes must also pair their
//!   surrogates (as serde_json requires of any string it decodes);
//! * a key is compared after unescaping (`"t\u0079pe"` is `type`), and each of
//!   the three fields may appear once;
//! * skipped values may nest to any depth (serde_json skips without a limit
//!   too; the frame size limit bounds it).
//!
//! The frame module's tests check it against serde_json, decision for decision.

use std::borrow::Cow;

/// What one of the three fields held.
#[derive(Debug, Default, PartialEq, Eq)]
pub(crate) enum Field<'a> {
    /// Not in the object.
    #[default]
    Absent,
    /// `null`.
    Null,
    /// A string, unescaped.
    Str(Cow<'a, str>),
    /// Some other JSON value.
    Other,
}

impl<'a> Field<'a> {
    /// The string, if the field held one; `Err` with the field's name if it held another value.
    pub(crate) fn string(self, name: &'static str) -> Result<Option<Cow<'a, str>>, JsonError> {
        match self {
            Field::Absent | Field::Null => Ok(None),
            Field::Str(s) => Ok(Some(s)),
            Field::Other => Err(JsonError::NotAString(name)),
        }
    }
}

/// The three fields the relay reads.
#[derive(Debug, Default)]
pub(crate) struct Fields<'a> {
    pub ty: Field<'a>,
    pub kind: Field<'a>,
    pub room: Field<'a>,
}

/// Why the text was refused.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum JsonError {
    /// Not one well-formed JSON object.
    Syntax,
    /// One of the three fields appears twice.
    Duplicate(&'static str),
    /// One of the three fields holds a value that is not a string or null.
    NotAString(&'static str),
}

/// Reads `text` as one JSON object and returns its `type`, `kind` and `room`.
pub(crate) fn read_object(text: &str) -> Result<Fields<'_>, JsonError> {
    let mut r = Reader { text, b: text.as_bytes(), i: 0 };
    let mut fields = Fields::default();
    r.ws();
    r.eat(b'{')?;
    r.ws();
    if r.peek() == Some(b'}') {
        r.i += 1;
    } else {
        loop {
            r.ws();
            let key = r.string(true)?;
            r.ws();
            r.eat(b':')?;
            r.ws();
            let slot = match key.as_ref() {
                "type" => Some(("type", &mut fields.ty)),
                "kind" => Some(("kind", &mut fields.kind)),
                "room" => Some(("room", &mut fields.room)),
                _ => None,
            };
            match slot {
                Some((name, slot)) => {
                    if *slot != Field::Absent {
                        return Err(JsonError::Duplicate(name));
                    }
                    *slot = r.field()?;
                }
                None => r.value()?,
            }
            r.ws();
            match r.next() {
                Some(b',') => {}
                Some(b'}') => break,
                _ => return Err(JsonError::Syntax),
            }
        }
    }
    r.ws();
    if r.i == r.b.len() {
        Ok(fields)
    } else {
        Err(JsonError::Syntax)
    }
}

struct Reader<'a> {
    text: &'a str,
    b: &'a [u8],
    i: usize,
}

/// Bytes looked at at once when scanning a string for its end: a fixed-size block, which the
/// compiler turns into vector compares.
const BLOCK: usize = 16;

/// Whether `c` ends a run of plain string bytes.
fn special(c: u8) -> bool {
    c == b'"' || c == b'\\' || c < 0x20
}

/// Whether any byte of `block` is [`special`]: no branch per byte, so it compiles to a few
/// vector compares for the whole block.
fn block_has_special(block: &[u8; BLOCK]) -> bool {
    let mut hit = 0u8;
    for &c in block {
        hit |= u8::from(c == b'"') | u8::from(c == b'\\') | u8::from(c < 0x20);
    }
    hit != 0
}

impl<'a> Reader<'a> {
    fn peek(&self) -> Option<u8> {
        self.b.get(self.i).copied()
    }

    fn next(&mut self) -> Option<u8> {
        let c = self.peek()?;
        self.i += 1;
        Some(c)
    }

    fn eat(&mut self, want: u8) -> Result<(), JsonError> {
        match self.next() {
            Some(c) if c == want => Ok(()),
            _ => Err(JsonError::Syntax),
        }
    }

    fn literal(&mut self, word: &[u8]) -> Result<(), JsonError> {
        match self.b.get(self.i..self.i + word.len()) {
            Some(got) if got == word => {
                self.i += word.len();
                Ok(())
            }
            _ => Err(JsonError::Syntax),
        }
    }

    /// Skips JSON whitespace (space, tab, line feed, carriage return; nothing else).
    fn ws(&mut self) {
        while let Some(b' ' | b'\t' | b'\n' | b'\r') = self.peek() {
            self.i += 1;
        }
    }

    /// Advances past plain string bytes to the next `"`, `\` or control byte (or the end).
    fn plain_run(&mut self) {
        let mut i = self.i;
        while let Some(block) = self.b.get(i..i + BLOCK).and_then(|s| <&[u8; BLOCK]>::try_from(s).ok()) {
            if block_has_special(block) {
                break;
            }
            i += BLOCK;
        }
        while self.b.get(i).is_some_and(|&c| !special(c)) {
            i += 1;
        }
        self.i = i;
    }

    /// A string starting at the opening quote. With `decode`, its text unescaped (escapes must
    /// then be valid UTF-16 too); without, only validated (and the result is empty).
    fn string(&mut self, decode: bool) -> Result<Cow<'a, str>, JsonError> {
        self.eat(b'"')?;
        let start = self.i;
        self.plain_run();
        if self.peek() == Some(b'"') {
            let s = self.text.get(start..self.i).ok_or(JsonError::Syntax)?;
            self.i += 1;
            return Ok(if decode { Cow::Borrowed(s) } else { Cow::Borrowed("") });
        }
        // Slow path: escapes (or an error). Decoded text is built only when asked for.
        let mut out = decode.then(|| String::from(self.text.get(start..self.i).unwrap_or_default()));
        loop {
            match self.next() {
                Some(b'"') => return Ok(out.map_or(Cow::Borrowed(""), Cow::Owned)),
                Some(b'\\') => self.escape(out.as_mut())?,
                Some(c) if c < 0x20 => return Err(JsonError::Syntax),
                None => return Err(JsonError::Syntax),
                Some(_) => {
                    let run = self.i - 1;
                    self.plain_run();
                    if let Some(out) = out.as_mut() {
                        out.push_str(self.text.get(run..self.i).ok_or(JsonError::Syntax)?);
                    }
                }
            }
        }
    }

    /// One escape, after its backslash; appended to `out` when decoding.
    fn escape(&mut self, out: Option<&mut String>) -> Result<(), JsonError> {
        let c = match self.next().ok_or(JsonError::Syntax)? {
            b'"' => '"',
            b'\\' => '\\',
            b'/' => '/',
            b'b' => '\u{8}',
            b'f' => '\u{c}',
            b'n' => '\n',
            b'r' => '\r',
            b't' => '\t',
            b'u' => {
                let unit = self.hex4()?;
                let Some(out) = out else { return Ok(()) };
                let c = match unit {
                    0xD800..=0xDBFF => {
                        // A leading surrogate must be followed at once by a trailing one.
                        self.literal(b"\\u")?;
                        let low = self.hex4()?;
                        if !(0xDC00..=0xDFFF).contains(&low) {
                            return Err(JsonError::Syntax);
                        }
                        char::from_u32(0x10000 + ((u32::from(unit) - 0xD800) << 10) + (u32::from(low) - 0xDC00))
                    }
                    _ => char::from_u32(u32::from(unit)),
                };
                out.push(c.ok_or(JsonError::Syntax)?);
                return Ok(());
            }
            _ => return Err(JsonError::Syntax),
        };
        if let Some(out) = out {
            out.push(c);
        }
        Ok(())
    }

    fn hex4(&mut self) -> Result<u16, JsonError> {
        let digits = self.b.get(self.i..self.i + 4).ok_or(JsonError::Syntax)?;
        let mut n = 0u16;
        for &d in digits {
            let v = (d as char).to_digit(16).ok_or(JsonError::Syntax)?;
            n = (n << 4) | v as u16;
        }
        self.i += 4;
        Ok(n)
    }

    /// The value of one of the three fields.
    fn field(&mut self) -> Result<Field<'a>, JsonError> {
        match self.peek() {
            Some(b'"') => Ok(Field::Str(self.string(true)?)),
            Some(b'n') => {
                self.literal(b"null")?;
                Ok(Field::Null)
            }
            _ => {
                self.value()?;
                Ok(Field::Other)
            }
        }
    }

    /// Validates and skips one value of any kind. Iterative: nesting depth costs heap, not stack.
    fn value(&mut self) -> Result<(), JsonError> {
        // Open arrays (`]`) and objects (`}`) around the current point, innermost last.
        let mut open: Vec<u8> = Vec::new();
        loop {
            // A value starts here.
            match self.peek() {
                Some(b'"') => {
                    self.string(false)?;
                }
                Some(b'-' | b'0'..=b'9') => self.number()?,
                Some(b't') => self.literal(b"true")?,
                Some(b'f') => self.literal(b"false")?,
                Some(b'n') => self.literal(b"null")?,
                Some(c @ (b'[' | b'{')) => {
                    let close = if c == b'[' { b']' } else { b'}' };
                    self.i += 1;
                    self.ws();
                    if self.peek() == Some(close) {
                        self.i += 1;
                    } else {
                        open.push(close);
                        if close == b'}' {
                            self.member_key()?;
                        }
                        continue;
                    }
                }
                _ => return Err(JsonError::Syntax),
            }
            // A value ended: close what it ends, until a comma asks for the next one.
            loop {
                let Some(&close) = open.last() else { return Ok(()) };
                self.ws();
                match self.next() {
                    Some(b',') => {
                        self.ws();
                        if close == b'}' {
                            self.member_key()?;
                        }
                        break;
                    }
                    Some(c) if c == close => {
                        open.pop();
                    }
                    _ => return Err(JsonError::Syntax),
                }
            }
        }
    }

    /// A skipped object's key and colon, up to its value. (Validated, not decoded: only the
    /// top-level keys are compared, so only theirs must be valid UTF-16.)
    fn member_key(&mut self) -> Result<(), JsonError> {
        self.ws();
        self.string(false)?;
        self.ws();
        self.eat(b':')?;
        self.ws();
        Ok(())
    }

    /// `-? (0 | [1-9][0-9]*) (. [0-9]+)? ([eE] [+-]? [0-9]+)?`
    fn number(&mut self) -> Result<(), JsonError> {
        if self.peek() == Some(b'-') {
            self.i += 1;
        }
        match self.next() {
            Some(b'0') => {}
            Some(b'1'..=b'9') => self.digits(),
            _ => return Err(JsonError::Syntax),
        }
        if self.peek() == Some(b'.') {
            self.i += 1;
            self.some_digits()?;
        }
        if let Some(b'e' | b'E') = self.peek() {
            self.i += 1;
            if let Some(b'+' | b'-') = self.peek() {
                self.i += 1;
            }
            self.some_digits()?;
        }
        // "01" or "1x": a number must end where a digit cannot follow.
        match self.peek() {
            Some(b'0'..=b'9') => Err(JsonError::Syntax),
            _ => Ok(()),
        }
    }

    fn digits(&mut self) {
        while self.peek().is_some_and(|c| c.is_ascii_digit()) {
            self.i += 1;
        }
    }

    fn some_digits(&mut self) -> Result<(), JsonError> {
        let start = self.i;
        self.digits();
        if self.i == start {
            Err(JsonError::Syntax)
        } else {
            Ok(())
        }
    }
}
