use std::{cmp, sync::Arc, time::Duration};

use parking_lot::Mutex;
use web_time::Instant;

use crate::{connection::rtt::Rtt, Config, ConnectionError, DEFAULT_CREDIT};

/// ncx: credit is returned in steps of what the stream consumes in this much time, at least
/// [`MIN_UPDATE_STEP`], at most [`MAX_UPDATE_STEP`] and half the window, instead of yamux's half
/// a window: the window then needs only about one step more than the path holds, and every byte
/// beyond the path's bandwidth-delay product is a byte a keystroke on another stream waits behind.
const UPDATE_STEP_TIME: f64 = 0.001;
const MIN_UPDATE_STEP: u32 = 16 * 1024;
const MAX_UPDATE_STEP: u32 = 64 * 1024;

/// ncx: while the connection probes for its minimum round trip, every stream's sender is held to
/// [`PROBE_SHARE`] of what the path holds at the stream's rate (its rate × the minimum round trip),
/// and at least to this much credit: the queue of the connection's own bytes drains, and the
/// stream keeps moving at about that share of its rate, so its reader keeps returning credit,
/// which lets the window come back gradually after the probe (see [`RttProbe`]). The floor is
/// below the bandwidth-delay product of any path a stream grows on, so the queue drains even
/// where the smallest window, [`DEFAULT_CREDIT`], is more than the path holds (on loopback 256 KiB
/// is about half a millisecond of queue, which a probe at that window measured as path, and the
/// windows grew by it).
const PROBE_WINDOW: u32 = 32 * 1024;
const PROBE_SHARE: f64 = 0.5;

/// ncx: where a stream is in the connection's probe for its minimum round trip. After a probe the
/// sender's credit goes back from what the probe held it to the whole window over one round trip,
/// not at once: returned in one step, it went out as one burst that queued at the slowest link,
/// and a keystroke behind it took 143–172 ms at 100 ms (the others 102–117).
#[derive(Debug, Clone, Copy)]
enum RttProbe {
    None,
    /// The probe holds the sender to this much credit.
    Holding(u32),
    /// The probe ended: since when, and the credit it held the sender to.
    Ramping { since: Instant, from: u32 },
}

/// ncx: the largest window one stream may get, whatever its rate and round-trip time (1 Gbit/s at
/// 130 ms). The connection's budget bounds the sum over all streams.
const MAX_STREAM_WINDOW: u32 = 16 * 1024 * 1024;

/// ncx: while starting up, the window is this many times what the measured rate needs, so a
/// window-limited stream doubles its rate every round trip, like TCP's slow start.
const STARTUP_GAIN: f64 = 2.0;

/// ncx: after start-up the window is what the measured rate needs over the minimum round trip
/// plus a queue allowance, plus two update steps. The allowance lets a stream keep growing while
/// the path has room (a window-limited stream grows by it every round trip); a keystroke on
/// another stream waits behind at most the allowance and the steps. It starts at this share of
/// the round trip, at most [`MAX_QUEUE_ALLOWANCE`], and stays there on a path whose bottleneck is
/// a link: more window only queues there.
const QUEUE_ALLOWANCE: f64 = 0.25;
const MAX_QUEUE_ALLOWANCE: Duration = Duration::from_millis(6);

/// ncx: on some paths the data takes longer around the loop than a ping does, and more so the
/// faster it flows: bursts serialised by a link slower than the sender, a pacing or busy relay, a
/// CPU shared by every stage. There the window at the starting allowance holds the stream far
/// below what the path carries (a third of 1 Gbit/s was measured), so the allowance is probed:
/// every [`PROBE_EVERY`] rounds it is raised by [`PROBE_GAIN`] for [`PROBE_ROUNDS`] rounds, and
/// kept if the rate rose by [`PROBE_SUCCESS`] (the path had room: the window was the limit),
/// else it decays by [`ALLOWANCE_DECAY`] towards the starting one and the next probe waits twice
/// as long, up to [`PROBE_EVERY_MAX`] rounds. Where a link is the bottleneck every probe fails, so
/// the allowance stays at its start and probes grow rare. It never exceeds one round trip (a
/// window of twice the bandwidth-delay product, as BBR's) nor [`MAX_ALLOWANCE`].
const PROBE_EVERY: u32 = 16;
const PROBE_EVERY_MAX: u32 = 128;
const PROBE_ROUNDS: u8 = 3;
const PROBE_GAIN: f64 = 1.5;
const PROBE_SUCCESS: f64 = 1.1;
const ALLOWANCE_DECAY: f64 = 0.8;
const MAX_ALLOWANCE: Duration = Duration::from_millis(50);

