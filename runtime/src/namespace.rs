//! Namespaces: one per object type, where ids are minted and stubs are made.
//!
//! Both ways to get one live here, beside the type: [`Runtime::namespace`]
//! and [`Context::namespace`] (so that neither `runtime.rs` nor `context.rs`
//! needs to import this file).

use std::fmt;
use std::marker::PhantomData;
use std::sync::Arc;

use crate::context::Context;
use crate::error::Result;
use crate::id::{IdKeys, ObjectId};
use crate::local::HostedType;
use crate::object::DurableObject;
use crate::runtime::Runtime;
use crate::stub::StubCore;

impl Runtime {
    /// The namespace of object type `T`.
    ///
    /// Works for any type with `#[durable_object]`; calls to a type that this
    /// runtime does not host fail with [`Error::NotHosted`](crate::Error::NotHosted).
    pub fn namespace<T: DurableObject>(&self) -> Namespace<T> {
        let hosted = self.objects().hosted(T::NAME).cloned();
        Namespace { runtime: self.clone(), keys: self.id_keys(T::NAME), hosted, _type: PhantomData }
    }
}

impl Context {
    /// The namespace of another object type, to call its objects.
    ///
    /// Calls from one object to another are allowed while a turn runs; the
    /// caller's turn waits for the reply, other calls to the caller wait in
    /// its mailbox meanwhile. (Two objects that call each other in a cycle
    /// therefore wait for each other forever: break cycles with a spawned
    /// task or a message without a reply.)
    pub fn namespace<U: DurableObject>(&self) -> Namespace<U> {
        self.runtime().namespace::<U>()
    }
}

/// All objects of type `T`, as seen from one runtime.
///
/// A namespace mints ids and turns them into stubs. None of its methods does
/// I/O or creates an object: an object comes to life when the first call
/// through a stub reaches it.
///
/// | Cloudflare Durable Objects | stead |
/// | --- | --- |
/// | `env.NS.newUniqueId()` | [`unique_id`](Self::unique_id) |
/// | `env.NS.idFromName(name)` | [`id_from_name`](Self::id_from_name) |
/// | `env.NS.idFromString(s)` | [`id_from_str`](Self::id_from_str) |
/// | `env.NS.get(id)` | [`stub`](Self::stub) (no side effect) |
pub struct Namespace<T> {
    runtime: Runtime,
    keys: IdKeys,
    hosted: Option<Arc<HostedType>>,
    _type: PhantomData<fn() -> T>,
}

impl<T: DurableObject> Namespace<T> {
    /// A new id, different from every other id ever minted.
    pub fn unique_id(&self) -> ObjectId {
        self.keys.unique_id()
    }

    /// The id named `name`: the same name gives the same id, on every node of
    /// the cluster and after every restart (as long as the secret is kept).
    ///
    /// The name is kept: the object's first activation stores it, so that
    /// it can be listed by name (`stead objects`).
    pub fn id_from_name(&self, name: &str) -> ObjectId {
        let id = self.keys.id_from_name(name);
        self.runtime.host().names().remember(id, name);
        id
    }

    /// Parses an id from its text form (64 hex digits), checking that this
    /// namespace minted it.
    ///
    /// # Errors
    /// [`Error::InvalidId`](crate::Error::InvalidId) when the text has the
    /// wrong length, contains something other than hex digits, or is an id of
    /// another namespace or cluster; each case has its own message.
    pub fn id_from_str(&self, text: &str) -> Result<ObjectId> {
        self.keys.parse(text)
    }

    /// A stub for object `id`.
    ///
    /// This does no I/O and never creates the object: the object is
    /// constructed by the first call that reaches it.
    pub fn stub(&self, id: &ObjectId) -> T::Stub {
        T::__stub(self.stub_core(id, None))
    }

    /// A stub for object `id` that places the object on node `node` if this
    /// stub's first call is the object's first call anywhere in the cluster.
    ///
    /// Like [`stub`](Self::stub) it does no I/O. Once an object lives on a
    /// node it stays there: the target node of a later stub is ignored.
    /// Outside a cluster the node means nothing.
    pub fn stub_at(&self, id: &ObjectId, node: &str) -> T::Stub {
        T::__stub(self.stub_core(id, Some(node.to_string())))
    }

    /// A stub's core; `target` is the node to place the object on if its
    /// first call comes through this stub (cluster only).
    fn stub_core(&self, id: &ObjectId, target: Option<String>) -> StubCore {
        let host = self.runtime.host().clone();
        let runtime = self.runtime.downgrade();
        StubCore::new(
            host,
            runtime,
            self.runtime.cluster().cloned(),
            self.hosted.clone(),
            T::NAME,
            *id,
            target,
        )
    }

    /// The name of the object type, as used in ids and storage paths.
    pub fn type_name(&self) -> &'static str {
        T::NAME
    }

    /// The runtime this namespace belongs to.
    pub(crate) fn runtime(&self) -> &Runtime {
        &self.runtime
    }
}

impl<T> Clone for Namespace<T> {
    fn clone(&self) -> Self {
        Namespace {
            runtime: self.runtime.clone(),
            keys: self.keys.clone(),
            hosted: self.hosted.clone(),
            _type: PhantomData,
        }
    }
}

impl<T: DurableObject> fmt::Debug for Namespace<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Namespace").field("type", &T::NAME).field("hosted", &self.hosted.is_some()).finish()
    }
}
