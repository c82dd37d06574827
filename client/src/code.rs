//! Codes with a secret part: `K7Q2M9XA-tulip-cider-lunar`.
//!
//! The first part is the room code the relay sees (`^[A-Z0-9]{8,16}$`). The rest, at least
//! [`SECRET_WORDS`] words of the EFF short word list #1 (1,296 words, about 10.3 bits each;
//! CC BY 4.0, by the Electronic Frontier Foundation), never leaves this machine: it is the
//! password of the PAKE that authenticates the key exchange (see `pake`). A code without words
//! is a bare room code, as before.
//!
//! Typing is forgiving: any case, spaces or `-` between the parts, and a unique prefix of a word
//! stand for the word; a word not in the list is refused at once, with the nearest words.
//! `yo-yo`, the list's one word with the separator in it, is read as one word.

use crate::cli::parse_room_code;
use crypto_box::aead::rand_core::RngCore;
use crypto_box::aead::OsRng;
use ghostwire_shared::RoomCode;
use zeroize::Zeroizing;

/// Words in the secret part of a generated code, and the fewest a typed one may have.
pub const SECRET_WORDS: usize = 3;
/// Length of the room part of a generated code with a secret: enough that two rooms do not
/// meet by chance; the secret is what an attacker would have to guess.
pub const NEW_ROOM_LEN: usize = 8;

/// The word list: EFF short word list #1.
pub fn words() -> &'static [&'static str] {
    diceware_wordlists::Wordlist::EffShort1.get_list()
}

/// The secret part, normalised (lower case, words joined by `-`); wiped on drop.
pub struct Secret(Zeroizing<String>);

impl Secret {
    /// The normalised words, as the PAKE's password.
    pub fn as_bytes(&self) -> &[u8] {
        self.0.as_bytes()
    }
}

/// A parsed code: the room, and the secret when there is one.
pub struct Code {
    /// What the relay sees.
    pub room: RoomCode,
    /// What it never sees.
    pub secret: Option<Secret>,
}

/// Whether `typed` has more than a room part (words after a separator): such a code must not be
/// given where other users can read it (the command line).
pub fn has_secret_part(typed: &str) -> bool {
    typed.trim().contains(|c: char| c == '-' || c.is_whitespace())
}

/// Parses what a person typed.
///
/// # Errors
/// What is wrong, in words: a bad room part, too few words, a word not in the list (with the
/// nearest ones), an ambiguous prefix (with what it could be).
pub fn parse(typed: &str) -> Result<Code, String> {
    let mut tokens = typed.split(|c: char| c == '-' || c.is_whitespace()).filter(|t| !t.is_empty());
    let room_part = tokens.next().unwrap_or("");
    let tokens: Vec<String> = tokens.map(str::to_lowercase).collect();
    if tokens.is_empty() {
        // A bare room code stays exactly as the prototype defined it, so seed peers still meet.
        return Ok(Code { room: parse_room_code(room_part)?, secret: None });
    }
    // With a secret part (only v2+ clients have those), look-alikes are one symbol: O is 0,
    // I and L are 1, so "TESTO0I1" and "TEST0011" are one room, as they look.
    let room = parse_room_code(&unalike(room_part))?;
    let mut secret = Zeroizing::new(String::new());
    let mut count = 0;
    let mut i = 0;
    while i < tokens.len() {
        // A word with the separator in it (`yo-yo`) arrives as two tokens.
        let joined = tokens.get(i + 1).map(|next| format!("{}-{next}", tokens[i]));
        let (word, used) = match joined.as_deref().filter(|j| words().contains(j)) {
            Some(j) => (resolve(j)?, 2),
            None => (resolve(&tokens[i])?, 1),
        };
        if count > 0 {
            secret.push('-');
        }
        secret.push_str(word);
        count += 1;
        i += used;
    }
    if count < SECRET_WORDS {
        return Err(format!(
            "the secret part of a code has at least {SECRET_WORDS} words from the word list (this one has {count})"
        ));
    }
    Ok(Code { room, secret: Some(Secret(secret)) })
}

/// What Tab offers at the prompt for the word the cursor ends (`line[..pos]`): where that word
/// starts and the list words that begin with it. Nothing for the room part (before the first
/// separator), which is not from the list.
pub fn complete(line: &str, pos: usize) -> (usize, Vec<&'static str>) {
    let Some(before) = line.get(..pos) else { return (pos, Vec::new()) };
    let Some(start) = before.rfind(|c: char| c == '-' || c.is_whitespace()).map(|i| i + 1) else {
        return (pos, Vec::new());
    };
    let typed = before[start..].to_lowercase();
    if typed.is_empty() {
        return (pos, Vec::new());
    }
    (start, words().iter().copied().filter(|w| w.starts_with(&typed)).collect())
}