/// ncx: start-up ends when the rate has not grown by this factor for [`STARTUP_FLAT_ROUNDS`].
const STARTUP_GROWTH: f64 = 1.25;
const STARTUP_FLAT_ROUNDS: u8 = 3;

/// ncx: the shortest measuring round (a round is one minimum round-trip time).
const MIN_ROUND: Duration = Duration::from_millis(10);

/// ncx: the highest rate of this many rounds is the stream's rate.
const RATE_FILTER_ROUNDS: u32 = 10;

/// ncx: the measuring rounds after a probe for the minimum round trip whose rate is not a sample
/// of the stream's rate: a rate is measured over two rounds, and the probe held the sender down in
/// the round it ended in. Such rounds leave the rate filter, start-up and the allowance's probe as
/// they were: counted as samples, they aged out the stream's rate (the highest of ten rounds gave
/// way to the probe's) and the window fell from 1.3 MB to 300 KB after a probe at 100 ms, then
/// took seconds to grow back by its allowance.
const PROBE_HELD_ROUNDS: u8 = 2;

/// ncx: a stream whose reader consumed nothing for this long (or four round trips, if longer)
/// starts over: its window goes back to the minimum and start-up begins again.
const IDLE_RESTART: Duration = Duration::from_secs(1);

/// ncx: what the window policy knows about one stream. All rates are bytes per second of what
/// this side's reader consumed; the window the policy aims for is that rate times the path's
/// minimum round-trip time (its bandwidth-delay product), plus a queue allowance and two update
/// steps.
#[derive(Debug, Clone)]
pub(crate) struct Policy {
    /// Bytes the sender has sent on this stream so far.
    received: u64,
    /// When the current round began, and how much had been consumed then; the same for the round
    /// before, since a rate is measured over two rounds (one round of reads is lumpy).
    round_start: Instant,
    round_consumed: u64,
    prev_round_start: Instant,
    prev_round_consumed: u64,
    /// The highest rate of the last [`RATE_FILTER_ROUNDS`] rounds, and its age in rounds.
    max_rate: f64,
    max_rate_age: u32,
    /// Start-up: the best rate so far and the rounds it has not grown by [`STARTUP_GROWTH`].
    startup: bool,
    startup_best: f64,
    flat_rounds: u8,
    /// The queue allowance in seconds (0 until a probe raised it: the starting allowance), the
    /// rounds until the next probe, the rounds between probes, the rounds left of a running probe
    /// and the rate before it.
    allowance: f64,
    probe_in: u32,
    probe_every: u32,
    probing: u8,
    probe_from_rate: f64,
    /// The last time the reader consumed anything, and how much it had consumed by then.
    last_progress: Instant,
    last_consumed: u64,
    /// Round ends still to come whose rate a probe for the minimum round trip held down.
    held_rounds: u8,
    /// The connection's probe for its minimum round trip, as this stream's credit saw it.
    rtt_probe: RttProbe,
}

impl Policy {
    pub(crate) fn new(now: Instant) -> Self {
        Self {
            received: 0,
            round_start: now,
            round_consumed: 0,
            prev_round_start: now,
            prev_round_consumed: 0,
            max_rate: 0.0,
            max_rate_age: 0,
            startup: true,
            startup_best: 0.0,
            flat_rounds: 0,
            allowance: 0.0,
            probe_in: PROBE_EVERY,
            probe_every: PROBE_EVERY,
            probing: 0,
            probe_from_rate: 0.0,
            last_progress: now,
            last_consumed: 0,
            held_rounds: 0,
            rtt_probe: RttProbe::None,
        }
    }

