//! Matching signed `/files` URLs to sandboxes: the proxy recomputes envd's
//! v1 signature ([`envd::auth::signature`]) with each live sandbox's token.

use envd::auth::Operation;

/// The signature E2B's SDKs put in `signature=` for `operation` (`read` or
/// `write`), `user` (empty for the default user) and the sandbox's envd
/// access token; `expiration` is the raw `signature_expiration` value.
/// `None` when the operation or expiration is not one envd would accept.
pub fn file_signature(
    path: &str,
    operation: &str,
    user: &str,
    token: &str,
    expiration: Option<&str>,
) -> Option<String> {
    let operation = match operation {
        "read" => Operation::Read,
        "write" => Operation::Write,
        _ => return None,
    };
    let expiration = match expiration {
        Some(raw) => Some(raw.parse::<i64>().ok()?),
        None => None,
    };
    Some(envd::auth::signature(
        path, operation, user, token, expiration,
    ))
}

/// Equality of two strings in time independent of where they differ.
pub fn constant_time_eq(a: &str, b: &str) -> bool {
    let (a, b) = (a.as_bytes(), b.as_bytes());
    if a.len() != b.len() {
        return false;
    }
    a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn signature_matches_the_python_sdk() {
        // Computed by e2b 2.63.0's e2b.sandbox.signature.get_signature("/home/user/a.txt",
        // "read", None, "tok"), and ("write", "user", "tok") expiring at 1700000000.
        assert_eq!(
            file_signature("/home/user/a.txt", "read", "", "tok", None).as_deref(),
            Some("v1_Zkbb3914oLJLvMBzCAHQhm2ydBLxbSx2eQUR/kLdvIY")
        );
        assert_eq!(
            file_signature(
                "/home/user/a.txt",
                "write",
                "user",
                "tok",
                Some("1700000000")
            )
            .as_deref(),
            Some("v1_x09R0+VxB2mRzkxWcRyFCpiJmFv0okUrtgQ6q12G0jM")
        );
    }

    #[test]
    fn unknown_operation_or_bad_expiration_has_no_signature() {
        assert_eq!(file_signature("/a", "delete", "", "tok", None), None);
        assert_eq!(file_signature("/a", "read", "", "tok", Some("soon")), None);
    }

    #[test]
    fn constant_time_eq_compares() {
        assert!(constant_time_eq("abc", "abc"));
        assert!(!constant_time_eq("abc", "abd"));
        assert!(!constant_time_eq("abc", "ab"));
    }
}
