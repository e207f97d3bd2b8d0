//! Tenant API keys: made here, stored only as SHA-256, resolved to a [`Principal`].

use chrono::{DateTime, Utc};
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

use crate::model::{ApiKey, Principal};
use crate::store::Store;
use crate::{ids, validate, Error, Result};

/// Every key starts with this, so a leaked key is recognisable by secret scanners.
pub const KEY_PREFIX: &str = "vk_";

/// A key just made: the only moment its plain text exists.
pub struct NewKey {
    pub plaintext: String,
    pub record: ApiKey,
}

impl std::fmt::Debug for NewKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("NewKey")
            .field("plaintext", &"<redacted>")
            .field("record", &self.record)
            .finish()
    }
}

pub fn hash_key(plaintext: &str) -> String {
    hex::encode(Sha256::digest(plaintext.as_bytes()))
}

pub fn new_key(
    company: &str,
    internal: bool,
    description: Option<String>,
    now: DateTime<Utc>,
) -> Result<NewKey> {
    validate::identifier("company_id", company)?;
    let plaintext = format!("{KEY_PREFIX}{}", hex::encode(ids::random_bytes::<32>()));
    let record = ApiKey {
        id: ids::new_id("key"),
        company_id: company.to_string(),
        key_hash: hash_key(&plaintext),
        internal,
        description,
        created_at: now,
        revoked_at: None,
    };
    Ok(NewKey { plaintext, record })
}

/// The longest key description, in characters.
pub const MAX_KEY_DESCRIPTION: usize = 200;

/// Makes and stores a key for `company` (a description over [`MAX_KEY_DESCRIPTION`]
/// characters is refused, naming `description`).
pub async fn create_key(
    store: &Store,
    company: &str,
    internal: bool,
    description: Option<String>,
) -> Result<NewKey> {
    // Here, so `POST /v1/keys` and `voyage keys create` hold the same rule.
    if let Some(d) = &description {
        crate::validate::text("description", d, MAX_KEY_DESCRIPTION)?;
    }
    let key = new_key(company, internal, description, store.now())?;
    store.create_api_key(&key.record).await?;
    Ok(key)
}

/// The token of an `Authorization: Bearer <token>` header (scheme case-insensitive).
pub fn bearer_token(authorization: Option<&str>) -> Result<&str> {
    let value = authorization.ok_or(Error::Unauthorized)?.trim();
    let (scheme, token) = value.split_once(' ').ok_or(Error::Unauthorized)?;
    let token = token.trim();
    if !scheme.eq_ignore_ascii_case("bearer") || token.is_empty() {
        return Err(Error::Unauthorized);
    }
    Ok(token)
}

/// Resolves an `Authorization` header to the company it acts for. Missing, malformed,
/// unknown and revoked keys are all the same [`Error::Unauthorized`], so the answer tells an
/// attacker nothing about which keys exist.
pub async fn authenticate(store: &Store, authorization: Option<&str>) -> Result<Principal> {
    let token = bearer_token(authorization)?;
    if !token.starts_with(KEY_PREFIX) || token.len() > 256 {
        return Err(Error::Unauthorized);
    }
    let hash = hash_key(token);
    let key = store
        .api_key_by_hash(&hash)
        .await?
        .ok_or(Error::Unauthorized)?;
    // The lookup already matched on the hash; the constant-time check keeps a store that
    // matched loosely (case folding, prefix) from ever authenticating the wrong key.
    let same: bool = key.key_hash.as_bytes().ct_eq(hash.as_bytes()).into();
    if !same || key.revoked_at.is_some() {
        return Err(Error::Unauthorized);
    }
    Ok(Principal {
        company_id: key.company_id,
        key_id: key.id,
        internal: key.internal,
    })
}

/// Constant-time equality of two secrets of any length.
pub fn secrets_equal(a: &str, b: &str) -> bool {
    // Compare digests so the time does not depend on where the strings differ nor (beyond
    // hashing) on their lengths.
    let da = Sha256::digest(a.as_bytes());
    let db = Sha256::digest(b.as_bytes());
    da.ct_eq(&db).into()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bearer_parsing_accepts_any_scheme_case_and_rejects_the_rest() {
        assert_eq!(bearer_token(Some("Bearer abc")).ok(), Some("abc"));
        assert_eq!(bearer_token(Some("bearer   abc ")).ok(), Some("abc"));
        for bad in [
            None,
            Some(""),
            Some("Bearer"),
            Some("Bearer "),
            Some("Basic abc"),
            Some("abc"),
        ] {
            assert!(
                matches!(bearer_token(bad), Err(Error::Unauthorized)),
                "{bad:?}"
            );
        }
    }

    #[test]
    fn keys_are_unique_prefixed_and_hashed() {
        let now = Utc::now();
        let a = new_key("acme", false, None, now).unwrap();
        let b = new_key("acme", true, None, now).unwrap();
        assert!(a.plaintext.starts_with(KEY_PREFIX));
        assert_ne!(a.plaintext, b.plaintext);
        assert_eq!(a.record.key_hash, hash_key(&a.plaintext));
        assert!(!format!("{a:?}").contains(&a.plaintext));
    }

    #[test]
    fn secrets_equal_is_equality() {
        assert!(secrets_equal("s3cret", "s3cret"));
        assert!(!secrets_equal("s3cret", "s3cres"));
        assert!(!secrets_equal("s3cret", "s3cret2"));
    }
}