    /// Takes note that the reader has consumed `consumed` bytes in total by `now`, while the
    /// connection probes for its minimum round trip or not; true when it made progress (the
    /// stream is busy and round-trip samples are wanted).
    fn observe(
        &mut self,
        now: Instant,
        consumed: u64,
        min_rtt: Option<Duration>,
        probing: bool,
    ) -> bool {
        let round = cmp::max(min_rtt.unwrap_or(MIN_ROUND), MIN_ROUND);
        let progressed = consumed > self.last_consumed;
        if progressed {
            if now.duration_since(self.last_progress) > cmp::max(IDLE_RESTART, round * 4) {
                let (received, before) = (self.received, self.last_consumed);
                *self = Self::new(now);
                self.received = received;
                self.round_consumed = before;
                self.prev_round_consumed = before;
            }
            self.last_progress = now;
            self.last_consumed = consumed;
        }
        if probing {
            self.held_rounds = PROBE_HELD_ROUNDS;
        }
        if now.duration_since(self.round_start) >= round {
            if self.held_rounds > 0 {
                self.held_rounds -= 1;
            } else {
                let elapsed = now.duration_since(self.prev_round_start);
                let consumed_in_rounds = consumed.saturating_sub(self.prev_round_consumed);
                let rate = consumed_in_rounds as f64 / elapsed.as_secs_f64();
                self.max_rate_age += 1;
                if rate >= self.max_rate || self.max_rate_age > RATE_FILTER_ROUNDS {
                    self.max_rate = rate;
                    self.max_rate_age = 0;
                }
                if self.startup {
                    if self.max_rate >= self.startup_best * STARTUP_GROWTH {
                        self.startup_best = self.max_rate;
                        self.flat_rounds = 0;
                    } else {
                        self.flat_rounds += 1;
                        self.startup = self.flat_rounds < STARTUP_FLAT_ROUNDS;
                    }
                } else if let Some(rtt) = min_rtt {
                    self.probe_round(rate, rtt.as_secs_f64());
                }
            }
            self.prev_round_start = self.round_start;
            self.prev_round_consumed = self.round_consumed;
            self.round_start = now;
            self.round_consumed = consumed;
        }
        progressed
    }

    /// The window this stream should have, between [`DEFAULT_CREDIT`] and [`MAX_STREAM_WINDOW`].
    fn target(&self, min_rtt: Option<Duration>) -> u32 {
        let Some(rtt) = min_rtt else {
            return DEFAULT_CREDIT;
        };
        let want = self.need(rtt) + 2.0 * self.step(u32::MAX) as f64;
        want.clamp(DEFAULT_CREDIT as f64, MAX_STREAM_WINDOW as f64) as u32
    }

    /// What the path needs in flight for the stream's rate, in bytes: the rate over the round
    /// trip `rtt` and the allowance in force.
    fn need(&self, rtt: Duration) -> f64 {
        self.max_rate * (rtt.as_secs_f64() + self.allowance_in_force(rtt))
    }

    /// The time beyond the round trip that the window holds the stream's rate for, in seconds:
    /// start-up's gain, a running probe's allowance, or the allowance.
    fn allowance_in_force(&self, rtt: Duration) -> f64 {
        let rtt = rtt.as_secs_f64();
        if self.startup {
            (STARTUP_GAIN - 1.0) * rtt
        } else if self.probing > 0 {
            (self.allowance(rtt) * PROBE_GAIN).min(max_allowance(rtt))
        } else {
            self.allowance(rtt)
        }
    }

    /// The queue allowance in force, in seconds, on a path of round trip `rtt` seconds.
    fn allowance(&self, rtt: f64) -> f64 {
        self.allowance
            .clamp(start_allowance(rtt), max_allowance(rtt))
    }

    /// One measuring round after start-up, whose rate was `rate`: the allowance's probe.
    fn probe_round(&mut self, rate: f64, rtt: f64) {
        if self.probing > 0 {
            self.probing -= 1;
            if self.probing == 0 {
                if rate >= self.probe_from_rate * PROBE_SUCCESS {
                    // More window, more rate: the window was the limit. Keep it.
                    self.allowance = (self.allowance(rtt) * PROBE_GAIN).min(max_allowance(rtt));
                    self.probe_every = PROBE_EVERY;
                } else {
                    self.allowance = self.allowance(rtt) * ALLOWANCE_DECAY;
                    self.probe_every = cmp::min(self.probe_every * 2, PROBE_EVERY_MAX);
                }
                self.probe_in = self.probe_every;
            }
        } else if self.probe_in > 0 {
            self.probe_in -= 1;
        } else if self.allowance(rtt) < max_allowance(rtt) {
            self.probing = PROBE_ROUNDS;
            self.probe_from_rate = rate;
        }
    }

