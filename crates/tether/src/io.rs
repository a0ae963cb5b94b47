//! The two I/O primitives shared by [`WebSocket`](crate::WebSocket) and the
//! split halves: read into a [`Receiver`], drain a [`Sender`].

use bytes::BytesMut;
use std::io::IoSlice;
use std::mem::MaybeUninit;
use std::pin::Pin;
use std::task::{ready, Context, Poll};
use tether_proto::{Receiver, Sender};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

/// Stack buffer used for each read, so an idle socket holds no read buffer.
const READ_CHUNK: usize = 16 * 1024;
/// When the frame being received needs more than this, read into its buffer directly.
const LARGE_READ: usize = 64 * 1024;
/// Most slices handed to one vectored write.
const MAX_IOVECS: usize = 32;

/// Read once into `rx`. Returns the byte count (0 at EOF). When the read
/// would block, idle buffers are released before returning `Pending`.
pub(crate) fn poll_read_into<R: AsyncRead + Unpin>(io: &mut R, rx: &mut Receiver, cx: &mut Context<'_>) -> Poll<std::io::Result<usize>> {
    let needed = rx.bytes_needed().unwrap_or(0);
    if needed > LARGE_READ {
        // A large frame is arriving: read into its buffer, no extra copy.
        // The reservation is capped so a header alone cannot claim memory.
        let buf: &mut BytesMut = rx.read_buffer();
        buf.reserve(needed.min(1 << 20));
        return tokio_util::io::poll_read_buf(Pin::new(io), cx, buf);
    }
    let mut storage = [MaybeUninit::<u8>::uninit(); READ_CHUNK];
    let mut rb = ReadBuf::uninit(&mut storage);
    match Pin::new(io).poll_read(cx, &mut rb) {
        Poll::Ready(Ok(())) => {
            let n = rb.filled().len();
            rx.receive_data(rb.filled());
            Poll::Ready(Ok(n))
        }
        Poll::Ready(Err(e)) => Poll::Ready(Err(e)),
        Poll::Pending => {
            rx.shrink_if_idle();
            Poll::Pending
        }
    }
}

/// Read and throw away until EOF (or an error): after a failed connection,
/// so that closing it does not reset what is still unread.
pub(crate) fn poll_discard_until_eof<R: AsyncRead + Unpin>(io: &mut R, cx: &mut Context<'_>) -> Poll<()> {
    let mut storage = [MaybeUninit::<u8>::uninit(); 4096];
    loop {
        let mut rb = ReadBuf::uninit(&mut storage);
        match ready!(Pin::new(&mut *io).poll_read(cx, &mut rb)) {
            Ok(()) if !rb.filled().is_empty() => continue,
            _ => return Poll::Ready(()),
        }
    }
}

/// Write one batch of what `tx` has queued (a vectored write when there are
/// several buffers).
pub(crate) fn poll_write_some<W: AsyncWrite + Unpin>(io: &mut W, tx: &mut Sender, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
    let mut slices = [IoSlice::new(&[]); MAX_IOVECS];
    let n = tx.data_to_send(&mut slices);
    let written = if n == 1 {
        ready!(Pin::new(&mut *io).poll_write(cx, &slices[0]))?
    } else {
        ready!(Pin::new(&mut *io).poll_write_vectored(cx, &slices[..n]))?
    };
    if written == 0 {
        return Poll::Ready(Err(std::io::ErrorKind::WriteZero.into()));
    }
    tx.consume_sent(written);
    if tx.pending_len() == 0 {
        tx.shrink_if_idle();
    }
    Poll::Ready(Ok(()))
}

/// Write everything `tx` has queued, then flush the stream.
pub(crate) fn poll_drain<W: AsyncWrite + Unpin>(io: &mut W, tx: &mut Sender, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
    while tx.pending_len() > 0 {
        ready!(poll_write_some(io, tx, cx))?;
    }
    Pin::new(io).poll_flush(cx)
}
