//! `type: grpc`: the standard health protocol (grpc.health.v1.Health/Check) over HTTP/2,
//! plaintext or (with `tls`) TLS.

use tonic::transport::Channel;
use tonic_health::pb::health_check_response::ServingStatus;
use tonic_health::pb::{HealthCheckRequest, health_client::HealthClient};

use super::client_tls::{ClientTls, is_tls_error};
use super::guard::Blocked;
use super::{CaField, CheckBlock, Observation, Resolved, Target, UrlField};
use crate::api::GrpcCheck;
use crate::health::Reason;
use crate::policy::validate::{Errors, check_address};

impl CheckBlock for GrpcCheck {
    fn url(&self) -> Option<UrlField<'_>> {
        None
    }

    fn ca_from(&self) -> Option<CaField<'_>> {
        let from = self.tls.as_ref()?.ca_from.as_ref()?;
        Some(CaField {
            from,
            at: "tls.caFrom",
        })
    }

    fn target(&self, resolved: Resolved, block: &str, errors: &mut Errors) -> Option<Target> {
        check_address(&self.address, &format!("{block}.address"), errors);
        let tls = self.tls.as_ref().map(|settings| {
            ClientTls::validate(settings, resolved.ca, &format!("{block}.tls"), errors)
        });
        Some(Target::Grpc {
            address: self.address.clone(),
            service: self.service.clone().unwrap_or_default(),
            tls,
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
                if is_tls_error(&status) {
                    return Observation::down(
                        Reason::Tls,
                        format!("{}: {}", status.code(), status.message()),
                    );
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
