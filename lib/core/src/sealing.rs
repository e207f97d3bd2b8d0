//! Sealing tenants' provider secrets (Graph client secrets, Google private keys) at rest.
//!
//! A secret is stored as `v1.<base64(nonce || ciphertext || tag)>`, sealed with AES-256-GCM
//! under a key that never lives in the table (`VOYAGE_CREDENTIALS_KEY`, or a key file beside
//! the local database), so a dump of the table alone reveals no secret. The record's identity
//! (company and provider) is the associated data: a sealed value copied into another
//! company's record does not open.

use base64::Engine;
use ring::aead::{Aad, LessSafeKey, Nonce, UnboundKey, AES_256_GCM, NONCE_LEN};
use ring::rand::{SecureRandom, SystemRandom};

use crate::{Error, Result};

const PREFIX: &str = "v1.";

/// Reads a key given as base64 (standard or URL-safe) of exactly 32 bytes.
pub fn parse_key(value: &str) -> std::result::Result<[u8; 32], String> {
    let engines = [
        base64::engine::general_purpose::STANDARD,
        base64::engine::general_purpose::URL_SAFE,
    ];
    let bytes = engines
        .iter()
        .find_map(|e| e.decode(value.trim()).ok())
        .ok_or("is not base64")?;
    bytes
        .try_into()
        .map_err(|b: Vec<u8>| format!("decodes to {} bytes, not 32", b.len()))
}

/// A new random key, base64-encoded, for a key file or a deployment parameter.
pub fn generate_key() -> Result<String> {
    let mut key = [0u8; 32];
    SystemRandom::new()
        .fill(&mut key)
        .map_err(|_| Error::Internal("no system randomness".into()))?;
    Ok(base64::engine::general_purpose::STANDARD.encode(key))
}

pub struct Sealer {
    key: LessSafeKey,
    rng: SystemRandom,
}

impl std::fmt::Debug for Sealer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Sealer(..)")
    }
}

impl Sealer {
    pub fn new(key: &[u8; 32]) -> Result<Sealer> {
        let unbound = UnboundKey::new(&AES_256_GCM, key)
            .map_err(|_| Error::Internal("unusable credentials key".into()))?;
        Ok(Sealer {
            key: LessSafeKey::new(unbound),
            rng: SystemRandom::new(),
        })
    }

    pub fn seal(&self, plaintext: &str, context: &str) -> Result<String> {
        let mut nonce = [0u8; NONCE_LEN];
        self.rng
            .fill(&mut nonce)
            .map_err(|_| Error::Internal("no system randomness".into()))?;
        let mut buf = plaintext.as_bytes().to_vec();
        self.key
            .seal_in_place_append_tag(
                Nonce::assume_unique_for_key(nonce),
                Aad::from(context.as_bytes()),
                &mut buf,
            )
            .map_err(|_| Error::Internal("sealing failed".into()))?;
        let mut out = nonce.to_vec();
        out.extend_from_slice(&buf);
        Ok(format!(
            "{PREFIX}{}",
            base64::engine::general_purpose::STANDARD.encode(out)
        ))
    }

    /// Opens a sealed value. Failure means another key, another record or tampering: never
    /// request input, so it is an internal error that says which without the value.
    pub fn open(&self, sealed: &str, context: &str) -> Result<String> {
        let fail = || {
            Error::Internal(format!(
                "the stored secret for {context} does not open with the configured credentials key"
            ))
        };
        let raw = sealed
            .strip_prefix(PREFIX)
            .and_then(|b| base64::engine::general_purpose::STANDARD.decode(b).ok())
            .ok_or_else(fail)?;
        if raw.len() < NONCE_LEN {
            return Err(fail());
        }
        let (nonce, body) = raw.split_at(NONCE_LEN);
        let nonce = Nonce::try_assume_unique_for_key(nonce).map_err(|_| fail())?;
        let mut buf = body.to_vec();
        let plain = self
            .key
            .open_in_place(nonce, Aad::from(context.as_bytes()), &mut buf)
            .map_err(|_| fail())?;
        String::from_utf8(plain.to_vec()).map_err(|_| fail())
    }
}

/// A stored credential record opened: its clear identity and its unsealed secret fields,
/// read by name.
pub struct OpenedCredentials {
    context: String,
    identity: serde_json::Map<String, serde_json::Value>,
    secret: serde_json::Value,
}

impl OpenedCredentials {
    pub fn open(sealer: &Sealer, record: &crate::model::CredentialRecord) -> Result<Self> {
        let context = crate::model::CredentialRecord::context(&record.company_id, record.provider);
        let secret = serde_json::from_str(&sealer.open(&record.sealed, &context)?)
            .map_err(|_| Error::Internal(format!("the stored secret for {context} is corrupt")))?;
        Ok(OpenedCredentials {
            context,
            identity: record.identity.clone(),
            secret,
        })
    }

    fn text(&self, value: Option<&serde_json::Value>, name: &str) -> Result<String> {
        value
            .and_then(serde_json::Value::as_str)
            .map(str::to_string)
            .ok_or_else(|| {
                Error::Internal(format!("the credentials for {} lack {name}", self.context))
            })
    }

    /// A clear identity field (`tenant_id`, `client_email`, ...).
    pub fn identity(&self, name: &str) -> Result<String> {
        self.text(self.identity.get(name), name)
    }

    /// A sealed field (`client_secret`, `private_key`).
    pub fn secret(&self, name: &str) -> Result<String> {
        self.text(self.secret.get(name), name)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sealer() -> Sealer {
        Sealer::new(&parse_key(&generate_key().unwrap()).unwrap()).unwrap()
    }

    #[test]
    fn sealed_secrets_open_only_in_their_own_record() {
        let s = sealer();
        let sealed = s.seal("p@ss w0rd", "acme/exchange").unwrap();
        assert!(!sealed.contains("p@ss"));
        assert_eq!(s.open(&sealed, "acme/exchange").unwrap(), "p@ss w0rd");
        assert!(s.open(&sealed, "globex/exchange").is_err());
        assert!(sealer().open(&sealed, "acme/exchange").is_err());
        assert!(s.open("v1.AAAA", "acme/exchange").is_err());
        // Two seals of one secret differ (random nonce), so equal secrets are not visible.
        assert_ne!(sealed, s.seal("p@ss w0rd", "acme/exchange").unwrap());
    }

    #[test]
    fn keys_must_be_32_bytes_of_base64() {
        assert!(parse_key("c2hvcnQ=").unwrap_err().contains("not 32"));
        assert!(parse_key("***").is_err());
        assert!(parse_key(&generate_key().unwrap()).is_ok());
    }
}
