//! Every check of the macro, each error spanned at the user's token.
//!
//! All errors of one impl are collected and reported together (as
//! serde_derive's `Ctxt` does), so a user fixes them in one round.

use proc_macro2::Span;
use quote::ToTokens;
use syn::spanned::Spanned;
use syn::{Ident, Type};

use crate::ast::{self, Function, Object, Receiver, Role};
use crate::attr::ObjectArgs;

/// Names that every stub has already: `Clone`, `Debug` and its own accessor.
const STUB_METHODS: &[&str] = &["clone", "clone_from", "fmt", "object_id"];

/// What the expansion needs, known to be valid.
pub(crate) struct Model<'a> {
    pub(crate) ident: &'a Ident,
    /// The type's name in ids, storage and requests.
    pub(crate) name: String,
    pub(crate) constructor: Fallible<'a>,
    pub(crate) methods: Vec<&'a Function>,
    pub(crate) alarm: Option<Fallible<'a>>,
}

/// Why the impl block was rejected, and what can still be generated.
pub(crate) struct Invalid<'a> {
    /// Every error found, each spanned at the user's token.
    pub(crate) errors: Vec<syn::Error>,
    /// The part of the model that is sound, when the type itself is.
    pub(crate) skeleton: Option<Skeleton<'a>>,
}

/// The sound part of a rejected impl block: the type is a plain, concrete
/// name, so its stub and `DurableObject` impl can still be declared, and the
/// user's other code that names them still compiles (thiserror's fallback).
pub(crate) struct Skeleton<'a> {
    pub(crate) ident: &'a Ident,
    /// The type's name in ids, storage and requests.
    pub(crate) name: String,
    /// The remote methods that passed every check.
    pub(crate) methods: Vec<&'a Function>,
}

/// A constructor or alarm handler, and whether it returns a `Result`.
pub(crate) struct Fallible<'a> {
    pub(crate) func: &'a Function,
    pub(crate) returns_result: bool,
}

/// The errors found so far.
#[derive(Default)]
struct Errors(Vec<syn::Error>);

impl Errors {
    fn at(&mut self, tokens: impl ToTokens, message: impl std::fmt::Display) {
        self.0.push(syn::Error::new_spanned(tokens, message));
    }

    fn at_span(&mut self, span: Span, message: impl std::fmt::Display) {
        self.0.push(syn::Error::new(span, message));
    }
}

/// Checks the impl block and the macro's arguments (as parsed); returns the
/// model, or every error found.
pub(crate) fn check<'a>(object: &'a Object, args: syn::Result<ObjectArgs>) -> Result<Model<'a>, Invalid<'a>> {
    let mut errors = Errors::default();
    let args = args.unwrap_or_else(|err| {
        errors.0.push(err);
        ObjectArgs::default()
    });
    check_impl(object, &mut errors);
    let ident = object.self_ident();
    // Generic parameters already have their error, which explains why `Holder<T>` is refused.
    if ident.is_none() && object.item.generics.params.is_empty() {
        errors
            .at(&object.item.self_ty, "#[durable_object] needs a plain type name here, like `impl Counter`");
    }

    let mut constructor = None;
    let mut methods = Vec::new();
    let mut alarm: Option<Fallible<'a>> = None;
    for func in &object.fns {
        match func.role() {
            Role::Constructor => constructor = check_constructor(func, ident, &mut errors),
            Role::Remote => {
                if check_remote(func, &mut errors) {
                    methods.push(func);
                }
            }
            Role::Alarm => {
                let handler = check_alarm(func, &mut errors);
                if let Some(first) = &alarm {
                    errors.at(
                        &func.alarm_attrs[0],
                        format!(
                            "an object has one alarm handler, and `{}` is already marked #[alarm]",
                            first.func.sig.ident
                        ),
                    );
                } else {
                    alarm = handler;
                }
            }
            Role::Helper => {}
        }
        for extra in func.alarm_attrs.iter().skip(1) {
            errors.at(extra, "#[alarm] is given twice on this method");
        }
        if func.role() == Role::Constructor && !func.alarm_attrs.is_empty() {
            errors.at(&func.alarm_attrs[0], "the constructor cannot be the alarm handler");
        }
    }

    let is_trait_impl = object.item.trait_.is_some();
    if !is_trait_impl && !object.fns.iter().any(|f| f.role() == Role::Constructor) {
        errors.at(
            &object.item.self_ty,
            "a durable object needs a constructor in this impl block: \
             `pub async fn new(ctx: stead::Context) -> Self`",
        );
    }

    let name = |ident: &Ident| args.name.as_ref().map_or_else(|| ident.to_string(), |name| name.value());
    match (errors.0.is_empty(), ident, constructor) {
        (true, Some(ident), Some(constructor)) => {
            Ok(Model { ident, name: name(ident), constructor, methods, alarm })
        }
        _ => {
            // A trait impl is not where the type's remote methods are, and
            // a generic one has no one type to name: generate nothing there.
            let sound_type = !is_trait_impl && object.item.generics.params.is_empty();
            let skeleton =
                ident.filter(|_| sound_type).map(|ident| Skeleton { ident, name: name(ident), methods });
            Err(Invalid { errors: errors.0, skeleton })
        }
    }
}

