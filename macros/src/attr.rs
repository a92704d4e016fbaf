//! The attributes the macro reads: its own arguments, `#[alarm]`, and the
//! attributes of a method that its generated counterparts inherit.

use proc_macro2::TokenStream;
use syn::parse::Parser;
use syn::{Attribute, LitStr};

/// The arguments of `#[durable_object(...)]`.
#[derive(Default)]
pub(crate) struct ObjectArgs {
    /// `name = "..."`: the type's name in ids, storage and requests.
    pub(crate) name: Option<LitStr>,
}

impl ObjectArgs {
    pub(crate) fn parse(tokens: TokenStream) -> syn::Result<Self> {
        let mut args = ObjectArgs::default();
        let parser = syn::meta::parser(|meta| {
            if meta.path.is_ident("name") {
                let name: LitStr = meta.value()?.parse()?;
                let text = name.value();
                let valid = !text.is_empty()
                    && text.chars().all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-' || c == '.');
                if !valid {
                    return Err(syn::Error::new(
                        name.span(),
                        "an object type's name is used in storage paths: use letters, digits, `_`, `-` and `.` only",
                    ));
                }
                args.name = Some(name);
                Ok(())
            } else {
                Err(meta.error("unknown argument; #[durable_object] takes only `name = \"...\"`"))
            }
        });
        parser.parse2(tokens)?;
        Ok(args)
    }
}

/// Whether `attr` is `#[alarm]`.
pub(crate) fn is_alarm(attr: &Attribute) -> bool {
    attr.path().is_ident("alarm")
}

/// Whether `attr` is a doc comment.
pub(crate) fn is_doc(attr: &Attribute) -> bool {
    attr.path().is_ident("doc")
}

/// Whether `attr` is `#[cfg(..)]`. Such a method exists only in some builds,
/// and so must its stub method, dispatch arms and method-table entry.
/// (`#[cfg_attr(..)]` is not read: what it expands to is not known here.)
pub(crate) fn is_cfg(attr: &Attribute) -> bool {
    attr.path().is_ident("cfg")
}

/// Whether `attr` is `#[allow(..)]`, which the generated code that mentions
/// the method's types inherits, so that what the user silenced stays silent.
pub(crate) fn is_allow(attr: &Attribute) -> bool {
    attr.path().is_ident("allow")
}

/// Whether `attr` is `#[deprecated..]`, which the stub method inherits, so
/// that callers through the stub are warned as direct callers would be.
pub(crate) fn is_deprecated(attr: &Attribute) -> bool {
    attr.path().is_ident("deprecated")
}
