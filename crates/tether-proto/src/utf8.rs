//! UTF-8 validation for text messages (RFC 6455 §8.1), incremental across
//! fragments and failing at the first byte that can never be valid.

/// Validate a complete text payload (the fast path for single-frame messages).
#[inline]
pub fn is_valid(bytes: &[u8]) -> bool {
    simdutf8::basic::from_utf8(bytes).is_ok()
}

/// Incremental validator: feed pieces in order; an error is reported as soon
/// as the bytes seen so far cannot be the prefix of valid UTF-8.
#[derive(Clone, Debug, Default)]
pub struct Utf8Validator {
    partial: [u8; 4],
    partial_len: u8,
}

/// The input is not valid UTF-8.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct InvalidUtf8;

impl Utf8Validator {
    /// A validator at the start of a message.
    pub fn new() -> Self {
        Self::default()
    }

    /// Feed the next piece of the message.
    pub fn feed(&mut self, mut data: &[u8]) -> Result<(), InvalidUtf8> {
        if self.partial_len > 0 {
            let have = self.partial_len as usize;
            let width = char_width(self.partial[0]);
            let needed = width - have;
            let take = needed.min(data.len());
            self.partial[have..have + take].copy_from_slice(&data[..take]);
            let filled = have + take;
            match std::str::from_utf8(&self.partial[..filled]) {
                Ok(_) => self.partial_len = 0,
                Err(e) if e.error_len().is_none() => {
                    // Still a valid prefix of a character; wait for more.
                    self.partial_len = filled as u8;
                    return Ok(());
                }
                Err(_) => return Err(InvalidUtf8),
            }
            data = &data[take..];
        }
        match simdutf8::compat::from_utf8(data) {
            Ok(_) => Ok(()),
            Err(e) => match e.error_len() {
                Some(_) => Err(InvalidUtf8),
                None => {
                    // An incomplete (but so far valid) character at the end.
                    let tail = &data[e.valid_up_to()..];
                    self.partial[..tail.len()].copy_from_slice(tail);
                    self.partial_len = tail.len() as u8;
                    Ok(())
                }
            },
        }
    }

    /// Whether the input so far ends on a character boundary: the message may
    /// end here.
    pub fn is_complete(&self) -> bool {
        self.partial_len == 0
    }

    /// Forget everything (start a new message).
    pub fn reset(&mut self) {
        self.partial_len = 0;
    }
}

fn char_width(lead: u8) -> usize {
    match lead {
        0xC2..=0xDF => 2,
        0xE0..=0xEF => 3,
        _ => 4,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn feed_split(data: &[u8], splits: &[usize]) -> Result<bool, InvalidUtf8> {
        let mut v = Utf8Validator::new();
        let mut start = 0;
        for &s in splits {
            let s = s.clamp(start, data.len());
            v.feed(&data[start..s])?;
            start = s;
        }
        v.feed(&data[start..])?;
        Ok(v.is_complete())
    }

    #[test]
    fn fails_fast_on_first_invalid_byte() {
        // Autobahn 6.4.1: the first fragment is valid, the second contains
        // 0xF4 0x90 (beyond U+10FFFF) and must fail immediately.
        let mut v = Utf8Validator::new();
        v.feed("κόσμε".as_bytes()).unwrap();
        assert_eq!(v.feed(&[0xf4, 0x90, 0x80, 0x80]), Err(InvalidUtf8));
        // A lone 0xF4 is a valid prefix, 0x90 after it is not.
        let mut v = Utf8Validator::new();
        v.feed(&[0xf4]).unwrap();
        assert_eq!(v.feed(&[0x90]), Err(InvalidUtf8));
        // Surrogates are rejected at the second byte.
        let mut v = Utf8Validator::new();
        assert_eq!(v.feed(&[0xed, 0xa0]), Err(InvalidUtf8));
    }

    #[test]
    fn incomplete_tail_is_not_complete() {
        let mut v = Utf8Validator::new();
        v.feed(&[0xe2, 0x82]).unwrap();
        assert!(!v.is_complete());
        v.feed(&[0xac]).unwrap();
        assert!(v.is_complete());
    }

    proptest! {
        #[test]
        fn split_anywhere_matches_std(data in proptest::collection::vec(any::<u8>(), 0..64), splits in proptest::collection::vec(0usize..64, 0..6)) {
            let mut splits = splits;
            splits.sort();
            let expected = std::str::from_utf8(&data).is_ok();
            let got = matches!(feed_split(&data, &splits), Ok(true));
            prop_assert_eq!(got, expected);
        }

        #[test]
        fn valid_strings_split_anywhere(s in ".{0,40}", splits in proptest::collection::vec(0usize..200, 0..6)) {
            let mut splits = splits;
            splits.sort();
            prop_assert_eq!(feed_split(s.as_bytes(), &splits), Ok(true));
        }
    }
}
