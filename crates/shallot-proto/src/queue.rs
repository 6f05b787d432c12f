//! A queue of fixed-size cells kept back to back in one buffer.
//!
//! The IO layer writes cells in batches (specs/01 §4.3), so a queue that already holds its
//! cells contiguously can hand the whole batch over by swapping buffers, without a copy or an
//! allocation per cell. Cells are built in place at the tail ([`CellQueue::push_with`]), so a
//! relay that forwards or seals a cell copies it once, into the queue.

/// Cells of one length, oldest first. The bound on their number is the caller's (specs/03
/// §11.4); this type only stores them.
#[derive(Debug)]
pub(crate) struct CellQueue {
    /// Queued cells from `head` on; `buf[..head]` were popped one by one and await compaction.
    buf: Vec<u8>,
    head: usize,
    cell_len: usize,
    /// Cells in the last batch taken: an empty queue reserves that much at its next push, so
    /// a busy circuit allocates once per batch instead of growing by doubling, and an idle
    /// one holds no more than it needs.
    last_batch: usize,
}

impl CellQueue {
    /// An empty queue of `cell_len`-byte cells (`0`: a queue that never holds a cell).
    pub(crate) fn new(cell_len: usize) -> Self {
        Self {
            buf: Vec::new(),
            head: 0,
            cell_len,
            last_batch: 1,
        }
    }

    /// Cells queued.
    pub(crate) fn len(&self) -> usize {
        (self.buf.len() - self.head)
            .checked_div(self.cell_len)
            .unwrap_or(0)
    }

    /// Drops every queued cell.
    pub(crate) fn clear(&mut self) {
        self.buf.clear();
        self.head = 0;
    }

    fn reserve_one(&mut self) {
        if self.head > 0 && self.head >= self.buf.len() / 2 {
            // Popped cells take half the buffer: slide the rest down (amortized O(1)).
            self.buf.drain(..self.head);
            self.head = 0;
        }
        if self.buf.capacity() == 0 {
            self.buf.reserve(self.last_batch.max(1) * self.cell_len);
        }
    }

    /// Appends a cell built by `build` in a zeroed slot of `cell_len` bytes; on `Err` the
    /// slot is removed again and nothing is queued.
    pub(crate) fn push_with<E>(
        &mut self,
        build: impl FnOnce(&mut [u8]) -> Result<(), E>,
    ) -> Result<(), E> {
        self.reserve_one();
        let start = self.buf.len();
        self.buf.resize(start + self.cell_len, 0);
        let r = build(&mut self.buf[start..]);
        if r.is_err() {
            self.buf.truncate(start);
        }
        r
    }

    /// Appends a cell made of `parts` (their lengths must add up to the cell length) and
    /// returns it for in-place work (sealing). `None` if the lengths are wrong.
    pub(crate) fn push_parts(&mut self, parts: &[&[u8]]) -> Option<&mut [u8]> {
        if parts.iter().map(|p| p.len()).sum::<usize>() != self.cell_len || self.cell_len == 0 {
            return None;
        }
        self.reserve_one();
        let start = self.buf.len();
        for p in parts {
            self.buf.extend_from_slice(p);
        }
        Some(&mut self.buf[start..])
    }

    /// Removes the newest cell (undoes a push whose cell could not be finished).
    pub(crate) fn pop_back(&mut self) {
        let end = self.buf.len().saturating_sub(self.cell_len).max(self.head);
        self.buf.truncate(end);
    }

    /// Removes and returns the oldest cell.
    pub(crate) fn pop_front(&mut self) -> Option<Vec<u8>> {
        if self.len() == 0 {
            return None;
        }
        let cell = self.buf[self.head..self.head + self.cell_len].to_vec();
        self.head += self.cell_len;
        if self.head == self.buf.len() {
            self.clear();
        }
        Some(cell)
    }

    /// Moves every queued cell to the end of `out`. When `out` is empty the buffers are
    /// swapped: no copy.
    pub(crate) fn take_into(&mut self, out: &mut Vec<u8>) {
        self.last_batch = self.len();
        if out.is_empty() && self.head == 0 {
            std::mem::swap(out, &mut self.buf);
            // `out`'s old buffer (empty) stays with us; a fresh one is reserved on the next
            // push only if it has no room.
        } else {
            out.extend_from_slice(&self.buf[self.head..]);
        }
        self.clear();
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn cells_come_out_in_order_one_by_one_or_as_a_batch() {
        let mut q = CellQueue::new(4);
        for i in 0..5u8 {
            q.push_with(|c| {
                c.fill(i);
                Ok::<(), ()>(())
            })
            .unwrap();
        }
        assert_eq!(q.len(), 5);
        assert_eq!(q.pop_front(), Some(vec![0; 4]));
        assert_eq!(q.pop_front(), Some(vec![1; 4]));
        let mut out = vec![9];
        q.take_into(&mut out);
        assert_eq!(out, [9, 2, 2, 2, 2, 3, 3, 3, 3, 4, 4, 4, 4]);
        assert_eq!(q.len(), 0);
        assert_eq!(q.pop_front(), None);
    }

    #[test]
    fn an_empty_batch_is_swapped_not_copied() {
        let mut q = CellQueue::new(2);
        q.push_parts(&[&[1], &[2]]).unwrap();
        let mut out = Vec::new();
        q.take_into(&mut out);
        assert_eq!(out, [1, 2]);
        assert_eq!(q.len(), 0);
    }

    #[test]
    fn a_failed_build_queues_nothing() {
        let mut q = CellQueue::new(3);
        assert!(q.push_with(|_| Err::<(), ()>(())).is_err());
        assert_eq!(q.len(), 0);
        assert!(q.push_parts(&[&[1, 2]]).is_none());
        q.push_parts(&[&[1, 2], &[3]]).unwrap();
        q.pop_back();
        assert_eq!(q.len(), 0);
    }

    #[test]
    fn popping_and_pushing_forever_stays_compact() {
        let mut q = CellQueue::new(8);
        for _ in 0..10_000 {
            q.push_parts(&[&[7; 8]]).unwrap();
            q.push_parts(&[&[7; 8]]).unwrap();
            assert_eq!(q.pop_front(), Some(vec![7; 8]));
        }
        assert_eq!(q.len(), 10_000);
        while q.pop_front().is_some() {}
        assert!(q.buf.is_empty());
    }

    #[test]
    fn a_zero_length_queue_holds_nothing() {
        let mut q = CellQueue::new(0);
        assert_eq!(q.len(), 0);
        assert!(q.push_parts(&[]).is_none());
        assert_eq!(q.pop_front(), None);
    }
}