/// `room` upper-cased, with O read as 0 and I and L as 1.
fn unalike(room: &str) -> String {
    room.chars()
        .map(|c| match c.to_ascii_uppercase() {
            'O' => '0',
            'I' | 'L' => '1',
            c => c,
        })
        .collect()
}

/// The list word `typed` stands for: itself, or the one word it is a prefix of.
fn resolve(typed: &str) -> Result<&'static str, String> {
    if let Some(w) = words().iter().find(|w| **w == typed) {
        return Ok(w);
    }
    let starting: Vec<&'static str> = words().iter().copied().filter(|w| w.starts_with(typed)).collect();
    match starting.as_slice() {
        [one] => Ok(one),
        [] => {
            let near = nearest(typed);
            Err(format!("{typed:?} is not in the word list; did you mean {}?", near.join(" or ")))
        }
        many => {
            let shown: Vec<&str> = many.iter().take(4).copied().collect();
            let more = if many.len() > 4 { ", …" } else { "" };
            Err(format!("{typed:?} could be {}{more}: type more of the word", shown.join(", ")))
        }
    }
}

/// The (at most three) list words closest to `typed` by edit distance, those sharing a longer
/// beginning with it first.
fn nearest(typed: &str) -> Vec<&'static str> {
    let shared = |w: &str| typed.chars().zip(w.chars()).take_while(|(a, b)| a == b).count();
    let mut scored: Vec<(usize, std::cmp::Reverse<usize>, &'static str)> =
        words().iter().map(|w| (distance(typed, w), std::cmp::Reverse(shared(w)), *w)).collect();
    scored.sort();
    let best = scored.first().map_or(0, |(d, _, _)| *d);
    scored.into_iter().take_while(|(d, _, _)| *d == best).take(3).map(|(_, _, w)| w).collect()
}

/// Levenshtein distance.
fn distance(a: &str, b: &str) -> usize {
    let b: Vec<char> = b.chars().collect();
    let mut row: Vec<usize> = (0..=b.len()).collect();
    for (i, ca) in a.chars().enumerate() {
        let mut prev = row[0];
        row[0] = i + 1;
        for (j, cb) in b.iter().enumerate() {
            let here = row[j + 1];
            row[j + 1] = (prev + usize::from(ca != *cb)).min(row[j] + 1).min(here + 1);
            prev = here;
        }
    }
    row[b.len()]
}

/// A fresh code with a secret: [`NEW_ROOM_LEN`] random symbols and [`SECRET_WORDS`] random
/// words, from the OS CSPRNG without modulo bias. Returns it as the user is to pass it on.
pub fn generate() -> Zeroizing<String> {
    let room = crate::cli::random_symbols(NEW_ROOM_LEN);
    let mut out = Zeroizing::new(room);
    for _ in 0..SECRET_WORDS {
        out.push('-');
        out.push_str(words()[uniform(words().len())]);
    }
    out
}

