//! How the controller's watches retry while the API server is away. kube-runtime's default
//! doubles from 0.8 s to 30 s and resets only after 120 s without errors, so after an outage an
//! edit waited up to a minute (measured: 25–63 s). Here the delay doubles from
//! [`INITIAL`] to at most [`MAX`] and resets on the first item the watch delivers after an
//! error, so a returning API server is seen within [`MAX`] and the relist that follows
//! (`410 Expired` included) starts at once.

use std::time::Duration;

use kube::runtime::utils::Backoff;

const INITIAL: Duration = Duration::from_millis(200);
/// The longest a watch waits between attempts: the bound on "API server back → edits live",
/// and at most one list/watch attempt per watch per second during an outage.
pub const MAX: Duration = Duration::from_secs(1);

#[derive(Clone, Debug)]
pub struct WatchBackoff {
    next: Duration,
}

impl Default for WatchBackoff {
    fn default() -> Self {
        Self { next: INITIAL }
    }
}

impl Iterator for WatchBackoff {
    type Item = Duration;

    fn next(&mut self) -> Option<Duration> {
        let delay = self.next;
        self.next = (self.next * 2).min(MAX);
        Some(delay)
    }
}

impl Backoff for WatchBackoff {
    fn reset(&mut self) {
        self.next = INITIAL;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn doubles_to_the_cap_and_resets() {
        let mut backoff = WatchBackoff::default();
        let delays: Vec<u128> = backoff.by_ref().take(6).map(|d| d.as_millis()).collect();
        assert_eq!(delays, [200, 400, 800, 1000, 1000, 1000]);
        backoff.reset();
        assert_eq!(backoff.next(), Some(INITIAL));
    }
}
