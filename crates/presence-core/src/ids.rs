//! Validated identifiers.
//!
//! Every id that crosses the wire is 1..=128 bytes of `[A-Za-z0-9_.:@-]`,
//! and none of [`RESERVED_IDS`]. Validating once, at the edge, lets the rest
//! of the system (Redis keys, channel names, logs, the objects clients key
//! by id) use ids without escaping.

use std::fmt;
use std::sync::Arc;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// The longest id accepted, in bytes.
pub const MAX_ID_LEN: usize = 128;

/// Names that JavaScript objects already have: a client that keys a plain
/// object by id (`users[id] = ...`) would write into the prototype
/// (`__proto__`) or shadow built-ins (`constructor`, `prototype`).
pub const RESERVED_IDS: [&str; 3] = ["__proto__", "constructor", "prototype"];

/// Why a string is not a valid id.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum IdError {
    /// The string is empty.
    #[error("must not be empty")]
    Empty,
    /// The string is longer than [`MAX_ID_LEN`] bytes.
    #[error("must be at most {MAX_ID_LEN} bytes")]
    TooLong,
    /// The string has a byte outside `[A-Za-z0-9_.:@-]`.
    #[error("may only contain A-Z a-z 0-9 _ . : @ -")]
    BadChar,
    /// The string is one of [`RESERVED_IDS`].
    #[error("must not be __proto__, constructor or prototype")]
    Reserved,
}

/// Checks the id rules shared by every id type.
pub fn validate_id(s: &str) -> Result<(), IdError> {
    if s.is_empty() {
        return Err(IdError::Empty);
    }
    if s.len() > MAX_ID_LEN {
        return Err(IdError::TooLong);
    }
    if !s
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'.' | b':' | b'@' | b'-'))
    {
        return Err(IdError::BadChar);
    }
    if RESERVED_IDS.contains(&s) {
        return Err(IdError::Reserved);
    }
    Ok(())
}

macro_rules! id_type {
    ($(#[$doc:meta])* $name:ident) => {
        $(#[$doc])*
        #[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
        pub struct $name(Arc<str>);

        impl $name {
            /// Validates `s` and wraps it.
            pub fn new(s: &str) -> Result<Self, IdError> {
                validate_id(s)?;
                Ok(Self(Arc::from(s)))
            }

            /// The id as a string slice.
            pub fn as_str(&self) -> &str {
                &self.0
            }
        }

        impl fmt::Debug for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                fmt::Debug::fmt(&*self.0, f)
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(&self.0)
            }
        }

        impl std::str::FromStr for $name {
            type Err = IdError;
            fn from_str(s: &str) -> Result<Self, IdError> {
                Self::new(s)
            }
        }

        impl AsRef<str> for $name {
            fn as_ref(&self) -> &str {
                &self.0
            }
        }

        impl std::borrow::Borrow<str> for $name {
            fn borrow(&self) -> &str {
                &self.0
            }
        }

        impl Serialize for $name {
            fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
                s.serialize_str(&self.0)
            }
        }

        impl<'de> Deserialize<'de> for $name {
            fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
                let s = <std::borrow::Cow<'de, str>>::deserialize(d)?;
                Self::new(&s).map_err(serde::de::Error::custom)
            }
        }
    };
}

id_type!(
    /// One runtime instance: a tab, a device, an SDK client.
    SessionId
);
id_type!(
    /// The person (or service account) behind one or more sessions.
    UserId
);
id_type!(
    /// A presence scope: a document, a channel, a call.
    RoomId
);
id_type!(
    /// One presence-node process.
    NodeId
);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accepts_the_documented_alphabet() {
        assert!(RoomId::new("doc:42_a.b@c-d").is_ok());
        assert!(RoomId::new(&"x".repeat(MAX_ID_LEN)).is_ok());
    }

    #[test]
    fn rejects_empty_long_and_foreign_bytes() {
        assert_eq!(UserId::new(""), Err(IdError::Empty));
        assert_eq!(
            UserId::new(&"x".repeat(MAX_ID_LEN + 1)),
            Err(IdError::TooLong)
        );
        for bad in ["a b", "a/b", "é", "a\n", "{room}", "*"] {
            assert_eq!(UserId::new(bad), Err(IdError::BadChar), "{bad:?}");
        }
    }

    #[test]
    fn names_javascript_objects_already_have_are_refused() {
        for name in RESERVED_IDS {
            assert_eq!(UserId::new(name), Err(IdError::Reserved), "{name}");
            assert_eq!(RoomId::new(name), Err(IdError::Reserved), "{name}");
        }
        // Only the exact names: ids that contain them are fine.
        assert!(UserId::new("constructors").is_ok());
        assert!(UserId::new("toString").is_ok());
    }

    #[test]
    fn serde_validates() {
        assert!(serde_json::from_str::<SessionId>("\"ok-1\"").is_ok());
        assert!(serde_json::from_str::<SessionId>("\"not ok\"").is_err());
        assert_eq!(
            serde_json::to_string(&NodeId::new("n1").unwrap()).unwrap(),
            "\"n1\""
        );
    }
}
