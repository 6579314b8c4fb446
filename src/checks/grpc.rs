//! `type: grpc`: the standard health protocol (grpc.health.v1.Health/Check) over plaintext HTTP/2.

use tonic::transport::Channel;
use tonic_health::pb::health_check_response::ServingStatus;
use tonic_health::pb::{HealthCheckRequest, health_client::HealthClient};

use super::guard::Blocked;
use super::{CheckBlock, Observation, Resolved, Target, UrlField};
use crate::api::GrpcCheck;
use crate::health::Reason;
use crate::policy::validate::{Errors, check_address};

impl CheckBlock for GrpcCheck {
    fn url(&self) -> Option<UrlField<'_>> {
        None
    }

    fn target(&self, _resolved: Resolved, block: &str, errors: &mut Errors) -> Option<Target> {
        check_address(&self.address, &format!("{block}.address"), errors);
        Some(Target::Grpc {
            address: self.address.clone(),
            service: self.service.clone().unwrap_or_default(),
        })
    }
}

pub struct GrpcProbe {
    channel: Result<Channel, String>,
    service: String,
}

impl GrpcProbe {
    pub fn new(channel: Result<Channel, String>, service: String) -> Self {
        Self { channel, service }
    }

    pub async fn run(&self) -> Observation {
        let channel = match &self.channel {
            Ok(channel) => channel.clone(),
            Err(e) => return Observation::down(Reason::Config, e.clone()),
        };
        let request = HealthCheckRequest {
            service: self.service.clone(),
        };
        match HealthClient::new(channel).check(request).await {
            Ok(response) => match response.into_inner().status() {
                ServingStatus::Serving => Observation::ok("SERVING".to_string()),
                other => Observation::down(
                    Reason::NotServing,
                    format!("health status {}", other.as_str_name()),
                ),
            },
            Err(status) => {
                if let Some(blocked) = Blocked::find(&status) {
                    return Observation::blocked(blocked);
                }
                let reason = match status.code() {
                    tonic::Code::Unavailable => Reason::Connect,
                    tonic::Code::DeadlineExceeded => Reason::Timeout,
                    tonic::Code::NotFound => Reason::NotServing,
                    _ => Reason::Error,
                };
                Observation::down(reason, format!("{}: {}", status.code(), status.message()))
            }
        }
    }
}
