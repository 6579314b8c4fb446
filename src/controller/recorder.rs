//! Writes Events (events.k8s.io/v1) for one controller. Like kube-runtime's `Recorder` it folds
//! a repeat into an EventSeries with a rising count, but its key includes the note: the Recorder
//! groups by type, action, reason and object only, so a second dependency going down within six
//! minutes was shown with the first one's text. Here two transitions share an Event only when
//! they say exactly the same thing about the same object.

use std::collections::HashMap;
use std::time::Duration;

use k8s_openapi::api::core::v1::ObjectReference;
use k8s_openapi::api::events::v1::{Event, EventSeries};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::MicroTime;
use k8s_openapi::jiff::Timestamp;
use kube::api::{ObjectMeta, Patch, PatchParams, PostParams};
use kube::{Api, Client, ResourceExt};

use super::budget::WriteBudget;
use super::events::Planned;

/// A repeat later than this starts a new Event (the Recorder and client-go use the same window).
const SERIES_WINDOW: Duration = Duration::from_secs(6 * 60);
/// What the Events say they are about.
const ACTION: &str = "Check";

#[derive(Clone, Debug, PartialEq, Eq, Hash)]
struct Key {
    regarding: (Option<String>, Option<String>, Option<String>),
    warning: bool,
    reason: &'static str,
    note: String,
}

pub struct EventRecorder {
    client: Client,
    controller: String,
    instance: String,
    recent: HashMap<Key, Event>,
}

impl EventRecorder {
    pub fn new(client: Client, controller: &str, instance: &str) -> Self {
        Self {
            client,
            controller: controller.to_string(),
            instance: instance.to_string(),
            recent: HashMap::new(),
        }
    }

    /// Creates the Event, or raises the count of the same Event written within the window.
    pub async fn publish(
        &mut self,
        budget: &WriteBudget,
        regarding: &ObjectReference,
        planned: &Planned,
    ) -> Result<(), kube::Error> {
        let now = Timestamp::now();
        let window =
            k8s_openapi::jiff::SignedDuration::try_from(SERIES_WINDOW).expect("the window fits");
        self.recent.retain(|_, event| {
            let last = event
                .series
                .as_ref()
                .map(|s| s.last_observed_time.0)
                .or(event.event_time.as_ref().map(|t| t.0));
            last.is_some_and(|at| at + window > now)
        });
        let key = Key {
            regarding: (
                regarding.namespace.clone(),
                regarding.name.clone(),
                regarding.uid.clone(),
            ),
            warning: planned.warning,
            reason: planned.reason,
            note: planned.note.clone(),
        };
        let namespace = regarding.namespace.as_deref().unwrap_or("default");
        let api: Api<Event> = Api::namespaced(self.client.clone(), namespace);
        budget.acquire().await;
        let written = match self.recent.get(&key) {
            Some(previous) => {
                let mut event = previous.clone();
                let count = event.series.as_ref().map_or(2, |s| s.count + 1);
                event.series = Some(EventSeries {
                    count,
                    last_observed_time: MicroTime(now),
                });
                api.patch(
                    &event.name_any(),
                    &PatchParams::default(),
                    &Patch::Merge(&event),
                )
                .await?;
                event
            }
            None => {
                let event = self.event(regarding, planned, now);
                api.create(&PostParams::default(), &event).await?;
                event
            }
        };
        self.recent.insert(key, written);
        Ok(())
    }

    fn event(&self, regarding: &ObjectReference, planned: &Planned, now: Timestamp) -> Event {
        let object = regarding.name.as_deref().unwrap_or(&self.controller);
        Event {
            metadata: ObjectMeta {
                namespace: regarding.namespace.clone(),
                name: Some(format!("{object}.{:x}", now.as_nanosecond())),
                ..Default::default()
            },
            action: Some(ACTION.into()),
            reason: Some(planned.reason.into()),
            note: Some(planned.note.clone()),
            type_: Some(if planned.warning { "Warning" } else { "Normal" }.into()),
            event_time: Some(MicroTime(now)),
            regarding: Some(regarding.clone()),
            reporting_controller: Some(self.controller.clone()),
            reporting_instance: Some(self.instance.clone()),
            ..Default::default()
        }
    }
}
