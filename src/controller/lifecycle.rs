//! Policies coming and going, from the watch stream itself: a delete event stops the policy's
//! checkers at once, and every (re)list ends by forgetting the policies it no longer contains —
//! deletes missed during a watch gap, or policies that stopped matching the selector. The first
//! list also decides when /ready may start answering for real (see [`open_after_first_list`]).

use std::collections::BTreeSet;
use std::sync::Arc;

use kube::ResourceExt;
use kube::runtime::reflector::{ObjectRef, Store};
use kube::runtime::watcher::Event;
use tokio::sync::oneshot;
use tokio_util::sync::CancellationToken;
use tracing::info;

use super::Context;
use crate::api::HealthPolicy;
use crate::engine::PolicyKey;
use crate::first_sync;

/// Follows one policy watch stream; fed every event after the reflector has stored it.
pub struct Lifecycle {
    ctx: Arc<Context>,
    /// The keys of the list in progress, between `Init` and `InitDone`.
    listing: Option<BTreeSet<PolicyKey>>,
    /// Hands the first complete list to [`open_after_first_list`].
    first_list: Option<oneshot::Sender<BTreeSet<PolicyKey>>>,
}

impl Lifecycle {
    /// The follower, and where its first complete list will arrive.
    pub fn new(ctx: Arc<Context>) -> (Self, oneshot::Receiver<BTreeSet<PolicyKey>>) {
        let (tx, rx) = oneshot::channel();
        let lifecycle = Self {
            ctx,
            listing: None,
            first_list: Some(tx),
        };
        (lifecycle, rx)
    }

    pub fn on_event(&mut self, event: &Event<HealthPolicy>) {
        match event {
            Event::Init => self.listing = Some(BTreeSet::new()),
            Event::InitApply(policy) => {
                if let Some(listing) = &mut self.listing {
                    listing.insert(key_of(policy));
                }
            }
            Event::InitDone => {
                let listed = self.listing.take().unwrap_or_default();
                for key in self.ctx.known() {
                    if !listed.contains(&key) {
                        self.ctx.forget(&key);
                    }
                }
                if let Some(first) = self.first_list.take() {
                    let _ = first.send(listed);
                }
            }
            Event::Delete(policy) => self.ctx.forget(&key_of(policy)),
            Event::Apply(_) => {}
        }
    }
}

fn key_of(policy: &HealthPolicy) -> PolicyKey {
    PolicyKey::new(policy.namespace().unwrap_or_default(), policy.name_any())
}

/// Opens `gate` once every policy of the first list has been reconciled (or has gone since).
/// Woken by reconciles and deletes; never polls.
pub async fn open_after_first_list(
    ctx: Arc<Context>,
    first_list: oneshot::Receiver<BTreeSet<PolicyKey>>,
    store: Store<HealthPolicy>,
    gate: first_sync::Opener,
    cancel: CancellationToken,
) {
    let mut observed = ctx.observed.subscribe();
    let mut pending = tokio::select! {
        _ = cancel.cancelled() => return,
        listed = first_list => match listed {
            Ok(listed) => listed,
            Err(_) => return,
        },
    };
    let total = pending.len();
    loop {
        {
            let reconciled = observed.borrow_and_update();
            pending.retain(|key| {
                let still_there = store
                    .get(&ObjectRef::new(&key.name).within(&key.namespace))
                    .is_some();
                still_there && !reconciled.contains_key(key)
            });
        }
        if pending.is_empty() {
            info!(
                policies = total,
                "initial policies loaded; /ready now reports them"
            );
            gate.open();
            return;
        }
        tokio::select! {
            _ = cancel.cancelled() => return,
            changed = observed.changed() => if changed.is_err() { return },
        }
    }
}
