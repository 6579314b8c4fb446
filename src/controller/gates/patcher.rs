//! The one API call pod gates make: a strategic merge patch of `pods/status` that carries only
//! the `healthgate.dev/ready` condition. Pod conditions merge by `type`, so the kubelet's own
//! conditions (Ready, ContainersReady, PodScheduled, ...) are never sent and never clobbered.

use k8s_openapi::api::core::v1::Pod;
use kube::api::{Patch, PatchParams};
use kube::{Api, Client};
use serde_json::json;

use super::decide::Write;

/// Writes one planned condition. The pod's uid rides along: the API server refuses to change
/// a uid, so a pod deleted and recreated under the same name (a StatefulSet's) is never given
/// the condition planned for its predecessor.
pub async fn patch(client: &Client, write: &Write) -> Result<(), kube::Error> {
    let api: Api<Pod> = Api::namespaced(client.clone(), &write.namespace);
    let patch = json!({
        "metadata": {"uid": write.uid},
        "status": {"conditions": [write.condition]},
    });
    api.patch_status(
        &write.name,
        &PatchParams::default(),
        &Patch::Strategic(patch),
    )
    .await
    .map(|_| ())
}

/// A pod that went away between the plan and the write: nothing to do.
pub fn is_gone(error: &kube::Error) -> bool {
    matches!(error, kube::Error::Api(status) if status.code == 404)
}
