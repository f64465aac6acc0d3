//! How to open a Postgres store: [`PostgresOptions`].

use std::time::Duration;

use super::Pooler;
#[cfg(doc)]
use super::{LivenessMode, POOLER_PARAMETER};
use crate::statement_log::StatementLog;
#[cfg(doc)]
use tasktrail_core::StorageError;

/// How to open a Postgres store.
#[derive(Debug, Clone)]
pub struct PostgresOptions {
    /// The most pooled connections the store keeps open (besides its one
    /// liveness session). Default 8.
    pub pool_size: u32,
    /// How long connecting, or waiting for a free pooled connection, may
    /// take before the call fails with [`StorageError::Unavailable`].
    /// Default 10 s. (Also passed to libpq as `connect_timeout` unless the
    /// URL sets one.)
    pub connection_timeout: Duration,
    /// The pooler between the store and Postgres ([`Pooler::None`] by
    /// default). The URL parameter [`POOLER_PARAMETER`]
    /// (`?tasktrail_pooler=transaction`) overrides it.
    pub pooler: Pooler,
    /// Through a transaction pooler: a URL that reaches the *same* Postgres
    /// server directly (or through a session pooler), for the one liveness
    /// session that holds the workers' advisory locks (one connection per
    /// store, nothing else runs on it). Without one, a store behind a
    /// transaction pooler takes no lock: its workers are judged by the
    /// lease ([`LivenessMode::Lease`]). Ignored without a transaction
    /// pooler (the liveness session then uses the database URL).
    pub liveness_url: Option<String>,
    /// Record the INSERTs into `task_history` this store issues (tests).
    #[cfg(feature = "testing")]
    pub statement_log: Option<StatementLog>,
}

impl PostgresOptions {
    /// The statement log to attach (none without the `testing` feature).
    pub(super) fn statement_log(&self) -> Option<StatementLog> {
        #[cfg(feature = "testing")]
        return self.statement_log.clone();
        #[cfg(not(feature = "testing"))]
        return None;
    }
}

impl Default for PostgresOptions {
    fn default() -> Self {
        Self {
            pool_size: 8,
            connection_timeout: Duration::from_secs(10),
            pooler: Pooler::None,
            liveness_url: None,
            #[cfg(feature = "testing")]
            statement_log: None,
        }
    }
}
