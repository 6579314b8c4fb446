//! Prints the HealthPolicy CustomResourceDefinition; `crds/healthpolicy.yaml` is its output.
#![forbid(unsafe_code)]

fn main() {
    print!("{}", healthgate::api::crd_yaml());
}
