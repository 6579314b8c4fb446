//! `type: tcp`: a TCP connect to `host:port`.

use std::sync::Arc;

use tokio::net::TcpStream;

use super::guard::{self, ResolveError, TargetGuard};
use super::{CheckBlock, Observation, Resolved, Target, UrlField};
use crate::api::TcpCheck;
use crate::health::Reason;
use crate::policy::validate::{Errors, check_address};

impl CheckBlock for TcpCheck {
    fn url(&self) -> Option<UrlField<'_>> {
        None
    }

    fn target(&self, _resolved: Resolved, block: &str, errors: &mut Errors) -> Option<Target> {
        check_address(&self.address, &format!("{block}.address"), errors);
        Some(Target::Tcp {
            address: self.address.clone(),
        })
    }
}

pub struct TcpProbe {
    address: String,
    guard: Option<Arc<TargetGuard>>,
}

impl TcpProbe {
    pub fn new(address: String, guard: Option<Arc<TargetGuard>>) -> Self {
        Self { address, guard }
    }

    pub async fn run(&self) -> Observation {
        let connected = match &self.guard {
            None => TcpStream::connect(&self.address).await,
            // Resolved once, judged, and connected to exactly what was judged.
            Some(guard) => match connect_checked(guard, &self.address).await {
                Ok(connected) => connected,
                Err(observation) => return observation,
            },
        };
        match connected {
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

/// Resolves `host:port`, asks the guard about every address and connects to those addresses
/// only. `Err` is the observation to report (blocked, or a failed lookup); `Ok` carries the
/// connect result.
pub(super) async fn connect_checked(
    guard: &TargetGuard,
    address: &str,
) -> Result<std::io::Result<TcpStream>, Observation> {
    let Some((host, port)) = split_host_port(address) else {
        return Err(Observation::down(
            Reason::Config,
            format!("{address:?} is not host:port"),
        ));
    };
    match guard::resolve(guard, host, port).await {
        Ok(addresses) => Ok(TcpStream::connect(&addresses[..]).await),
        Err(ResolveError::Blocked(b)) => Err(Observation::blocked(&b)),
        Err(ResolveError::Lookup(message)) => Err(Observation::down(Reason::Connect, message)),
    }
}

/// `host:port` or `[v6]:port`, as validation accepts them.
pub(super) fn split_host_port(address: &str) -> Option<(&str, u16)> {
    let (host, port) = address.rsplit_once(':')?;
    Some((host, port.parse().ok()?))
}
