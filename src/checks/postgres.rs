//! `type: postgres`: `SELECT 1` on a pooled connection.

use std::sync::Arc;

use sqlx::postgres::{PgConnectOptions, PgPool};

use super::guard::{PreCheck, TargetGuard};
use super::{CheckBlock, Observation, Target, UrlField};
use crate::api::PostgresCheck;
use crate::health::Reason;
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

    fn target(&self, url: Option<SecretUrl>, _block: &str, _errors: &mut Errors) -> Option<Target> {
        Some(Target::Postgres { url: url? })
    }
}

pub struct PostgresProbe {
    pool: Result<PgPool, String>,
    url: SecretUrl,
    pre_check: Option<PreCheck>,
}

/// The host and port sqlx will connect to, as sqlx reads them (a `?host=` in the query wins over
/// the URL's host, so the URL's own host would be the wrong one to judge). `None` for a Unix
/// socket (no network) and for a URL sqlx rejects (the pool reports that).
pub fn pre_check(guard: Arc<TargetGuard>, url: &SecretUrl) -> Option<PreCheck> {
    let options: PgConnectOptions = url.expose().parse().ok()?;
    let host = options.get_host();
    if host.starts_with('/') {
        return None;
    }
    Some(PreCheck::new(guard, host.to_string(), options.get_port()))
}

impl PostgresProbe {
    pub fn new(pool: Result<PgPool, String>, url: SecretUrl, pre_check: Option<PreCheck>) -> Self {
        Self {
            pool,
            url,
            pre_check,
        }
    }

    pub async fn run(&self) -> Observation {
        let pool = match &self.pool {
            Ok(pool) => pool,
            Err(e) => return Observation::down(Reason::Config, e.clone()),
        };
        if let Some(check) = &self.pre_check
            && let Err(observation) = check.run().await
        {
            return observation;
        }
        let mut result = select_one(pool).await;
        // A pooled connection that died with a restarted server says nothing about the new
        // server; one retry on a fresh connection does (the engine's timeout still bounds both).
        if matches!(&result, Err(e) if is_broken_connection(e)) {
            result = select_one(pool).await;
        }
        match result {
            Ok(()) => Observation::ok(format!(
                "pool size={} idle={}",
                pool.size(),
                pool.num_idle()
            )),
            Err(e) => Observation::down(classify(&e), self.url.scrub(&e.to_string())),
        }
    }
}

async fn select_one(pool: &PgPool) -> Result<(), sqlx::Error> {
    // The simple-query protocol: one statement per check, no prepare/describe round trips.
    sqlx::raw_sql("SELECT 1").execute(pool).await.map(drop)
}

fn is_broken_connection(error: &sqlx::Error) -> bool {
    matches!(error, sqlx::Error::Io(_) | sqlx::Error::Protocol(_))
}

fn classify(error: &sqlx::Error) -> Reason {
    match error {
        sqlx::Error::PoolTimedOut => Reason::Timeout,
        sqlx::Error::Io(_) | sqlx::Error::Tls(_) => Reason::Connect,
        // SQLSTATE class 28: invalid authorization specification (wrong password, no such role).
        sqlx::Error::Database(e) if e.code().is_some_and(|c| c.starts_with("28")) => Reason::Auth,
        _ => Reason::Error,
    }
}
