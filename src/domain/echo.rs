//! A short, quoted prefix of an invalid value, for error messages.
//!
//! Errors name the value they refuse so a caller can find it, but only its
//! first characters: a 1 MB ability must not come back as a 1 MB
//! `grpc-message`, nor fill a log line.

use std::fmt;

/// Characters of the refused value an error message repeats at most.
pub const ECHO_CHARS: usize = 40;

/// The first [`ECHO_CHARS`] characters of a value, quoted and escaped, with
/// the full length when it was cut.
#[derive(Clone, PartialEq, Eq)]
pub struct Echo(String);

impl Echo {
    pub fn of(raw: &str) -> Self {
        match raw.char_indices().nth(ECHO_CHARS) {
            Some((cut, _)) => Echo(format!("{:?}… ({} bytes)", &raw[..cut], raw.len())),
            None => Echo(format!("{raw:?}")),
        }
    }
}

impl From<&str> for Echo {
    fn from(raw: &str) -> Self {
        Echo::of(raw)
    }
}

impl fmt::Display for Echo {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// The same text as `Display`: an echo is already quoted.
impl fmt::Debug for Echo {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_short_value_is_echoed_whole_and_quoted() {
        assert_eq!(Echo::of("read:orders").to_string(), "\"read:orders\"");
        assert_eq!(Echo::of("a\u{202e}b").to_string(), "\"a\\u{202e}b\"");
    }

    #[test]
    fn a_long_value_is_cut_to_a_prefix_with_its_length() {
        let echo = Echo::of(&"é".repeat(1_000_000)).to_string();
        assert_eq!(
            echo,
            format!("\"{}\"… (2000000 bytes)", "é".repeat(ECHO_CHARS))
        );
        assert_eq!(
            Echo::of(&"a".repeat(ECHO_CHARS)).to_string().len(),
            ECHO_CHARS + 2
        );
    }
}
