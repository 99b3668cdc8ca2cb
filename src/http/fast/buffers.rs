//! A worker's spare connection buffers. When the worker holds many connections, a fast-path
//! connection that waits for its next request with nothing buffered gives its read and write
//! buffers back here and takes them again when the request arrives, so an idle keep-alive
//! connection holds no buffer (nginx frees them likewise) and the same few buffers go round
//! the busy ones. With fewer connections they keep their buffers: a trip through the spares
//! costs a few per cent of a small request's instructions, and saves nothing worth it.
//! One set per thread: a worker has one.

use std::cell::{Cell, RefCell};

use bytes::BytesMut;

/// Spare buffers kept of each kind; more are freed.
const MAX_SPARE: usize = 64;
/// Buffers larger than this (grown for a large head or many pipelined answers) are freed,
/// not kept.
const MAX_KEPT: usize = 64 * 1024;

struct Spare {
    reads: Vec<BytesMut>,
    writes: Vec<Vec<u8>>,
}

thread_local! {
    /// Fast-path connections open on this thread.
    static OPEN: Cell<usize> = const { Cell::new(0) };
    static SPARE: RefCell<Spare> = const {
        RefCell::new(Spare {
            reads: Vec::new(),
            writes: Vec::new(),
        })
    };
}

/// Counts a connection opened.
pub(super) fn opened() {
    OPEN.set(OPEN.get() + 1);
}

/// Counts a connection closed.
pub(super) fn closed() {
    OPEN.set(OPEN.get() - 1);
}

/// Makes this thread count `n` more connections (or fewer), for tests of a crowded worker.
#[cfg(test)]
pub(super) fn pretend_open(n: isize) {
    OPEN.set(OPEN.get().wrapping_add_signed(n));
}

/// Whether waiting connections give their buffers back: the thread holds many.
pub(super) fn crowded() -> bool {
    OPEN.get() > super::CROWDED
}

/// A read and a write buffer: spare ones, or empty ones that allocate when first used.
pub(super) fn take() -> (BytesMut, Vec<u8>) {
    SPARE.with_borrow_mut(|s| {
        (
            s.reads.pop().unwrap_or_default(),
            s.writes.pop().unwrap_or_default(),
        )
    })
}

/// Keeps `read` and `write` (emptied) for other connections, or frees them.
pub(super) fn give(mut read: BytesMut, mut write: Vec<u8>) {
    SPARE.with_borrow_mut(|s| {
        if (1..=MAX_KEPT).contains(&read.capacity()) && s.reads.len() < MAX_SPARE {
            read.clear();
            s.reads.push(read);
        }
        if (1..=MAX_KEPT).contains(&write.capacity()) && s.writes.len() < MAX_SPARE {
            write.clear();
            s.writes.push(write);
        }
    });
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn buffers_go_round_emptied_and_large_or_surplus_ones_are_freed() {
        let (r, mut w) = take();
        w.extend_from_slice(b"answer");
        let cap = w.capacity();
        give(r, w);
        let (_, again) = take();
        assert!(again.is_empty());
        assert_eq!(again.capacity(), cap);
        give(BytesMut::new(), Vec::with_capacity(MAX_KEPT + 1));
        assert_eq!(take().1.capacity(), 0, "a large buffer is not kept");
        for _ in 0..MAX_SPARE + 10 {
            give(BytesMut::with_capacity(16), Vec::new());
        }
        let kept = std::iter::from_fn(|| {
            let (b, _) = take();
            (b.capacity() > 0).then_some(b)
        })
        .count();
        assert_eq!(kept, MAX_SPARE);
    }
}
