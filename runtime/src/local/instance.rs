//! An object instance as the runtime holds it: type-erased, with its method
//! table, and user code run so that a panic becomes an error.

use std::future::Future;
use std::panic::AssertUnwindSafe;
use std::pin::Pin;
use std::task::Poll;

use crate::error::Error;
use crate::host::Host;
use crate::id::ObjectId;
use crate::storage::Storage;

/// A boxed, sendable future, as stored and run by the runtime.
pub type BoxFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

/// What the runtime passes to an object's `#[alarm]` handler.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AlarmInfo {
    /// How many times this alarm has been retried before this run (0 the first time).
    pub retry_count: u32,
    /// Whether this run is a retry after the handler panicked or returned an error.
    pub is_retry: bool,
}

/// A method of a durable object that can be called through its stub.
#[doc(hidden)]
#[derive(Debug, Clone, Copy)]
pub struct MethodInfo {
    /// The method's name, for error messages.
    pub name: &'static str,
    /// A hash of the method's name, argument types and return type: a request
    /// whose fingerprint differs was made by a different build of the type.
    pub fingerprint: u64,
    /// An `async fn` (else a plain `fn`, which `DurableObject::__dispatch_sync` runs).
    pub is_async: bool,
}

/// Why a dispatch failed: before the method ran, or after.
#[doc(hidden)]
#[derive(Debug)]
pub enum DispatchError {
    /// The arguments could not be decoded (or the method is unknown): the
    /// method did not run.
    Arguments(Error),
    /// The method ran but its result could not be encoded: the instance may
    /// be ahead of its (rolled back) storage and is dropped.
    Result(Error),
}

/// The outcome of a dispatch: the encoded result, or why there is none.
#[doc(hidden)]
pub type Dispatched = std::result::Result<Vec<u8>, DispatchError>;

/// A live instance of any durable object type (implemented for every
/// `DurableObject` in `object.rs`).
pub(crate) trait ErasedObject: Send + 'static {
    fn dispatch<'a>(&'a mut self, method: u32, args: &'a [u8]) -> BoxFuture<'a, Dispatched>;
    fn dispatch_sync(&mut self, method: u32, args: &[u8]) -> Option<Dispatched>;
    fn alarm(&mut self, info: AlarmInfo) -> BoxFuture<'_, std::result::Result<(), String>>;
    /// The instance as its own type (for `stead::testing::with_instance`).
    fn as_any(&mut self) -> &mut dyn std::any::Any;
}

/// A boxed instance, as kept by an activation.
pub(crate) type Instance = Box<dyn ErasedObject>;

/// Runs a type's constructor for object `id` with its storage, and erases
/// the instance's type (made by the user-facing layer, which knows the
/// object's `Context`).
pub(crate) type Constructor =
    Box<dyn Fn(ObjectId, Storage) -> BoxFuture<'static, std::result::Result<Instance, String>> + Send + Sync>;

/// What the runtime knows of a hosted type: how its instances are made and
/// called, and the host they run on.
pub(crate) struct TypeInfo {
    /// The type's name in ids, storage paths and requests.
    pub(crate) name: &'static str,
    /// The remote methods, indexed by method id.
    pub(crate) methods: &'static [MethodInfo],
    /// Whether the type has an `#[alarm]` handler.
    pub(crate) has_alarm: bool,
    pub(crate) construct: Constructor,
    pub(crate) host: Host,
}

/// Runs `future`, turning a panic into its message.
pub(crate) async fn catch_panic<T>(mut future: BoxFuture<'_, T>) -> std::result::Result<T, String> {
    std::future::poll_fn(move |cx| {
        match std::panic::catch_unwind(AssertUnwindSafe(|| future.as_mut().poll(cx))) {
            Ok(Poll::Ready(value)) => Poll::Ready(Ok(value)),
            Ok(Poll::Pending) => Poll::Pending,
            Err(payload) => Poll::Ready(Err(panic_message(payload.as_ref()))),
        }
    })
    .await
}

/// Drops an instance, catching a panic of the user's `Drop` (logged as a
/// warning): it runs where the runtime ends a turn or evicts an object, and
/// a panic there must neither leave a turn's transaction open nor kill the
/// task that dropped it (a caller's, a drain task, the eviction sweep).
pub(crate) fn discard(object: Instance, type_name: &str, id: &ObjectId) {
    if let Err(payload) = std::panic::catch_unwind(AssertUnwindSafe(|| drop(object))) {
        tracing::warn!(
            r#type = type_name, object = %id, panic = panic_message(payload.as_ref()),
            "dropping an instance panicked; the panic was caught and the runtime went on"
        );
    }
}

/// The message of a panic's payload.
pub(crate) fn panic_message(payload: &(dyn std::any::Any + Send)) -> String {
    if let Some(message) = payload.downcast_ref::<&str>() {
        (*message).to_string()
    } else if let Some(message) = payload.downcast_ref::<String>() {
        message.clone()
    } else {
        "a panic without a message".to_string()
    }
}