/// The impl block itself: inherent, not generic.
fn check_impl(object: &Object, errors: &mut Errors) {
    let item = &object.item;
    if let Some((_, path, _)) = &item.trait_ {
        errors.at(
            path,
            "#[durable_object] goes on an inherent impl (`impl Counter { .. }`), not on a trait impl",
        );
    }
    if !item.generics.params.is_empty() {
        errors.at(
            &item.generics,
            "a durable object type cannot be generic: ids, storage and stubs name one concrete type",
        );
    }
    if let Some(where_clause) = &item.generics.where_clause {
        errors.at(where_clause, "a durable object's impl block cannot have a where clause");
    }
    if let Some(unsafety) = &item.unsafety {
        errors.at(unsafety, "#[durable_object] cannot be put on an `unsafe impl`");
    }
}

fn check_constructor<'a>(
    func: &'a Function,
    ident: Option<&Ident>,
    errors: &mut Errors,
) -> Option<Fallible<'a>> {
    const SHAPE: &str = "`pub async fn new(ctx: stead::Context) -> Self`";
    let before = errors.0.len();
    if let Some(span) = receiver_span(func) {
        errors.at_span(span, format!("the constructor takes no `self`: {SHAPE}"));
    }
    check_not_generic(func, "the constructor", errors);
    match func.args.as_slice() {
        [arg] => {
            if !last_segment_is(&arg.ty, "Context") {
                errors.at(
                    &arg.ty,
                    format!("the constructor's argument is the object's `stead::Context`: {SHAPE}"),
                );
            }
        }
        _ => errors.at(
            &func.sig.ident,
            format!("the constructor takes one argument, the object's `stead::Context`: {SHAPE}"),
        ),
    }
    let is_self = |ty: &Type| {
        last_segment_is(ty, "Self") || ident.is_some_and(|id| last_segment_is(ty, &id.to_string()))
    };
    let returns_result = match func.output() {
        Some(ty) if is_self(ty) => false,
        Some(ty) => match ast::result_args(ty) {
            // `Result<Self, E>`, or a one-argument alias such as `stead::Result<Self>`.
            Some((ok, _)) if is_self(ok) => true,
            _ => {
                errors.at(ty, "the constructor returns `Self` or `Result<Self, E>` where `E: Display`");
                false
            }
        },
        None => {
            errors.at(
                &func.sig.ident,
                "the constructor returns `Self` or `Result<Self, E>` where `E: Display`",
            );
            false
        }
    };
    (errors.0.len() == before).then_some(Fallible { func, returns_result })
}

