//! The relay's CREATE handshakes in one fair queue (specs/00 §4.4): a global rate (a token
//! bucket) and at most one handshake per core at a time, handed out round robin across sources,
//! so a flood from one source (an address, or a listed relay) waits behind itself and every
//! other source still gets its turn.
//!
//! Each waiting CREATE holds a handshake slot (limits.rs), so the queue of one source is bounded
//! by `MAX_PENDING_HANDSHAKES_PER_SOURCE`. The whole queue holds at most [`MAX_QUEUED_CREATES`]:
//! when it is full, a newcomer takes the place of the newest waiter of the source with the most
//! waiting (if that source has more than the newcomer's would), so that many sources flooding at
//! once cannot keep one more out.

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use tokio::sync::oneshot;
// Tokio's clock, so that tests can pause it; outside tests it is the monotonic clock.
use tokio::time::Instant;

use crate::config::CreateRate;
use crate::limits::Source;

/// Most CREATEs waiting for their turn, in all.
pub const MAX_QUEUED_CREATES: usize = 256;

/// A CREATE that lost its place in a full queue to a source with fewer waiting.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Evicted;

/// The right to run one CREATE handshake now; the next waiter's turn comes when it drops.
#[derive(Debug)]
pub(crate) struct Turn {
    queue: Arc<Shared>,
}

#[derive(Debug)]
struct Shared {
    state: Mutex<State>,
}

#[derive(Debug)]
struct State {
    rate: f64,
    burst: f64,
    tokens: f64,
    refilled: Instant,
    max_running: usize,
    running: usize,
    /// Waiters of each source, oldest first.
    waiting: HashMap<Source, VecDeque<oneshot::Sender<Turn>>>,
    /// Sources with waiters, in the order they are served.
    ring: VecDeque<Source>,
    /// Whether a task is already asleep until the bucket has a token again.
    timer_armed: bool,
}

/// The queue; cheap to clone.
#[derive(Debug, Clone)]
pub(crate) struct CreateQueue {
    shared: Arc<Shared>,
}

impl CreateQueue {
    /// A queue that starts at most `rate` handshakes a second (up to its burst at once) and
    /// runs at most `max_running` at a time.
    pub(crate) fn new(rate: CreateRate, max_running: usize) -> Self {
        let burst = f64::from(rate.burst);
        Self {
            shared: Arc::new(Shared {
                state: Mutex::new(State {
                    rate: f64::from(rate.per_second),
                    burst,
                    tokens: burst,
                    refilled: Instant::now(),
                    max_running: max_running.max(1),
                    running: 0,
                    waiting: HashMap::new(),
                    ring: VecDeque::new(),
                    timer_armed: false,
                }),
            }),
        }
    }

    /// Waits for `source`'s turn. Dropping the future leaves the queue.
    pub(crate) async fn turn(&self, source: Source) -> Result<Turn, Evicted> {
        let (rx, evicted) = {
            let mut s = self.shared.lock();
            if s.ring.is_empty() && s.running < s.max_running && s.take_token(Instant::now()) {
                s.running += 1;
                return Ok(Turn {
                    queue: Arc::clone(&self.shared),
                });
            }
            let mut evicted = None;
            if s.queued() >= MAX_QUEUED_CREATES {
                s.forget_gone();
            }
            if s.queued() >= MAX_QUEUED_CREATES {
                match s.evict_for(source) {
                    Some(tx) => evicted = Some(tx),
                    None => return Err(Evicted),
                }
            }
            let (tx, rx) = oneshot::channel();
            let queue = s.waiting.entry(source).or_default();
            queue.push_back(tx);
            if queue.len() == 1 {
                s.ring.push_back(source);
            }
            (rx, evicted)
        };
        // Dropped outside the lock: its waiter wakes to an error.
        drop(evicted);
        Shared::dispatch(&self.shared);
        // The only other way the sender goes is eviction.
        rx.await.map_err(|_| Evicted)
    }

