//! Identifiers: a readable prefix and a ULID, so ids sort by creation time and say what they
//! name in logs (`conn_01J...`, `whk_01J...`).

pub fn new_id(prefix: &str) -> String {
    format!(
        "{prefix}_{}",
        ulid::Ulid::new().to_string().to_ascii_lowercase()
    )
}

/// Random bytes from the OS generator, for secrets and keys.
pub fn random_bytes<const N: usize>() -> [u8; N] {
    use rand::RngCore;
    let mut out = [0u8; N];
    rand::rngs::OsRng.fill_bytes(&mut out);
    out
}
