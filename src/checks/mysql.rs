//! `type: mysql` (MySQL and MariaDB): `SELECT 1` on a pooled connection, like postgres.

use std::sync::Arc;
use std::time::Duration;

use sqlx::mysql::{MySqlConnectOptions, MySqlPool, MySqlSslMode};

use super::connections::{Connections, mysql_pool};
use super::guard::{ClientSource, PreCheck, TargetGuard};
use super::{CheckBlock, Observation, Resolved, Target, UrlField};
use crate::api::MysqlCheck;
use crate::policy::validate::Errors;
use crate::secret::SecretUrl;

/// sqlx reads both the same way.
const SCHEMES: &[&str] = &["mysql", "mariadb"];

impl CheckBlock for MysqlCheck {
    fn url(&self) -> Option<UrlField<'_>> {
        Some(UrlField {
            inline: self.url.as_deref(),
            from: self.url_from.as_ref(),
            schemes: SCHEMES,
        })
    }

    fn target(&self, resolved: Resolved, _block: &str, _errors: &mut Errors) -> Option<Target> {
        Some(Target::Mysql { url: resolved.url? })
    }
}

/// Where the probe's pool comes from; see [`super::postgres::source`], which this follows:
/// guarded, the pool connects to the judged address, except with `ssl-mode=VERIFY_IDENTITY`,
/// which needs the name; a Unix socket is not a network target.
pub fn source(
    connections: &Connections,
    guard: Option<Arc<TargetGuard>>,
    url: &SecretUrl,
    timeout: Duration,
) -> ClientSource<MySqlPool> {
    let shared = || connections.mysql(url, timeout);
    let Some(guard) = guard else {
        return ClientSource::Shared(shared());
    };
    let options: MySqlConnectOptions = match url.expose().parse() {
        Ok(options) => options,
        // The shared pool reports the parse error, scrubbed.
        Err(_) => return ClientSource::Shared(shared()),
    };
    if options.get_socket().is_some() {
        return ClientSource::Shared(shared());
    }
    let check = PreCheck::new(guard, options.get_host().to_string(), options.get_port());
    if matches!(options.get_ssl_mode(), MySqlSslMode::VerifyIdentity) {
        return ClientSource::Checked(shared(), check);
    }
    ClientSource::pinned(check, move |address| {
        let pinned = options
            .clone()
            .host(&address.ip().to_string())
            .port(address.port());
        Ok(mysql_pool(pinned, timeout))
    })
}

pub struct MysqlProbe {
    pool: ClientSource<MySqlPool>,
    url: SecretUrl,
}

impl MysqlProbe {
    pub fn new(pool: ClientSource<MySqlPool>, url: SecretUrl) -> Self {
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

/// SQLSTATE 28000: access denied (error 1045, a wrong password or an unknown user); 42000 with
/// error 1044: the user may not use the database.
fn is_auth(error: &dyn sqlx::error::DatabaseError) -> bool {
    error.code().is_some_and(|c| c.starts_with("28")) || is_db_access_denied(error)
}

fn is_db_access_denied(error: &dyn sqlx::error::DatabaseError) -> bool {
    error
        .try_downcast_ref::<sqlx::mysql::MySqlDatabaseError>()
        .is_some_and(|e| e.number() == 1044)
}
