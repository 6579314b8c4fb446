//! The aggregate /ready answer, serialised once and reused until something it depends on
//! changes: a checker publishes, a policy is applied or removed, or a result turns stale. Probes
//! then cost a reference count instead of a report and a JSON encoding.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use arc_swap::ArcSwapOption;
use bytes::Bytes;
use tokio::sync::watch;

use super::View;

#[derive(Clone)]
pub struct Rendered {
    pub status: u16,
    pub body: Bytes,
}

/// An answer that took at least this long to render is expensive (about 100 policies and up).
const EXPENSIVE: Duration = Duration::from_millis(1);
/// An expensive answer is re-rendered at most once per this many times its own render time, so
/// rendering takes at most about a tenth of a core however often checks publish. At 10,000
/// checks (publishing ~1,000 times a second) that is a few renders a second instead of a
/// thousand; below [`EXPENSIVE`] every publish is seen at once, as before.
const REST_FACTOR: u32 = 10;

struct Cached {
    generation: u64,
    /// When and how long the render took: an expensive one rests (see [`REST_FACTOR`]).
    rendered_at: Instant,
    cost: Duration,
    /// When the first fresh result turns stale, changing the answer without any publish.
    expires: Option<Instant>,
    rendered: Rendered,
}

/// Bumped by everything that changes what /ready would say. Probes read the counter (one
/// atomic load); listeners that must react to changes (the gRPC health server) wait on the
/// channel instead of polling.
pub struct Generation {
    value: AtomicU64,
    changed: watch::Sender<()>,
}

impl Default for Generation {
    fn default() -> Self {
        Self {
            value: AtomicU64::new(0),
            changed: watch::Sender::new(()),
        }
    }
}

impl Generation {
    pub fn bump(&self) {
        self.value.fetch_add(1, Ordering::Release);
        self.changed.send_replace(());
    }

    fn load(&self) -> u64 {
        self.value.load(Ordering::Acquire)
    }

    /// A receiver that wakes after every later [`Generation::bump`].
    pub fn subscribe(&self) -> watch::Receiver<()> {
        self.changed.subscribe()
    }
}

/// One entry per [`View`]: callers with and without details each get a cached body. The
/// entries are swapped, not locked: a read lock's shared counter would bounce between the cores
/// that serve probes on every request.
#[derive(Default)]
pub struct ReadyCache {
    generation: Arc<Generation>,
    full: ArcSwapOption<Cached>,
    status_only: ArcSwapOption<Cached>,
    /// One request renders an outdated expensive answer; the others are served the old one
    /// meanwhile instead of all rendering it at once.
    rendering: AtomicBool,
}

impl ReadyCache {
    /// A handle for writers (checkers) to mark the cache outdated.
    pub fn generation(&self) -> Arc<Generation> {
        self.generation.clone()
    }

    pub fn invalidate(&self) {
        self.generation.bump();
    }

    pub fn get_or_render(
        &self,
        view: View,
        now: Instant,
        render: impl FnOnce() -> (Rendered, Option<Instant>),
    ) -> Rendered {
        // Read before rendering: a publish during the render leaves the entry already outdated.
        let generation = self.generation.load();
        let slot = match view {
            View::Full => &self.full,
            View::StatusOnly => &self.status_only,
        };
        let cached = slot.load_full();
        let mut claimed = None;
        if let Some(cached) = cached.as_deref() {
            let current =
                cached.generation == generation && cached.expires.is_none_or(|at| now < at);
            if current || cached.resting() {
                return cached.rendered.clone();
            }
            if cached.cost >= EXPENSIVE {
                match Claim::take(&self.rendering) {
                    Some(claim) => claimed = Some(claim),
                    None => return cached.rendered.clone(),
                }
            }
        }
        let rendered_at = Instant::now();
        let (rendered, expires) = render();
        slot.store(Some(Arc::new(Cached {
            generation,
            expires,
            rendered_at,
            cost: rendered_at.elapsed(),
            rendered: rendered.clone(),
        })));
        drop(claimed);
        rendered
    }
}

impl Cached {
    fn resting(&self) -> bool {
        self.cost >= EXPENSIVE && self.rendered_at.elapsed() < self.cost * REST_FACTOR
    }
}

/// The right to render, given back when dropped (also if the render panics).
struct Claim<'a>(&'a AtomicBool);

impl<'a> Claim<'a> {
    fn take(flag: &'a AtomicBool) -> Option<Self> {
        (!flag.swap(true, Ordering::Acquire)).then_some(Self(flag))
    }
}

impl Drop for Claim<'_> {
    fn drop(&mut self) {
        self.0.store(false, Ordering::Release);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn render(n: u16) -> (Rendered, Option<Instant>) {
        (
            Rendered {
                status: n,
                body: Bytes::new(),
            },
            None,
        )
    }

    #[test]
    fn reuses_until_invalidated_or_expired() {
        let cache = ReadyCache::default();
        let now = Instant::now();
        assert_eq!(cache.get_or_render(View::Full, now, || render(1)).status, 1);
        assert_eq!(
            cache.get_or_render(View::Full, now, || render(2)).status,
            1,
            "reused"
        );
        cache.invalidate();
        assert_eq!(
            cache.get_or_render(View::Full, now, || render(3)).status,
            3,
            "a publish re-renders"
        );

        let expiring = || {
            (
                Rendered {
                    status: 4,
                    body: Bytes::new(),
                },
                Some(now + Duration::from_secs(1)),
            )
        };
        cache.invalidate();
        assert_eq!(cache.get_or_render(View::Full, now, expiring).status, 4);
        assert_eq!(
            cache.get_or_render(View::Full, now, || render(5)).status,
            4,
            "still fresh"
        );
        assert_eq!(
            cache
                .get_or_render(View::Full, now + Duration::from_secs(2), || render(6))
                .status,
            6,
            "stale re-renders"
        );
        assert_eq!(
            cache
                .get_or_render(View::StatusOnly, now, || render(7))
                .status,
            7,
            "each view has its own entry"
        );
        assert_eq!(cache.get_or_render(View::Full, now, || render(8)).status, 6);
    }

    #[test]
    fn an_expensive_answer_rests_and_one_request_renders_it_while_others_get_the_old_one() {
        let cache = ReadyCache::default();
        let now = Instant::now();
        let slow = |n: u16| {
            move || {
                std::thread::sleep(Duration::from_millis(3));
                render(n)
            }
        };
        assert_eq!(cache.get_or_render(View::Full, now, slow(1)).status, 1);
        cache.invalidate();
        assert_eq!(
            cache.get_or_render(View::Full, now, || render(2)).status,
            1,
            "resting for 10x its 3 ms render"
        );
        std::thread::sleep(Duration::from_millis(40));
        let nested = cache.get_or_render(View::Full, now, || {
            let meanwhile = cache.get_or_render(View::Full, now, || render(3));
            assert_eq!(meanwhile.status, 1, "served the old answer while rendering");
            std::thread::sleep(Duration::from_millis(2));
            render(4)
        });
        assert_eq!(nested.status, 4);
        assert!(!cache.rendering.load(Ordering::Acquire), "claim given back");
    }
}