    /// The credit the sender may hold while the connection probes for its minimum round trip:
    /// [`PROBE_SHARE`] of the stream's bandwidth-delay product, at least [`PROBE_WINDOW`].
    fn probe_cap(&self, min_rtt: Option<Duration>) -> u32 {
        let bdp = min_rtt.map_or(0.0, |rtt| self.max_rate * rtt.as_secs_f64());
        (bdp * PROBE_SHARE).clamp(PROBE_WINDOW as f64, u32::MAX as f64) as u32
    }

    /// The credit the sender may hold for a window of `max` while the connection does not probe:
    /// `max`, except within one round trip after a probe, when it is what the probe held the
    /// sender to plus the share of the rest that the time since the probe is of a round trip.
    fn cap_after_probe(&mut self, now: Instant, max: u32, min_rtt: Option<Duration>) -> u32 {
        match (self.rtt_probe, min_rtt) {
            (RttProbe::Holding(from), Some(_)) => {
                self.rtt_probe = RttProbe::Ramping { since: now, from };
                cmp::min(from, max)
            }
            (RttProbe::Ramping { since, from }, Some(rtt)) => {
                let share = now.duration_since(since).as_secs_f64() / rtt.as_secs_f64();
                if share >= 1.0 {
                    self.rtt_probe = RttProbe::None;
                    max
                } else {
                    let back = (max.saturating_sub(from) as f64 * share) as u32;
                    cmp::min(max, from.saturating_add(back))
                }
            }
            _ => {
                self.rtt_probe = RttProbe::None;
                max
            }
        }
    }

    /// How much consumed credit is collected before it is returned, for a window of `max`.
    fn step(&self, max: u32) -> u32 {
        let step = (self.max_rate * UPDATE_STEP_TIME).min(u32::MAX as f64) as u32;
        cmp::min(step.clamp(MIN_UPDATE_STEP, MAX_UPDATE_STEP), max / 2)
    }

    /// The step in force for a window of `max` on a path of round trip `min_rtt`: [`Self::step`],
    /// or more where the window holds more than the path needs plus that step, up to half the
    /// window (yamux's own step). That is a window held at [`DEFAULT_CREDIT`] on a path that needs
    /// less (loopback, a LAN): every byte of credit the sender holds beyond what the path needs
    /// is a byte queued ahead of a keystroke on another stream, and a larger step returns credit
    /// later without holding the stream below what the path carries.
    fn step_in_force(&self, max: u32, min_rtt: Option<Duration>) -> u32 {
        let step = self.step(max);
        let Some(rtt) = min_rtt else {
            return step;
        };
        // (`step` is at most `max / 2`; a negative spare converts to 0)
        let spare = (max as f64 - self.need(rtt) - step as f64) as u32;
        cmp::max(step, cmp::min(spare, max / 2))
    }
}

/// ncx: the queue allowance a stream starts with after start-up, in seconds.
fn start_allowance(rtt: f64) -> f64 {
    (QUEUE_ALLOWANCE * rtt).min(MAX_QUEUE_ALLOWANCE.as_secs_f64())
}

/// ncx: the largest queue allowance a probe may reach, in seconds.
fn max_allowance(rtt: f64) -> f64 {
    rtt.min(MAX_ALLOWANCE.as_secs_f64())
        .max(start_allowance(rtt))
}

#[derive(Debug)]
pub(crate) struct FlowController {
    config: Arc<Config>,
    /// ncx: the window policy's state.
    policy: Policy,
    /// See [`Connection::rtt`].
    rtt: Rtt,
    /// See [`Connection::accumulated_max_stream_windows`].
    accumulated_max_stream_windows: Arc<Mutex<usize>>,
    receive_window: u32,
    max_receive_window: u32,
    send_window: u32,
}

impl FlowController {
    pub(crate) fn new(
        receive_window: u32,
        send_window: u32,
        accumulated_max_stream_windows: Arc<Mutex<usize>>,
        rtt: Rtt,
        config: Arc<Config>,
    ) -> Self {
        Self {
            receive_window,
            send_window,
            config,
            rtt,
            accumulated_max_stream_windows,
            max_receive_window: DEFAULT_CREDIT,
            policy: Policy::new(Instant::now()),
        }
    }

