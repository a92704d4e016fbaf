//! What an object knows about itself and its surroundings.
//!
//! A user-facing type, like `Namespace`: it holds the `Runtime` that hosts
//! the object (see `object.rs` for the small import loop this makes).

use std::fmt;
use std::sync::Arc;

use crate::id::ObjectId;
use crate::postgres::Postgres;
use crate::runtime::Runtime;
use crate::storage::Storage;

/// The handle an object receives in its constructor.
///
/// Keep it in the object's struct: it names the object ([`id`](Self::id)),
/// reaches its storage, and lets it call other objects
/// ([`namespace`](Self::namespace), defined in `namespace.rs`). Cloning is cheap and clones may be moved
/// into spawned tasks; there, [`storage`](Self::storage) refuses every access
/// (storage belongs to the object's turns), while calls through stubs work,
/// the object's own included.
#[derive(Clone)]
pub struct Context {
    inner: Arc<ContextInner>,
}

struct ContextInner {
    id: ObjectId,
    type_name: &'static str,
    runtime: Runtime,
    storage: Storage,
}

impl Context {
    pub(crate) fn new(id: ObjectId, type_name: &'static str, runtime: Runtime, storage: Storage) -> Self {
        Context { inner: Arc::new(ContextInner { id, type_name, runtime, storage }) }
    }

    /// The id of this object.
    pub fn id(&self) -> ObjectId {
        self.inner.id
    }

    /// This object's durable storage.
    ///
    /// Writes made during a turn are committed before the turn's reply is
    /// released, and rolled back if the turn panics. Used outside the
    /// object's turns (from a spawned task), every access fails. See
    /// [`Storage`].
    pub fn storage(&self) -> Storage {
        self.inner.storage.clone()
    }

    /// Statements for the cluster's PostgreSQL that commit in the same
    /// transaction as this turn's writes (a PostgreSQL cluster with a data
    /// directory only). See [`Postgres`].
    pub fn postgres(&self) -> Postgres {
        Postgres::new(self.inner.storage.clone())
    }

    /// The name of this object's type, as used in ids and storage paths.
    pub fn type_name(&self) -> &'static str {
        self.inner.type_name
    }

    /// The runtime that hosts this object.
    pub fn runtime(&self) -> Runtime {
        self.inner.runtime.clone()
    }
}

impl fmt::Debug for Context {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Context").field("type", &self.inner.type_name).field("id", &self.inner.id).finish()
    }
}
