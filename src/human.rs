//! Durations as people read them in log lines and messages: `297ms`, `1.2s`, `30s`, `2m5s`, not
//! `1.187090867s` (what `Debug` prints for a jittered pause).

use std::fmt;
use std::time::Duration;

/// Displays a duration rounded to what matters at its size.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Human(pub Duration);

impl fmt::Display for Human {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let d = self.0;
        let ms = d.as_millis();
        if ms < 1000 {
            write!(f, "{ms}ms")
        } else if ms < 10_000 {
            // One decimal, rounded: 1.25 s -> "1.3s" would need care at 9.96 s -> "10.0s"; tenths
            // of a second are computed in integers instead.
            let tenths = (ms + 50) / 100;
            if tenths >= 100 {
                write!(f, "10s")
            } else {
                write!(f, "{}.{}s", tenths / 10, tenths % 10)
            }
        } else if ms < 60_000 {
            write!(f, "{}s", (ms + 500) / 1000)
        } else {
            let secs = (ms + 500) / 1000;
            write!(f, "{}m{}s", secs / 60, secs % 60)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rounds_to_what_matters_at_each_size() {
        let h = |ms: u64| Human(Duration::from_millis(ms)).to_string();
        assert_eq!(h(0), "0ms");
        assert_eq!(h(297), "297ms");
        assert_eq!(h(1187), "1.2s");
        assert_eq!(h(9960), "10s");
        assert_eq!(h(30_002), "30s");
        assert_eq!(h(125_000), "2m5s");
        assert_eq!(
            Human(Duration::from_nanos(1_187_090_867)).to_string(),
            "1.2s"
        );
    }
}
