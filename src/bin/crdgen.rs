//! Prints the HealthPolicy CustomResourceDefinition; `crds/healthpolicy.yaml` is its output.

fn main() {
    print!("{}", healthgate::api::crd_yaml());
}
