//! The validation rules behind [`SafeName::new`](crate::SafeName::new).

use std::sync::LazyLock;

use regex::Regex;

use crate::error::{SafeNameError, echo};

/// Longest accepted name, in bytes (every accepted name is ASCII, so also in
/// characters).
pub const MAX_LEN: usize = 64;

/// The allowlist every accepted name matches: an ASCII letter or digit, then
/// up to 63 ASCII letters, digits, `.`, `_` or `-`.
///
/// The `regex` crate has no look-around, so "no `..` anywhere" is a separate
/// rule that [`SafeName::new`](crate::SafeName::new) applies on top of this
/// pattern.
pub const ALLOWLIST_PATTERN: &str = r"\A[A-Za-z0-9][A-Za-z0-9._-]{0,63}\z";

/// The compiled allowlist; `None` if the pattern failed to compile, in which
/// case every name is rejected (fail closed). A unit test pins that it
/// compiles.
static ALLOWLIST: LazyLock<Option<Regex>> = LazyLock::new(|| Regex::new(ALLOWLIST_PATTERN).ok());

/// Checks `name` against every rule, in order, and reports the first that
/// fails.
///
/// The order is: empty, length, NUL, non-ASCII, path separators, `..`,
/// dots-only, first character, allowed characters, and finally the allowlist
/// pattern as a backstop.
pub(crate) fn validate(name: &str) -> Result<(), SafeNameError> {
    let Some(first) = name.chars().next() else {
        return Err(SafeNameError::Empty);
    };
    if name.len() > MAX_LEN {
        return Err(SafeNameError::TooLong {
            name: echo(name),
            len: name.len(),
            max: MAX_LEN,
        });
    }
    if name.contains('\0') {
        return Err(SafeNameError::Nul { name: echo(name) });
    }
    if let Some(ch) = name.chars().find(|c| !c.is_ascii()) {
        return Err(SafeNameError::NonAscii {
            name: echo(name),
            ch,
        });
    }
    if let Some(ch) = name.chars().find(|c| matches!(c, '/' | '\\')) {
        return Err(SafeNameError::PathSeparator {
            name: echo(name),
            ch,
        });
    }
    if name.contains("..") {
        return Err(SafeNameError::DotDot { name: echo(name) });
    }
    if name.chars().all(|c| c == '.') {
        return Err(SafeNameError::DotsOnly { name: echo(name) });
    }
    if !first.is_ascii_alphanumeric() {
        return Err(SafeNameError::BadStart {
            name: echo(name),
            ch: first,
        });
    }
    if let Some(ch) = name.chars().find(|&c| !is_allowed(c)) {
        return Err(SafeNameError::BadChar {
            name: echo(name),
            ch,
        });
    }
    match ALLOWLIST.as_ref() {
        Some(allowlist) if allowlist.is_match(name) => Ok(()),
        _ => Err(SafeNameError::NotAllowlisted {
            name: echo(name),
            pattern: ALLOWLIST_PATTERN,
        }),
    }
}

/// Whether `c` may appear in a name (anywhere but the first position, which
/// is stricter).
fn is_allowed(c: char) -> bool {
    c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-')
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn allowlist_pattern_compiles() {
        let compiled = Regex::new(ALLOWLIST_PATTERN);

        assert!(compiled.is_ok(), "{compiled:?}");
    }

    #[test]
    fn allowlist_rejects_trailing_newline() {
        let allowlist = Regex::new(ALLOWLIST_PATTERN).unwrap();

        let matched = allowlist.is_match("base\n");

        assert!(!matched);
    }

    #[test]
    fn validate_accepts_name_of_max_len() {
        let name = "a".repeat(MAX_LEN);

        let result = validate(&name);

        assert_eq!(result, Ok(()));
    }

    #[test]
    fn validate_reports_length_before_other_rules() {
        let name = format!("../{}", "a".repeat(MAX_LEN));

        let result = validate(&name);

        assert!(matches!(
            result,
            Err(SafeNameError::TooLong { len: 67, .. })
        ));
    }

    #[test]
    fn validate_reports_nul_before_separator() {
        let result = validate("a/\0");

        assert!(matches!(result, Err(SafeNameError::Nul { .. })));
    }
}
