//! The one hash redraft writes down: FNV-1a, 64 bits. Stable across
//! platforms, Rust versions and runs (unlike `std`'s `DefaultHasher`), so
//! what it names — eval ids, shards, cassette keys, TF-IDF buckets, the
//! calibration's halves — is the same on every machine.
//!
//! **Invariant:** a leaf; the function never changes (stored ids depend on it).

/// FNV-1a over `bytes`.
pub fn fnv1a(bytes: &[u8]) -> u64 {
    bytes.iter().fold(0xcbf2_9ce4_8422_2325, |h, b| {
        (h ^ u64::from(*b)).wrapping_mul(0x0000_0100_0000_01b3)
    })
}

#[cfg(test)]
mod tests {
    #[test]
    fn known_values() {
        // The published FNV-1a 64-bit test vectors.
        assert_eq!(super::fnv1a(b""), 0xcbf2_9ce4_8422_2325);
        assert_eq!(super::fnv1a(b"a"), 0xaf63_dc4c_8601_ec8c);
        assert_eq!(super::fnv1a(b"foobar"), 0x8594_4171_f739_67e8);
    }
}
