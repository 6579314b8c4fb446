//! The controller's write budget: a token bucket every status write and Event spends from, so a
//! fleet of flapping dependencies costs the API server at most `qps` writes per second after a
//! `burst`. Writes that have to wait are not queued one by one: the status writer recomputes the
//! latest status when its turn comes, so intermediate flaps coalesce into one write.

use std::time::Duration;

use tokio::sync::Mutex;
use tokio::time::Instant;

pub struct WriteBudget {
    qps: f64,
    burst: f64,
    state: Mutex<Bucket>,
}

struct Bucket {
    tokens: f64,
    refilled: Instant,
}

impl WriteBudget {
    pub fn new(qps: f64, burst: u32) -> Self {
        let burst = f64::from(burst.max(1));
        Self {
            qps: qps.max(0.01),
            burst,
            state: Mutex::new(Bucket {
                tokens: burst,
                refilled: Instant::now(),
            }),
        }
    }

    /// Spends one write if one is free now and `keep` more would still be left, without
    /// waiting; false if not (or if a writer is waiting for its turn).
    pub fn try_acquire(&self, keep: f64) -> bool {
        let Ok(mut bucket) = self.state.try_lock() else {
            return false;
        };
        let now = Instant::now();
        bucket.tokens = (bucket.tokens
            + now.duration_since(bucket.refilled).as_secs_f64() * self.qps)
            .min(self.burst);
        bucket.refilled = now;
        if bucket.tokens < 1.0 + keep {
            return false;
        }
        bucket.tokens -= 1.0;
        true
    }

    /// Half the burst: what spending that can wait (latency refreshes) leaves for news.
    pub fn reserve(&self) -> f64 {
        self.burst / 2.0
    }

    /// Waits until one write may go out, and spends it.
    pub async fn acquire(&self) {
        let mut bucket = self.state.lock().await;
        let now = Instant::now();
        bucket.tokens = (bucket.tokens
            + now.duration_since(bucket.refilled).as_secs_f64() * self.qps)
            .min(self.burst);
        bucket.refilled = now;
        if bucket.tokens < 1.0 {
            // Holding the lock while waiting keeps the order of writers fair.
            let wait = Duration::from_secs_f64((1.0 - bucket.tokens) / self.qps);
            tokio::time::sleep(wait).await;
            bucket.tokens = 1.0;
            bucket.refilled = Instant::now();
        }
        bucket.tokens -= 1.0;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn a_burst_then_qps() {
        let budget = WriteBudget::new(2.0, 3);
        let start = Instant::now();
        for _ in 0..3 {
            budget.acquire().await;
        }
        assert_eq!(start.elapsed(), Duration::ZERO, "the burst is free");
        for _ in 0..4 {
            budget.acquire().await;
        }
        // Four more at 2 per second take two seconds (virtual time).
        let spent = start.elapsed().as_secs_f64();
        assert!((spent - 2.0).abs() < 0.01, "{spent}");
    }

    #[tokio::test(start_paused = true)]
    async fn trying_never_waits_and_keeps_what_it_is_asked_to() {
        let budget = WriteBudget::new(2.0, 4);
        assert!(budget.try_acquire(2.0), "4 → 3");
        assert!(budget.try_acquire(2.0), "3 → 2");
        assert!(!budget.try_acquire(2.0), "2 → 1 would leave fewer than 2");
        assert!(budget.try_acquire(0.0), "2 → 1");
        assert!(budget.try_acquire(0.0), "1 → 0");
        assert!(!budget.try_acquire(0.0), "empty");
        tokio::time::advance(Duration::from_millis(500)).await;
        assert!(budget.try_acquire(0.0), "refilled by one");
        assert!(!budget.try_acquire(0.0));
    }
}
