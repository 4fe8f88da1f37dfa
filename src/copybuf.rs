//! The splice's copy buffers, kept for reuse on the thread that gave them back.
//!
//! A splice holds a buffer only while bytes move through it and gives it back whenever its source
//! has nothing to read, so that idle visitors hold none (`splice.rs`). On a busy stream that
//! happens after nearly every read: the next read then took a fresh zeroed 64 KiB from the
//! allocator, a `memset` of every byte moved (about 5% of a tunnel process's CPU on a fast link,
//! measured with `perf`). A few spare buffers per runtime thread, reused as they are, remove it;
//! what they cost is bounded: [`SPARES`] buffers per thread, whatever the number of visitors.

use std::cell::RefCell;

/// Bytes per copy buffer. About 64 KiB measured about 35% faster than tokio's 8 KiB default
/// through the full tunnel (ARCHITECTURE.md, "Measured facts the code relies on"). It is yamux's
/// frame size, [`crate::mux::SPLIT_SEND_SIZE`], so that one full read becomes one frame: with a
/// buffer 12 bytes larger than a frame, every full read was sent as a frame and a second frame of
/// 12 bytes, each with its own TLS record and system call.
pub const COPY_BUFFER: usize = crate::mux::SPLIT_SEND_SIZE;

/// Spare buffers kept per thread: enough for the splices one thread runs back to back on a busy
/// tunnel (each visitor has two directions), 256 KiB per runtime thread at most.
pub const SPARES: usize = 4;

thread_local! {
    static SPARE: RefCell<Vec<Box<[u8]>>> = const { RefCell::new(Vec::new()) };
}

/// A copy buffer: a spare one of this thread's if there is one (its old bytes are never read:
/// only what a read fills is), else a new one.
pub fn take() -> Box<[u8]> {
    SPARE
        .try_with(|s| s.borrow_mut().pop())
        .ok()
        .flatten()
        .unwrap_or_else(|| vec![0; COPY_BUFFER].into_boxed_slice())
}

/// Gives `buf` back: kept as a spare of this thread while there are fewer than [`SPARES`],
/// freed otherwise.
pub fn give_back(buf: Box<[u8]>) {
    if buf.len() != COPY_BUFFER {
        return;
    }
    // A thread being torn down has no spares left to keep; the buffer is then simply freed.
    let _ = SPARE.try_with(|s| {
        let mut spares = s.borrow_mut();
        if spares.len() < SPARES {
            spares.push(buf);
        }
    });
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn buffers_are_reused_and_the_spares_stay_bounded() {
        let first = take();
        let at = first.as_ptr();
        give_back(first);
        // The same allocation comes back, as it was.
        let again = take();
        assert_eq!(again.as_ptr(), at);
        give_back(again);
        let many: Vec<_> = (0..SPARES + 3).map(|_| take()).collect();
        for b in many {
            give_back(b);
        }
        assert_eq!(SPARE.with(|s| s.borrow().len()), SPARES);
        // A buffer of another size is never kept.
        give_back(vec![0; 10].into_boxed_slice());
        assert!(SPARE.with(|s| s.borrow().iter().all(|b| b.len() == COPY_BUFFER)));
    }
}
