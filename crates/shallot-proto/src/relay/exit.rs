//! The exit's streams: BEGIN and RESOLVE admitted or refused, DATA both ways within the
//! stream's credit, END, and the connection's events from the IO layer (specs/03 §4.1–§4.5,
//! §4.9–§4.10, §11).

use std::net::IpAddr;
use std::time::Instant;

use shallot_cell::{
    EndReason, Host, RelayFrame, RelayMsg, ResolvedAnswer, StreamId, encode_data_into,
    link_command, max_data_len,
};

use super::{RelayAction, RelayCircuit};
use crate::err::ProtoError;
use crate::flow::{CONTROL_RESERVE_CELLS, OPTIMISTIC_DATA_MAX, RELAY_QUEUE_CELLS};
use crate::streams::{Flow, FlowStream};

#[derive(Debug, PartialEq, Eq)]
pub(super) enum ExitState {
    Connecting,
    Resolving,
    Open,
}

#[derive(Debug)]
pub(super) struct ExitStream {
    state: ExitState,
    flow: Flow,
    /// Optimistic data held until CONNECTED (specs/03 §11.5).
    optimistic: Vec<u8>,
    /// Bytes handed to the IO layer in `ExitData` and not yet reported written.
    outstanding: usize,
}

impl ExitStream {
    fn new(state: ExitState) -> Self {
        Self {
            state,
            flow: Flow::new(),
            optimistic: Vec::new(),
            outstanding: 0,
        }
    }
}

impl FlowStream for ExitStream {
    fn flow(&self) -> &Flow {
        &self.flow
    }
    fn flow_mut(&mut self) -> &mut Flow {
        &mut self.flow
    }
    fn takes_updates(&self) -> bool {
        true
    }
    fn writable(&self) -> bool {
        self.state == ExitState::Open
    }
}

impl RelayCircuit {
    /// Opens an exit stream for BEGIN or RESOLVE on `stream` in `state`; `Ok(false)` when it was
    /// refused with END (a non-exit, specs/03 §8; too many streams, specs/03 §11.6).
    fn admit_exit_stream(
        &mut self,
        stream: StreamId,
        state: ExitState,
    ) -> Result<bool, ProtoError> {
        let id = stream.0;
        self.streams.check_new(id)?;
        let refusal = if !self.config.exit {
            Some(EndReason::ExitPolicy)
        } else if self.streams.is_full() {
            Some(EndReason::ResourceLimit)
        } else {
            None
        };
        if let Some(reason) = refusal {
            self.streams.remember_closed(id);
            self.send_own(stream, RelayMsg::End(reason))?;
            return Ok(false);
        }
        self.streams.insert(id, ExitStream::new(state))?;
        Ok(true)
    }

    pub(super) fn handle_begin(
        &mut self,
        stream: StreamId,
        host: Host,
        port: u16,
    ) -> Result<(), ProtoError> {
        if self.admit_exit_stream(stream, ExitState::Connecting)? {
            self.actions
                .push_back(RelayAction::Connect { stream, host, port });
        }
        Ok(())
    }

    pub(super) fn handle_resolve(
        &mut self,
        stream: StreamId,
        host: Host,
    ) -> Result<(), ProtoError> {
        if self.admit_exit_stream(stream, ExitState::Resolving)? {
            self.actions
                .push_back(RelayAction::Resolve { stream, host });
        }
        Ok(())
    }

    // specs/03 §7.2: a stream message for an id we do not hold open is dropped silently (in
    // each of the three handlers below).

    pub(super) fn handle_data(
        &mut self,
        stream: StreamId,
        data: Vec<u8>,
    ) -> Result<(), ProtoError> {
        let id = stream.0;
        let Some(s) = self.streams.get_mut(id) else {
            return Ok(());
        };
        s.flow.recv.receive(id, data.len())?;
        match s.state {
            ExitState::Connecting => {
                // specs/03 §11.5: bounded optimistic data.
                if s.optimistic.len() + data.len() > OPTIMISTIC_DATA_MAX {
                    return Err(ProtoError::OptimisticDataExceeded(id));
                }
                s.optimistic.extend_from_slice(&data);
            }
            ExitState::Open => {
                s.outstanding += data.len();
                self.actions
                    .push_back(RelayAction::ExitData { stream, data });
            }
            ExitState::Resolving => {
                return Err(ProtoError::Unexpected {
                    what: "DATA on a RESOLVE stream",
                });
            }
        }
        Ok(())
    }

