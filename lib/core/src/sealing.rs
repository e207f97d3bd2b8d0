//! Sealing tenants' provider secrets (Graph client secrets, Google private keys) at rest.
//!
//! A secret is stored as `v1.<key id>.<base64(nonce || ciphertext || tag)>`, sealed with
//! AES-256-GCM under a key that never lives in the table (`VOYAGE_CREDENTIALS_KEY`, the stack's
//! Secrets Manager secret on AWS, or a key file beside the local database), so a dump of the
//! table alone reveals no secret. The record's identity (company and provider) is the
//! associated data: a sealed value copied into another company's record does not open.
//!
//! Keys rotate through a key ring: values are sealed under the current key and name it by its
//! id (a hash of the key, not the key); previous keys still open what they sealed. Values
//! sealed before key ids existed (`v1.<base64>`: base64 has no `.`, so the two shapes cannot be
//! confused) are opened by trying every key of the ring, the current one first.

use base64::Engine;
use ring::aead::{Aad, LessSafeKey, Nonce, UnboundKey, AES_256_GCM, NONCE_LEN};
use ring::rand::{SecureRandom, SystemRandom};
use sha2::{Digest, Sha256};

use crate::{Error, Result};

/// AES-256-GCM, nonce || ciphertext || tag in base64, after the key's id: `v1.<key id>.<base64>`.
/// Values sealed before key ids have no id (`v1.<base64>`): any key of the ring may open them.
const PREFIX: &str = "v1.";

/// A sealed value's key id, if it names one, and its base64 body.
fn split_sealed(sealed: &str) -> Option<(Option<&str>, &str)> {
    let rest = sealed.strip_prefix(PREFIX)?;
    Some(match rest.split_once('.') {
        Some((id, body)) => (Some(id), body),
        None => (None, rest),
    })
}

/// Reads a key given as 64 hex digits (what the stack's generated secret holds) or as base64
/// (standard or URL-safe) of exactly 32 bytes (`openssl rand -base64 32`).
pub fn parse_key(value: &str) -> std::result::Result<[u8; 32], String> {
    let value = value.trim();
    if value.len() == 64 && value.bytes().all(|b| b.is_ascii_hexdigit()) {
        let mut key = [0u8; 32];
        hex::decode_to_slice(value, &mut key).map_err(|e| format!("is not hex: {e}"))?;
        return Ok(key);
    }
    let engines = [
        base64::engine::general_purpose::STANDARD,
        base64::engine::general_purpose::URL_SAFE,
    ];
    let bytes = engines
        .iter()
        .find_map(|e| e.decode(value).ok())
        .ok_or("is neither 64 hex digits nor base64")?;
    bytes
        .try_into()
        .map_err(|b: Vec<u8>| format!("decodes to {} bytes, not 32", b.len()))
}

/// Reads a list of keys separated by commas or whitespace (`VOYAGE_CREDENTIALS_PREVIOUS_KEYS`).
pub fn parse_keys(value: &str) -> std::result::Result<Vec<[u8; 32]>, String> {
    value
        .split(|c: char| c == ',' || c.is_whitespace())
        .filter(|k| !k.is_empty())
        .enumerate()
        .map(|(i, k)| parse_key(k).map_err(|e| format!("key {}: {e}", i + 1)))
        .collect()
}

/// A key ring as a secret stores it: either one key alone (hex or base64), or JSON
/// `{"current": "<key>", "previous": ["<key>", ...]}` (`previous` optional).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KeyRing {
    pub current: [u8; 32],
    pub previous: Vec<[u8; 32]>,
}