/// Checks a remote method; returns whether it passed.
fn check_remote(func: &Function, errors: &mut Errors) -> bool {
    let before = errors.0.len();
    let name = &func.sig.ident;
    match func.receiver {
        Receiver::Shared | Receiver::Exclusive => {}
        Receiver::Other(span) => errors.at_span(
            span,
            format!(
                "remote method `{name}` takes `self` by value; a remote method borrows the object: \
                 use `&self` or `&mut self`"
            ),
        ),
        Receiver::None => errors.at(
            name,
            format!(
                "`pub fn {name}` has no `self`; a public method of a durable object is a remote method \
                 and takes `&self` or `&mut self` (make it non-`pub` to keep it a helper)"
            ),
        ),
    }
    check_not_generic(func, &format!("remote method `{name}`"), errors);
    check_signature_modifiers(func, errors);
    if STUB_METHODS.iter().any(|reserved| name == reserved) {
        errors.at(
            name,
            format!("`{name}` is already a method of every stub (`Clone`, `Debug`, `object_id`); rename this method"),
        );
    }
    for arg in &func.args {
        match &arg.ty {
            Type::Reference(_) => errors.at(
                &arg.ty,
                "arguments of remote methods are sent by value: use an owned type (`String`, `Vec<T>`, ..) \
                 instead of a reference",
            ),
            Type::ImplTrait(_) => errors.at(
                &arg.ty,
                "arguments of remote methods cannot be `impl Trait`: name a concrete type that implements \
                 `Serialize` and `Deserialize`",
            ),
            _ => {}
        }
    }
    match func.output() {
        Some(ty @ Type::Reference(_)) => errors
            .at(ty, "remote methods return owned values, not references: the result is sent to the caller"),
        Some(ty @ Type::ImplTrait(_)) => errors.at(
            ty,
            "remote methods cannot return `impl Trait`: name a concrete type that implements `Serialize` \
             and `Deserialize`",
        ),
        _ => {}
    }
    errors.0.len() == before
}

fn check_alarm<'a>(func: &'a Function, errors: &mut Errors) -> Option<Fallible<'a>> {
    const SHAPE: &str = "`async fn alarm(&mut self, info: stead::AlarmInfo)`";
    let before = errors.0.len();
    if !matches!(func.vis, syn::Visibility::Inherited) {
        errors.at(
            &func.vis,
            format!("the alarm handler is called by the runtime only: drop the `pub`, {SHAPE}"),
        );
    }
    if !matches!(func.receiver, Receiver::Exclusive) {
        errors.at(&func.sig.ident, format!("the alarm handler takes `&mut self`: {SHAPE}"));
    }
    if func.args.len() != 1 {
        errors.at(&func.sig.ident, format!("the alarm handler takes one `stead::AlarmInfo`: {SHAPE}"));
    }
    check_not_generic(func, "the alarm handler", errors);
    check_signature_modifiers(func, errors);
    let returns_result = match func.output() {
        None => false,
        Some(ty) if matches!(ast::result_args(ty), Some((ok, _)) if is_unit(ok)) => true,
        Some(ty) => {
            errors.at(ty, "the alarm handler returns nothing or `Result<(), E>` where `E: Display`");
            false
        }
    };
    (errors.0.len() == before).then_some(Fallible { func, returns_result })
}

fn check_not_generic(func: &Function, what: &str, errors: &mut Errors) {
    if !func.sig.generics.params.is_empty() {
        errors.at(
            &func.sig.generics,
            format!("{what} cannot be generic: callers and the object must agree on concrete types"),
        );
    } else if let Some(where_clause) = &func.sig.generics.where_clause {
        errors.at(where_clause, format!("{what} cannot have a where clause"));
    }
}

fn check_signature_modifiers(func: &Function, errors: &mut Errors) {
    let sig = &func.sig;
    if let Some(token) = &sig.unsafety {
        errors.at(token, "methods of a durable object cannot be `unsafe`");
    }
    if let Some(token) = &sig.constness {
        errors.at(token, "methods of a durable object cannot be `const`");
    }
    if let Some(abi) = &sig.abi {
        errors.at(abi, "methods of a durable object cannot have an `extern` ABI");
    }
    if let Some(variadic) = &sig.variadic {
        errors.at(variadic, "methods of a durable object cannot be variadic");
    }
}

fn receiver_span(func: &Function) -> Option<Span> {
    match func.receiver {
        Receiver::None => None,
        Receiver::Other(span) => Some(span),
        Receiver::Shared | Receiver::Exclusive => Some(func.sig.inputs.span()),
    }
}

fn last_segment_is(ty: &Type, name: &str) -> bool {
    match ty {
        Type::Path(path) => path.path.segments.last().is_some_and(|seg| seg.ident == name),
        _ => false,
    }
}

fn is_unit(ty: &Type) -> bool {
    matches!(ty, Type::Tuple(tuple) if tuple.elems.is_empty())
}
