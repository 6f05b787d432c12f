//! The stream table both ends of a circuit keep: the client for its streams, an exit for its
//! connections. It holds the open streams (at most [`MAX_STREAMS_PER_CIRCUIT`], specs/03
//! §11.6), the ids this end closed (a bounded record, specs/03 §7.2), and the flow-control
//! bookkeeping that outlives one call: WINDOW_UPDATEs deferred while the send queue was full,
//! and the writers cut short by the queue bound, woken once it drains (specs/03 §11.3–§11.4).

use std::collections::{BTreeMap, VecDeque};

use crate::err::ProtoError;
use crate::flow::{HALF_CLOSED_IDS, MAX_STREAMS_PER_CIRCUIT, RecvWindow, SendWindow};

/// The credit state of one stream end (specs/03 §11).
#[derive(Debug)]
pub(crate) struct Flow {
    /// What this end may still send.
    pub(crate) send: SendWindow,
    /// What this end granted and how much of it was consumed.
    pub(crate) recv: RecvWindow,
    /// A write was cut short (by credit or the queue); the writer waits to be woken.
    pub(crate) write_blocked: bool,
}

impl Flow {
    pub(crate) fn new() -> Self {
        Self {
            send: SendWindow::new(),
            recv: RecvWindow::new(),
            write_blocked: false,
        }
    }
}

/// What the table needs to know of a stream.
pub(crate) trait FlowStream {
    /// Its credit state.
    fn flow(&self) -> &Flow;
    /// Its credit state, to change.
    fn flow_mut(&mut self) -> &mut Flow;
    /// Whether it still takes WINDOW_UPDATEs (the peer has not ended it).
    fn takes_updates(&self) -> bool;
    /// Whether a blocked writer may be woken now (the stream carries data).
    fn writable(&self) -> bool;
}

/// One end's streams on a circuit.
#[derive(Debug)]
pub(crate) struct StreamTable<S> {
    open: BTreeMap<u16, S>,
    /// Ids this end closed (END or RESOLVED sent), most recent last.
    closed: VecDeque<u16>,
    /// Some WINDOW_UPDATE could not be queued and waits for room.
    updates_deferred: bool,
    /// Some write was cut short by the send queue's bound.
    queue_blocked: bool,
}

impl<S: FlowStream> StreamTable<S> {
    pub(crate) fn new() -> Self {
        Self {
            open: BTreeMap::new(),
            closed: VecDeque::new(),
            updates_deferred: false,
            queue_blocked: false,
        }
    }

    pub(crate) fn len(&self) -> usize {
        self.open.len()
    }

    pub(crate) fn is_full(&self) -> bool {
        self.open.len() >= MAX_STREAMS_PER_CIRCUIT
    }

    pub(crate) fn get(&self, id: u16) -> Option<&S> {
        self.open.get(&id)
    }

    pub(crate) fn get_mut(&mut self, id: u16) -> Option<&mut S> {
        self.open.get_mut(&id)
    }

    pub(crate) fn values(&self) -> impl Iterator<Item = &S> {
        self.open.values()
    }

    /// Adds a stream; refused past [`MAX_STREAMS_PER_CIRCUIT`].
    pub(crate) fn insert(&mut self, id: u16, stream: S) -> Result<(), ProtoError> {
        if self.is_full() {
            return Err(ProtoError::TooManyStreams);
        }
        self.open.insert(id, stream);
        Ok(())
    }

    /// Forgets a stream the peer ended (nothing to remember: the peer will not use the id).
    pub(crate) fn remove(&mut self, id: u16) -> Option<S> {
        self.open.remove(&id)
    }

    /// Forgets a stream this end closed, and remembers the id (specs/03 §7.2).
    pub(crate) fn close(&mut self, id: u16) -> Option<S> {
        let s = self.open.remove(&id);
        self.remember_closed(id);
        s
    }

    /// Remembers that this end closed `id` (a stream refused at once, or just closed), in a
    /// record of at most [`HALF_CLOSED_IDS`] ids.
    pub(crate) fn remember_closed(&mut self, id: u16) {
        if self.closed.len() >= HALF_CLOSED_IDS {
            self.closed.pop_front();
        }
        self.closed.push_back(id);
    }

    /// specs/03 §7.1: a new stream on an id that is open or that this end closed is a
    /// violation.
    pub(crate) fn check_new(&self, id: u16) -> Result<(), ProtoError> {
        if self.open.contains_key(&id) || self.closed.contains(&id) {
            return Err(ProtoError::StreamIdReuse(id));
        }
        Ok(())
    }

    /// Takes every stream out (the circuit is gone); returns their ids.
    pub(crate) fn clear(&mut self) -> Vec<u16> {
        self.updates_deferred = false;
        self.queue_blocked = false;
        std::mem::take(&mut self.open).into_keys().collect()
    }

    /// Before queuing a WINDOW_UPDATE: with the send queue full, remembers that one is due and
    /// says to wait (the next [`take_deferred_updates`](Self::take_deferred_updates) sends it).
    pub(crate) fn room_for_update(&mut self, queue_full: bool) -> Result<(), ProtoError> {
        if queue_full {
            self.updates_deferred = true;
            return Err(ProtoError::WouldBlock);
        }
        Ok(())
    }

