//! The `#[durable_object]` attribute of stead. Use it through the `stead`
//! crate, whose documentation explains what it generates.
//!
//! The macro works in three phases, one module each, as thiserror and
//! serde_derive do:
//! - `ast` reads the `impl` block into our own types (tolerantly: it never
//!   fails on what it does not like);
//! - `valid` checks everything and collects every error, each spanned at the
//!   user's token;
//! - `expand` generates the stub, the dispatch code and the trait impl.
//!
//! When validation fails, the user's impl is still emitted unchanged next to
//! the `compile_error!`s, and so are the stub (with every method that passed
//! the checks) and a skeleton of `impl DurableObject`, as thiserror's
//! fallback does: the user sees the precise errors, and not a cascade of
//! "cannot find type `CounterStub`" or "method not found" wherever the crate
//! uses the stub. Only when the type itself is unsound (not an impl, a trait
//! impl, a generic one) is nothing generated besides the errors.

mod ast;
mod attr;
mod expand;
mod fingerprint;
mod valid;

use proc_macro::TokenStream;

/// Turns an inherent `impl` block into a durable object type.
///
/// See the `stead` crate for the guide; in short, for `impl Counter { ... }`
/// it generates `CounterStub` (one method per `pub` method, each queueing its
/// request when called and returning a `Send + 'static` future of
/// `stead::Result<R>`) and `impl stead::DurableObject for Counter`.
///
/// A remote method's `#[cfg(..)]`, `#[deprecated..]` and `#[allow(..)]`
/// apply to its stub method too: a method compiled out is compiled out of
/// the stub and the dispatch, and callers through the stub see the
/// deprecation.
#[proc_macro_attribute]
pub fn durable_object(attr: TokenStream, item: TokenStream) -> TokenStream {
    let item = proc_macro2::TokenStream::from(item);
    let attr = proc_macro2::TokenStream::from(attr);
    let args = attr::ObjectArgs::parse(attr);
    let item_impl = match syn::parse2::<syn::ItemImpl>(item.clone()) {
        Ok(item_impl) => item_impl,
        Err(_) => {
            let err = syn::Error::new_spanned(
                first_tokens(&item),
                "#[durable_object] goes on an inherent impl block of a struct, like \
                 `#[durable_object] impl Counter { pub async fn new(ctx: stead::Context) -> Self { .. } }`",
            );
            return with_errors(item, args.err().into_iter().chain([err]).collect());
        }
    };
    let object = ast::Object::from_impl(item_impl);
    match valid::check(&object, args) {
        Ok(model) => expand::expand(&object, &model).into(),
        Err(invalid) => with_errors(expand::fallback(&object, invalid.skeleton.as_ref()), invalid.errors),
    }
}

/// The generated code (or the item as written), followed by one
/// `compile_error!` per error.
fn with_errors(code: proc_macro2::TokenStream, errors: Vec<syn::Error>) -> TokenStream {
    let errors = errors.into_iter().map(|err| err.to_compile_error());
    quote::quote!(#code #(#errors)*).into()
}

/// The first few tokens of an item, to point an error at its head.
fn first_tokens(item: &proc_macro2::TokenStream) -> proc_macro2::TokenStream {
    item.clone().into_iter().take(3).collect()
}