    /// Calculate the number of additional window bytes the receiving side (local) should grant the
    /// sending side (remote) via a window update message.
    ///
    /// Returns `None` if too small to justify a window update message.
    ///
    /// ncx: yamux's own auto-tuning (double the window whenever half of it was used within two
    /// round trips, never shrink it) is replaced by [`Policy`]: the window follows the rate at
    /// which this stream's reader consumes bytes times the path's minimum round-trip time, and
    /// shrinks back when the reader slows down or the stream goes idle. Credit is returned in
    /// small steps instead of half a window.
    pub(crate) fn next_window_update(&mut self, buffer_len: usize) -> Option<u32> {
        self.assert_invariants(buffer_len);

        let now = Instant::now();
        let consumed = self.policy.received.saturating_sub(buffer_len as u64);
        let min_rtt = self.rtt.min();
        let probing = self.rtt.probing();
        if self.policy.observe(now, consumed, min_rtt, probing) {
            self.rtt.want_samples();
        }
        let probe_cap = self.policy.probe_cap(min_rtt);
        let target = if probing {
            cmp::max(DEFAULT_CREDIT, probe_cap)
        } else {
            self.policy.target(min_rtt)
        };

        // The window may not shrink below what is already committed: the credit the sender holds
        // and the bytes waiting in the buffer.
        let committed = (self.receive_window as usize + buffer_len) as u32;
        let mut new_max = cmp::max(target, committed);
        if new_max != self.max_receive_window {
            let mut accumulated_max_stream_windows = self.accumulated_max_stream_windows.lock();
            if new_max > self.max_receive_window {
                // Growth comes out of the connection's budget: the configured connection limit
                // minus the minimum window guaranteed to each stream, minus what this and the
                // other streams already took beyond that minimum.
                let budget = self.config.max_connection_receive_window.unwrap_or(usize::MAX)
                    - self.config.max_num_streams * DEFAULT_CREDIT as usize;
                let available = budget.saturating_sub(*accumulated_max_stream_windows);
                new_max = cmp::min(
                    new_max,
                    self.max_receive_window
                        .saturating_add(available.try_into().unwrap_or(u32::MAX)),
                );
                *accumulated_max_stream_windows += (new_max - self.max_receive_window) as usize;
            } else {
                *accumulated_max_stream_windows -= (self.max_receive_window - new_max) as usize;
            }
            drop(accumulated_max_stream_windows);
            log::trace!(
                "window_max: {} -> {} bytes",
                self.max_receive_window,
                new_max
            );
            self.max_receive_window = new_max;
        }

        // ncx: a probe for the minimum round trip holds the sender to `probe_cap` (credit
        // granted before is used up first), and after it the credit comes back over one round
        // trip (`cap_after_probe`).
        let max = self.max_receive_window;
        let (cap, step) = if probing {
            let cap = cmp::min(max, probe_cap);
            self.policy.rtt_probe = RttProbe::Holding(cap);
            (cap, self.policy.step(cap))
        } else {
            match self.policy.cap_after_probe(now, max, min_rtt) {
                cap if cap < max => (cap, self.policy.step(cap)),
                _ => (max, self.policy.step_in_force(max, min_rtt)),
            }
        };
        let next_window_update = cap
            .saturating_sub(self.receive_window)
            .saturating_sub(buffer_len.try_into().unwrap_or(u32::MAX));
        if next_window_update < step {
            return None;
        }
        self.receive_window += next_window_update;

        self.assert_invariants(buffer_len);

        Some(next_window_update)
    }

    fn assert_invariants(&self, buffer_len: usize) {
        if !cfg!(debug_assertions) {
            return;
        }

        let config = &self.config;
        let rtt = self.rtt.min(); // ncx: `min` replaces yamux's `get`
        let accumulated_max_stream_windows = *self.accumulated_max_stream_windows.lock();

        assert!(
            buffer_len <= self.max_receive_window as usize,
            "The current buffer size never exceeds the maximum stream receive window."
        );
        assert!(
            self.receive_window <= self.max_receive_window,
            "The current window never exceeds the maximum."
        );
        assert!(
            (self.max_receive_window - DEFAULT_CREDIT) as usize
                <= config.max_connection_receive_window.unwrap_or(usize::MAX)
                    - config.max_num_streams * DEFAULT_CREDIT as usize,
            "The maximum never exceeds its maximum portion of the configured connection limit."
        );
        assert!(
            (self.max_receive_window - DEFAULT_CREDIT) as usize
                <= accumulated_max_stream_windows,
            "The amount by which the stream maximum exceeds DEFAULT_CREDIT is tracked in accumulated_max_stream_windows."
        );
        if rtt.is_none() {
            assert_eq!(
                self.max_receive_window, DEFAULT_CREDIT,
                "The maximum is only increased iff an rtt measurement is available."
            );
        }
    }

