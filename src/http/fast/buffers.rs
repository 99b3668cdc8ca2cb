//! A worker's spare connection buffers. A fast-path connection that waits for its next
//! request with nothing buffered gives its read and write buffers back here and takes them
//! again when the request arrives, so an idle keep-alive connection holds no buffer (nginx
//! frees them likewise); under load the same few buffers go round the busy connections
//! without a trip through the allocator. One set per thread: a worker has one.

use std::cell::RefCell;

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
    static SPARE: RefCell<Spare> = const {
        RefCell::new(Spare {
            reads: Vec::new(),
            writes: Vec::new(),
        })
    };
}

/// A read buffer: a spare one, or an empty one that allocates on its first reserve.
pub(super) fn take_read() -> BytesMut {
    SPARE.with_borrow_mut(|s| s.reads.pop()).unwrap_or_default()
}

/// A write buffer: a spare one, or an empty one.
pub(super) fn take_write() -> Vec<u8> {
    SPARE
        .with_borrow_mut(|s| s.writes.pop())
        .unwrap_or_default()
}

/// Keeps `buf` (emptied) for another connection, or frees it.
pub(super) fn give_read(mut buf: BytesMut) {
    if buf.capacity() == 0 || buf.capacity() > MAX_KEPT {
        return;
    }
    buf.clear();
    SPARE.with_borrow_mut(|s| {
        if s.reads.len() < MAX_SPARE {
            s.reads.push(buf);
        }
    });
}

/// Keeps `buf` (emptied) for another connection, or frees it.
pub(super) fn give_write(mut buf: Vec<u8>) {
    if buf.capacity() == 0 || buf.capacity() > MAX_KEPT {
        return;
    }
    buf.clear();
    SPARE.with_borrow_mut(|s| {
        if s.writes.len() < MAX_SPARE {
            s.writes.push(buf);
        }
    });
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn buffers_go_round_emptied_and_large_or_surplus_ones_are_freed() {
        let mut w = take_write();
        w.extend_from_slice(b"answer");
        let cap = w.capacity();
        give_write(w);
        let again = take_write();
        assert!(again.is_empty());
        assert_eq!(again.capacity(), cap);
        give_write(Vec::with_capacity(MAX_KEPT + 1));
        assert_eq!(take_write().capacity(), 0, "a large buffer is not kept");
        for _ in 0..MAX_SPARE + 10 {
            give_read(BytesMut::with_capacity(16));
        }
        let kept = std::iter::from_fn(|| {
            let b = take_read();
            (b.capacity() > 0).then_some(b)
        })
        .count();
        assert_eq!(kept, MAX_SPARE);
    }
}