    pub(super) fn handle_end(&mut self, stream: StreamId) -> Result<(), ProtoError> {
        if self.streams.remove(stream.0).is_some() {
            self.actions.push_back(RelayAction::CloseStream { stream });
        }
        Ok(())
    }

    pub(super) fn handle_window_update(
        &mut self,
        stream: StreamId,
        inc: u32,
    ) -> Result<(), ProtoError> {
        let id = stream.0;
        let Some(s) = self.streams.get_mut(id) else {
            return Ok(());
        };
        s.flow.send.grant(id, inc)?;
        if s.flow.write_blocked && s.state == ExitState::Open {
            s.flow.write_blocked = false;
            self.actions.push_back(RelayAction::ExitWritable { stream });
        }
        Ok(())
    }

    /// Exit: the stream's connection is up to `addr`; sends CONNECTED and hands over any
    /// optimistic data.
    pub fn handle_exit_connected(
        &mut self,
        stream: StreamId,
        addr: IpAddr,
        ttl: u32,
        now: Instant,
    ) -> Result<(), ProtoError> {
        self.saw(now);
        if self.closed.is_some() {
            return Ok(());
        }
        let s = self.exit_stream(stream, ExitState::Connecting)?;
        s.state = ExitState::Open;
        let optimistic = std::mem::take(&mut s.optimistic);
        if !optimistic.is_empty() {
            s.outstanding += optimistic.len();
        }
        let host = match addr {
            IpAddr::V4(a) => Host::V4(a),
            IpAddr::V6(a) => Host::V6(a),
        };
        let r = self.send_own(stream, RelayMsg::Connected { addr: host, ttl });
        if !optimistic.is_empty() {
            self.actions.push_back(RelayAction::ExitData {
                stream,
                data: optimistic,
            });
        }
        self.fail_on_err(r)
    }

    /// Exit: connecting failed; sends END(`reason`) and forgets the stream.
    pub fn handle_exit_connect_failed(
        &mut self,
        stream: StreamId,
        reason: EndReason,
        now: Instant,
    ) -> Result<(), ProtoError> {
        self.saw(now);
        if self.closed.is_some() {
            return Ok(());
        }
        self.exit_stream(stream, ExitState::Connecting)?;
        self.end_exit_stream(stream, reason)
    }

    /// Exit: bytes read from the stream's connection. Returns how many were taken, bounded by
    /// the client's credit for the stream and by the backward queue (specs/03 §11.4); keep the
    /// rest and offer it again after [`RelayAction::ExitWritable`].
    pub fn handle_exit_data(
        &mut self,
        stream: StreamId,
        data: &[u8],
        now: Instant,
    ) -> Result<usize, ProtoError> {
        self.saw(now);
        self.active(now);
        if self.closed.is_some() {
            return Err(ProtoError::CircuitClosed);
        }
        let room = RELAY_QUEUE_CELLS.saturating_sub(self.to_prev.len());
        let chunk = max_data_len(self.cell_len);
        let s = self.exit_stream(stream, ExitState::Open)?;
        let by_queue = room.saturating_mul(chunk);
        let take = data.len().min(s.flow.send.credit()).min(by_queue);
        if take < data.len() {
            s.flow.write_blocked = true;
        }
        s.flow.send.spend(take);
        if by_queue < data.len() {
            self.streams.note_queue_blocked();
        }
        let l = self.cell_len;
        let layer = &mut self.layer;
        for piece in data[..take].chunks(chunk.max(1)) {
            // Built and sealed in place in the queue: no allocation per cell.
            let r = self.to_prev.push_with(|cell| {
                cell[0] = link_command::RELAY;
                encode_data_into(stream, piece, &mut cell[2..l - 16]).map_err(|source| {
                    ProtoError::Encode {
                        what: "DATA",
                        source,
                    }
                })?;
                layer
                    .seal_backward(true, &mut cell[1..])
                    .map_err(ProtoError::Layer)
            });
            if let Err(e) = r {
                return self.fail(e).map(|()| 0);
            }
        }
        Ok(take)
    }

