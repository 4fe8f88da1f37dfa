// Copyright (c) 2023 Protocol Labs.
//
// Licensed under the Apache License, Version 2.0 or MIT license, at your option.
//
// A copy of the Apache License, Version 2.0 is included in the software as
// LICENSE-APACHE and a copy of the MIT license is included in the software
// as LICENSE-MIT. You may also obtain a copy of the Apache License, Version 2.0
// at https://www.apache.org/licenses/LICENSE-2.0 and a copy of the MIT license
// at https://opensource.org/licenses/MIT.

//! Connection round-trip time measurement

use std::{
    cmp,
    sync::{
        atomic::{AtomicU32, Ordering},
        Arc,
    },
};

use parking_lot::Mutex;
use web_time::{Duration, Instant};

use crate::connection::Action;
use crate::frame::{header::Ping, Frame};

const PING_INTERVAL: Duration = Duration::from_secs(10);

/// ncx: the ping interval while a stream's flow control uses the round-trip time (see
/// [`Rtt::want_samples`]), so the minimum below stays fresh on a busy connection.
const BUSY_PING_INTERVAL: Duration = Duration::from_secs(1);

/// ncx: how long a minimum round-trip time is trusted. The minimum, not the latest sample, is the
/// path's delay: a ping that waited behind data in a queue measures the queue too. Once the
/// minimum is this old, the connection probes (see [`Rtt::probing`]) instead of taking a sample
/// measured behind its own queue, which would let the estimate, and with it every window, creep up
/// by the queue each time.
const MIN_RTT_WINDOW: Duration = Duration::from_secs(10);

/// ncx: a probe lasts this many minimum round trips (one for the queue to drain once the windows
/// are small, one for a ping to cross it), and at least [`MIN_PROBE`].
const PROBE_RTTS: u32 = 3;
const MIN_PROBE: Duration = Duration::from_millis(50);

#[derive(Clone, Debug)]
pub(crate) struct Rtt {
    inner: Arc<Mutex<RttInner>>,
    /// Next ping identifier, used for matching pongs.
    next_id: Arc<AtomicU32>,
}

impl Rtt {
    pub(crate) fn new() -> Self {
        Self {
            inner: Arc::new(Mutex::new(RttInner {
                probe: None,
                min: None,
                busy: false,
                state: RttState::Waiting {
                    since: None,
                },
            })),
            next_id: Arc::new(AtomicU32::new(0)),
        }
    }

    pub(crate) fn next_ping(&mut self) -> Option<Frame<Ping>> {
        let inner = &mut *self.inner.lock();
        let interval = if inner.probe.is_some() {
            Duration::ZERO
        } else if inner.busy {
            BUSY_PING_INTERVAL
        } else {
            PING_INTERVAL
        };
        let state = &mut inner.state;

        match state {
            RttState::AwaitingPong { .. } => return None,
            RttState::Waiting { since } => {
                if since.is_some_and(|t| t.elapsed() < interval) {
                    return None;
                }
            }
        }
        inner.busy = false;

        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        *state = RttState::AwaitingPong {
            sent_at: Instant::now(),
            id,
        };
        log::debug!("sending ping {id}");
        Some(Frame::ping(id))
    }

