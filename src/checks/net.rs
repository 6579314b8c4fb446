use tokio::net::TcpStream;
use tonic::transport::Channel;
use tonic_health::pb::health_check_response::ServingStatus;
use tonic_health::pb::{HealthCheckRequest, health_client::HealthClient};

use super::Observation;
use crate::health::Reason;
use crate::policy::HttpTarget;

/// Enough of a health page to find a marker in, small enough that a huge body costs nothing.
const MAX_BODY_BYTES: usize = 64 * 1024;

pub struct TcpProbe {
    address: String,
}

impl TcpProbe {
    pub fn new(address: String) -> Self {
        Self { address }
    }

    pub async fn run(&self) -> Observation {
        match TcpStream::connect(&self.address).await {
            Ok(stream) => Observation::ok(
                stream
                    .peer_addr()
                    .ok()
                    .map(|peer| format!("connected to {peer}")),
            ),
            Err(e) => Observation::down(Reason::Connect, e.to_string()),
        }
    }
}

pub struct HttpProbe {
    client: reqwest::Client,
    target: HttpTarget,
}

impl HttpProbe {
    pub fn new(client: reqwest::Client, target: HttpTarget) -> Self {
        Self { client, target }
    }

    pub async fn run(&self) -> Observation {
        let url = &self.target.url;
        let mut response = match self.client.get(url.expose()).send().await {
            Ok(response) => response,
            Err(e) => {
                let reason = if e.is_timeout() {
                    Reason::Timeout
                } else {
                    Reason::Connect
                };
                return Observation::down(reason, url.scrub(&error_chain(&e.without_url())));
            }
        };
        let status = response.status().as_u16();
        if !self.target.accepts(status) {
            return Observation::down(Reason::Status, format!("unexpected status {status}"));
        }
        if let Some(needle) = &self.target.body_contains {
            let mut body = Vec::new();
            while body.len() < MAX_BODY_BYTES {
                match response.chunk().await {
                    Ok(Some(chunk)) => body.extend_from_slice(&chunk),
                    Ok(None) => break,
                    Err(e) => {
                        return Observation::down(
                            Reason::Error,
                            url.scrub(&e.without_url().to_string()),
                        );
                    }
                }
            }
            body.truncate(MAX_BODY_BYTES);
            if !String::from_utf8_lossy(&body).contains(needle.as_str()) {
                return Observation::down(
                    Reason::Body,
                    format!("status {status}, body does not contain {needle:?}"),
                );
            }
        }
        Observation::ok(format!("status {status}"))
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

/// "error sending request" alone says nothing; its sources say "connection refused".
fn error_chain(error: &dyn std::error::Error) -> String {
    let mut message = error.to_string();
    let mut source = error.source();
    while let Some(cause) = source {
        message.push_str(": ");
        message.push_str(&cause.to_string());
        source = cause.source();
    }
    message
}
