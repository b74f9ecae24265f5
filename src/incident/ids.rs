//! Names for the values a mix-up would turn into a bug: the caller's reference, the
//! IncidentId Loomis gives, and an update's place in its integration's log. Each is its
//! own type, so that passing a reference where an IncidentId belongs (both strings, both
//! in every message) does not compile. They serialize exactly as the bare value, so the
//! stored form and the wire forms are unchanged.

use serde::{Deserialize, Serialize};
use std::fmt;

/// A string identifier with its own type; reads as `&str` wherever a string is wanted.
macro_rules! string_id {
    ($(#[$doc:meta])* $name:ident) => {
        $(#[$doc])*
        #[derive(Clone, Default, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
        #[serde(transparent)]
        pub struct $name(String);

        /// As the bare string (`"INC0010001"`), so messages read the same as before.
        impl fmt::Debug for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                fmt::Debug::fmt(&self.0, f)
            }
        }

        impl $name {
            pub fn new(value: impl Into<String>) -> Self {
                Self(value.into())
            }
            pub fn as_str(&self) -> &str {
                &self.0
            }
            pub fn into_string(self) -> String {
                self.0
            }
        }

        impl std::ops::Deref for $name {
            type Target = str;
            fn deref(&self) -> &str {
                &self.0
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

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(&self.0)
            }
        }

        impl From<String> for $name {
            fn from(s: String) -> Self {
                Self(s)
            }
        }

        impl From<&str> for $name {
            fn from(s: &str) -> Self {
                Self(s.to_string())
            }
        }

        impl From<&String> for $name {
            fn from(s: &String) -> Self {
                Self(s.clone())
            }
        }

        impl From<$name> for String {
            fn from(v: $name) -> String {
                v.0
            }
        }

        impl PartialEq<str> for $name {
            fn eq(&self, other: &str) -> bool {
                self.0 == other
            }
        }

        impl PartialEq<&str> for $name {
            fn eq(&self, other: &&str) -> bool {
                self.0 == *other
            }
        }

        impl PartialEq<String> for $name {
            fn eq(&self, other: &String) -> bool {
                &self.0 == other
            }
        }
    };
}

string_id!(
    /// The caller's own reference for an incident (Loomis `IncidentReference`): unique per
    /// customer, chosen by the legacy tool or the internal service.
    IncidentReference
);

string_id!(
    /// The number Loomis gives an incident (`IncidentId`), known from its ACK on.
    LoomisIncidentId
);

/// An update's place in its integration's log: gap-free and strictly increasing, the
/// position a `WatchUpdates` stream resumes from.
#[derive(Clone, Copy, Default, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(transparent)]
pub struct Sequence(u64);

impl fmt::Debug for Sequence {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.fmt(f)
    }
}

impl Sequence {
    /// Before the first update.
    pub const ZERO: Sequence = Sequence(0);

    pub const fn new(n: u64) -> Self {
        Sequence(n)
    }
    pub const fn get(self) -> u64 {
        self.0
    }
    /// The position after this one.
    pub const fn next(self) -> Sequence {
        Sequence(self.0 + 1)
    }
}

impl From<u64> for Sequence {
    fn from(n: u64) -> Self {
        Sequence(n)
    }
}

impl From<Sequence> for u64 {
    fn from(s: Sequence) -> u64 {
        s.0
    }
}

impl fmt::Display for Sequence {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.fmt(f)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn they_serialize_as_the_bare_value_in_every_format() {
        let r = IncidentReference::new("INC0010001");
        assert_eq!(serde_json::to_string(&r).unwrap(), "\"INC0010001\"");
        assert_eq!(
            postcard::to_allocvec(&r).unwrap(),
            postcard::to_allocvec(&"INC0010001".to_string()).unwrap()
        );
        let s = Sequence::new(42);
        assert_eq!(serde_json::to_string(&s).unwrap(), "42");
        assert_eq!(
            postcard::to_allocvec(&s).unwrap(),
            postcard::to_allocvec(&42u64).unwrap()
        );
        assert_eq!(s.next().get(), 43);
        let id: LoomisIncidentId = serde_json::from_str("\"400300\"").unwrap();
        assert_eq!(id, "400300");
        // Debug reads as the bare value, so error texts did not change with the types.
        assert_eq!(format!("{id:?} {s:?}"), "\"400300\" 42");
    }
}
