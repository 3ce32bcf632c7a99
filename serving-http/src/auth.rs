//! Endpoint tokens: generated, compared in constant time, never printed by `Debug`.

use std::fmt;

use axum::http::{HeaderMap, HeaderValue};
use subtle::ConstantTimeEq as _;

/// The header that carries the token, as in the original product.
pub const TOKEN_HEADER: &str = "Cnvrg-Api-Key";

/// A secret that authorizes calls to one endpoint.
#[derive(Clone, PartialEq, Eq)]
pub struct Token(String);

impl Token {
    /// A new random token: 256 bits from the operating system's generator, as 64 hex digits.
    pub fn generate() -> Self {
        let mut bytes = [0u8; 32];
        getrandom::fill(&mut bytes).expect("the operating system's random generator is available");
        Token(bytes.iter().map(|b| format!("{b:02x}")).collect())
    }

    /// A token chosen by the operator.
    pub fn new(secret: impl Into<String>) -> Self {
        Token(secret.into())
    }

    /// The secret, to hand to the endpoint's callers.
    pub fn expose(&self) -> &str {
        &self.0
    }

    /// Whether `given` is this token, in time that does not depend on where they differ.
    pub fn matches(&self, given: &[u8]) -> bool {
        self.0.as_bytes().ct_eq(given).into()
    }
}

/// Whether `headers` carry `token` in [`TOKEN_HEADER`]; a route without a token admits every
/// request.
pub(crate) fn carries(token: Option<&Token>, headers: &HeaderMap) -> bool {
    token.is_none_or(|token| {
        let given = headers.get(TOKEN_HEADER).map(HeaderValue::as_bytes);
        token.matches(given.unwrap_or_default())
    })
}

impl fmt::Debug for Token {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Token(<redacted>)")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn generated_tokens_are_long_distinct_and_redacted() {
        let (a, b) = (Token::generate(), Token::generate());
        assert_eq!(a.expose().len(), 64);
        assert_ne!(a, b);
        assert!(a.matches(a.expose().as_bytes()));
        assert!(!a.matches(b.expose().as_bytes()));
        assert!(!a.matches(b""));
        assert!(!format!("{a:?}").contains(a.expose()));
    }
}
