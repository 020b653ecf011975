//! [`StoreError`]: what went wrong with the store, in terms callers act on — not found, a
//! conflict, the database unavailable (try again later), stored data not as expected, or a
//! statement the database refused (a bug of ours). The driver's own error is classified once,
//! here; its detail (which may hold SQL) goes to the log, throttled, never into the error's
//! message, so nothing above the store ever sees or shows it.

/// Errors callers match on.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("{what} {id} not found")]
    NotFound { what: &'static str, id: String },
    #[error("{0}")]
    Conflict(String),
    /// The caller may not do this (a module name set by another token).
    #[error("{0}")]
    Forbidden(String),
    #[error("invalid database URL {url:?}: {reason}")]
    BadUrl { url: String, reason: String },
    /// The database cannot be reached or cannot take this now: the connection was refused or
    /// lost, no connection came free in time, the disk is full, the file is read-only or
    /// locked. Trying again later may work.
    #[error("the database is unavailable: {0}")]
    Unavailable(String),
    /// Stored data, or the database itself, is not what this version of wasmjobs wrote.
    #[error("stored data is corrupt: {0}")]
    Corrupt(String),
    /// Bringing the schema up to date failed.
    #[error("migrating the database failed: {0}")]
    Migrate(String),
    /// The database refused a statement for a reason that is ours to fix; the detail is in
    /// the log.
    #[error("the database refused a statement ({0}); the details are in the server's log")]
    Internal(&'static str),
}

impl StoreError {
    /// A module name set by another token, which only it or an admin may move.
    pub fn name_taken(name: &str) -> StoreError {
        StoreError::Forbidden(format!(
            "module name {name:?} was set by another token: only that token or an admin token can point it at other bytes; upload under another name"
        ))
    }

    /// Whether trying again later may succeed.
    pub fn is_unavailable(&self) -> bool {
        matches!(self, StoreError::Unavailable(_))
    }
}

/// Logs a driver error's detail, throttled, and says which kind of failure it was.
fn logged(kind: &'static str, detail: impl std::fmt::Display) -> StoreError {
    crate::throttle::error(format!("store: {kind}: {detail}"));
    StoreError::Internal(kind)
}

impl From<sqlx::Error> for StoreError {
    fn from(e: sqlx::Error) -> StoreError {
        use sqlx::Error as E;
        match &e {
            E::RowNotFound => StoreError::NotFound {
                what: "row",
                id: String::new(),
            },
            E::PoolTimedOut => {
                StoreError::Unavailable("no database connection came free in time".into())
            }
            E::PoolClosed => StoreError::Unavailable("the connection pool is closed".into()),
            E::Io(io) => StoreError::Unavailable(format!("connection lost ({})", io.kind())),
            E::Tls(_) => StoreError::Unavailable("the TLS connection failed".into()),
            E::WorkerCrashed => StoreError::Unavailable("the database connection died".into()),
            E::Database(db) => {
                if db.is_unique_violation() {
                    return StoreError::Conflict("it exists already".into());
                }
                if db.is_foreign_key_violation() {
                    return StoreError::Conflict(format!(
                        "it refers to something not stored ({})",
                        db.message()
                    ));
                }
                match db.code().as_deref() {
                    // Class 08: connection exception; 53: insufficient resources (disk full,
                    // out of memory, too many connections); 57P: operator intervention
                    // (shutdown, cancelled); 25006: read-only transaction.
                    Some(code)
                        if code.starts_with("08")
                            || code.starts_with("53")
                            || code.starts_with("57P")
                            || code == "25006" =>
                    {
                        crate::throttle::warn(format!("store: unavailable: {db}"));
                        StoreError::Unavailable(format!(
                            "the database refused work (SQLSTATE {code})"
                        ))
                    }
                    _ => logged("database error", db),
                }
            }
            E::ColumnDecode { .. }
            | E::Decode(_)
            | E::ColumnNotFound(_)
            | E::TypeNotFound { .. } => {
                crate::throttle::error(format!("store: cannot decode a row: {e}"));
                StoreError::Corrupt("a stored row could not be read".into())
            }
            _ => logged("driver error", &e),
        }
    }
}

impl From<rusqlite::Error> for StoreError {
    fn from(e: rusqlite::Error) -> StoreError {
        use rusqlite::ffi::ErrorCode as C;
        match &e {
            rusqlite::Error::SqliteFailure(f, _) => match f.code {
                C::ConstraintViolation
                    if f.extended_code == rusqlite::ffi::SQLITE_CONSTRAINT_UNIQUE
                        || f.extended_code == rusqlite::ffi::SQLITE_CONSTRAINT_PRIMARYKEY =>
                {
                    StoreError::Conflict("it exists already".into())
                }
                C::ConstraintViolation
                    if f.extended_code == rusqlite::ffi::SQLITE_CONSTRAINT_FOREIGNKEY =>
                {
                    StoreError::Conflict("it refers to something not stored (a module?)".into())
                }
                C::DiskFull => StoreError::Unavailable("the disk is full".into()),
                C::ReadOnly => StoreError::Unavailable("the database file is read-only".into()),
                C::DatabaseBusy | C::DatabaseLocked => {
                    StoreError::Unavailable("the database file is locked".into())
                }
                C::SystemIoFailure | C::CannotOpen | C::PermissionDenied => {
                    StoreError::Unavailable(format!("the database file cannot be used: {e}"))
                }
                C::DatabaseCorrupt | C::NotADatabase => {
                    StoreError::Corrupt(format!("the database file is damaged: {e}"))
                }
                _ => logged("database error", &e),
            },
            rusqlite::Error::FromSqlConversionFailure(..)
            | rusqlite::Error::InvalidColumnType(..)
            | rusqlite::Error::IntegralValueOutOfRange(..)
            | rusqlite::Error::Utf8Error(..) => {
                crate::throttle::error(format!("store: cannot decode a row: {e}"));
                StoreError::Corrupt("a stored row could not be read".into())
            }
            _ => logged("driver error", &e),
        }
    }
}

/// Migrations run when the store opens, for the operator who started it: their error keeps the
/// driver's words (a damaged file says so), which name no statement.
impl From<sqlx::migrate::MigrateError> for StoreError {
    fn from(e: sqlx::migrate::MigrateError) -> StoreError {
        use sqlx::migrate::MigrateError;
        match e {
            // The schema starts at one baseline migration: a database that applied others
            // (or another version 1) was made by a development build before it.
            MigrateError::VersionMissing(_) | MigrateError::VersionMismatch(1) => {
                StoreError::Migrate(format!(
                    "{e}: this database was made by a development build of wasmjobs older than its baseline schema, which cannot be upgraded; start on a new database"
                ))
            }
            e => StoreError::Migrate(e.to_string()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sqlite(code: std::ffi::c_int) -> rusqlite::Error {
        rusqlite::Error::SqliteFailure(
            rusqlite::ffi::Error::new(code),
            Some("near SELECT secret FROM jobs".into()),
        )
    }

    #[test]
    fn driver_errors_are_classified_and_carry_no_sql() {
        use rusqlite::ffi;
        assert!(StoreError::from(sqlite(ffi::SQLITE_FULL)).is_unavailable());
        assert!(StoreError::from(sqlite(ffi::SQLITE_READONLY)).is_unavailable());
        assert!(StoreError::from(sqlite(ffi::SQLITE_BUSY)).is_unavailable());
        assert!(matches!(
            StoreError::from(sqlite(ffi::SQLITE_CORRUPT)),
            StoreError::Corrupt(_)
        ));
        assert!(matches!(
            StoreError::from(sqlite(ffi::SQLITE_CONSTRAINT_UNIQUE)),
            StoreError::Conflict(_)
        ));
        let bug = StoreError::from(sqlite(ffi::SQLITE_ERROR));
        assert!(matches!(bug, StoreError::Internal(_)), "{bug:?}");
        assert!(!bug.to_string().contains("SELECT"), "{bug}");
        assert!(StoreError::from(sqlx::Error::PoolTimedOut).is_unavailable());
    }
}
