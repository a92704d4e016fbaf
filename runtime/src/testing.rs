//! The testing kit: an isolated runtime per test, an object's alarm run now,
//! an instance and its storage reached inside a turn, the ids of a namespace.
//!
//! Users reach it as `stead::testing`, whose documentation has a complete
//! test; this is what Cloudflare's vitest pool (`runInDurableObject`,
//! `runDurableObjectAlarm`, `listDurableObjectIds`) and Orleans' `TestCluster`
//! give their users. It needs no cargo feature: it is a few functions with
//! no dependencies of their own, and [`runtime`] is the only way into its
//! one difference from a production runtime (alarms that wait for
//! [`run_alarm`]).
//!
//! Everything here goes through the object's mailbox and the runtime's own
//! turns (`local/visit.rs`): what a test sees is what a caller would.

use std::any::Any;
use std::collections::BTreeMap;
use std::future::Future;

use tokio::sync::oneshot;

use crate::context::Context;
use crate::error::{Error, Result};
use crate::id::ObjectId;
use crate::local::{Driver, HostedType, LocalReply, Message, ReplySender, Visit, VisitFn};
use crate::namespace::Namespace;
use crate::object::DurableObject;
use crate::runtime::{Runtime, RuntimeBuilder};
use crate::storage::Storage;
use crate::stub::{ObjectStub, StubCore, Unreached};

/// A builder for an isolated runtime for one test: storage in memory (it
/// vanishes with the runtime, there is no directory to clean up), a secret
/// of its own, and alarms that run only when the test calls [`run_alarm`].
///
/// Add the types the test uses with `.host::<T>()` and build it; any other
/// setting of [`RuntimeBuilder`] works too (a short `idle_timeout` to test
/// eviction, say), except `data_dir`. Each call gives a runtime that shares
/// nothing with any other, so tests may run in parallel.
///
/// Alarms set in a test runtime are indexed and stored exactly as in
/// production, but none comes due by itself: a test never sleeps for an
/// alarm and never races one. To test alarms firing at their time, build a
/// runtime with `Runtime::builder().in_memory()` instead.
pub fn runtime() -> RuntimeBuilder {
    Runtime::builder().in_memory().manual_alarms()
}

/// Runs the alarm of `stub`'s object now, if one is set, and says whether
/// one was.
///
/// The alarm runs as a real alarm turn, through the same path as an alarm
/// that comes due (the output gate, then retries on failure), queued in the
/// object's mailbox now, in order with the calls issued before and after
/// this one. Returns `Ok(true)` when an alarm was set and its handler ran
/// and committed, `Ok(false)` when no alarm was set (nothing ran).
///
/// A handler that fails is retried as in production: its writes are rolled
/// back, the alarm stays set, and a retry is indexed with
/// [`AlarmInfo`](crate::AlarmInfo)`{ retry_count: 1, is_retry: true }`, then
/// 2, ... up to [`MAX_ALARM_RETRIES`](crate::MAX_ALARM_RETRIES); after the
/// last the alarm is dropped. Here the retry waits for the next `run_alarm`
/// instead of its backoff.
///
/// # Errors
/// - [`Error::AlarmFailed`] when the handler returned an error,
///   [`Error::Panicked`] when it panicked, and the constructor's or
///   storage's error when those failed; each says whether the alarm is
///   retried.
/// - [`Error::Config`] when the object's type has no `#[alarm]` handler,
///   when the runtime delivers alarms by itself (build it with
///   [`runtime`]), or when the stub reaches its object through a cluster.
/// - [`Error::NotHosted`] when the runtime does not host the type.
pub fn run_alarm<S: ObjectStub>(stub: &S) -> impl Future<Output = Result<bool>> + Send + 'static {
    let queued = alarm_checks::<S::Object>(stub.__core())
        .and_then(|()| queue(stub.__core(), "run_alarm", |reply| Visit::Alarm { reply }));
    async move {
        let ran = queued?.await?;
        Ok(!ran.is_empty())
    }
}

/// Runs `f` on `stub`'s object as one of its turns, with the instance and
/// the object's [`Context`] (its id and storage), and returns what `f`
/// returns.
///
/// The turn is queued in the object's mailbox now, in order with the calls
/// issued before and after this one, and runs like a call's: the instance
/// is constructed first if it is not in memory (by the constructor, as a
/// call would), `f`'s storage writes commit before this returns, and if `f`
/// panics its writes are rolled back, the instance is dropped and this
/// fails with [`Error::Panicked`]. Storage is synchronous, so `f` is a plain
/// closure; to await something, call the object through its stub.
///
/// # Errors
/// The constructor's error ([`Error::ConstructorFailed`] or
/// [`Error::Panicked`]), [`Error::Panicked`] when `f` panicked,
/// [`Error::Storage`] when the commit failed, [`Error::NotHosted`] when the
/// runtime does not host the type, and [`Error::Config`] when the stub
/// reaches its object through a cluster.
pub fn with_instance<S, F, R>(stub: &S, f: F) -> impl Future<Output = Result<R>> + Send + 'static
where
    S: ObjectStub,
    F: FnOnce(&mut S::Object, &Context) -> R + Send + 'static,
    R: Send + 'static,
{
    let core = stub.__core();
    let (result, returned) = oneshot::channel::<Result<R>>();
    let queued = runtime_of(core).and_then(|runtime| {
        let id = core.id();
        let run: VisitFn = Box::new(move |object: &mut dyn Any, storage: &Storage| {
            let outcome = match object.downcast_mut::<S::Object>() {
                Some(object) => {
                    let ctx = Context::new(id, S::Object::NAME, runtime, storage.clone());
                    Ok(f(object, &ctx))
                }
                None => Err(Error::Incompatible(format!(
                    "the runtime hosts another Rust type under the name `{}` than the stub's `{}`; \
                     give one of them another name with `#[durable_object(name = \"...\")]`",
                    S::Object::NAME,
                    std::any::type_name::<S::Object>()
                ))),
            };
            let _ = result.send(outcome);
        });
        queue(core, "with_instance", |reply| Visit::Instance { run, reply })
    });
    async move {
        queued?.await?;
        returned.await.map_err(|_| {
            Error::Disconnected(
                "the closure given to `with_instance` did not run (the runtime was shut down)".into(),
            )
        })?
    }
}

