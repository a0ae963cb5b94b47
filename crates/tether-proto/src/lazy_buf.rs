//! A byte buffer that costs one pointer while it holds nothing.
//!
//! A connection has a few buffers (what arrived, a fragmented message in
//! progress, what waits to be sent) that are empty most of its life: an
//! idle connection holds all of them. As `BytesMut` each costs 32 bytes
//! inline even when released; boxed, 8. The box is made when bytes first
//! come and given back by [`LazyBuf::release_if_empty`] (the I/O layer
//! calls the connection's `shrink_if_idle` once it went quiet), so a busy
//! connection does not allocate it per message.

use bytes::BytesMut;

/// A `BytesMut` made on first use (see the module docs).
#[derive(Debug, Default)]
pub(crate) struct LazyBuf(Option<Box<BytesMut>>);

impl LazyBuf {
    /// No buffer.
    pub(crate) const fn new() -> Self {
        LazyBuf(None)
    }

    /// The bytes held (none without a buffer).
    #[inline]
    pub(crate) fn as_slice(&self) -> &[u8] {
        self.0.as_deref().map_or(&[], |b| &b[..])
    }

    #[inline]
    pub(crate) fn len(&self) -> usize {
        self.0.as_ref().map_or(0, |b| b.len())
    }

    #[inline]
    pub(crate) fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The buffer, made if there is none.
    #[inline]
    pub(crate) fn get_mut(&mut self) -> &mut BytesMut {
        self.0.get_or_insert_with(Box::default)
    }

    /// Hold `bytes` (in place of what is held).
    #[inline]
    pub(crate) fn set(&mut self, bytes: BytesMut) {
        match &mut self.0 {
            Some(b) => **b = bytes,
            None => self.0 = Some(Box::new(bytes)),
        }
    }

    /// Take what is held; the (empty) buffer stays for the next bytes.
    #[inline]
    pub(crate) fn take(&mut self) -> BytesMut {
        self.0.as_deref_mut().map(std::mem::take).unwrap_or_default()
    }

    /// Give the buffer and its memory back if it holds no bytes.
    pub(crate) fn release_if_empty(&mut self) {
        if self.is_empty() {
            self.0 = None;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_pointer_and_no_heap_until_used() {
        assert_eq!(std::mem::size_of::<LazyBuf>(), std::mem::size_of::<usize>());
        let mut b = LazyBuf::new();
        assert!(b.is_empty() && b.0.is_none());
        b.get_mut().extend_from_slice(b"abc");
        assert_eq!(b.as_slice(), b"abc");
        b.release_if_empty();
        assert_eq!(b.len(), 3, "bytes are kept");
        assert_eq!(&b.take()[..], b"abc");
        assert!(b.0.is_some(), "the box stays after a take");
        b.release_if_empty();
        assert!(b.0.is_none());
        b.set(BytesMut::from(&b"xy"[..]));
        assert_eq!(b.as_slice(), b"xy");
    }
}