    pub(crate) fn handle_pong(&mut self, received_id: u32) -> Action {
        let inner = &mut self.inner.lock();

        let (sent_at, expected_id) = match inner.state {
            RttState::Waiting { .. } => {
                log::error!("received unexpected pong {received_id}");
                return Action::Terminate(Frame::protocol_error());
            }
            RttState::AwaitingPong { sent_at, id } => (sent_at, id),
        };

        if received_id != expected_id {
            log::error!("received pong with {received_id} but expected {expected_id}");
            return Action::Terminate(Frame::protocol_error());
        }

        let rtt = sent_at.elapsed();
        let now = Instant::now();
        // ncx: keep the minimum, and probe for a new one when it is old (see `probing`).
        match (inner.min, inner.probe) {
            // The end of a probe: its lowest sample is the minimum from now on, higher or not.
            (_, Some((until, best))) if now >= until => {
                inner.min = Some((cmp::min(best, rtt), now));
                inner.probe = None;
            }
            (_, Some((until, best))) => inner.probe = Some((until, cmp::min(best, rtt))),
            (Some((min, _)), None) if rtt <= min => inner.min = Some((rtt, now)),
            (Some((min, at)), None) if now.duration_since(at) >= MIN_RTT_WINDOW => {
                let length = cmp::max(min * PROBE_RTTS, MIN_PROBE);
                inner.probe = Some((now + length, rtt));
            }
            (Some(_), None) => {}
            (None, None) => inner.min = Some((rtt, now)),
        }
        log::debug!("received pong {received_id}, estimated round-trip-time {rtt:?}");

        inner.state = RttState::Waiting { since: Some(now) };

        Action::None
    }

    /// ncx: the smallest round-trip time of the last [`MIN_RTT_WINDOW`] (or the latest sample
    /// when the minimum has aged out). It replaces yamux's `get`, the latest sample.
    pub(crate) fn min(&self) -> Option<Duration> {
        self.inner.lock().min.map(|(d, _)| d)
    }

    /// ncx: whether the connection is probing for its minimum round-trip time: every stream's
    /// sender is then held to half of what the path holds at the stream's rate, so the queue of
    /// the connection's own bytes drains and pings (sent back to back meanwhile) measure the
    /// path. Like BBR's ProbeRTT; it costs a few round trips at half the rate every
    /// [`MIN_RTT_WINDOW`] on a busy connection.
    pub(crate) fn probing(&self) -> bool {
        self.inner.lock().probe.is_some()
    }

    /// ncx: a stream's flow control is using the round-trip time; the next ping goes out
    /// [`BUSY_PING_INTERVAL`] after the last pong instead of [`PING_INTERVAL`].
    pub(crate) fn want_samples(&self) {
        self.inner.lock().busy = true;
    }
}

#[cfg(test)]
impl quickcheck::Arbitrary for Rtt {
    fn arbitrary(g: &mut quickcheck::Gen) -> Self {
        Self {
            inner: Arc::new(Mutex::new(RttInner::arbitrary(g))),
            next_id: Arc::new(AtomicU32::new(0)),
        }
    }
}

#[derive(Debug)]
#[cfg_attr(test, derive(Clone))]
struct RttInner {
    state: RttState,
    /// ncx: a probe in progress: when it ends and its lowest sample so far.
    probe: Option<(Instant, Duration)>,
    /// ncx: the minimum sample and when it was taken (instead of the latest sample).
    min: Option<(Duration, Instant)>,
    /// ncx: see [`Rtt::want_samples`].
    busy: bool,
}

#[cfg(test)]
impl quickcheck::Arbitrary for RttInner {
    fn arbitrary(g: &mut quickcheck::Gen) -> Self {
        let rtt = if bool::arbitrary(g) {
            Some(Duration::arbitrary(g))
        } else {
            None
        };
        Self {
            state: RttState::arbitrary(g),
            probe: None,
            min: rtt.map(|d| (d, Instant::now())),
            busy: bool::arbitrary(g),
        }
    }
}

#[derive(Debug)]
#[cfg_attr(test, derive(Clone))]
enum RttState {
    AwaitingPong { sent_at: Instant, id: u32 },
    /// ncx: since the last pong (none: no ping sent yet); the interval is chosen when the next
    /// ping is due, so a busy stream can shorten it.
    Waiting { since: Option<Instant> },
}

#[cfg(test)]
impl quickcheck::Arbitrary for RttState {
    fn arbitrary(g: &mut quickcheck::Gen) -> Self {
        if bool::arbitrary(g) {
            RttState::AwaitingPong {
                sent_at: Instant::now(),
                id: u32::arbitrary(g),
            }
        } else {
            RttState::Waiting { since: None }
        }
    }
}
