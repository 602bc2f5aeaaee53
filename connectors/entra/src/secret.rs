//! [`Secret`]: a string that never shows itself in logs, errors or `Debug` output.

use std::fmt;

use serde::Deserialize;
use subtle::ConstantTimeEq;

/// A secret value (client secret, private key PEM, or a path to one).
///
/// `Debug` and `Display` print `***`; the only way to read the value is [`Secret::expose`], so every
/// place that handles the plain text is easy to find. It deliberately does not implement
/// `Serialize`, so it cannot leak through a config dump either.
#[derive(Clone, Default, Deserialize, PartialEq, Eq)]
#[serde(transparent)]
pub struct Secret(String);

impl Secret {
    /// Wraps a secret value.
    pub fn new(value: impl Into<String>) -> Self {
        Self(value.into())
    }

    /// The plain-text value. Use it only to hand the secret to whatever needs it (a form field,
    /// a key parser), never to format it.
    pub fn expose(&self) -> &str {
        &self.0
    }

    /// Whether the secret is empty.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// Compares with `candidate` in constant time (for the length of the shorter value; the
    /// lengths themselves are not hidden).
    pub fn ct_eq(&self, candidate: &[u8]) -> bool {
        self.0.as_bytes().ct_eq(candidate).into()
    }
}

impl From<String> for Secret {
    fn from(value: String) -> Self {
        Self(value)
    }
}

impl From<&str> for Secret {
    fn from(value: &str) -> Self {
        Self(value.to_owned())
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("***")
    }
}

impl fmt::Display for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("***")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn debug_and_display_hide_the_value() {
        let secret = Secret::new("hunter2");
        assert_eq!(format!("{secret:?}"), "***");
        assert_eq!(format!("{secret}"), "***");
        assert_eq!(secret.expose(), "hunter2");
    }

    #[test]
    fn constant_time_compare_matches_only_the_same_bytes() {
        let secret = Secret::new("hunter2");
        assert!(secret.ct_eq(b"hunter2"));
        assert!(!secret.ct_eq(b"hunter3"));
        assert!(!secret.ct_eq(b"hunter"));
        assert!(!secret.ct_eq(b""));
    }

    #[test]
    fn deserializes_from_a_plain_string() {
        let secret: Secret = serde_json::from_str("\"s3cr3t\"").unwrap();
        assert_eq!(secret.expose(), "s3cr3t");
    }
}
