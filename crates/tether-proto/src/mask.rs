//! Payload masking (RFC 6455 §5.3): `transformed[i] = original[i] ^ key[i % 4]`.
//!
//! [`apply_mask`] works eight bytes at a time (the compiler turns the loop into
//! SIMD where the target has it), then four, then byte by byte for the last
//! 0-3 bytes (and for payloads under 8 bytes); [`apply_mask_scalar`] is the
//! plain loop that tests and benchmarks compare it against (`benches/proto.rs`,
//! group `mask`).

/// XOR `buf` with the 4-byte `key`, starting at key position 0.
#[inline]
pub fn apply_mask(buf: &mut [u8], key: [u8; 4]) {
    apply_mask_offset(buf, key, 0)
}

/// XOR `buf` with `key`, where `buf[0]` is at position `offset` of the payload
/// (used when a payload is unmasked in pieces).
#[inline]
pub fn apply_mask_offset(buf: &mut [u8], key: [u8; 4], offset: usize) {
    let key = rotate(key, offset);
    // Below 8 bytes the byte loop is quicker than setting up words; from 8 on,
    // words win (an 8-31 byte tail takes at most three u64s, one u32 and three
    // bytes). Measured in BENCHMARKS-proto.md.
    if buf.len() < 8 {
        return apply_mask_scalar(buf, key);
    }
    // Native byte order on both sides: word byte i is XORed with key[i % 4].
    let key32 = u32::from_ne_bytes(key);
    let key64 = u64::from_ne_bytes([key[0], key[1], key[2], key[3], key[0], key[1], key[2], key[3]]);
    let mut chunks = buf.chunks_exact_mut(32);
    for chunk in &mut chunks {
        for word in chunk.chunks_exact_mut(8) {
            let v = u64::from_ne_bytes(word.try_into().unwrap()) ^ key64;
            word.copy_from_slice(&v.to_ne_bytes());
        }
    }
    let rest = chunks.into_remainder();
    let mut words = rest.chunks_exact_mut(8);
    for word in &mut words {
        let v = u64::from_ne_bytes(word.try_into().unwrap()) ^ key64;
        word.copy_from_slice(&v.to_ne_bytes());
    }
    let mut rest = words.into_remainder();
    if rest.len() >= 4 {
        let (word, tail) = rest.split_at_mut(4);
        let v = u32::from_ne_bytes(word.try_into().unwrap()) ^ key32;
        word.copy_from_slice(&v.to_ne_bytes());
        rest = tail;
    }
    // Every piece so far was a multiple of 4 bytes long, so the key phase is unchanged.
    apply_mask_scalar(rest, key);
}

/// The reference implementation: one byte at a time.
pub fn apply_mask_scalar(buf: &mut [u8], key: [u8; 4]) {
    for (i, b) in buf.iter_mut().enumerate() {
        *b ^= key[i & 3];
    }
}

fn rotate(key: [u8; 4], offset: usize) -> [u8; 4] {
    let s = offset & 3;
    [key[s], key[(s + 1) & 3], key[(s + 2) & 3], key[(s + 3) & 3]]
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn matches_scalar_for_every_length_and_alignment() {
        let key = [0x37, 0xfa, 0x21, 0x3d];
        let data: Vec<u8> = (0..400u32).map(|i| (i * 7 + 3) as u8).collect();
        for align in 0..16 {
            for len in 0..=300 {
                let mut fast = data[align..align + len].to_vec();
                // Mask a sub-slice of a larger buffer so the start is misaligned.
                let mut backing = data.clone();
                let slice = &mut backing[align..align + len];
                apply_mask(slice, key);
                apply_mask_scalar(&mut fast, key);
                assert_eq!(slice, &fast[..], "len {len} align {align}");
            }
        }
    }

    #[test]
    fn offset_continues_the_key_phase() {
        let key = [1, 2, 3, 4];
        let original: Vec<u8> = (0..100).collect();
        let mut whole = original.clone();
        apply_mask(&mut whole, key);
        for split in 0..100 {
            let mut pieces = original.clone();
            let (a, b) = pieces.split_at_mut(split);
            apply_mask_offset(a, key, 0);
            apply_mask_offset(b, key, split);
            assert_eq!(pieces, whole, "split {split}");
        }
    }

    proptest! {
        #[test]
        fn fast_equals_scalar(data in proptest::collection::vec(any::<u8>(), 0..2048), key in any::<[u8; 4]>(), offset in 0usize..8) {
            let mut fast = data.clone();
            let mut slow = data.clone();
            apply_mask_offset(&mut fast, key, offset);
            apply_mask_scalar(&mut slow, rotate(key, offset));
            prop_assert_eq!(fast, slow);
        }

        #[test]
        fn masking_twice_is_identity(data in proptest::collection::vec(any::<u8>(), 0..512), key in any::<[u8; 4]>()) {
            let mut buf = data.clone();
            apply_mask(&mut buf, key);
            apply_mask(&mut buf, key);
            prop_assert_eq!(buf, data);
        }
    }
}
