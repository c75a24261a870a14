//! PostHog's bucketing hash: the first 15 hex digits of `sha1("{key}{sep}{id}{salt}")` over
//! `0xFFFFFFFFFFFFFFF`, a float in [0, 1]. A rollout of p% passes when the hash is ≤ p/100.

use sha1::{Digest, Sha1};

const LONG_SCALE: f64 = 0xFFF_FFFF_FFFF_FFFF_u64 as f64;

/// `hash(flag_key, bucketing_id, salt, '.')` for rollouts (`salt = ""`) and variants
/// (`salt = "variant"`); `hash("holdout", id, "", '-')` for holdouts.
///
/// An empty bucketing id hashes to 0.0, as PostHog's flags service does (its SDKs hash
/// `"key."` instead): such a request passes every rollout and gets the first variant.
pub fn hash(key: &str, bucketing: &str, salt: &str, separator: char) -> f64 {
    if bucketing.is_empty() {
        return 0.0;
    }
    let mut hasher = Sha1::new();
    hasher.update(key.as_bytes());
    let mut sep = [0u8; 4];
    hasher.update(separator.encode_utf8(&mut sep).as_bytes());
    hasher.update(bucketing.as_bytes());
    hasher.update(salt.as_bytes());
    let digest = hasher.finalize();
    let mut first = [0u8; 8];
    first.copy_from_slice(&digest[..8]);
    (u64::from_be_bytes(first) >> 4) as f64 / LONG_SCALE
}

#[cfg(test)]
mod tests {
    use super::hash;

    /// Vectors from the shared reference (computed with PostHog's formula in Python).
    #[test]
    fn posthog_hash_vectors() {
        assert_eq!(hash("simple-flag", "some-distinct-id", "", '.'), 0.477755795905271);
        assert_eq!(hash("simple-flag", "some-distinct-id", "variant", '.'), 0.7770474308392754);
        assert_eq!(hash("beta-feature", "user-123", "", '.'), 0.6535168611430965);
        assert_eq!(hash("beta-feature", "user-123", "variant", '.'), 0.5365856665162976);
        assert_eq!(hash("holdout", "example_id", "", '-'), 0.9402003475831224);
        assert_eq!(hash("any", "", "", '.'), 0.0);
    }
}