    /// Room came back in the send queue: the streams whose deferred WINDOW_UPDATE is due.
    pub(crate) fn take_deferred_updates(&mut self) -> Vec<u16> {
        if !std::mem::take(&mut self.updates_deferred) {
            return Vec::new();
        }
        self.open
            .iter()
            .filter(|(_, s)| s.takes_updates() && s.flow().recv.update_due())
            .map(|(id, _)| *id)
            .collect()
    }

    /// A write was cut short by the send queue's bound (not only by credit).
    pub(crate) fn note_queue_blocked(&mut self) {
        self.queue_blocked = true;
    }

    /// The send queue holds `queued` cells of at most `bound`: once it drained to half, the
    /// writers that were cut short and have credit are unblocked; their ids are returned so
    /// that each gets a "writable" signal.
    pub(crate) fn take_writable(&mut self, queued: usize, bound: usize) -> Vec<u16> {
        if !self.queue_blocked || queued > bound / 2 {
            return Vec::new();
        }
        self.queue_blocked = false;
        let mut woken = Vec::new();
        for (id, s) in &mut self.open {
            if s.writable() && s.flow().write_blocked && s.flow().send.credit() > 0 {
                s.flow_mut().write_blocked = false;
                woken.push(*id);
            }
        }
        woken
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::flow::{STREAM_WINDOW_INITIAL, WINDOW_UPDATE_THRESHOLD};

    // The test below grants a whole update's worth of bytes within the first window.
    const _: () = assert!(STREAM_WINDOW_INITIAL >= WINDOW_UPDATE_THRESHOLD);

    #[derive(Debug)]
    struct Stub {
        flow: Flow,
        ended: bool,
        open: bool,
    }

    impl Stub {
        fn new() -> Self {
            Self {
                flow: Flow::new(),
                ended: false,
                open: true,
            }
        }
    }

    impl FlowStream for Stub {
        fn flow(&self) -> &Flow {
            &self.flow
        }
        fn flow_mut(&mut self) -> &mut Flow {
            &mut self.flow
        }
        fn takes_updates(&self) -> bool {
            !self.ended
        }
        fn writable(&self) -> bool {
            self.open
        }
    }

    #[test]
    fn the_table_holds_at_most_the_stream_bound() {
        let mut t = StreamTable::new();
        for id in 0..MAX_STREAMS_PER_CIRCUIT as u16 {
            t.insert(id, Stub::new()).expect("room");
        }
        assert!(t.is_full());
        assert!(matches!(
            t.insert(9999, Stub::new()),
            Err(ProtoError::TooManyStreams)
        ));
    }

    #[test]
    fn closed_ids_are_refused_for_new_streams_within_a_bounded_record() {
        let mut t: StreamTable<Stub> = StreamTable::new();
        t.insert(1, Stub::new()).expect("room");
        assert!(matches!(t.check_new(1), Err(ProtoError::StreamIdReuse(1))));
        t.close(1);
        assert!(matches!(t.check_new(1), Err(ProtoError::StreamIdReuse(1))));
        for id in 100..100 + HALF_CLOSED_IDS as u16 {
            t.remember_closed(id);
        }
        assert!(t.check_new(1).is_ok(), "the oldest closed id was forgotten");
        // A stream the peer ended is not remembered.
        t.insert(2, Stub::new()).expect("room");
        t.remove(2);
        assert!(t.check_new(2).is_ok());
    }

    #[test]
    fn a_deferred_update_is_offered_again_once_only_for_streams_that_take_it() {
        let mut t = StreamTable::new();
        for id in [1, 2, 3] {
            let mut s = Stub::new();
            s.flow
                .recv
                .receive(id, WINDOW_UPDATE_THRESHOLD as usize)
                .expect("credit");
            s.flow.recv.consumed(WINDOW_UPDATE_THRESHOLD as usize);
            t.insert(id, s).expect("room");
        }
        t.get_mut(3).expect("stream").ended = true;
        assert!(t.take_deferred_updates().is_empty(), "nothing was deferred");
        assert!(matches!(
            t.room_for_update(true),
            Err(ProtoError::WouldBlock)
        ));
        assert_eq!(t.take_deferred_updates(), vec![1, 2]);
        assert!(t.take_deferred_updates().is_empty(), "once");
        assert!(t.room_for_update(false).is_ok());
        assert!(t.take_deferred_updates().is_empty());
    }

    #[test]
    fn blocked_writers_with_credit_are_woken_when_the_queue_drains_to_half() {
        let mut t = StreamTable::new();
        for id in [1, 2, 3] {
            let mut s = Stub::new();
            s.flow.write_blocked = true;
            t.insert(id, s).expect("room");
        }
        t.get_mut(2)
            .expect("stream")
            .flow
            .send
            .spend(STREAM_WINDOW_INITIAL as usize);
        t.get_mut(3).expect("stream").open = false;
        t.note_queue_blocked();
        assert!(t.take_writable(33, 64).is_empty(), "not drained enough");
        assert_eq!(t.take_writable(32, 64), vec![1], "no credit, not open");
        assert!(t.take_writable(0, 64).is_empty(), "woken once");
        assert!(t.get(2).expect("stream").flow.write_blocked);
    }
}
