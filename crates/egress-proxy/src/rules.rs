//! Domain rules: `example.com` (that name) and `*.example.com` (any name
//! under it, not the name itself), matched case-insensitively.

use std::fmt;
use std::str::FromStr;

/// Longest name DNS allows (RFC 1035), without the trailing dot.
const MAX_NAME: usize = 253;
/// Longest label DNS allows (RFC 1035).
const MAX_LABEL: usize = 63;

/// Why a domain rule was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RuleError {
    #[error("domain rule {rule:?}: {reason}")]
    Invalid { rule: String, reason: &'static str },
}

/// One allowed name: exact (`api.example.com`) or every name below a
/// domain (`*.example.com`). Stored lower-case, without a trailing dot.
#[derive(Debug, Clone, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct DomainRule {
    /// The name, or for a wildcard the domain after `*.`.
    name: String,
    wildcard: bool,
}

impl DomainRule {
    /// Whether `host` (a server name or Host header, any case, a trailing
    /// dot allowed) is covered by this rule.
    pub fn matches(&self, host: &str) -> bool {
        let host = host.strip_suffix('.').unwrap_or(host).to_ascii_lowercase();
        if self.wildcard {
            host.len() > self.name.len() + 1
                && host.ends_with(&self.name)
                && host.as_bytes()[host.len() - self.name.len() - 1] == b'.'
        } else {
            host == self.name
        }
    }

    /// Whether `text` is meant as a domain rule rather than an address or
    /// CIDR (it has a letter or `*`); such an entry then has to parse.
    pub fn looks_like_domain(text: &str) -> bool {
        text.bytes().any(|b| b.is_ascii_alphabetic() || b == b'*') && !text.contains(':')
    }
}

impl FromStr for DomainRule {
    type Err = RuleError;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        let invalid = |reason| RuleError::Invalid {
            rule: text.to_string(),
            reason,
        };
        let (wildcard, rest) = match text.strip_prefix("*.") {
            Some(rest) => (true, rest),
            None => (false, text),
        };
        let name = rest.strip_suffix('.').unwrap_or(rest).to_ascii_lowercase();
        if name.is_empty() {
            return Err(invalid("empty name"));
        }
        if name.len() > MAX_NAME {
            return Err(invalid("longer than 253 characters"));
        }
        if name.contains('*') {
            return Err(invalid("a wildcard may only be a leading \"*.\""));
        }
        for label in name.split('.') {
            if label.is_empty() || label.len() > MAX_LABEL {
                return Err(invalid("every label must be 1 to 63 characters"));
            }
            if !label
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
            {
                return Err(invalid(
                    "only letters, digits, '-' and '_' (internationalized names in punycode)",
                ));
            }
            if label.starts_with('-') || label.ends_with('-') {
                return Err(invalid("a label may not start or end with '-'"));
            }
        }
        if name.bytes().all(|b| b.is_ascii_digit() || b == b'.') {
            return Err(invalid("an address, not a name"));
        }
        Ok(Self { name, wildcard })
    }
}

impl TryFrom<String> for DomainRule {
    type Error = RuleError;

    fn try_from(text: String) -> Result<Self, Self::Error> {
        text.parse()
    }
}

impl From<DomainRule> for String {
    fn from(rule: DomainRule) -> Self {
        rule.to_string()
    }
}

impl fmt::Display for DomainRule {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.wildcard {
            write!(f, "*.{}", self.name)
        } else {
            f.write_str(&self.name)
        }
    }
}

/// Whether any of `rules` covers `host`.
pub fn allowed(rules: &[DomainRule], host: &str) -> bool {
    rules.iter().any(|rule| rule.matches(host))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rule(text: &str) -> DomainRule {
        text.parse().unwrap()
    }

    #[test]
    fn exact_rule_matches_the_name_in_any_case_and_nothing_below_it() {
        let exact = rule("Example.TEST.");

        assert!(exact.matches("example.test"));
        assert!(exact.matches("EXAMPLE.test."));
        assert!(!exact.matches("api.example.test"));
        assert!(!exact.matches("badexample.test"));
        assert_eq!(exact.to_string(), "example.test");
    }

    #[test]
    fn wildcard_rule_matches_names_below_the_domain_only() {
        let wild = rule("*.example.test");

        assert!(wild.matches("api.example.test"));
        assert!(wild.matches("a.b.example.test"));
        assert!(!wild.matches("example.test"));
        assert!(!wild.matches("evilexample.test"));
        assert!(!wild.matches("example.test.evil"));
    }

    #[test]
    fn parse_rejects_malformed_rules() {
        for bad in [
            "",
            "*.",
            "a..b",
            "-a.test",
            "a-.test",
            "a.*.test",
            "*a.test",
            "a b.test",
            "10.0.0.1",
            "ex@mple.test",
        ] {
            assert!(bad.parse::<DomainRule>().is_err(), "{bad:?} was accepted");
        }
        let long = format!("{}.test", "a".repeat(64));
        assert!(long.parse::<DomainRule>().is_err());
    }

    #[test]
    fn looks_like_domain_tells_names_from_addresses() {
        assert!(DomainRule::looks_like_domain("example.test"));
        assert!(DomainRule::looks_like_domain("*.example.test"));
        assert!(!DomainRule::looks_like_domain("10.0.0.0/8"));
        assert!(!DomainRule::looks_like_domain("1.1.1.1"));
        assert!(!DomainRule::looks_like_domain("fe80::/10"));
    }
}