    /// CREATEs waiting for their turn.
    #[cfg(test)]
    fn waiting(&self) -> usize {
        self.shared.lock().queued()
    }
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Hands out every turn the rate and the running bound allow, round robin across sources.
    fn dispatch(this: &Arc<Self>) {
        let mut grants = Vec::new();
        let mut sleep_for = None;
        {
            let mut s = this.lock();
            let now = Instant::now();
            while s.running < s.max_running {
                let Some(source) = s.ring.pop_front() else {
                    break;
                };
                let Some(mut waiters) = s.waiting.remove(&source) else {
                    continue;
                };
                // Waiters that gave up (their handshake timed out) are passed over.
                while waiters.front().is_some_and(oneshot::Sender::is_closed) {
                    waiters.pop_front();
                }
                let Some(next) = waiters.pop_front() else {
                    continue;
                };
                if !s.take_token(now) {
                    waiters.push_front(next);
                    s.waiting.insert(source, waiters);
                    s.ring.push_front(source);
                    if !s.timer_armed {
                        s.timer_armed = true;
                        sleep_for = Some(s.until_token());
                    }
                    break;
                }
                s.running += 1;
                grants.push(next);
                if !waiters.is_empty() {
                    s.waiting.insert(source, waiters);
                    s.ring.push_back(source);
                }
            }
        }
        // Outside the lock: a turn whose waiter is gone is dropped here, and dropping a turn
        // takes the lock to hand it on.
        for tx in grants {
            let _ = tx.send(Turn {
                queue: Arc::clone(this),
            });
        }
        if let Some(d) = sleep_for {
            let this = Arc::clone(this);
            tokio::spawn(async move {
                tokio::time::sleep(d).await;
                this.lock().timer_armed = false;
                Shared::dispatch(&this);
            });
        }
    }
}

impl State {
    fn queued(&self) -> usize {
        self.waiting.values().map(VecDeque::len).sum()
    }

    /// Drops the waiters that gave up (their handshake timed out): they hold a place only
    /// until a turn passes them over, and a queue full of them must not refuse the living.
    fn forget_gone(&mut self) {
        self.waiting.retain(|_, w| {
            w.retain(|tx| !tx.is_closed());
            !w.is_empty()
        });
        let waiting = &self.waiting;
        self.ring.retain(|s| waiting.contains_key(s));
    }

    /// Takes out the newest waiter of the source with the most waiting, if it has more than
    /// `newcomer` would have with one more.
    fn evict_for(&mut self, newcomer: Source) -> Option<oneshot::Sender<Turn>> {
        let theirs = self.waiting.get(&newcomer).map_or(0, VecDeque::len);
        let (&largest, waiters) = self.waiting.iter_mut().max_by_key(|(_, w)| w.len())?;
        if waiters.len() <= theirs + 1 {
            return None;
        }
        let tx = waiters.pop_back();
        if waiters.is_empty() {
            self.waiting.remove(&largest);
            self.ring.retain(|s| *s != largest);
        }
        tx
    }

    fn take_token(&mut self, now: Instant) -> bool {
        let dt = now.saturating_duration_since(self.refilled).as_secs_f64();
        self.tokens = (self.tokens + dt * self.rate).min(self.burst);
        self.refilled = now;
        if self.tokens >= 1.0 {
            self.tokens -= 1.0;
            true
        } else {
            false
        }
    }

    fn until_token(&self) -> Duration {
        let missing = (1.0 - self.tokens).max(0.0);
        Duration::from_secs_f64(missing / self.rate.max(f64::MIN_POSITIVE))
            .max(Duration::from_millis(1))
    }
}

