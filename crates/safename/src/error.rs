//! The error returned when a string is not a valid [`SafeName`](crate::SafeName).

use thiserror::Error;

/// Longest prefix of a rejected name that an error keeps, in characters.
///
/// Names come from users; an error that ends up in a log must not carry an
/// arbitrarily large input along with it.
const ECHO_MAX_CHARS: usize = 96;

/// Why a string was rejected as a [`SafeName`](crate::SafeName).
///
/// Each variant names the rule that failed. The rejected name is echoed in
/// `Debug` form (quoted, with control and non-ASCII characters escaped), cut to
/// its first 96 characters followed by `...` when it is longer.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
#[non_exhaustive]
pub enum SafeNameError {
    /// The name is the empty string.
    #[error("invalid name \"\": a name must not be empty")]
    Empty,

    /// The name is longer than [`SafeName::MAX_LEN`](crate::SafeName::MAX_LEN) bytes.
    #[error("invalid name {name:?}: it is {len} bytes long, the maximum is {max}")]
    TooLong {
        /// The rejected name (possibly cut short).
        name: String,
        /// Its length in bytes.
        len: usize,
        /// The maximum length in bytes.
        max: usize,
    },

    /// The name contains a NUL byte.
    #[error("invalid name {name:?}: it contains a NUL byte")]
    Nul {
        /// The rejected name (possibly cut short).
        name: String,
    },

    /// The name contains a character outside ASCII.
    #[error("invalid name {name:?}: it contains the non-ASCII character {ch:?}")]
    NonAscii {
        /// The rejected name (possibly cut short).
        name: String,
        /// The first non-ASCII character.
        ch: char,
    },

    /// The name contains `/` or `\`.
    #[error("invalid name {name:?}: it contains the path separator {ch:?}")]
    PathSeparator {
        /// The rejected name (possibly cut short).
        name: String,
        /// The first separator found.
        ch: char,
    },

    /// The name contains `..` somewhere.
    #[error("invalid name {name:?}: it contains \"..\"")]
    DotDot {
        /// The rejected name (possibly cut short).
        name: String,
    },

    /// The name is made of dots only (after the `..` rule, that is `.`).
    #[error("invalid name {name:?}: it consists only of dots")]
    DotsOnly {
        /// The rejected name (possibly cut short).
        name: String,
    },

    /// The first character is not an ASCII letter or digit.
    #[error("invalid name {name:?}: it must start with an ASCII letter or digit, not {ch:?}")]
    BadStart {
        /// The rejected name (possibly cut short).
        name: String,
        /// The first character.
        ch: char,
    },

    /// The name contains a character outside the allowlist.
    #[error(
        "invalid name {name:?}: it contains {ch:?}; allowed are ASCII letters, digits, '.', '_' and '-'"
    )]
    BadChar {
        /// The rejected name (possibly cut short).
        name: String,
        /// The first character outside the allowlist.
        ch: char,
    },

    /// The name passed every specific rule but not the allowlist pattern.
    ///
    /// The rules above cover the pattern, so this is a defence-in-depth
    /// backstop; it is also what every name gets if the pattern failed to
    /// compile, so validation fails closed.
    #[error("invalid name {name:?}: it does not match the allowlist {pattern}")]
    NotAllowlisted {
        /// The rejected name (possibly cut short).
        name: String,
        /// The allowlist pattern.
        pattern: &'static str,
    },
}

/// The copy of a rejected name that an error keeps: at most
/// [`ECHO_MAX_CHARS`] characters, with `...` appended when cut.
pub(crate) fn echo(name: &str) -> String {
    match name.char_indices().nth(ECHO_MAX_CHARS) {
        Some((cut, _)) => format!("{}...", &name[..cut]),
        None => name.to_owned(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn echo_keeps_short_name_whole() {
        let name = "a".repeat(ECHO_MAX_CHARS);

        let echoed = echo(&name);

        assert_eq!(echoed, name);
    }

    #[test]
    fn echo_cuts_long_name_on_char_boundary() {
        let name = "é".repeat(ECHO_MAX_CHARS + 10);

        let echoed = echo(&name);

        assert_eq!(echoed, format!("{}...", "é".repeat(ECHO_MAX_CHARS)));
    }

    #[test]
    fn display_escapes_control_characters() {
        let err = SafeNameError::Nul { name: echo("a\0b") };

        let message = err.to_string();

        assert_eq!(message, "invalid name \"a\\0b\": it contains a NUL byte");
    }
}