/// A uniform index below `n` (rejection sampling).
fn uniform(n: usize) -> usize {
    let n = n as u32;
    let zone = u32::MAX - u32::MAX % n;
    loop {
        let x = OsRng.next_u32();
        if x < zone {
            return (x % n) as usize;
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use proptest::prelude::*;

    fn secret_of(typed: &str) -> String {
        String::from_utf8(parse(typed).unwrap().secret.unwrap().as_bytes().to_vec()).unwrap()
    }

    #[test]
    fn the_list_is_the_eff_short_list() {
        assert_eq!(words().len(), 1296);
        assert_eq!(words()[0], "acid");
        assert!(words().contains(&"yo-yo"));
        let hyphenated: Vec<_> = words().iter().filter(|w| w.contains('-')).collect();
        assert_eq!(hyphenated, [&"yo-yo"], "the only word with the separator in it");
    }

    #[test]
    fn typing_is_forgiving() {
        assert_eq!(secret_of("k7q2m9xa-tulip-cider-lunar"), "tulip-cider-lunar");
        assert_eq!(secret_of("  K7Q2M9XA   TULIP cider-Lunar \n"), "tulip-cider-lunar");
        // A unique prefix stands for its word.
        assert_eq!(secret_of("K7Q2M9XA-tuli-cide-luna"), "tulip-cider-lunar");
        assert_eq!(secret_of("K7Q2M9XA-yo-yo-acid-acorn"), "yo-yo-acid-acorn");
        assert!(parse("K7Q2M9XA").unwrap().secret.is_none(), "a bare room code stays bare");
    }

    #[test]
    fn a_word_not_in_the_list_is_refused_with_a_suggestion() {
        let err = parse("K7Q2M9XA-tulip-cidre-lunar").err().unwrap();
        assert!(err.contains("\"cidre\" is not in the word list; did you mean cider"), "{err}");
        let err = parse("K7Q2M9XA-a-cider-lunar").err().unwrap();
        assert!(err.contains("could be"), "{err}");
        let err = parse("K7Q2M9XA-tulip-cider").err().unwrap();
        assert!(err.contains("at least 3 words"), "{err}");
        assert!(parse("K7-tulip-cider-lunar").is_err(), "the room part is checked as before");
    }

    #[test]
    fn tab_offers_the_list_words_that_begin_with_the_typed_word() {
        assert_eq!(complete("K7Q2M9XA-tul", 12), (9, vec!["tulip"]));
        assert_eq!(complete("K7Q2M9XA-tulip-CID", 18), (15, vec!["cider"]), "any case");
        let (start, many) = complete("K7Q2M9XA tulip c", 16);
        assert_eq!(start, 15);
        assert!(many.len() > 10 && many.iter().all(|w| w.starts_with('c')), "{many:?}");
        assert_eq!(complete("K7Q2M9", 6), (6, vec![]), "the room part is not from the list");
        assert_eq!(complete("K7Q2M9XA-", 9), (9, vec![]), "nothing typed yet");
        assert_eq!(complete("K7Q2M9XA-zzz", 12).1, Vec::<&str>::new());
        assert_eq!(complete("K7Q2M9XA-tu", 99), (99, vec![]), "a position past the end");
    }

    #[test]
    fn the_command_line_check_sees_any_secret_part() {
        assert!(has_secret_part("K7Q2M9XA-tulip-cider-lunar"));
        assert!(has_secret_part("K7Q2M9XA tulip"));
        assert!(!has_secret_part(" K7Q2M9XA "));
    }

    #[test]
    fn look_alikes_are_one_room_in_codes_with_a_secret_and_never_generated() {
        let room = |typed: &str| parse(typed).unwrap().room.as_str().to_owned();
        assert_eq!(room("TESTO0I1-tulip-cider-lunar"), "TEST0011");
        assert_eq!(room("testo0il-tulip-cider-lunar"), "TEST0011", "lower case too");
        assert_eq!(room("TESTO0I1"), "TESTO0I1", "a bare room code stays as the prototype defined it");
        for _ in 0..200 {
            let code = generate();
            let room_part = code.split('-').next().unwrap().to_owned();
            assert!(!room_part.contains(['0', 'O', '1', 'I', 'L']), "{room_part}");
            assert_eq!(room(&code), room_part, "a generated room reads as itself");
        }
        let bare = crate::cli::new_room_code().as_str().to_owned();
        assert!(!bare.contains(['0', 'O', '1', 'I', 'L']), "{bare}");
    }

    #[test]
    fn generated_codes_parse_and_differ() {
        let (a, b) = (generate(), generate());
        assert_ne!(*a, *b);
        let code = parse(&a).unwrap();
        assert_eq!(code.room.as_str().len(), NEW_ROOM_LEN);
        assert_eq!(code.secret.unwrap().as_bytes().iter().filter(|c| **c == b'-').count(), SECRET_WORDS - 1);
    }

    proptest! {
        /// Any code made of list words (`yo-yo` included) formats and parses back to the same
        /// room and the same words.
        #[test]
        fn codes_round_trip(room in "[A-Z0-9]{8,16}", picks in prop::collection::vec(0usize..1296, 3..7), upper in any::<bool>()) {
            let chosen: Vec<&str> = picks.iter().map(|i| words()[*i]).collect();
            let mut typed = format!("{room}-{}", chosen.join("-"));
            if upper {
                typed = typed.to_uppercase();
            }
            let code = parse(&typed).unwrap();
            let want_room = unalike(&room);
            prop_assert_eq!(code.room.as_str(), want_room.as_str());
            let (secret, want) = (code.secret.unwrap(), chosen.join("-"));
            prop_assert_eq!(secret.as_bytes(), want.as_bytes());
        }
    }
}
