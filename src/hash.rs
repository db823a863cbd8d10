//! Stable hashes: the same answer on every machine, replica and run (per-user seeds, A/B
//! arms, update-call seeds). Not for secrets.

/// A stable 64-bit hash of a string.
pub fn stable_hash(s: &str) -> u64 {
    use sha2::{Digest, Sha256};
    let h = Sha256::digest(s.as_bytes());
    let mut b = [0u8; 8];
    b.copy_from_slice(&h[..8]);
    u64::from_be_bytes(b)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stable_and_spread() {
        assert_eq!(stable_hash("u1"), stable_hash("u1"));
        assert_ne!(stable_hash("u1"), stable_hash("u2"));
    }
}
