//! Atomic writes to the application's PostgreSQL tables from a turn.
//!
//! A user-facing type, reached with [`Context::postgres`](crate::Context::postgres).

use tokio_postgres::types::ToSql;

use crate::error::Result;
use crate::storage::{Statement, Storage};

/// A parameter of a queued statement: any value tokio-postgres can send,
/// owned (the statement runs after the turn). Make a list of them with
/// [`pg_params!`](crate::pg_params).
pub type Param = Box<dyn ToSql + Send + Sync>;

/// Statements that commit together with the object's writes.
///
/// In a PostgreSQL cluster, a turn's writes are shipped to PostgreSQL
/// before its reply is released (see the README, "Failover and
/// PostgreSQL"). [`execute`](Self::execute) queues a statement that runs
/// in that same PostgreSQL transaction: the object's new state and the
/// application's rows are committed together, or neither is. If a
/// statement fails, the turn fails with that error and is undone
/// everywhere, as if it had panicked: its writes are rolled back, its
/// instance is dropped, and nothing of it is visible in PostgreSQL.
///
/// In an order object's method (the README has the whole object):
///
/// ```no_run
/// # fn pay(ctx: &stead_runtime::Context, total_cents: i64) -> stead_runtime::Result<()> {
/// use stead_runtime::pg_params;
///
/// // The order is paid, and the shop's `orders` table says so, together.
/// ctx.storage().put("paid", &total_cents)?;
/// ctx.postgres().execute(
///     "INSERT INTO orders (id, total_cents) VALUES ($1, $2)",
///     pg_params![ctx.id().to_string(), total_cents],
/// )
/// # }
/// ```
#[derive(Clone, Debug)]
pub struct Postgres {
    storage: Storage,
}

impl Postgres {
    pub(crate) fn new(storage: Storage) -> Self {
        Postgres { storage }
    }

    /// Queues `sql` with `params` (`$1`, `$2`, ... as in tokio-postgres) to
    /// run in PostgreSQL in the same transaction as this turn's writes,
    /// after the turn's method returned. Its outcome is the turn's: if it
    /// fails, the call fails with its error and the turn is undone.
    ///
    /// # Errors
    /// `Config` when the runtime has no PostgreSQL cluster with replicated
    /// storage (`.postgres(..)` and `.data_dir(..)`); `Storage` outside a
    /// turn of the object; `Unavailable` when this node no longer owns the
    /// object.
    pub fn execute(&self, sql: impl Into<String>, params: impl IntoIterator<Item = Param>) -> Result<()> {
        self.storage.queue_statement(Statement { sql: sql.into(), params: params.into_iter().collect() })
    }
}

/// Makes the parameters of [`Postgres::execute`] from values of any type
/// tokio-postgres sends (`i64`, `String`, `Vec<u8>`, `bool`, ...):
/// `pg_params![id, total]`.
#[macro_export]
macro_rules! pg_params {
    ($($value:expr),* $(,)?) => {
        ::std::vec![$(::std::boxed::Box::new($value) as $crate::Param),*]
    };
}
