//! The [`SafeName`] newtype.

use std::fmt;
use std::path::{Path, PathBuf};
use std::str::FromStr;

use serde::{Deserialize, Serialize};

use crate::error::SafeNameError;
use crate::validate::{self, validate};

/// A user-supplied name that is safe to use as one path component.
///
/// The only ways to build one validate the input (see the crate docs for the
/// rules), so holding a `SafeName` proves the string is 1 to 64 ASCII
/// characters from `[A-Za-z0-9._-]`, starts with a letter or digit, and has
/// no `..`. Deserializing validates too.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct SafeName(String);

impl SafeName {
    /// Longest accepted name, in bytes.
    pub const MAX_LEN: usize = validate::MAX_LEN;

    /// Validates `name` and wraps a copy of it.
    pub fn new(name: &str) -> Result<Self, SafeNameError> {
        validate(name)?;
        Ok(Self(name.to_owned()))
    }

    /// The name as a string slice.
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// Unwraps the name into its `String`.
    pub fn into_string(self) -> String {
        self.0
    }

    /// `base` joined with this name: always `base` plus exactly one more
    /// path component, so the result never leaves `base`.
    ///
    /// This is a lexical guarantee. It does not resolve symlinks: if `base`
    /// holds a symlink with this name, following it is the caller's concern.
    pub fn join_under(&self, base: &Path) -> PathBuf {
        base.join(&self.0)
    }
}

impl FromStr for SafeName {
    type Err = SafeNameError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Self::new(s)
    }
}

impl TryFrom<String> for SafeName {
    type Error = SafeNameError;

    fn try_from(value: String) -> Result<Self, Self::Error> {
        validate(&value)?;
        Ok(Self(value))
    }
}

impl TryFrom<&str> for SafeName {
    type Error = SafeNameError;

    fn try_from(value: &str) -> Result<Self, Self::Error> {
        Self::new(value)
    }
}

impl From<SafeName> for String {
    fn from(name: SafeName) -> Self {
        name.0
    }
}

