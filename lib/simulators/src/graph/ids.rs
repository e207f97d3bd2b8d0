//! Where the Graph simulator's generated ids and tokens come from: the thread RNG, or the
//! seeded SplitMix64 streams of [`GraphSimulator::seeded`](super::GraphSimulator::seeded).

use std::sync::atomic::{AtomicU64, Ordering};

use base64::Engine;

use crate::util::random_token;

/// Where generated ids and tokens come from: the thread RNG, or in seeded mode two SplitMix64
/// streams (one for ids, change keys and tokens, one for error `request-id`s, so that an error
/// answered along the way does not shift the ids that follow). The streams are atomics, not
/// part of [`SimState`](super::SimState), so they can be drawn from with or without the state
/// lock held.
pub(super) struct IdSource {
    pub(super) seeded: Option<(SplitMix64, SplitMix64)>,
}

impl IdSource {
    /// A URL-safe token of `bytes` bytes.
    pub(super) fn token(&self, bytes: usize) -> String {
        match &self.seeded {
            None => random_token(bytes),
            Some((ids, _)) => ids.token(bytes),
        }
    }

    /// The `request-id` of an error body.
    pub(super) fn request_id(&self) -> String {
        match &self.seeded {
            None => random_token(12),
            Some((_, request_ids)) => request_ids.token(12),
        }
    }
}

/// SplitMix64 (Steele, Lea and Flood): a counter stepped by the golden gamma and mixed. Its
/// own code, not `rand`'s `StdRng`, whose algorithm may change between `rand` versions.
pub(super) struct SplitMix64(AtomicU64);

impl SplitMix64 {
    const GAMMA: u64 = 0x9e37_79b9_7f4a_7c15;

    pub(super) fn new(seed: u64) -> Self {
        SplitMix64(AtomicU64::new(seed))
    }

    fn next(&self) -> u64 {
        let z = self
            .0
            .fetch_add(Self::GAMMA, Ordering::Relaxed)
            .wrapping_add(Self::GAMMA);
        mix64(z)
    }

    fn token(&self, bytes: usize) -> String {
        let mut buf = Vec::with_capacity(bytes + 8);
        while buf.len() < bytes {
            buf.extend_from_slice(&self.next().to_le_bytes());
        }
        buf.truncate(bytes);
        base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(buf)
    }
}

pub(super) fn mix64(mut z: u64) -> u64 {
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}
