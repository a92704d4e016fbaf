//! The trait that `#[durable_object]` implements, and its type-erased form.

use std::future::Future;
use std::pin::Pin;

use crate::context::Context;
use crate::error::Error;
use crate::stub::StubCore;

/// A boxed, sendable future, as stored and run by the runtime.
pub type BoxFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

/// What the runtime receives when an alarm fires; see the `#[alarm]` handler.
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
    /// An `async fn` (else a plain `fn`, which [`DurableObject::__dispatch_sync`] runs).
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

/// A type whose instances are durable objects.
///
/// Do not implement this trait by hand: put `#[durable_object]` on the type's
/// inherent `impl` block, which implements it and generates the type's stub.
/// The members are the contract between that generated code and the runtime,
/// and are hidden from the documentation.
pub trait DurableObject: Sized + Send + 'static {
    /// The typed stub through which callers reach objects of this type
    /// (`{Type}Stub`, generated next to the type).
    type Stub: Clone + Send + Sync + std::fmt::Debug + 'static;

    /// The type's name in ids, storage paths and requests: the Rust type name
    /// unless `#[durable_object(name = "...")]` says otherwise.
    #[doc(hidden)]
    const NAME: &'static str;

    /// The remote methods, indexed by method id.
    #[doc(hidden)]
    const METHODS: &'static [MethodInfo];

    /// Whether the type has an `#[alarm]` handler.
    #[doc(hidden)]
    const HAS_ALARM: bool;

    /// Runs the user's constructor. The error is the constructor's own, rendered.
    #[doc(hidden)]
    fn __construct(ctx: Context) -> BoxFuture<'static, std::result::Result<Self, String>>;

    /// Decodes the arguments of method `method`, runs it and encodes its result.
    #[doc(hidden)]
    fn __dispatch<'a>(&'a mut self, method: u32, args: &'a [u8]) -> BoxFuture<'a, Dispatched>;

    /// Like `__dispatch`, without a future, for the methods that are plain
    /// `fn`s; `None` for the others.
    #[doc(hidden)]
    fn __dispatch_sync(&mut self, method: u32, args: &[u8]) -> Option<Dispatched>;

    /// Runs the `#[alarm]` handler (only called when `HAS_ALARM`).
    #[doc(hidden)]
    fn __alarm(&mut self, info: AlarmInfo) -> BoxFuture<'_, std::result::Result<(), String>>;

    /// Wraps a stub core into the typed stub.
    #[doc(hidden)]
    fn __stub(core: StubCore) -> Self::Stub;
}

/// A live instance of any durable object type.
pub(crate) trait ErasedObject: Send + 'static {
    fn dispatch<'a>(&'a mut self, method: u32, args: &'a [u8]) -> BoxFuture<'a, Dispatched>;
    fn dispatch_sync(&mut self, method: u32, args: &[u8]) -> Option<Dispatched>;
    fn alarm(&mut self, info: AlarmInfo) -> BoxFuture<'_, std::result::Result<(), String>>;
}

impl<T: DurableObject> ErasedObject for T {
    fn dispatch<'a>(&'a mut self, method: u32, args: &'a [u8]) -> BoxFuture<'a, Dispatched> {
        self.__dispatch(method, args)
    }

    fn dispatch_sync(&mut self, method: u32, args: &[u8]) -> Option<Dispatched> {
        self.__dispatch_sync(method, args)
    }

    fn alarm(&mut self, info: AlarmInfo) -> BoxFuture<'_, std::result::Result<(), String>> {
        self.__alarm(info)
    }
}

/// A boxed instance, as kept by an activation.
pub(crate) type Instance = Box<dyn ErasedObject>;

/// Runs `T`'s constructor and erases the instance's type.
pub(crate) fn construct_erased<T: DurableObject>(
    ctx: Context,
) -> BoxFuture<'static, std::result::Result<Instance, String>> {
    Box::pin(async move { T::__construct(ctx).await.map(|object| Box::new(object) as Instance) })
}