impl AsRef<str> for SafeName {
    fn as_ref(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for SafeName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

#[cfg(test)]
mod tests {
    use std::path::Component;

    use super::*;

    #[test]
    fn new_accepts_plain_name() {
        let result = SafeName::new("base");

        assert_eq!(result.unwrap().as_str(), "base");
    }

    #[test]
    fn new_accepts_name_with_dot_dash_underscore() {
        let result = SafeName::new("my-template_1.0");

        assert_eq!(result.unwrap().as_str(), "my-template_1.0");
    }

    #[test]
    fn new_accepts_single_digit() {
        let result = SafeName::new("7");

        assert_eq!(result.unwrap().as_str(), "7");
    }

    #[test]
    fn new_accepts_trailing_dot() {
        let result = SafeName::new("v1.");

        assert_eq!(result.unwrap().as_str(), "v1.");
    }

    #[test]
    fn new_accepts_64_chars() {
        let name = "x".repeat(64);

        let result = SafeName::new(&name);

        assert_eq!(result.unwrap().as_str(), name);
    }

    #[test]
    fn new_rejects_traversal_name() {
        let result = SafeName::new("../x");

        assert_eq!(
            result,
            Err(SafeNameError::PathSeparator {
                name: "../x".to_owned(),
                ch: '/'
            })
        );
    }

    #[test]
    fn new_rejects_dotdot() {
        let result = SafeName::new("..");

        assert_eq!(
            result,
            Err(SafeNameError::DotDot {
                name: "..".to_owned()
            })
        );
    }

    #[test]
    fn new_rejects_dotdot_inside_name() {
        let result = SafeName::new("a..b");

        assert_eq!(
            result,
            Err(SafeNameError::DotDot {
                name: "a..b".to_owned()
            })
        );
    }

    #[test]
    fn new_rejects_single_dot() {
        let result = SafeName::new(".");

        assert_eq!(
            result,
            Err(SafeNameError::DotsOnly {
                name: ".".to_owned()
            })
        );
    }

    #[test]
    fn new_rejects_slash() {
        let result = SafeName::new("a/b");

        assert_eq!(
            result,
            Err(SafeNameError::PathSeparator {
                name: "a/b".to_owned(),
                ch: '/'
            })
        );
    }

    #[test]
    fn new_rejects_backslash() {
        let result = SafeName::new("a\\b");

        assert_eq!(
            result,
            Err(SafeNameError::PathSeparator {
                name: "a\\b".to_owned(),
                ch: '\\'
            })
        );
    }

    #[test]
    fn new_rejects_nul() {
        let result = SafeName::new("a\0b");

        assert_eq!(
            result,
            Err(SafeNameError::Nul {
                name: "a\0b".to_owned()
            })
        );
    }

    #[test]
    fn new_rejects_percent_encoded_traversal() {
        let result = SafeName::new("%2e%2e");

        assert_eq!(
            result,
            Err(SafeNameError::BadStart {
                name: "%2e%2e".to_owned(),
                ch: '%'
            })
        );
    }

    #[test]
    fn new_rejects_percent_after_first_char() {
        let result = SafeName::new("a%2e%2e");

        assert_eq!(
            result,
            Err(SafeNameError::BadChar {
                name: "a%2e%2e".to_owned(),
                ch: '%'
            })
        );
    }

    #[test]
    fn new_rejects_non_ascii() {
        let result = SafeName::new("é");

        assert_eq!(
            result,
            Err(SafeNameError::NonAscii {
                name: "é".to_owned(),
                ch: 'é'
            })
        );
    }

    #[test]
    fn new_rejects_empty() {
        let result = SafeName::new("");

        assert_eq!(result, Err(SafeNameError::Empty));
    }

    #[test]
    fn new_rejects_65_chars() {
        let name = "x".repeat(65);

        let result = SafeName::new(&name);

        assert_eq!(
            result,
            Err(SafeNameError::TooLong {
                name,
                len: 65,
                max: 64
            })
        );
    }

    #[test]
    fn new_rejects_leading_dot() {
        let result = SafeName::new(".hidden");

        assert_eq!(
            result,
            Err(SafeNameError::BadStart {
                name: ".hidden".to_owned(),
                ch: '.'
            })
        );
    }

    #[test]
    fn new_rejects_leading_dash() {
        let result = SafeName::new("-rf");

        assert_eq!(
            result,
            Err(SafeNameError::BadStart {
                name: "-rf".to_owned(),
                ch: '-'
            })
        );
    }

    #[test]
    fn new_rejects_space() {
        let result = SafeName::new("a b");

        assert_eq!(
            result,
            Err(SafeNameError::BadChar {
                name: "a b".to_owned(),
                ch: ' '
            })
        );
    }

    #[test]
    fn new_rejects_trailing_newline() {
        let result = SafeName::new("base\n");

        assert_eq!(
            result,
            Err(SafeNameError::BadChar {
                name: "base\n".to_owned(),
                ch: '\n'
            })
        );
    }

    #[test]
    fn error_message_names_rule_and_escaped_name() {
        let err = SafeName::new("../\u{1b}x").unwrap_err();

        let message = err.to_string();

        assert_eq!(
            message,
            "invalid name \"../\\u{1b}x\": it contains the path separator '/'"
        );
    }

    #[test]
    fn from_str_validates() {
        let result = "a/b".parse::<SafeName>();

        assert!(matches!(result, Err(SafeNameError::PathSeparator { .. })));
    }

    #[test]
    fn try_from_string_validates() {
        let result = SafeName::try_from(String::from(".."));

        assert!(matches!(result, Err(SafeNameError::DotDot { .. })));
    }

    #[test]
    fn try_from_string_keeps_valid_name() {
        let result = SafeName::try_from(String::from("base"));

        assert_eq!(result.unwrap().into_string(), "base");
    }

    #[test]
    fn display_and_as_ref_show_the_name() {
        let name = SafeName::new("snap-1").unwrap();

        let shown = (name.to_string(), AsRef::<str>::as_ref(&name).to_owned());

        assert_eq!(shown, ("snap-1".to_owned(), "snap-1".to_owned()));
    }

    #[test]
    fn join_under_adds_one_component() {
        let name = SafeName::new("base").unwrap();

        let joined = name.join_under(Path::new("/var/lib/petrel/templates"));

        assert_eq!(joined, Path::new("/var/lib/petrel/templates/base"));
    }

    #[test]
    fn join_under_relative_base_stays_under_it() {
        let name = SafeName::new("v1.0").unwrap();

        let joined = name.join_under(Path::new("templates"));

        assert_eq!(
            joined.components().collect::<Vec<_>>(),
            vec![
                Component::Normal("templates".as_ref()),
                Component::Normal("v1.0".as_ref())
            ]
        );
    }

    #[test]
    fn serialize_writes_plain_string() {
        let name = SafeName::new("base").unwrap();

        let json = serde_json::to_string(&name).unwrap();

        assert_eq!(json, "\"base\"");
    }

    #[test]
    fn deserialize_accepts_valid_name() {
        let json = "\"my-template_1.0\"";

        let name: SafeName = serde_json::from_str(json).unwrap();

        assert_eq!(name.as_str(), "my-template_1.0");
    }

    #[test]
    fn deserialize_rejects_traversal_name() {
        let json = "\"../etc\"";

        let result = serde_json::from_str::<SafeName>(json);

        assert!(
            result
                .unwrap_err()
                .to_string()
                .contains("contains the path separator '/'")
        );
    }

    #[test]
    fn deserialize_rejects_non_string() {
        let json = "42";

        let result = serde_json::from_str::<SafeName>(json);

        assert!(result.is_err());
    }
}