impl KeyRing {
    pub fn parse(secret: &str) -> std::result::Result<KeyRing, String> {
        let secret = secret.trim();
        if !secret.starts_with('{') {
            return Ok(KeyRing {
                current: parse_key(secret)?,
                previous: Vec::new(),
            });
        }
        #[derive(serde::Deserialize)]
        #[serde(deny_unknown_fields)]
        struct Stored {
            current: String,
            #[serde(default)]
            previous: Vec<String>,
        }
        // serde's message can quote the input, a key: say where, not what.
        let stored: Stored = serde_json::from_str(secret).map_err(|e| {
            format!(
                "is not {{\"current\": \"<key>\", \"previous\": [...]}} (line {}, column {})",
                e.line(),
                e.column()
            )
        })?;
        let current = parse_key(&stored.current).map_err(|e| format!("current {e}"))?;
        let previous = stored
            .previous
            .iter()
            .enumerate()
            .map(|(i, k)| parse_key(k).map_err(|e| format!("previous[{i}] {e}")))
            .collect::<std::result::Result<_, _>>()?;
        Ok(KeyRing { current, previous })
    }
}

/// A key's id in sealed values: the first 8 hex digits of a SHA-256 of the key. It names the
/// key without revealing anything usable about it.
pub fn key_id(key: &[u8; 32]) -> String {
    let digest = Sha256::new()
        .chain_update(b"voyage credentials key id\0")
        .chain_update(key)
        .finalize();
    hex::encode(&digest[..4])
}

/// A new random key, base64-encoded, for a key file or a deployment parameter.
pub fn generate_key() -> Result<String> {
    let mut key = [0u8; 32];
    SystemRandom::new()
        .fill(&mut key)
        .map_err(|_| Error::Internal("no system randomness".into()))?;
    Ok(base64::engine::general_purpose::STANDARD.encode(key))
}

struct RingKey {
    id: String,
    key: LessSafeKey,
}

impl RingKey {
    fn new(key: &[u8; 32]) -> Result<RingKey> {
        let unbound = UnboundKey::new(&AES_256_GCM, key)
            .map_err(|_| Error::Internal("unusable credentials key".into()))?;
        Ok(RingKey {
            id: key_id(key),
            key: LessSafeKey::new(unbound),
        })
    }

    fn open(&self, raw: &[u8], context: &str) -> Option<String> {
        if raw.len() < NONCE_LEN {
            return None;
        }
        let (nonce, body) = raw.split_at(NONCE_LEN);
        let nonce = Nonce::try_assume_unique_for_key(nonce).ok()?;
        let mut buf = body.to_vec();
        let plain = self
            .key
            .open_in_place(nonce, Aad::from(context.as_bytes()), &mut buf)
            .ok()?;
        String::from_utf8(plain.to_vec()).ok()
    }
}

/// Seals under the current key; opens with any key of the ring.
pub struct Sealer {
    current: RingKey,
    previous: Vec<RingKey>,
    rng: SystemRandom,
}

impl std::fmt::Debug for Sealer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "Sealer(current {}, {} previous)",
            self.current.id,
            self.previous.len()
        )
    }
}

impl Sealer {
    /// A ring of one key.
    pub fn new(key: &[u8; 32]) -> Result<Sealer> {
        Sealer::with_previous(key, &[])
    }

    /// A ring that seals under `current` and still opens what `previous` keys sealed.
    pub fn with_previous(current: &[u8; 32], previous: &[[u8; 32]]) -> Result<Sealer> {
        Ok(Sealer {
            current: RingKey::new(current)?,
            previous: previous
                .iter()
                .filter(|k| *k != current)
                .map(RingKey::new)
                .collect::<Result<_>>()?,
            rng: SystemRandom::new(),
        })
    }

    /// The id of the key new values are sealed under.
    pub fn current_key_id(&self) -> &str {
        &self.current.id
    }

    /// Whether `sealed` names the current key (a value sealed under a previous key, or
    /// before key ids, is worth sealing again before that key is retired).
    pub fn is_current(&self, sealed: &str) -> bool {
        matches!(split_sealed(sealed), Some((Some(id), _)) if id == self.current.id)
    }

