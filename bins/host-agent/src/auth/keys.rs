//! The agent's one key store: the API keys it accepts, held as SHA-256
//! digests only, and where a request carries its key.

use std::fmt;

use http::HeaderMap;
use http::header::AUTHORIZATION;
use sha2::{Digest, Sha256};

/// The header E2B's SDKs and the `petrel` CLI send the key in.
pub const API_KEY_HEADER: &str = "x-api-key";

/// A key given in the configuration that cannot be used.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum KeyError {
    #[error("api_key_sha256 entry {index} is not 64 hex digits (a SHA-256 digest)")]
    BadDigest { index: usize },
    #[error("API key {index} is empty")]
    Empty { index: usize },
}

/// The accepted keys, as SHA-256 digests: the plaintext is not kept after
/// start, so a memory dump or a debug print shows no key. Checks compare
/// the given key's digest with every stored one in constant time.
#[derive(Clone, Default)]
pub struct KeyStore {
    digests: Vec<[u8; 32]>,
}

impl fmt::Debug for KeyStore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("KeyStore")
            .field("keys", &self.digests.len())
            .finish()
    }
}

impl KeyStore {
    /// A store of `keys` (plaintext, as from `--api-key`) and `digests`
    /// (hex SHA-256 of keys, as `api_key_sha256` in the config file).
    pub fn new(keys: &[String], digests: &[String]) -> Result<Self, KeyError> {
        let mut store = Vec::with_capacity(keys.len() + digests.len());
        for (index, key) in keys.iter().enumerate() {
            if key.is_empty() {
                return Err(KeyError::Empty { index });
            }
            store.push(digest(key));
        }
        for (index, hex) in digests.iter().enumerate() {
            store.push(parse_digest(hex).ok_or(KeyError::BadDigest { index })?);
        }
        Ok(Self { digests: store })
    }

    /// Whether no key is configured (every request is then refused).
    pub fn is_empty(&self) -> bool {
        self.digests.is_empty()
    }

    /// Whether `key` is one of the store's. Takes the same time whichever
    /// stored key matches, or none.
    pub fn verify(&self, key: &str) -> bool {
        let given = digest(key);
        self.digests
            .iter()
            .fold(false, |found, stored| eq_32(stored, &given) | found)
    }
}

/// The SHA-256 of `key`, as `api_key_sha256` takes it (lowercase hex).
pub fn sha256_hex(key: &str) -> String {
    digest(key).iter().map(|b| format!("{b:02x}")).collect()
}

fn digest(key: &str) -> [u8; 32] {
    Sha256::digest(key.as_bytes()).into()
}

fn parse_digest(hex: &str) -> Option<[u8; 32]> {
    let hex = hex.trim();
    if hex.len() != 64 || !hex.is_ascii() {
        return None;
    }
    let mut out = [0u8; 32];
    for (i, byte) in out.iter_mut().enumerate() {
        *byte = u8::from_str_radix(&hex[2 * i..2 * i + 2], 16).ok()?;
    }
    Some(out)
}

fn eq_32(a: &[u8; 32], b: &[u8; 32]) -> bool {
    a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// The key a request carries: `X-API-KEY: <key>` (E2B's SDKs, the CLI),
/// `Authorization: Bearer <key>` (Prometheus, scripts) or
/// `Authorization: Basic` with the key as the password (a browser's own
/// prompt, for the test UI). `None` when there is none.
pub fn credential(headers: &HeaderMap) -> Option<String> {
    if let Some(value) = headers.get(API_KEY_HEADER) {
        return value.to_str().ok().map(str::to_owned);
    }
    let value = headers.get(AUTHORIZATION)?.to_str().ok()?;
    let (scheme, rest) = value.split_once(' ')?;
    let rest = rest.trim();
    if scheme.eq_ignore_ascii_case("bearer") {
        return Some(rest.to_owned());
    }
    if scheme.eq_ignore_ascii_case("basic") {
        use base64::Engine as _;
        let decoded = base64::engine::general_purpose::STANDARD
            .decode(rest)
            .ok()?;
        let text = String::from_utf8(decoded).ok()?;
        let (_user, password) = text.split_once(':')?;
        return Some(password.to_owned());
    }
    None
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;
    use crate::auth::tests::headers;

    #[test]
    fn store_accepts_only_configured_keys_plain_or_hashed() {
        // Arrange
        let store = KeyStore::new(&["e2b_a".into()], &[sha256_hex("e2b_b")]).unwrap();

        // Act + Assert
        assert!(store.verify("e2b_a"));
        assert!(store.verify("e2b_b"));
        assert!(!store.verify("e2b_c"));
        assert!(!store.verify(""));
        assert!(!KeyStore::default().verify("e2b_a"));
    }

    #[test]
    fn store_debug_shows_no_key() {
        let store = KeyStore::new(&["e2b_secret".into()], &[]).unwrap();

        let text = format!("{store:?}");

        assert!(!text.contains("secret"), "{text}");
        assert!(!text.contains(&sha256_hex("e2b_secret")[..8]), "{text}");
    }

    #[test]
    fn new_rejects_bad_digests_and_empty_keys() {
        assert_eq!(
            KeyStore::new(&[], &["abc".into()]).unwrap_err(),
            KeyError::BadDigest { index: 0 }
        );
        assert_eq!(
            KeyStore::new(&[], &["zz".repeat(32)]).unwrap_err(),
            KeyError::BadDigest { index: 0 }
        );
        assert_eq!(
            KeyStore::new(&[String::new()], &[]).unwrap_err(),
            KeyError::Empty { index: 0 }
        );
    }

    #[test]
    fn credential_comes_from_header_bearer_or_basic_password() {
        assert_eq!(
            credential(&headers(&[("x-api-key", "k1")])).as_deref(),
            Some("k1")
        );
        assert_eq!(
            credential(&headers(&[("authorization", "Bearer k2")])).as_deref(),
            Some("k2")
        );
        // "user:k3"
        assert_eq!(
            credential(&headers(&[("authorization", "Basic dXNlcjprMw==")])).as_deref(),
            Some("k3")
        );
        assert_eq!(credential(&headers(&[("authorization", "Digest x")])), None);
        assert_eq!(credential(&headers(&[])), None);
    }
}
