//! The service-account assertion: a JWT signed RS256 with the tenant's key, `sub` = the
//! staff member it acts as, exchanged at the token endpoint.

use base64::Engine;
use ring::signature::{RsaKeyPair, RSA_PKCS1_SHA256};
use serde_json::json;

use crate::{Error, Result};

pub const CALENDAR_SCOPE: &str = "https://www.googleapis.com/auth/calendar";
pub const GRANT_TYPE: &str = "urn:ietf:params:oauth:grant-type:jwt-bearer";

fn b64(bytes: &[u8]) -> String {
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes)
}

/// The DER inside a PEM `PRIVATE KEY` block (PKCS#8, what Google's key files hold).
pub fn pem_to_pkcs8(pem: &str) -> std::result::Result<Vec<u8>, String> {
    let body: String = pem
        .lines()
        .map(str::trim)
        .skip_while(|l| !l.starts_with("-----BEGIN PRIVATE KEY-----"))
        .skip(1)
        .take_while(|l| !l.starts_with("-----END PRIVATE KEY-----"))
        .collect();
    if body.is_empty() {
        return Err("is not a PEM `PRIVATE KEY` (PKCS#8) block".into());
    }
    base64::engine::general_purpose::STANDARD
        .decode(body)
        .map_err(|_| "the PEM block is not valid base64".to_string())
}

/// A parsed RSA key: the check that a tenant's key is usable, and the signer.
pub fn key_pair(pem: &str) -> std::result::Result<RsaKeyPair, String> {
    let der = pem_to_pkcs8(pem)?;
    RsaKeyPair::from_pkcs8(&der).map_err(|e| format!("is not a usable RSA private key ({e})"))
}

/// The signed assertion for `client_email` acting as `subject`, valid for an hour.
pub fn assertion(
    key: &RsaKeyPair,
    client_email: &str,
    subject: &str,
    audience: &str,
    issued_at: i64,
) -> Result<String> {
    let header = b64(br#"{"alg":"RS256","typ":"JWT"}"#);
    let claims = json!({
        "iss": client_email,
        "sub": subject,
        "scope": CALENDAR_SCOPE,
        "aud": audience,
        "iat": issued_at,
        "exp": issued_at + 3600,
    });
    let signing_input = format!("{header}.{}", b64(claims.to_string().as_bytes()));
    let mut signature = vec![0u8; key.public().modulus_len()];
    key.sign(
        &RSA_PKCS1_SHA256,
        &ring::rand::SystemRandom::new(),
        signing_input.as_bytes(),
        &mut signature,
    )
    .map_err(|_| Error::Internal("RS256 signing failed".into()))?;
    Ok(format!("{signing_input}.{}", b64(&signature)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bad_keys_are_named() {
        assert!(key_pair("nope").unwrap_err().contains("PEM"));
        let not_rsa = "-----BEGIN PRIVATE KEY-----\nAAAA\n-----END PRIVATE KEY-----";
        assert!(key_pair(not_rsa).unwrap_err().contains("usable RSA"));
    }
}
