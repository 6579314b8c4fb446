//! "Every policy of the first list is loaded": a one-way gate between the policy source, which
//! opens it, and the server, which answers /ready 503 until then (Kubernetes mode starts with an
//! empty engine, which would otherwise read as "nothing to fail, ready").

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use tokio::sync::Notify;

#[derive(Debug, Default)]
struct Gate {
    open: AtomicBool,
    opened: Notify,
}

/// The server's side: cheap to read on every probe.
#[derive(Clone, Debug)]
pub struct Synced(Arc<Gate>);

/// The source's side; opening consumes it, so nothing can close the gate again.
#[derive(Debug)]
pub struct Opener(Arc<Gate>);

/// A closed gate and the one handle that opens it.
pub fn gate() -> (Opener, Synced) {
    let gate = Arc::new(Gate::default());
    (Opener(gate.clone()), Synced(gate))
}

impl Synced {
    /// A gate that is open from the start: a policy file is loaded before the server starts.
    pub fn open() -> Self {
        let gate = Gate::default();
        gate.open.store(true, Ordering::Release);
        Self(Arc::new(gate))
    }

    pub fn is_synced(&self) -> bool {
        self.0.open.load(Ordering::Acquire)
    }

    /// Returns once the gate is open, for tasks that wait instead of polling.
    pub async fn opened(&self) {
        let notified = self.0.opened.notified();
        tokio::pin!(notified);
        // Registered before the check, so an open between the check and the await is not missed.
        notified.as_mut().enable();
        if self.is_synced() {
            return;
        }
        notified.await;
    }
}

impl Opener {
    pub fn open(self) {
        self.0.open.store(true, Ordering::Release);
        self.0.opened.notify_waiters();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn opens_once_and_stays_open() {
        let (opener, synced) = gate();
        let reader = synced.clone();
        assert!(!reader.is_synced());
        opener.open();
        assert!(synced.is_synced() && reader.is_synced());
        assert!(Synced::open().is_synced());
    }

    #[tokio::test]
    async fn waiters_wake_when_it_opens() {
        let (opener, synced) = gate();
        let waiter = tokio::spawn({
            let synced = synced.clone();
            async move { synced.opened().await }
        });
        tokio::task::yield_now().await;
        assert!(!waiter.is_finished());
        opener.open();
        tokio::time::timeout(std::time::Duration::from_secs(5), waiter)
            .await
            .expect("woken")
            .unwrap();
        // Already open: returns at once.
        synced.opened().await;
    }
}
