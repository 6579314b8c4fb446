//! `type: postgres`: `SELECT 1` on a pooled connection.

use std::sync::Arc;
use std::time::Duration;

use sqlx::postgres::{PgConnectOptions, PgPool, PgSslMode};

use super::connections::{Connections, postgres_pool};
use super::guard::{ClientSource, PreCheck, TargetGuard};
use super::{CheckBlock, Observation, Resolved, Target, UrlField};
use crate::api::PostgresCheck;
use crate::policy::validate::Errors;
use crate::secret::SecretUrl;

/// The schemes sqlx accepts.
const SCHEMES: &[&str] = &["postgres", "postgresql"];

impl CheckBlock for PostgresCheck {
    fn url(&self) -> Option<UrlField<'_>> {
        Some(UrlField {
            inline: self.url.as_deref(),
            from: self.url_from.as_ref(),
            schemes: SCHEMES,
        })
    }

    fn target(&self, resolved: Resolved, _block: &str, _errors: &mut Errors) -> Option<Target> {
        Some(Target::Postgres { url: resolved.url? })
    }
}

pub struct PostgresProbe {
    pool: ClientSource<PgPool>,
    url: SecretUrl,
}

/// Where the probe's pool comes from. Guarded, it connects to the address the guard judged:
/// the host and port as sqlx reads them (a `?host=` or `?hostaddr=` in the query wins over the
/// URL's host, so the URL's own host would be the wrong one to judge), with the host replaced by
/// that address. `sslmode=verify-full` needs the name to verify the certificate, so there the
/// name is judged before each probe and sqlx resolves it again. A Unix socket is not a network
/// target and is not judged.
pub fn source(
    connections: &Connections,
    guard: Option<Arc<TargetGuard>>,
    url: &SecretUrl,
    timeout: Duration,
) -> ClientSource<PgPool> {
    let shared = || connections.postgres(url, timeout);
    let Some(guard) = guard else {
        return ClientSource::Shared(shared());
    };
    let options: PgConnectOptions = match url.expose().parse() {
        Ok(options) => options,
        // The shared pool reports the parse error, scrubbed.
        Err(_) => return ClientSource::Shared(shared()),
    };
    let host = options.get_host();
    if options.get_socket().is_some() || host.starts_with('/') {
        return ClientSource::Shared(shared());
    }
    let check = PreCheck::new(guard, host.to_string(), options.get_port());
    if matches!(options.get_ssl_mode(), PgSslMode::VerifyFull) {
        return ClientSource::Checked(shared(), check);
    }
    ClientSource::pinned(check, move |address| {
        let pinned = options
            .clone()
            .host(&address.ip().to_string())
            .port(address.port());
        Ok(postgres_pool(pinned, timeout))
    })
}

impl PostgresProbe {
    pub fn new(pool: ClientSource<PgPool>, url: SecretUrl) -> Self {
        Self { pool, url }
    }

    pub async fn run(&self) -> Observation {
        let pool = match self.pool.get().await {
            Ok(pool) => pool,
            Err(observation) => return observation,
        };
        super::sql::probe(&pool, &self.url, is_auth).await
    }
}

/// SQLSTATE class 28: invalid authorization specification (wrong password, no such role).
fn is_auth(error: &dyn sqlx::error::DatabaseError) -> bool {
    error.code().is_some_and(|c| c.starts_with("28"))
}