impl Drop for Turn {
    fn drop(&mut self) {
        {
            let mut s = self.queue.lock();
            s.running = s.running.saturating_sub(1);
        }
        Shared::dispatch(&self.queue);
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use shallot_directory::HostKey;

    use super::*;

    fn host(last: u8) -> Source {
        Source::Host(HostKey::of(std::net::Ipv4Addr::new(192, 0, 2, last).into()))
    }

    #[tokio::test]
    async fn a_flood_from_one_source_waits_behind_itself() {
        // One handshake at a time, no rate to speak of: the order is the queue's alone.
        let q = CreateQueue::new(
            CreateRate {
                per_second: 1_000_000,
                burst: 1_000_000,
            },
            1,
        );
        let first = q.turn(host(1)).await.unwrap();
        let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
        let mut tasks = Vec::new();
        for i in 0..10 {
            let (q, tx) = (q.clone(), tx.clone());
            tasks.push(tokio::spawn(async move {
                let turn = q.turn(host(1)).await.unwrap();
                tx.send(format!("flood {i}")).unwrap();
                drop(turn);
            }));
        }
        while q.waiting() < 10 {
            tokio::task::yield_now().await;
        }
        let (q2, tx2) = (q.clone(), tx.clone());
        tasks.push(tokio::spawn(async move {
            let turn = q2.turn(host(2)).await.unwrap();
            tx2.send("honest".to_owned()).unwrap();
            drop(turn);
        }));
        while q.waiting() < 11 {
            tokio::task::yield_now().await;
        }
        drop(first);
        let mut order = Vec::new();
        for _ in 0..11 {
            order.push(rx.recv().await.unwrap());
        }
        let honest_at = order.iter().position(|o| o == "honest").unwrap();
        assert!(
            honest_at <= 1,
            "the other source came at place {honest_at} of {order:?}"
        );
        for t in tasks {
            t.await.unwrap();
        }
    }

    #[tokio::test(start_paused = true)]
    async fn the_global_rate_holds_and_a_waiter_that_leaves_takes_no_turn() {
        let q = CreateQueue::new(
            CreateRate {
                per_second: 10,
                burst: 2,
            },
            100,
        );
        let started = Instant::now();
        let _a = q.turn(host(1)).await.unwrap();
        let _b = q.turn(host(2)).await.unwrap();
        // The bucket is empty: a third waits a tenth of a second.
        let gone = tokio::time::timeout(Duration::from_millis(50), q.turn(host(3))).await;
        assert!(gone.is_err());
        let _c = q.turn(host(3)).await.unwrap();
        assert!(started.elapsed() >= Duration::from_millis(100));
        assert_eq!(q.waiting(), 0);
        assert_eq!(q.shared.lock().running, 3);
    }

    #[tokio::test]
    async fn a_full_queue_gives_a_newcomer_the_place_of_the_largest_source() {
        let q = CreateQueue::new(
            CreateRate {
                per_second: 1_000_000,
                burst: 1_000_000,
            },
            1,
        );
        let running = q.turn(host(1)).await.unwrap();
        // Sixteen sources fill the queue, sixteen each.
        let mut waiters = Vec::new();
        for src in 0..16u8 {
            for _ in 0..MAX_QUEUED_CREATES / 16 {
                let q = q.clone();
                // Each drops its turn at once, so the next is handed out.
                waiters.push(tokio::spawn(async move {
                    q.turn(host(10 + src)).await.map(drop)
                }));
            }
        }
        while q.waiting() < MAX_QUEUED_CREATES {
            tokio::task::yield_now().await;
        }
        // One more from a flooding source is refused; a newcomer takes a place.
        assert_eq!(q.turn(host(10)).await.err(), Some(Evicted));
        let q2 = q.clone();
        let newcomer = tokio::spawn(async move { q2.turn(host(200)).await.map(drop) });
        while !q.shared.lock().waiting.contains_key(&host(200)) {
            tokio::task::yield_now().await;
        }
        assert_eq!(q.waiting(), MAX_QUEUED_CREATES);
        drop(running);
        let mut evicted = 0;
        for w in waiters {
            if w.await.unwrap() == Err(Evicted) {
                evicted += 1;
            }
        }
        assert_eq!(evicted, 1);
        assert_eq!(newcomer.await.unwrap(), Ok(()));
    }

    #[tokio::test]
    async fn waiters_that_gave_up_do_not_keep_a_full_queue_full() {
        let q = CreateQueue::new(
            CreateRate {
                per_second: 1_000_000,
                burst: 1_000_000,
            },
            1,
        );
        let _running = q.turn(host(1)).await.unwrap();
        // One waiter from each of 256 sources, all of which then give up (their handshakes
        // time out): the queue counts them until they are passed over.
        let mut gone = Vec::new();
        for i in 0..MAX_QUEUED_CREATES {
            let q = q.clone();
            let src = Source::Host(HostKey::of(
                std::net::Ipv4Addr::from(0x0a00_0000 + i as u32).into(),
            ));
            gone.push(tokio::spawn(async move { q.turn(src).await.map(drop) }));
        }
        while q.waiting() < MAX_QUEUED_CREATES {
            tokio::task::yield_now().await;
        }
        for g in &gone {
            g.abort();
        }
        for g in gone {
            let _ = g.await;
        }
        // A newcomer with one waiter, like each of theirs, finds room.
        let q2 = q.clone();
        let newcomer = tokio::spawn(async move { q2.turn(host(200)).await.map(drop) });
        while !newcomer.is_finished() && !q.shared.lock().waiting.contains_key(&host(200)) {
            tokio::task::yield_now().await;
        }
        assert!(
            q.shared.lock().waiting.contains_key(&host(200)),
            "a full queue of waiters that gave up refused a newcomer: {:?}",
            newcomer.await
        );
    }
}
