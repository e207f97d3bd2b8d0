//! Webhook signatures in the two conventions receivers use.
//!
//! - GitHub's: `X-Webhook-Signature-256: sha256=<hex HMAC-SHA256(body)>`, keyed with the
//!   secret string exactly as the tenant was shown it (`whsec_...` included).
//! - Standard Webhooks: `webhook-signature: v1,<base64 HMAC-SHA256("{id}.{ts}.{body}")>`,
//!   keyed with the base64-decoded bytes after `whsec_`.

use base64::engine::general_purpose::STANDARD;
use base64::Engine;
use hmac::{Hmac, Mac};
use sha2::Sha256;

type HmacSha256 = Hmac<Sha256>;

pub const SECRET_PREFIX: &str = "whsec_";

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum SigningError {
    #[error("a webhook secret must be `whsec_` followed by base64 of 24 to 64 bytes")]
    BadSecret,
}

fn mac(key: &[u8]) -> HmacSha256 {
    // HMAC accepts keys of any length; this cannot fail.
    match HmacSha256::new_from_slice(key) {
        Ok(m) => m,
        Err(_) => unreachable!("HMAC takes keys of any length"),
    }
}

/// A new secret: `whsec_` + base64 of 32 random bytes.
pub fn generate_secret() -> String {
    format!(
        "{SECRET_PREFIX}{}",
        STANDARD.encode(crate::ids::random_bytes::<32>())
    )
}

/// The HMAC key of a Standard Webhooks secret.
pub fn secret_key(secret: &str) -> Result<Vec<u8>, SigningError> {
    let b64 = secret
        .strip_prefix(SECRET_PREFIX)
        .ok_or(SigningError::BadSecret)?;
    let key = STANDARD.decode(b64).map_err(|_| SigningError::BadSecret)?;
    if (24..=64).contains(&key.len()) {
        Ok(key)
    } else {
        Err(SigningError::BadSecret)
    }
}

/// `sha256=<lowercase hex>` of `body`, keyed with `secret` as given.
pub fn github_signature(secret: &str, body: &[u8]) -> String {
    let mut m = mac(secret.as_bytes());
    m.update(body);
    format!("sha256={}", hex::encode(m.finalize().into_bytes()))
}

/// `v1,<base64>` over `{msg_id}.{timestamp}.{body}`.
pub fn standard_signature(
    secret: &str,
    msg_id: &str,
    timestamp: i64,
    body: &[u8],
) -> Result<String, SigningError> {
    let mut m = mac(&secret_key(secret)?);
    m.update(msg_id.as_bytes());
    m.update(b".");
    m.update(timestamp.to_string().as_bytes());
    m.update(b".");
    m.update(body);
    Ok(format!("v1,{}", STANDARD.encode(m.finalize().into_bytes())))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn github_test_vector() {
        assert_eq!(
            github_signature("It's a Secret to Everybody", b"Hello, World!"),
            "sha256=757107ea0eb2509fc211221cce984b8a37570b6d7586c22c46f4379c8b043e17"
        );
    }

    #[test]
    fn standard_webhooks_test_vector() {
        assert_eq!(
            standard_signature(
                "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw",
                "msg_p5jXN8AQM9LWM0D4loKWxJek",
                1614265330,
                br#"{"test": 2432232314}"#
            )
            .unwrap(),
            "v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE="
        );
    }

    #[test]
    fn generated_secrets_are_valid_and_distinct() {
        let a = generate_secret();
        assert!(secret_key(&a).is_ok());
        assert_ne!(a, generate_secret());
    }

    #[test]
    fn bad_secrets_are_refused() {
        for bad in ["", "whsec_", "whsec_!!!", "abc", "whsec_c2hvcnQ="] {
            assert_eq!(secret_key(bad), Err(SigningError::BadSecret), "{bad}");
        }
    }
}
