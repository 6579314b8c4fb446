//! `type: tcp`: a TCP connect to `host:port`.

use tokio::net::TcpStream;

use super::{CheckBlock, Observation, Target, UrlField};
use crate::api::TcpCheck;
use crate::health::Reason;
use crate::policy::validate::{Errors, check_address};
use crate::secret::SecretUrl;

impl CheckBlock for TcpCheck {
    fn url(&self) -> Option<UrlField<'_>> {
        None
    }

    fn target(&self, _url: Option<SecretUrl>, block: &str, errors: &mut Errors) -> Option<Target> {
        check_address(&self.address, &format!("{block}.address"), errors);
        Some(Target::Tcp {
            address: self.address.clone(),
        })
    }
}

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
