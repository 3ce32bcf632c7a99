//! One KEY-VALUE setting being parsed: the checks and errors every config's `set` shares.

use crate::error::Error;

/// A key and its value as given.
pub(crate) struct Setting<'a> {
    pub(crate) key: &'a str,
    pub(crate) value: &'a str,
}

impl Setting<'_> {
    /// The value refused, with why.
    pub(crate) fn invalid(&self, reason: &str) -> Error {
        Error::InvalidSetting {
            key: self.key.to_owned(),
            value: self.value.to_owned(),
            reason: reason.to_owned(),
        }
    }

    /// The key refused, listing the ones that exist.
    pub(crate) fn unknown(&self, valid: &[&'static str]) -> Error {
        Error::UnknownSetting {
            key: self.key.to_owned(),
            valid: valid.to_vec(),
        }
    }

    /// The value as a whole number above zero.
    pub(crate) fn positive(&self) -> Result<u64, Error> {
        self.value
            .trim()
            .parse::<u64>()
            .ok()
            .filter(|n| *n > 0)
            .ok_or_else(|| self.invalid("expected a whole number greater than zero"))
    }

    /// The value as a whole number, zero allowed; `zero` says what zero means.
    pub(crate) fn whole(&self, zero: &str) -> Result<u64, Error> {
        self.value
            .trim()
            .parse::<u64>()
            .map_err(|_| self.invalid(&format!("expected a whole number ({zero})")))
    }
}
