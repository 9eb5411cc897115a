//! Property tests of `SafeName`: accepted names stay under any base, arbitrary
//! input never panics, and acceptance is exactly "matches the allowlist and
//! has no `..`".

use std::ffi::OsStr;
use std::path::{Component, PathBuf};

use proptest::prelude::*;
use regex::Regex;
use safename::{ALLOWLIST_PATTERN, SafeName};

/// Strings close to the accept/reject boundary: mostly well-shaped names
/// (some too long or holding `..`), and short strings rich in dots,
/// separators and other path tricks.
fn candidate() -> impl Strategy<Value = String> {
    prop_oneof![
        "[A-Za-z0-9][A-Za-z0-9._-]{0,70}",
        "[A-Za-z0-9./\\\\_%:~ -]{0,12}",
        "[a-z.]{1,4}",
    ]
}

/// Any string at all, plus the boundary candidates.
fn any_input() -> impl Strategy<Value = String> {
    prop_oneof![any::<String>(), candidate(), "\\PC{0,80}"]
}

/// Base directories, absolute or relative, with `.` and `..` components and
/// trailing slashes thrown in.
fn base_dir() -> impl Strategy<Value = PathBuf> {
    "/?([a-z.]{1,6}/){0,4}[a-z.]{0,6}".prop_map(PathBuf::from)
}

fn accepted_name() -> impl Strategy<Value = SafeName> {
    candidate().prop_filter_map("rejected by SafeName::new", |s| SafeName::new(&s).ok())
}

fn normal_components(path: &std::path::Path) -> usize {
    path.components()
        .filter(|c| matches!(c, Component::Normal(_)))
        .count()
}

/// An oracle written independently of the crate's rule order.
#[allow(clippy::unwrap_used, reason = "test helper; the pattern is a literal")]
fn oracle_accepts(name: &str) -> bool {
    let pattern = Regex::new(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$").unwrap();
    pattern.is_match(name) && !name.contains("..")
}

proptest! {
    #[test]
    fn accepted_name_joined_never_leaves_base(name in accepted_name(), base in base_dir()) {
        let joined = name.join_under(&base);

        prop_assert!(joined.starts_with(&base), "{} left {}", joined.display(), base.display());
        prop_assert_eq!(normal_components(&joined), normal_components(&base) + 1);
        prop_assert_eq!(joined.components().count(), base.components().count() + 1);
        prop_assert_eq!(
            joined.components().next_back(),
            Some(Component::Normal(OsStr::new(name.as_str())))
        );
    }

    #[test]
    fn arbitrary_string_never_panics(input in any_input()) {
        let outcome = SafeName::new(&input).map_err(|e| e.to_string());

        prop_assert!(outcome.err().is_none_or(|message| message.starts_with("invalid name")));
    }

    #[test]
    fn accepted_name_matches_allowlist(name in accepted_name()) {
        let allowlist = Regex::new(ALLOWLIST_PATTERN).unwrap();

        let matched = allowlist.is_match(name.as_str());

        prop_assert!(matched, "{:?} does not match {}", name, ALLOWLIST_PATTERN);
        prop_assert!(!name.as_str().contains(".."));
    }

    #[test]
    fn acceptance_equals_oracle(input in any_input()) {
        let accepted = SafeName::new(&input).is_ok();

        prop_assert_eq!(accepted, oracle_accepts(&input), "input {:?}", input);
    }

    #[test]
    fn accepted_name_round_trips_through_display_and_serde(name in accepted_name()) {
        let parsed: SafeName = name.to_string().parse().unwrap();
        let json = serde_json::to_string(&name).unwrap();
        let deserialized: SafeName = serde_json::from_str(&json).unwrap();

        prop_assert_eq!(&parsed, &name);
        prop_assert_eq!(&deserialized, &name);
    }

    #[test]
    fn deserialize_agrees_with_new(input in any_input()) {
        let json = serde_json::to_string(&input).unwrap();

        let deserialized = serde_json::from_str::<SafeName>(&json).ok();

        prop_assert_eq!(deserialized, SafeName::new(&input).ok());
    }
}
