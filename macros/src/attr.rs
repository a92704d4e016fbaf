//! The attributes the macro reads: its own arguments and `#[alarm]`.

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
