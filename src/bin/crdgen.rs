//! Prints the HealthPolicy CustomResourceDefinition; `crds/healthpolicy.yaml` is its output.
use kube::CustomResourceExt;

fn main() {
    let crd = healthgate::HealthPolicy::crd();
    print!(
        "{}",
        serde_saphyr::to_string(&crd).expect("a CRD always serializes to YAML")
    );
}
