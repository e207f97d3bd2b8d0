//! Identifiers: a readable prefix and a ULID, so ids sort by creation time and say what they
//! name in logs (`conn_01J...`, `whk_01J...`).

pub fn new_id(prefix: &str) -> String {
    format!(
        "{prefix}_{}",
        ulid::Ulid::new().to_string().to_ascii_lowercase()
    )
}

/// The time part of an id made at `at` (the first ten characters of its ULID, lowercase):
/// keys that must sort with ids by creation time, whatever the id itself is.
pub fn time_part(at: chrono::DateTime<chrono::Utc>) -> String {
    let ms = u64::try_from(at.timestamp_millis()).unwrap_or(0);
    let mut text = ulid::Ulid::from_parts(ms, 0)
        .to_string()
        .to_ascii_lowercase();
    text.truncate(10);
    text
}

/// Random bytes from the OS generator, for secrets and keys.
pub fn random_bytes<const N: usize>() -> [u8; N] {
    use rand::RngCore;
    let mut out = [0u8; N];
    rand::rngs::OsRng.fill_bytes(&mut out);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_ids_time_part_is_the_time_part_of_its_creation() {
        let at = chrono::Utc::now();
        let id = new_id("dlv");
        let ms = u64::try_from(at.timestamp_millis()).unwrap();
        let made = ulid::Ulid::from_string(&id[4..].to_ascii_uppercase()).unwrap();
        // Made within a few milliseconds of each other: the same prefix, or the next.
        assert!(made.timestamp_ms() >= ms);
        assert_eq!(time_part(at).len(), 10);
        assert!(id[4..14] >= *time_part(at));
    }
}