    pub(crate) fn send_window(&self) -> u32 {
        self.send_window
    }

    pub(crate) fn consume_send_window(&mut self, i: u32) -> Result<(), ConnectionError> {
        self.send_window = self
            .send_window
            .checked_sub(i)
            .ok_or(ConnectionError::InvalidWindowUpdate)?;
        Ok(())
    }

    pub(crate) fn increase_send_window_by(&mut self, i: u32) -> Result<(), ConnectionError> {
        self.send_window = self
            .send_window
            .checked_add(i)
            .ok_or(ConnectionError::InvalidWindowUpdate)?;
        Ok(())
    }

    pub(crate) fn consume_receive_window(&mut self, i: u32) -> Result<(), ConnectionError> {
        self.receive_window = self
            .receive_window
            .checked_sub(i)
            .ok_or(ConnectionError::InvalidWindowUpdate)?;
        self.policy.received += u64::from(i); // ncx: the policy counts what arrived
        Ok(())
    }
}

impl Drop for FlowController {
    fn drop(&mut self) {
        let mut accumulated_max_stream_windows = self.accumulated_max_stream_windows.lock();

        debug_assert!(
            *accumulated_max_stream_windows >= (self.max_receive_window - DEFAULT_CREDIT) as usize,
            "{accumulated_max_stream_windows} {}",
            self.max_receive_window
        );

        *accumulated_max_stream_windows -= (self.max_receive_window - DEFAULT_CREDIT) as usize;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use quickcheck::{GenRange, QuickCheck};

    #[derive(Debug)]
    struct Input {
        controller: FlowController,
        buffer_len: usize,
    }

    #[cfg(test)]
    impl Clone for Input {
        fn clone(&self) -> Self {
            Self {
                controller: FlowController {
                    config: self.controller.config.clone(),
                    accumulated_max_stream_windows: Arc::new(Mutex::new(
                        *self.controller.accumulated_max_stream_windows.lock(),
                    )),
                    rtt: self.controller.rtt.clone(),
                    policy: self.controller.policy.clone(),
                    receive_window: self.controller.receive_window,
                    max_receive_window: self.controller.max_receive_window,
                    send_window: self.controller.send_window,
                },
                buffer_len: self.buffer_len,
            }
        }
    }

    impl quickcheck::Arbitrary for Input {
        fn arbitrary(g: &mut quickcheck::Gen) -> Self {
            let config = Arc::new(Config::arbitrary(g));
            let rtt = Rtt::arbitrary(g);

            let max_connection_minus_default =
                config.max_connection_receive_window.unwrap_or(usize::MAX)
                    - (config.max_num_streams * (DEFAULT_CREDIT as usize));

            let max_receive_window = if rtt.min().is_none() {
                DEFAULT_CREDIT
            } else {
                g.gen_range(
                    DEFAULT_CREDIT
                        ..(DEFAULT_CREDIT as usize)
                            .saturating_add(max_connection_minus_default)
                            .try_into()
                            .unwrap_or(u32::MAX)
                            .saturating_add(1),
                )
            };
            let receive_window = g.gen_range(0..max_receive_window);
            let buffer_len = g.gen_range(0..max_receive_window as usize);
            let accumulated_max_stream_windows = Arc::new(Mutex::new(g.gen_range(
                (max_receive_window - DEFAULT_CREDIT) as usize
                    ..max_connection_minus_default.saturating_add(1),
            )));
            let mut policy =
                Policy::new(Instant::now() - Duration::from_secs(g.gen_range(0..(60 * 60 * 24))));
            policy.received = g.gen_range(buffer_len as u64..u64::MAX / 2);
            policy.max_rate = g.gen_range(0..u32::MAX) as f64;
            policy.startup = bool::arbitrary(g);
            let send_window = g.gen_range(0..u32::MAX);

            Self {
                controller: FlowController {
                    accumulated_max_stream_windows,
                    rtt,
                    policy,
                    config,
                    receive_window,
                    max_receive_window,
                    send_window,
                },
                buffer_len,
            }
        }
    }

    #[test]
    fn next_window_update() {
        fn property(
            Input {
                mut controller,
                buffer_len,
            }: Input,
        ) {
            controller.next_window_update(buffer_len);
        }

        QuickCheck::new().quickcheck(property as fn(_))
    }
}