    /// Exit: `n` bytes of earlier [`RelayAction::ExitData`] were written to the connection;
    /// returns credit to the client once enough was written (specs/03 §11.3).
    pub fn handle_exit_written(
        &mut self,
        stream: StreamId,
        n: usize,
        now: Instant,
    ) -> Result<(), ProtoError> {
        self.saw(now);
        if self.closed.is_some() {
            return Ok(());
        }
        let Some(s) = self.streams.get_mut(stream.0) else {
            // Closed meanwhile: nothing to credit.
            return Ok(());
        };
        if n > s.outstanding {
            return Err(ProtoError::WrongState("more written than handed out"));
        }
        s.outstanding -= n;
        s.flow.recv.consumed(n);
        if s.flow.recv.update_due() {
            let _ = self.flush_update(stream.0);
        }
        Ok(())
    }

    /// Exit: the connection reached EOF; sends END(DONE) after the data already taken.
    pub fn handle_exit_eof(&mut self, stream: StreamId, now: Instant) -> Result<(), ProtoError> {
        self.handle_exit_closed(stream, EndReason::Done, now)
    }

    /// Exit: the connection closed (reset, timeout, ...); sends END(`reason`).
    pub fn handle_exit_closed(
        &mut self,
        stream: StreamId,
        reason: EndReason,
        now: Instant,
    ) -> Result<(), ProtoError> {
        self.saw(now);
        if self.closed.is_some() {
            return Ok(());
        }
        if self.streams.get(stream.0).is_none() {
            return Err(ProtoError::UnknownStream(stream.0));
        }
        self.end_exit_stream(stream, reason)
    }

    /// This end closes `stream`: forgets it, remembers the id, sends END(`reason`).
    fn end_exit_stream(&mut self, stream: StreamId, reason: EndReason) -> Result<(), ProtoError> {
        self.streams.close(stream.0);
        let r = self.send_own(stream, RelayMsg::End(reason));
        self.fail_on_err(r)
    }

    /// Exit: the answer to a [`RelayAction::Resolve`]; sends RESOLVED (as many answers as fit)
    /// and forgets the stream.
    pub fn handle_exit_resolved(
        &mut self,
        stream: StreamId,
        mut answers: Vec<ResolvedAnswer>,
        now: Instant,
    ) -> Result<(), ProtoError> {
        self.saw(now);
        if self.closed.is_some() {
            return Ok(());
        }
        self.exit_stream(stream, ExitState::Resolving)?;
        self.streams.close(stream.0);
        answers.truncate(shallot_cell::MAX_RESOLVED_ANSWERS);
        let area = self.cell_len - 18;
        while answers.len() > 1
            && (RelayFrame {
                stream_id: stream,
                msg: RelayMsg::Resolved(answers.clone()),
            })
            .encode(area)
            .is_err()
        {
            answers.pop();
        }
        if answers.is_empty() {
            answers.push(ResolvedAnswer::TransientError(0));
        }
        let r = self.send_own(stream, RelayMsg::Resolved(answers));
        self.fail_on_err(r)
    }

    fn exit_stream(
        &mut self,
        stream: StreamId,
        want: ExitState,
    ) -> Result<&mut ExitStream, ProtoError> {
        match self.streams.get_mut(stream.0) {
            Some(s) if s.state == want => Ok(s),
            Some(_) => Err(ProtoError::WrongState("exit stream in another state")),
            None => Err(ProtoError::UnknownStream(stream.0)),
        }
    }

    pub(super) fn flush_update(&mut self, id: u16) -> Result<(), ProtoError> {
        self.streams
            .room_for_update(self.to_prev.len() >= RELAY_QUEUE_CELLS + CONTROL_RESERVE_CELLS)?;
        let Some(inc) = self
            .streams
            .get_mut(id)
            .and_then(|s| s.flow.recv.take_update())
        else {
            return Ok(());
        };
        let r = self.send_own(StreamId(id), RelayMsg::WindowUpdate(inc));
        self.fail_on_err(r)
    }
}
