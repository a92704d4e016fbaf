//! The `impl` block read into our own types. Reading never fails: whatever is
//! unusual is recorded as it is and judged by `valid`.

use proc_macro2::{Span, TokenStream};
use quote::{format_ident, quote};
use syn::{Attribute, FnArg, Ident, ImplItem, ItemImpl, Meta, Pat, ReturnType, Signature, Type, Visibility};

use crate::attr;

/// The annotated `impl` block.
pub(crate) struct Object {
    /// The block as the user wrote it, minus our `#[alarm]` attributes.
    pub(crate) item: ItemImpl,
    /// Every function of the block, in order.
    pub(crate) fns: Vec<Function>,
}

/// One function of the block.
pub(crate) struct Function {
    pub(crate) sig: Signature,
    pub(crate) vis: Visibility,
    /// The doc comments, to copy onto the stub method.
    pub(crate) docs: Vec<Attribute>,
    /// The `#[cfg(..)]`s: what is generated for the function exists only
    /// where they hold.
    pub(crate) cfgs: Vec<Attribute>,
    /// The `#[allow(..)]`s, for the generated code that mentions the
    /// function's types.
    pub(crate) allows: Vec<Attribute>,
    /// The `#[deprecated..]`s, to copy onto the stub method.
    pub(crate) deprecations: Vec<Attribute>,
    /// Every `#[alarm]` on the function (more than one is an error).
    pub(crate) alarm_attrs: Vec<Attribute>,
    pub(crate) receiver: Receiver,
    pub(crate) args: Vec<Arg>,
}

/// How a function takes `self`.
pub(crate) enum Receiver {
    /// An associated function without `self`.
    None,
    /// `&self`.
    Shared,
    /// `&mut self`.
    Exclusive,
    /// `self`, `mut self`, `self: Box<Self>` and the like.
    Other(Span),
}

/// One argument other than `self`.
pub(crate) struct Arg {
    /// The name for the stub's parameter: the user's when the pattern is a
    /// plain identifier, `argN` otherwise.
    pub(crate) name: Ident,
    pub(crate) ty: Type,
}

/// What a function is to the macro.
#[derive(Clone, Copy, PartialEq, Eq)]
pub(crate) enum Role {
    /// `fn new`: the constructor.
    Constructor,
    /// Marked `#[alarm]`: the alarm handler.
    Alarm,
    /// `pub fn`: callable through the stub.
    Remote,
    /// Anything else: an ordinary helper, left alone.
    Helper,
}

impl Object {
    pub(crate) fn from_impl(mut item: ItemImpl) -> Self {
        let mut fns = Vec::new();
        for impl_item in &mut item.items {
            if let ImplItem::Fn(func) = impl_item {
                let (alarm_attrs, others): (Vec<_>, Vec<_>) = func.attrs.drain(..).partition(attr::is_alarm);
                func.attrs = others;
                fns.push(Function::new(&func.sig, &func.vis, &func.attrs, alarm_attrs));
            }
        }
        Object { item, fns }
    }

    /// The identifier of the self type, when it is a plain name: one
    /// segment, no generic arguments.
    pub(crate) fn self_ident(&self) -> Option<&Ident> {
        match &*self.item.self_ty {
            Type::Path(path)
                if path.qself.is_none()
                    && path.path.segments.len() == 1
                    && path.path.segments[0].arguments.is_none() =>
            {
                Some(&path.path.segments[0].ident)
            }
            _ => None,
        }
    }
}

impl Function {
    fn new(sig: &Signature, vis: &Visibility, attrs: &[Attribute], alarm_attrs: Vec<Attribute>) -> Self {
        let mut receiver = Receiver::None;
        let mut args = Vec::new();
        for input in &sig.inputs {
            match input {
                FnArg::Receiver(recv) => {
                    receiver = match (&recv.reference, recv.mutability, recv.colon_token) {
                        (Some(_), None, None) => Receiver::Shared,
                        (Some(_), Some(_), None) => Receiver::Exclusive,
                        _ => Receiver::Other(recv.self_token.span),
                    };
                }
                FnArg::Typed(typed) => {
                    let name = match &*typed.pat {
                        Pat::Ident(pat) if pat.subpat.is_none() => pat.ident.clone(),
                        _ => format_ident!("arg{}", args.len()),
                    };
                    args.push(Arg { name, ty: (*typed.ty).clone() });
                }
            }
        }
        let of_kind = |is: fn(&Attribute) -> bool| attrs.iter().filter(|a| is(a)).cloned().collect();
        Function {
            sig: sig.clone(),
            vis: vis.clone(),
            docs: of_kind(attr::is_doc),
            cfgs: of_kind(attr::is_cfg),
            allows: of_kind(attr::is_allow),
            deprecations: of_kind(attr::is_deprecated),
            alarm_attrs,
            receiver,
            args,
        }
    }

    pub(crate) fn role(&self) -> Role {
        if self.sig.ident == "new" {
            Role::Constructor
        } else if !self.alarm_attrs.is_empty() {
            Role::Alarm
        } else if matches!(self.vis, Visibility::Public(_)) {
            Role::Remote
        } else {
            Role::Helper
        }
    }

    /// The condition under which the function exists, as one `cfg`
    /// predicate (`all(..)` of its `#[cfg(..)]`s); `None` when it always
    /// does. A malformed `#[cfg]` is left out: rustc reports it at the
    /// user's attribute.
    pub(crate) fn cfg_predicate(&self) -> Option<TokenStream> {
        if self.cfgs.is_empty() {
            return None;
        }
        let predicates = self.cfgs.iter().filter_map(|cfg| match &cfg.meta {
            Meta::List(list) => Some(&list.tokens),
            _ => None,
        });
        Some(quote!(all(#(#predicates),*)))
    }

    pub(crate) fn is_async(&self) -> bool {
        self.sig.asyncness.is_some()
    }

    /// The declared return type, `None` for `()`.
    pub(crate) fn output(&self) -> Option<&Type> {
        match &self.sig.output {
            ReturnType::Default => None,
            ReturnType::Type(_, ty) => Some(ty),
        }
    }
}

/// If `ty` is `Result<A, B>` (any path ending in `Result` with two type
/// arguments, or `stead::Result<A>` with one), its arguments.
pub(crate) fn result_args(ty: &Type) -> Option<(&Type, Option<&Type>)> {
    let Type::Path(path) = ty else { return None };
    let last = path.path.segments.last()?;
    if last.ident != "Result" {
        return None;
    }
    let syn::PathArguments::AngleBracketed(generics) = &last.arguments else {
        return None;
    };
    let mut types = generics.args.iter().filter_map(|arg| match arg {
        syn::GenericArgument::Type(ty) => Some(ty),
        _ => None,
    });
    let ok = types.next()?;
    Some((ok, types.next()))
}
