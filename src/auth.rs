//! Who is calling and what they may do. Without a master key the service runs in development
//! mode (open, loopback only); with one, every `/v1` call needs a bearer key.

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::store::DEFAULT_PROJECT;

/// What a key may do. Each scope includes the ones before it.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize, clap::ValueEnum,
)]
#[serde(rename_all = "lowercase")]
pub enum Scope {
    /// GET endpoints only.
    Read,
    /// Read, plus the serving path: rerank, feedback, and catalog/interaction ingestion.
    Rerank,
    /// Everything: prompts, labels, optimizations, evaluations.
    Admin,
}

impl Scope {
    /// The name stored in the database and shown to people.
    pub fn as_str(self) -> &'static str {
        match self {
            Scope::Read => "read",
            Scope::Rerank => "rerank",
            Scope::Admin => "admin",
        }
    }

    /// Parses a stored scope name.
    pub fn parse(s: &str) -> Option<Scope> {
        match s {
            "read" => Some(Scope::Read),
            "rerank" => Some(Scope::Rerank),
            "admin" => Some(Scope::Admin),
            _ => None,
        }
    }
}

/// The authenticated caller, put into request extensions by the auth middleware.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Principal {
    pub project: String,
    pub scope: Scope,
}

impl Principal {
    /// The caller in development mode (no master key): admin of the default project.
    pub fn development() -> Self {
        Principal {
            project: DEFAULT_PROJECT.to_string(),
            scope: Scope::Admin,
        }
    }
}

/// Prefix of every generated key, so leaked keys are easy to recognise.
pub const KEY_PREFIX: &str = "agp_";

/// A new random key: (secret shown once, short prefix kept for recognition, stored hash).
pub fn generate_key() -> (String, String, Vec<u8>) {
    let secret = format!("{KEY_PREFIX}{}", hex::encode(rand::random::<[u8; 24]>()));
    let prefix = secret[..KEY_PREFIX.len() + 8].to_string();
    let hash = hash_key(&secret);
    (secret, prefix, hash)
}

/// SHA-256 of a key: keys are long random strings, so a fast hash is the right tool.
pub fn hash_key(secret: &str) -> Vec<u8> {
    Sha256::digest(secret.as_bytes()).to_vec()
}

/// Why a request's `Authorization` header could not be read.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AuthHeaderError {
    /// No usable `Bearer` credentials (401).
    Missing,
    /// More than one `Authorization` header: which one counts would be a guess (400).
    Repeated,
}

/// The bearer token of a request: exactly one `Authorization` header whose scheme is
/// `Bearer` in any case (RFC 7235: schemes are case-insensitive), then the token, trimmed.
pub fn bearer_token(headers: &axum::http::HeaderMap) -> Result<&str, AuthHeaderError> {
    let mut values = headers.get_all(axum::http::header::AUTHORIZATION).iter();
    let value = values.next().ok_or(AuthHeaderError::Missing)?;
    if values.next().is_some() {
        return Err(AuthHeaderError::Repeated);
    }
    let value = value.to_str().map_err(|_| AuthHeaderError::Missing)?.trim();
    let (scheme, token) = value
        .split_once([' ', '\t'])
        .ok_or(AuthHeaderError::Missing)?;
    let token = token.trim();
    if !scheme.eq_ignore_ascii_case("bearer") || token.is_empty() {
        return Err(AuthHeaderError::Missing);
    }
    Ok(token)
}

/// Compares two secrets without an early exit (no timing oracle on the master key).
pub fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    if a.len() != b.len() {
        return false;
    }
    a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// The scope an HTTP call needs: reads need `read` (but the budget's, `admin`); the serving
/// path needs `rerank`; everything else (prompts, jobs) needs `admin`.
pub fn required_scope(method: &axum::http::Method, path: &str) -> Scope {
    if path == "/v1/budget" {
        return Scope::Admin;
    }
    if method == axum::http::Method::GET || method == axum::http::Method::HEAD {
        return Scope::Read;
    }
    let serving = [
        "/v1/rerank",
        "/v1/feedback",
        "/v1/items",
        "/v1/interactions",
    ];
    if serving.contains(&path) {
        Scope::Rerank
    } else {
        Scope::Admin
    }
}

#[cfg(test)]
mod tests {

    #[test]
    fn the_bearer_scheme_is_case_insensitive_and_one_header_only() {
        use axum::http::{HeaderMap, HeaderValue, header::AUTHORIZATION};
        let with = |values: &[&str]| {
            let mut h = HeaderMap::new();
            for v in values {
                h.append(AUTHORIZATION, HeaderValue::from_str(v).unwrap());
            }
            h
        };
        for v in [
            "Bearer k1",
            "bearer k1",
            "BEARER k1",
            "BeArEr   k1  ",
            "Bearer\tk1",
        ] {
            assert_eq!(bearer_token(&with(&[v])), Ok("k1"), "{v:?}");
        }
        for v in ["Basic k1", "Bearer", "Bearer   ", "Bearerk1", "k1"] {
            assert_eq!(
                bearer_token(&with(&[v])),
                Err(AuthHeaderError::Missing),
                "{v:?}"
            );
        }
        assert_eq!(bearer_token(&with(&[])), Err(AuthHeaderError::Missing));
        assert_eq!(
            bearer_token(&with(&["Bearer k1", "Bearer k2"])),
            Err(AuthHeaderError::Repeated)
        );
    }

    use super::*;

    #[test]
    fn scopes_are_ordered() {
        assert!(Scope::Admin > Scope::Rerank && Scope::Rerank > Scope::Read);
        assert_eq!(
            required_scope(&axum::http::Method::GET, "/v1/prompts"),
            Scope::Read
        );
        assert_eq!(
            required_scope(&axum::http::Method::POST, "/v1/rerank"),
            Scope::Rerank
        );
        assert_eq!(
            required_scope(&axum::http::Method::PUT, "/v1/items"),
            Scope::Rerank
        );
        assert_eq!(
            required_scope(&axum::http::Method::POST, "/v1/optimizations"),
            Scope::Admin
        );
        assert_eq!(
            required_scope(&axum::http::Method::GET, "/v1/budget"),
            Scope::Admin
        );
    }

    #[test]
    fn keys_hash_and_compare() {
        let (secret, prefix, hash) = generate_key();
        assert!(secret.starts_with(&prefix) && prefix.starts_with(KEY_PREFIX));
        assert_eq!(hash_key(&secret), hash);
        assert!(constant_time_eq(b"abc", b"abc") && !constant_time_eq(b"abc", b"abd"));
    }
}
