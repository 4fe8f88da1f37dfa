//! The validated string types messages carry: [`Name`] (identities and services, a narrow
//! alphabet) and [`Text`] (free text for people, shown escaped).

use std::fmt;

use crate::{MAX_NAME_LEN, MAX_TEXT_LEN};

/// An identity or service name: 1 to [`MAX_NAME_LEN`] bytes of `A-Z a-z 0-9 . _ -`.
///
/// The narrow alphabet keeps names safe to print in logs and to use in file names, and makes a
/// name that differs only by invisible Unicode impossible.
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Name(String);

/// Why a string is not a valid [`Name`].
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum NameError {
    /// The name has no characters.
    #[error("a name must not be empty")]
    Empty,
    /// The name is longer than [`MAX_NAME_LEN`] bytes.
    #[error("a name is at most {MAX_NAME_LEN} bytes, this one has {0}")]
    TooLong(usize),
    /// The name has a character outside `A-Z a-z 0-9 . _ -`.
    #[error("a name may only use letters, digits, '.', '_' and '-' (found {0:?})")]
    BadChar(char),
}

impl Name {
    /// Checks `s` and wraps it.
    pub fn new(s: impl Into<String>) -> Result<Self, NameError> {
        let s = s.into();
        if s.is_empty() {
            return Err(NameError::Empty);
        }
        if s.len() > MAX_NAME_LEN {
            return Err(NameError::TooLong(s.len()));
        }
        if let Some(c) = s
            .chars()
            .find(|c| !(c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-')))
        {
            return Err(NameError::BadChar(c));
        }
        Ok(Name(s))
    }

    /// The name as a string slice.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for Name {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl fmt::Debug for Name {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(&self.0, f)
    }
}

impl std::str::FromStr for Name {
    type Err = NameError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Name::new(s)
    }
}

/// Human-readable text of at most [`MAX_TEXT_LEN`] bytes.
///
/// [`Text::new`] cuts longer input at a character boundary instead of failing: these strings explain
/// an error to a person, and a shortened explanation beats none.
#[derive(Clone, PartialEq, Eq, Default)]
pub struct Text(String);

impl Text {
    /// The empty text.
    pub const EMPTY: Text = Text(String::new());

    /// Wraps `s`, cut to [`MAX_TEXT_LEN`] bytes at a character boundary.
    pub fn new(s: impl Into<String>) -> Self {
        let mut s = s.into();
        if s.len() > MAX_TEXT_LEN {
            let mut end = MAX_TEXT_LEN;
            while !s.is_char_boundary(end) {
                end -= 1;
            }
            s.truncate(end);
        }
        Text(s)
    }

    /// The text as a string slice.
    pub fn as_str(&self) -> &str {
        &self.0
    }

    pub(crate) fn from_checked(s: String) -> Self {
        debug_assert!(s.len() <= MAX_TEXT_LEN);
        Text(s)
    }
}

/// Shown escaped: the text comes from a peer, and a newline or an escape sequence in it must not
/// reach a log line or a terminal as such (a forged log line, a recoloured screen). Control
/// characters, the Unicode line and paragraph separators and the bidirectional overrides are
/// written as `\n`, `\u{1b}` and so on; [`Text::as_str`] gives the text as received.
impl fmt::Display for Text {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        use fmt::Write;
        for c in self.0.chars() {
            if needs_escape(c) {
                for e in c.escape_default() {
                    f.write_char(e)?;
                }
            } else {
                f.write_char(c)?;
            }
        }
        Ok(())
    }
}

/// Whether `c` must not be shown as is.
fn needs_escape(c: char) -> bool {
    c.is_control()
        || matches!(
            c,
            '\u{2028}' | '\u{2029}' | '\u{202a}'..='\u{202e}' | '\u{2066}'..='\u{2069}'
        )
}

impl fmt::Debug for Text {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(&self.0, f)
    }
}

#[cfg(feature = "arbitrary")]
mod arbitrary_impls {
    //! Structured fuzzing input: every value produced is valid.

    use arbitrary::{Arbitrary, Result, Unstructured};

    use super::{Name, Text};
    use crate::MAX_NAME_LEN;

    impl<'a> Arbitrary<'a> for Name {
        fn arbitrary(u: &mut Unstructured<'a>) -> Result<Self> {
            const ALPHABET: &[u8] =
                b"abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789._-";
            let len = u.int_in_range(1..=MAX_NAME_LEN)?;
            let mut s = String::with_capacity(len);
            for _ in 0..len {
                s.push(char::from(*u.choose(ALPHABET)?));
            }
            Ok(Name::new(s).expect("built from the allowed alphabet and length"))
        }
    }

    impl<'a> Arbitrary<'a> for Text {
        fn arbitrary(u: &mut Unstructured<'a>) -> Result<Self> {
            Ok(Text::new(String::arbitrary(u)?))
        }
    }
}
