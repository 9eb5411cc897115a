//! Validated names for user-supplied templates and snapshots.
//!
//! Petrel stores templates and snapshots in directories named after what the
//! user called them. [`SafeName`] is the only way such a name reaches the
//! filesystem: it can only be built by validation, and
//! [`SafeName::join_under`] turns it into a path one component below a base
//! directory.
//!
//! A name is accepted when it
//! - is 1 to [`SafeName::MAX_LEN`] (64) bytes long,
//! - is ASCII only, made of letters, digits, `.`, `_` and `-`
//!   ([`ALLOWLIST_PATTERN`]),
//! - starts with a letter or a digit,
//! - contains no `..` anywhere.
//!
//! That rules out `/`, `\`, NUL, the empty name, `.`, `..`, percent-encoding
//! (`%2e%2e`) and look-alike Unicode. A rejected name yields a
//! [`SafeNameError`] that names the failed rule and echoes the name escaped.
//!
//! What it does not do: it does not touch the filesystem, so it neither
//! resolves symlinks nor checks that a path exists; names are case-sensitive,
//! so `Base` and `base` are two names (they collide on case-insensitive
//! filesystems); and it reserves no names.
//!
//! # Example
//!
//! ```
//! use std::path::Path;
//!
//! use safename::SafeName;
//!
//! let name = SafeName::new("my-template_1.0")?;
//! assert_eq!(
//!     name.join_under(Path::new("/var/lib/petrel/templates")),
//!     Path::new("/var/lib/petrel/templates/my-template_1.0"),
//! );
//!
//! assert!(SafeName::new("../etc").is_err());
//! assert!("a/b".parse::<SafeName>().is_err());
//! # Ok::<(), safename::SafeNameError>(())
//! ```

mod error;
mod name;
mod validate;

pub use error::SafeNameError;
pub use name::SafeName;
pub use validate::ALLOWLIST_PATTERN;
