//! When checks run. Each checker owns a fixed phase within its interval, so thousands of
//! checkers spread evenly over the interval and stay spread: a restart, a reload or a new
//! policy never lines them up again. The phase comes from a hash of what is checked (plus a
//! per-process salt), so identical targets of several policies land on the same instant and
//! share one probe run (see `flight.rs`), while replicas of one service do not probe a server in
//! lockstep.
//!
//! A new checker without a result would leave its policy unknown until its phase comes round,
//! so it checks at once while the start budget allows: a small burst, refilled slowly. Past the
//! budget (a start-up with thousands of checks) it waits for its phase, and the first round is
//! as spread as every later one.

use std::hash::{BuildHasher, Hash};
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// Checks allowed to start at once, ahead of their phase.
const START_BURST: f64 = 64.0;
/// How fast the start budget refills, per second.
const START_REFILL_PER_SECOND: f64 = 64.0;
/// Checks admitted at once still start within this window, not in the same instant: the
/// policies of a set are applied one after another, and a `type: policy` check that ran before
/// its upstream was applied would see no such policy.
const FIRST_CHECK_SPREAD: Duration = Duration::from_millis(50);

/// The grid every checker's runs sit on: `origin + phase + k × interval`.
pub struct Clock {
    origin: Instant,
    salt: std::hash::RandomState,
    budget: Mutex<Bucket>,
}

impl Default for Clock {
    fn default() -> Self {
        Self::new(Instant::now())
    }
}

impl Clock {
    pub fn new(origin: Instant) -> Self {
        Self {
            origin,
            salt: std::hash::RandomState::new(),
            budget: Mutex::new(Bucket::full(origin)),
        }
    }

    /// Where in `interval` runs of `what` fall; stable for the life of the process.
    pub fn phase(&self, what: &impl Hash, interval: Duration) -> Duration {
        let nanos = interval.as_nanos().max(1);
        let hash = u128::from(self.salt.hash_one(what));
        Duration::from_nanos(u64::try_from(hash % nanos).unwrap_or(0))
    }

    /// The first run of a checker on `phase` strictly after `after`.
    pub fn next_run(&self, phase: Duration, interval: Duration, after: Instant) -> Instant {
        next_on_grid(self.origin + phase, interval, after)
    }

    /// When a new checker without a result runs first: within [`FIRST_CHECK_SPREAD`] of `now`
    /// if the start budget has room, else at its next phase.
    pub fn first_run(&self, phase: Duration, interval: Duration, now: Instant) -> Instant {
        let admitted = self.budget.lock().expect("start budget lock").take(now);
        if admitted {
            let spread = FIRST_CHECK_SPREAD.as_nanos().max(1);
            now + Duration::from_nanos(u64::try_from(phase.as_nanos() % spread).unwrap_or(0))
        } else {
            self.next_run(phase, interval, now)
        }
    }
}

/// The smallest `start + k × interval` (k ≥ 0) strictly after `after`.
fn next_on_grid(start: Instant, interval: Duration, after: Instant) -> Instant {
    if start > after {
        return start;
    }
    let step = interval.as_nanos().max(1);
    let passed = after.duration_since(start).as_nanos() / step + 1;
    let ahead = u64::try_from(passed * step).unwrap_or(u64::MAX);
    start + Duration::from_nanos(ahead)
}

/// A token bucket of check starts.
struct Bucket {
    tokens: f64,
    refilled: Instant,
}

impl Bucket {
    fn full(now: Instant) -> Self {
        Self {
            tokens: START_BURST,
            refilled: now,
        }
    }

    fn take(&mut self, now: Instant) -> bool {
        let elapsed = now.saturating_duration_since(self.refilled).as_secs_f64();
        self.tokens = (self.tokens + elapsed * START_REFILL_PER_SECOND).min(START_BURST);
        self.refilled = now.max(self.refilled);
        if self.tokens >= 1.0 {
            self.tokens -= 1.0;
            true
        } else {
            false
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const SECOND: Duration = Duration::from_secs(1);

    #[test]
    fn the_next_run_is_the_first_grid_point_after_now() {
        let t0 = Instant::now();
        let start = t0 + Duration::from_millis(300);
        assert_eq!(next_on_grid(start, SECOND, t0), start);
        assert_eq!(next_on_grid(start, SECOND, start), start + SECOND);
        assert_eq!(
            next_on_grid(start, SECOND, start + Duration::from_millis(2500)),
            start + 3 * SECOND
        );
    }

    #[test]
    fn phases_are_stable_within_the_interval_and_spread_over_it() {
        let clock = Clock::new(Instant::now());
        let interval = Duration::from_secs(10);
        assert_eq!(
            clock.phase(&"db", interval),
            clock.phase(&"db", interval),
            "one target, one phase"
        );
        // 10,000 checkers over 100 slots of 100 ms: no slot far above the mean of 100.
        let mut slots = [0u32; 100];
        for i in 0..10_000 {
            let phase = clock.phase(&("policy", i), interval);
            assert!(phase < interval);
            slots[usize::try_from(phase.as_millis() / 100).unwrap()] += 1;
        }
        let busiest = slots.iter().max().unwrap();
        assert!(*busiest < 200, "busiest 100 ms slot has {busiest} starts");
    }

    #[test]
    fn the_start_budget_admits_a_burst_then_sends_the_rest_to_their_phase() {
        let t0 = Instant::now();
        let clock = Clock::new(t0);
        let interval = Duration::from_secs(10);
        let phase = Duration::from_millis(4_010);
        let soon = FIRST_CHECK_SPREAD;
        let now_count = (0..1000)
            .filter(|_| clock.first_run(phase, interval, t0) < t0 + soon)
            .count();
        assert_eq!(now_count, 64);
        assert_eq!(clock.first_run(phase, interval, t0), t0 + phase);
        // A second later the budget has refilled by 64.
        let later = t0 + SECOND;
        let refilled = (0..100)
            .filter(|_| clock.first_run(phase, interval, later) < later + soon)
            .count();
        assert_eq!(refilled, 64);
    }
}
