//! The one heartbeat, used by both ends of a session: a ping on the control stream every
//! `ping_interval`, and the peer judged dead when no answer was *read* for `liveness_timeout`.
//!
//! Liveness is judged by answers read, never by writes succeeding: a write into a dead TCP
//! connection succeeds for minutes (the kernel buffers it), while a peer that answers is there.

use std::time::Duration;

use tokio::time::{Instant, Interval, MissedTickBehavior};

/// Ping schedule and liveness of one session's peer.
#[derive(Debug)]
pub struct Heartbeat {
    ticker: Interval,
    seq: u64,
    /// When the ping numbered `seq` was due (its answer gives the round-trip time).
    sent: Instant,
    last_answer: Instant,
    liveness_timeout: Duration,
}

/// What is due when the ping schedule fires.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Beat {
    /// Send a ping with this sequence number.
    Ping(u64),
    /// The peer answered nothing for this long, more than the liveness timeout: it is gone.
    Silent(Duration),
}

impl Heartbeat {
    /// A heartbeat whose first ping is due one `interval` from now. A late tick (a busy runtime)
    /// delays the schedule rather than sending a burst of pings.
    pub fn new(interval: Duration, liveness_timeout: Duration) -> Self {
        let mut ticker = tokio::time::interval_at(Instant::now() + interval, interval);
        ticker.set_missed_tick_behavior(MissedTickBehavior::Delay);
        Heartbeat {
            ticker,
            seq: 0,
            sent: Instant::now(),
            last_answer: Instant::now(),
            liveness_timeout,
        }
    }

    /// Completes when the next ping is due: the ping to send, or the verdict that the peer is gone.
    /// Cancel-safe, so it can sit in a `select!`.
    pub async fn due(&mut self) -> Beat {
        self.ticker.tick().await;
        let silent = self.last_answer.elapsed();
        if silent > self.liveness_timeout {
            return Beat::Silent(silent);
        }
        self.seq += 1;
        self.sent = Instant::now();
        Beat::Ping(self.seq)
    }

    /// The peer answered the ping numbered `seq` (any answer counts for liveness: it proves the
    /// peer reads and writes). Returns the round trip when it answers the latest ping; it is
    /// measured on the control stream, so it includes the time the ping waited behind data.
    pub fn answered(&mut self, seq: u64) -> Option<Duration> {
        self.last_answer = Instant::now();
        (seq == self.seq && seq != 0).then(|| self.sent.elapsed())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const INTERVAL: Duration = Duration::from_secs(10);
    const LIVENESS: Duration = Duration::from_secs(30);

    #[tokio::test(start_paused = true)]
    async fn pings_on_schedule_with_rising_sequence_numbers() {
        let start = Instant::now();
        let mut hb = Heartbeat::new(INTERVAL, LIVENESS);
        for n in 1..=5 {
            assert_eq!(hb.due().await, Beat::Ping(n));
            assert_eq!(start.elapsed(), INTERVAL * u32::try_from(n).unwrap());
            hb.answered(0);
        }
    }

    #[tokio::test(start_paused = true)]
    async fn a_peer_that_never_answers_is_silent_after_the_liveness_timeout() {
        let start = Instant::now();
        let mut hb = Heartbeat::new(INTERVAL, LIVENESS);
        // Pings at 10, 20 and 30 s: 30 s of silence is not yet more than the timeout.
        for n in 1..=3 {
            assert_eq!(hb.due().await, Beat::Ping(n));
        }
        assert_eq!(hb.due().await, Beat::Silent(Duration::from_secs(40)));
        assert_eq!(start.elapsed(), Duration::from_secs(40));
    }

    #[tokio::test(start_paused = true)]
    async fn an_answer_restarts_the_liveness_clock() {
        let mut hb = Heartbeat::new(INTERVAL, LIVENESS);
        for n in 1..=3 {
            assert_eq!(hb.due().await, Beat::Ping(n));
        }
        hb.answered(0); // at 30 s
        for n in 4..=6 {
            assert_eq!(hb.due().await, Beat::Ping(n));
        }
        assert!(matches!(hb.due().await, Beat::Silent(d) if d == Duration::from_secs(40)));
    }

    #[tokio::test(start_paused = true)]
    async fn the_answer_to_the_latest_ping_gives_its_round_trip() {
        let mut hb = Heartbeat::new(INTERVAL, LIVENESS);
        assert_eq!(hb.due().await, Beat::Ping(1));
        tokio::time::advance(Duration::from_millis(42)).await;
        assert_eq!(hb.answered(1), Some(Duration::from_millis(42)));
        assert_eq!(hb.due().await, Beat::Ping(2));
        // A late answer to an older ping proves liveness but measures nothing.
        assert_eq!(hb.answered(1), None);
        assert_eq!(hb.answered(0), None);
    }
}
