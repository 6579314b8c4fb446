//! What the SQL kinds (postgres, mysql) share: `SELECT 1` on a pooled connection, one retry when
//! the pooled connection died with a restarted server, and the mapping of driver errors to
//! reasons. Only which database errors mean "wrong credentials" differs per kind.

use sqlx::error::DatabaseError;
use sqlx::{Database, Executor, Pool};

use super::Observation;
use crate::health::Reason;
use crate::secret::SecretUrl;

pub async fn probe<DB>(
    pool: &Pool<DB>,
    url: &SecretUrl,
    is_auth: fn(&dyn DatabaseError) -> bool,
) -> Observation
where
    DB: Database,
    for<'c> &'c mut DB::Connection: Executor<'c, Database = DB>,
{
    let mut result = select_one(pool).await;
    // A pooled connection that died with a restarted server says nothing about the new server;
    // one retry on a fresh connection does (the engine's timeout still bounds both).
    if matches!(&result, Err(e) if is_broken_connection(e)) {
        result = select_one(pool).await;
    }
    match result {
        Ok(()) => Observation::ok(format!(
            "pool size={} idle={}",
            pool.size(),
            pool.num_idle()
        )),
        Err(e) => Observation::down(classify(&e, is_auth), url.scrub(&e.to_string())),
    }
}

async fn select_one<DB>(pool: &Pool<DB>) -> Result<(), sqlx::Error>
where
    DB: Database,
    for<'c> &'c mut DB::Connection: Executor<'c, Database = DB>,
{
    // The simple (text) protocol: one statement per check, no prepare/describe round trips.
    sqlx::raw_sql("SELECT 1").execute(pool).await.map(drop)
}

fn is_broken_connection(error: &sqlx::Error) -> bool {
    matches!(error, sqlx::Error::Io(_) | sqlx::Error::Protocol(_))
}

fn classify(error: &sqlx::Error, is_auth: fn(&dyn DatabaseError) -> bool) -> Reason {
    match error {
        sqlx::Error::PoolTimedOut => Reason::Timeout,
        sqlx::Error::Io(_) | sqlx::Error::Tls(_) => Reason::Connect,
        sqlx::Error::Database(e) if is_auth(e.as_ref()) => Reason::Auth,
        _ => Reason::Error,
    }
}