    pub fn seal(&self, plaintext: &str, context: &str) -> Result<String> {
        let mut nonce = [0u8; NONCE_LEN];
        self.rng
            .fill(&mut nonce)
            .map_err(|_| Error::Internal("no system randomness".into()))?;
        let mut buf = plaintext.as_bytes().to_vec();
        self.current
            .key
            .seal_in_place_append_tag(
                Nonce::assume_unique_for_key(nonce),
                Aad::from(context.as_bytes()),
                &mut buf,
            )
            .map_err(|_| Error::Internal("sealing failed".into()))?;
        let mut out = nonce.to_vec();
        out.extend_from_slice(&buf);
        Ok(format!(
            "{PREFIX}{}.{}",
            self.current.id,
            base64::engine::general_purpose::STANDARD.encode(out)
        ))
    }

    fn keys(&self) -> impl Iterator<Item = &RingKey> {
        std::iter::once(&self.current).chain(&self.previous)
    }

    /// Opens a sealed value. Failure means another key, another record or tampering: never
    /// request input, so it is an internal error that says which without the value.
    pub fn open(&self, sealed: &str, context: &str) -> Result<String> {
        let fail = |why: &str| {
            Error::Internal(format!(
                "the stored secret for {context} does not open with the credentials key ring{why}"
            ))
        };
        let decode = |b: &str| base64::engine::general_purpose::STANDARD.decode(b).ok();
        let (id, body) = split_sealed(sealed).ok_or_else(|| fail(""))?;
        let raw = decode(body).ok_or_else(|| fail(""))?;
        let Some(id) = id else {
            // Sealed before key ids: whichever key opens it.
            return self
                .keys()
                .find_map(|k| k.open(&raw, context))
                .ok_or_else(|| fail(""));
        };
        let mut named = self.keys().filter(|k| k.id == id).peekable();
        if named.peek().is_none() {
            return Err(fail(&format!(
                " (it was sealed under key {id}, which the ring does not hold)"
            )));
        }
        named
            .find_map(|k| k.open(&raw, context))
            .ok_or_else(|| fail(""))
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

    fn key() -> [u8; 32] {
        parse_key(&generate_key().unwrap()).unwrap()
    }

    fn sealer() -> Sealer {
        Sealer::new(&key()).unwrap()
    }

    #[test]
    fn sealed_secrets_open_only_in_their_own_record() {
        let s = sealer();
        let sealed = s.seal("p@ss w0rd", "acme/exchange").unwrap();
        assert!(!sealed.contains("p@ss"));
        assert!(sealed.starts_with(&format!("v1.{}.", s.current_key_id())));
        assert_eq!(s.open(&sealed, "acme/exchange").unwrap(), "p@ss w0rd");
        assert!(s.open(&sealed, "globex/exchange").is_err());
        assert!(sealer().open(&sealed, "acme/exchange").is_err());
        assert!(s.open("v1.AAAA", "acme/exchange").is_err());
        assert!(s.open("v1.abcd1234.AAAA", "acme/exchange").is_err());
        assert!(s.open("v2.AAAA", "acme/exchange").is_err());
        assert!(s.open("p@ss w0rd", "acme/exchange").is_err());
        // Two seals of one secret differ (random nonce), so equal secrets are not visible.
        assert_ne!(sealed, s.seal("p@ss w0rd", "acme/exchange").unwrap());
    }

    /// A value sealed by the sealer before key ids (`v1.<base64>`, made with AES-256-GCM outside
    /// this code from the key below) still opens, alone or as a previous key of a ring.
    #[test]
    fn values_sealed_before_key_ids_still_open() {
        let old = parse_key("AAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHh8=").unwrap();
        let sealed = "v1.ZGVmZ2hpamtsbW5vOFutFVmeZuxazgMk32+VNxCXYMat1FvOtA==";
        let alone = Sealer::new(&old).unwrap();
        assert_eq!(alone.open(sealed, "acme/exchange").unwrap(), "p@ss w0rd");
        assert!(alone.open(sealed, "globex/exchange").is_err());
        let rotated = Sealer::with_previous(&key(), &[key(), old]).unwrap();
        assert_eq!(rotated.open(sealed, "acme/exchange").unwrap(), "p@ss w0rd");
        assert!(!rotated.is_current(sealed));
        assert!(sealer().open(sealed, "acme/exchange").is_err());
    }

    #[test]
    fn rotation_keeps_old_values_readable() {
        let (old, new) = (key(), key());
        let before = Sealer::new(&old).unwrap();
        let sealed = before.seal("s3cret", "acme/google").unwrap();
        let after = Sealer::with_previous(&new, &[old]).unwrap();
        assert_eq!(after.open(&sealed, "acme/google").unwrap(), "s3cret");
        assert!(!after.is_current(&sealed));
        let resealed = after.seal("s3cret", "acme/google").unwrap();
        assert!(after.is_current(&resealed));
        assert!(resealed.starts_with(&format!("v1.{}.", key_id(&new))));
        // The old key alone cannot open what the new key sealed, and once the old key leaves
        // the ring its values say which key they need.
        assert!(before.open(&resealed, "acme/google").is_err());
        let retired = Sealer::new(&new).unwrap();
        let e = retired
            .open(&sealed, "acme/google")
            .unwrap_err()
            .to_string();
        assert!(e.contains(&key_id(&old)), "{e}");
        assert!(!e.contains("s3cret"));
    }

    #[test]
    fn keys_are_64_hex_digits_or_base64_of_32_bytes() {
        assert!(parse_key("c2hvcnQ=").unwrap_err().contains("not 32"));
        assert!(parse_key("***").is_err());
        assert!(parse_key(&generate_key().unwrap()).is_ok());
        let hex = "00112233445566778899aabbccddeeff00112233445566778899AABBCCDDEEFF";
        let k = parse_key(hex).unwrap();
        assert_eq!(k[0], 0x00);
        assert_eq!(k[10], 0xaa);
        assert_eq!(k[31], 0xff);
        // 63 or 65 hex digits are not a key (as base64 they are not 32 bytes either).
        assert!(parse_key(&hex[1..]).is_err());
        assert!(parse_key(&format!("{hex}0")).is_err());
        assert_eq!(key_id(&k).len(), 8);
        assert_ne!(key_id(&k), key_id(&key()));
        assert_eq!(
            parse_keys(&format!(" {hex},{} ", generate_key().unwrap()))
                .unwrap()
                .len(),
            2
        );
        assert!(parse_keys("c2hvcnQ=").unwrap_err().contains("key 1"));
    }

    #[test]
    fn key_rings_read_as_secrets_store_them() {
        let hex = "00112233445566778899aabbccddeeff00112233445566778899aabbccddeeff";
        let b64 = "AAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHh8=";
        // What the stack's generated secret holds.
        let ring = KeyRing::parse(&format!("{{\"current\":\"{hex}\"}}")).unwrap();
        assert_eq!(ring.current, parse_key(hex).unwrap());
        assert!(ring.previous.is_empty());
        let ring = KeyRing::parse(&format!(
            "{{\"current\": \"{b64}\", \"previous\": [\"{hex}\"]}}"
        ))
        .unwrap();
        assert_eq!(ring.current, parse_key(b64).unwrap());
        assert_eq!(ring.previous, vec![parse_key(hex).unwrap()]);
        assert_eq!(
            KeyRing::parse(b64).unwrap().current,
            parse_key(b64).unwrap()
        );
        assert!(KeyRing::parse("{\"previous\": []}").is_err());
        assert!(KeyRing::parse(&format!("{{\"current\":\"{hex}\",\"previos\":[]}}")).is_err());
        let e = KeyRing::parse(&format!("{{\"current\":\"{hex}\",\"previous\":\"{b64}\"}}"))
            .unwrap_err();
        assert!(!e.contains(b64), "{e}");
        let e =
            KeyRing::parse(&format!("{{\"current\":\"{hex}\",\"previous\":[\"x\"]}}")).unwrap_err();
        assert!(e.contains("previous[0]"), "{e}");
    }
}
