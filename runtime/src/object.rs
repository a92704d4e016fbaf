//! The trait that `#[durable_object]` implements, and how an implementation
//! becomes the type-erased instance the runtime holds (`local/instance.rs`).
//!
//! This file, `context.rs` and `runtime.rs` import each other: the trait's
//! constructor receives a `Context`, a `Context` hands out its `Runtime`, and
//! the `Runtime` hosts types by this trait. The loop stays among these three
//! user-facing files; nothing below them imports any of them.

use crate::context::Context;
use crate::local::{AlarmInfo, BoxFuture, Dispatched, ErasedObject, Instance, MethodInfo};
use crate::stub::StubCore;

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

    fn as_any(&mut self) -> &mut dyn std::any::Any {
        self
    }
}

/// Runs `T`'s constructor and erases the instance's type.
pub(crate) fn construct_erased<T: DurableObject>(
    ctx: Context,
) -> BoxFuture<'static, std::result::Result<Instance, String>> {
    Box::pin(async move { T::__construct(ctx).await.map(|object| Box::new(object) as Instance) })
}
