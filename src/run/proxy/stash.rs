//! Per-thread stashes of the buffers every request takes and gives back: the heads molt
//! writes (the request to the worker, the response to the client), a message's header
//! lines, and a client connection's read buffer.
//!
//! A proxied request took eleven allocations, six of them for such buffers (a fresh read
//! buffer's first split allocates the count its halves share), each freed within the
//! request. A buffer given back here is taken by the next request on the same thread
//! instead (docs/benchmarks.md, "Buffers kept per thread"). Each stash keeps at most
//! [`KEPT`] buffers, each with room for a head of the usual size and no more, so that
//! what a thread keeps is bounded whatever the load: an idle connection still holds no
//! buffer at all.

use std::cell::RefCell;
use std::thread::LocalKey;

use bytes::BytesMut;

/// Buffers kept of each kind, per thread: more than a thread's requests in the same few
/// microseconds between giving one back and taking the next.
const KEPT: usize = 16;

/// A written head is kept if its capacity is at most this: a response head with its
/// cookies fits.
const HEAD_KEPT: usize = 8 * 1024;

/// A message's lines are kept if there is room for at most this many.
const LINES_KEPT: usize = 64;

/// A read buffer is kept if its room is at most this; one grown for a larger head goes
/// once it is reclaimed whole (the next time it is given back). A buffer still shared with
/// a head that had it grown holds that allocation until the head goes too, so what a
/// stash holds is at most [`KEPT`] times the largest head molt reads.
const READ_KEPT: usize = 4 * 1024;

thread_local! {
    static HEADS: RefCell<Vec<Vec<u8>>> = const { RefCell::new(Vec::new()) };
    static READS: RefCell<Vec<BytesMut>> = const { RefCell::new(Vec::new()) };
}

/// A stash of one kind of buffer.
pub(crate) type Stash<T> = LocalKey<RefCell<Vec<T>>>;

/// A buffer from `stash`, if it holds one. Never fails: a thread whose stash is gone
/// (it is exiting) gets none.
fn take<T: 'static>(stash: &'static Stash<T>) -> Option<T> {
    stash
        .try_with(|kept| kept.borrow_mut().pop())
        .ok()
        .flatten()
}

/// Gives `buffer`, emptied by the caller, to `stash`, or drops it when the stash is full.
fn give<T: 'static>(stash: &'static Stash<T>, buffer: T) {
    let mut buffer = Some(buffer);
    let _ = stash.try_with(|kept| {
        let mut kept = kept.borrow_mut();
        if kept.len() < KEPT {
            kept.extend(buffer.take());
        }
    });
    // A buffer not kept is dropped here, outside the stash's borrow.
    drop(buffer);
}

/// An empty vector from `stash` (or a new one) with room for `len`.
fn vec<T: 'static>(stash: &'static Stash<Vec<T>>, len: usize) -> Vec<T> {
    let mut vec = take(stash).unwrap_or_default();
    vec.reserve(len);
    vec
}

/// Empties `vec`, dropping what it holds, and gives it to `stash` if it has room for at
/// most `most`.
fn give_vec<T: 'static>(stash: &'static Stash<Vec<T>>, mut vec: Vec<T>, most: usize) {
    if vec.capacity() > 0 && vec.capacity() <= most {
        vec.clear();
        give(stash, vec);
    }
}

/// An empty buffer for a head of about `len` bytes.
pub(crate) fn head(len: usize) -> Vec<u8> {
    vec(&HEADS, len)
}

/// Gives back a head once written.
pub(crate) fn give_head(head: Vec<u8>) {
    give_vec(&HEADS, head, HEAD_KEPT);
}

/// An empty vector of lines with room for `len`.
pub(crate) fn lines<T: 'static>(stash: &'static Stash<Vec<T>>, len: usize) -> Vec<T> {
    vec(stash, len)
}

/// Gives back a message's lines, dropping what they hold.
pub(crate) fn give_lines<T: 'static>(stash: &'static Stash<Vec<T>>, lines: Vec<T>) {
    give_vec(stash, lines, LINES_KEPT);
}

/// An empty read buffer, given back by an earlier connection if there is one.
pub(crate) fn read_buffer() -> BytesMut {
    take(&READS).unwrap_or_default()
}

/// Gives back an empty read buffer if it has room for `room` bytes without allocating:
/// one that a request's head or body piece still shares, with less room than that left,
/// is dropped, and its memory goes with the last of them.
pub(crate) fn give_read(mut buf: BytesMut, room: usize) {
    debug_assert!(
        buf.is_empty(),
        "a read buffer given back holds nothing unread"
    );
    // A buffer this connection alone holds is reclaimed whole, in place.
    if buf.try_reclaim(room) && buf.capacity() <= READ_KEPT {
        give(&READS, buf);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_head_given_back_is_taken_again_empty() {
        let mut first = head(100);
        first.extend_from_slice(b"HTTP/1.1 200 OK\r\n");
        let at = first.as_ptr();
        give_head(first);
        let again = head(50);
        assert_eq!(again.as_ptr(), at, "the same allocation");
        assert!(again.is_empty());
        assert!(again.capacity() >= 100);
    }

    #[test]
    fn a_large_head_is_not_kept() {
        let big = Vec::<u8>::with_capacity(HEAD_KEPT + 1);
        let at = big.as_ptr();
        give_head(big);
        assert_ne!(take(&HEADS).map(|h| h.as_ptr()), Some(at));
    }

    #[test]
    fn a_stash_keeps_a_bounded_number() {
        while take(&HEADS).is_some() {}
        for _ in 0..KEPT + 5 {
            give_head(Vec::with_capacity(64));
        }
        let mut kept = 0;
        while take(&HEADS).is_some() {
            kept += 1;
        }
        assert_eq!(kept, KEPT);
    }

    #[test]
    fn a_read_buffer_still_shared_is_not_kept() {
        while take(&READS).is_some() {}
        let mut buf = BytesMut::with_capacity(2048);
        buf.extend_from_slice(b"GET / HTTP/1.1\r\n\r\n");
        let head = buf.split_to(18).freeze();
        give_read(buf, 2048);
        assert!(take(&READS).is_none(), "the head still holds its bytes");
        drop(head);

        let mut buf = BytesMut::with_capacity(2048);
        buf.extend_from_slice(b"GET / HTTP/1.1\r\n\r\n");
        let at = buf.as_ptr();
        drop(buf.split_to(18).freeze());
        give_read(buf, 2048);
        let again = read_buffer();
        assert_eq!(again.as_ptr(), at, "reclaimed in place, from its start");
        assert!(again.capacity() >= 2048);
    }
}
