//! "Every policy of the first list is loaded": a one-way gate between the policy source, which
//! opens it, and the server, which answers /ready 503 until then (Kubernetes mode starts with an
//! empty engine, which would otherwise read as "nothing to fail, ready").

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

/// The server's side: cheap to read on every probe.
#[derive(Clone, Debug)]
pub struct Synced(Arc<AtomicBool>);

/// The source's side; opening consumes it, so nothing can close the gate again.
#[derive(Debug)]
pub struct Opener(Arc<AtomicBool>);

/// A closed gate and the one handle that opens it.
pub fn gate() -> (Opener, Synced) {
    let flag = Arc::new(AtomicBool::new(false));
    (Opener(flag.clone()), Synced(flag))
}

impl Synced {
    /// A gate that is open from the start: a policy file is loaded before the server starts.
    pub fn open() -> Self {
        Self(Arc::new(AtomicBool::new(true)))
    }

    pub fn is_synced(&self) -> bool {
        self.0.load(Ordering::Acquire)
    }
}

impl Opener {
    pub fn open(self) {
        self.0.store(true, Ordering::Release);
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
}