/// An object of a namespace, as [`list_ids`] finds it.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct ListedObject {
    /// The object's id.
    pub id: ObjectId,
    /// The name its id was made from with
    /// [`id_from_name`](crate::Namespace::id_from_name), where known: named
    /// in this process, or stored by the object (every named object stores
    /// its name when it is first constructed).
    pub name: Option<String>,
}

/// The objects of `namespace`'s type that exist in its runtime's storage,
/// ordered by id, with their names where known.
///
/// An object exists from its first storage access, and a named object from
/// its first activation, which stores its name; a call that touches no
/// storage of an unnamed object leaves nothing to list. An object whose
/// storage was emptied with [`delete_all`](crate::Storage::delete_all)
/// leaves the list once it is evicted.
///
/// For a runtime with a data directory, the names are those made in this
/// process. A cluster node lists only its own objects.
///
/// # Errors
/// [`Error::NotHosted`] when the runtime does not host the type, and
/// [`Error::Storage`] when the data directory cannot be read.
pub fn list_ids<T: DurableObject>(namespace: &Namespace<T>) -> Result<Vec<ListedObject>> {
    let runtime = namespace.runtime();
    let Some(hosted) = runtime.objects().hosted(T::NAME) else {
        return Err(Error::not_hosted(T::NAME));
    };
    let host = runtime.host();
    let with_database = || {
        hosted
            .activations()
            .into_iter()
            .filter(|activation| activation.storage().has_database())
            .map(|a| a.id)
    };
    let mut found: BTreeMap<ObjectId, Option<String>> = BTreeMap::new();
    // Open before and after closed: a database being closed is open until
    // it is parked, and one opened again meanwhile is open afterwards.
    found.extend(with_database().map(|id| (id, None)));
    for (id, name) in host.storage().location.closed_objects(T::NAME)? {
        // A database of another secret's ids is not an object of this namespace.
        if hosted.keys.verify(&id).is_ok() {
            found.insert(id, name);
        }
    }
    for id in with_database() {
        found.entry(id).or_insert(None);
    }
    Ok(found
        .into_iter()
        .map(|(id, name)| {
            let name = name.or_else(|| host.names().get(&id));
            ListedObject { id, name }
        })
        .collect())
}

/// Checks what `run_alarm` needs of the object's type and runtime.
fn alarm_checks<T: DurableObject>(core: &StubCore) -> Result<()> {
    if !T::HAS_ALARM {
        return Err(Error::Config(format!(
            "`{0}` has no alarm handler, so it has no alarm to run; add \
             `#[alarm] async fn alarm(&mut self, info: stead::AlarmInfo)` to the \
             `#[durable_object] impl {0}` block",
            T::NAME
        )));
    }
    if !runtime_of(core)?.has_manual_alarms() {
        return Err(Error::Config(format!(
            "`run_alarm` needs a runtime built with `stead::testing::runtime()`, whose alarms run only \
             when asked; the runtime of this `{}` stub delivers alarms by itself when they come due, \
             which would race `run_alarm`",
            T::NAME
        )));
    }
    Ok(())
}

/// The runtime that made the stub, if the stub reaches its object there.
fn runtime_of(core: &StubCore) -> Result<Runtime> {
    hosted(core, "the testing kit")?;
    core.runtime().ok_or_else(|| {
        Error::Unavailable(format!(
            "the runtime that made this `{}` stub has been dropped; keep it for the whole test",
            core.type_name()
        ))
    })
}

/// The stub's object type as hosted by its runtime, or why the testing kit
/// cannot reach it.
fn hosted<'a>(core: &'a StubCore, what: &str) -> Result<&'a std::sync::Arc<HostedType>> {
    core.hosted_here().map_err(|why| match why {
        Unreached::NotHosted => Error::not_hosted(core.type_name()),
        Unreached::Cluster => Error::Config(format!(
            "{what} reaches objects hosted by a runtime of this process, and this `{}` stub routes \
             through a cluster; in tests, build the runtime with `stead::testing::runtime()` and \
             host the type there",
            core.type_name()
        )),
    })
}

/// Queues a turn asked for by `what` in the mailbox of the stub's object, and
/// returns the future of its reply (which runs the turn in the awaiting
/// task when the object is idle, as a call's does).
fn queue(core: &StubCore, what: &str, visit: impl FnOnce(ReplySender) -> Visit) -> Result<LocalReply> {
    let hosted = hosted(core, what)?;
    let runtime = runtime_of(core)?;
    runtime.host().check_accepting()?;
    let (reply, receiver) = oneshot::channel();
    let activation =
        hosted.send(core.id(), Message::Visit(visit(reply)), Driver::Caller).map_err(|(err, _)| err)?;
    Ok(LocalReply::new(receiver, activation))
}
