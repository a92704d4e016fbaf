//! What an object knows about itself and its surroundings.

use std::fmt;
use std::sync::Arc;

use crate::id::ObjectId;
use crate::namespace::Namespace;
use crate::object::DurableObject;
use crate::runtime::Runtime;
use crate::storage::Storage;

/// The handle an object receives in its constructor.
///
/// Keep it in the object's struct: it names the object ([`id`](Self::id)),
/// reaches its storage, and lets it call other objects
/// ([`namespace`](Self::namespace)). Cloning is cheap and clones may be moved
/// into spawned tasks.
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
    /// released, and rolled back if the turn panics. See [`Storage`].
    pub fn storage(&self) -> Storage {
        self.inner.storage.clone()
    }

    /// The name of this object's type, as used in ids and storage paths.
    pub fn type_name(&self) -> &'static str {
        self.inner.type_name
    }

    /// The namespace of another object type, to call its objects.
    ///
    /// Calls from one object to another are allowed while a turn runs; the
    /// caller's turn waits for the reply, other calls to the caller wait in
    /// its mailbox meanwhile. (Two objects that call each other in a cycle
    /// therefore wait for each other forever: break cycles with a spawned
    /// task or a message without a reply.)
    pub fn namespace<U: DurableObject>(&self) -> Namespace<U> {
        self.inner.runtime.namespace::<U>()
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
