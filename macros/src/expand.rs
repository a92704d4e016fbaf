//! Code generation: the stub, the dispatch code and `impl DurableObject`.
//!
//! Generated code names only `::stead::__private::..`, `::core::..` and
//! `::std::..` paths, so it compiles whatever the user imported (even under
//! `#![no_implicit_prelude]`). Identifiers the user never names are built
//! with `Span::mixed_site()` so they cannot clash with the user's.

use proc_macro2::{Span, TokenStream};
use quote::{ToTokens, format_ident, quote, quote_spanned};
use syn::spanned::Spanned;
use syn::{Ident, LitStr, Type};

use crate::ast::{Function, Object, Receiver};
use crate::fingerprint::{fingerprint, type_text};
use crate::valid::{Fallible, Model, Skeleton};

/// The full expansion of a valid impl block.
pub(crate) fn expand(object: &Object, model: &Model<'_>) -> TokenStream {
    let item = &object.item;
    let methods = Method::all(&model.methods, &stub_ident(model.ident));
    let dispatch_arms = methods.iter().map(Method::dispatch_arm);
    let sync_arms = methods.iter().filter(|method| !method.func.is_async()).map(Method::sync_dispatch_arm);
    let construct = construct(&model.constructor);
    let alarm = alarm(model.alarm.as_ref());
    let method_var = Ident::new("method", Span::mixed_site());
    let args_var = Ident::new("args", Span::mixed_site());
    let body = quote! {
        #alarm

        fn __construct(
            ctx: ::stead::__private::Context,
        ) -> ::stead::__private::BoxFuture<'static, ::core::result::Result<Self, ::std::string::String>> {
            ::std::boxed::Box::pin(async move { #construct })
        }

        fn __dispatch<'a>(
            &'a mut self,
            #method_var: u32,
            #args_var: &'a [u8],
        ) -> ::stead::__private::BoxFuture<'a, ::stead::__private::Dispatched> {
            ::std::boxed::Box::pin(async move {
                match #method_var {
                    #(#dispatch_arms)*
                    _ => ::stead::__private::unknown_method(<Self as ::stead::__private::DurableObject>::NAME, #method_var),
                }
            })
        }

        #[allow(clippy::redundant_closure_call)]
        fn __dispatch_sync(
            &mut self,
            #method_var: u32,
            #args_var: &[u8],
        ) -> ::core::option::Option<::stead::__private::Dispatched> {
            match #method_var {
                #(#sync_arms)*
                _ => ::core::option::Option::None,
            }
        }
    };
    let declarations = declarations(model.ident, &model.name, &methods, &body);
    quote!(#item #declarations)
}

/// What is emitted for a rejected impl block, next to its errors: the block
/// unchanged and, when the type is sound, its stub and a skeleton of its
/// `DurableObject` impl, so that the user's code that names the stub or
/// calls its sound methods still compiles and the errors are only the
/// precise ones. The skeleton's bodies never run (the crate does not
/// compile), and call none of the user's functions, whose signatures may be
/// what was rejected.
pub(crate) fn fallback(object: &Object, skeleton: Option<&Skeleton<'_>>) -> TokenStream {
    let item = &object.item;
    let Some(skeleton) = skeleton else {
        return item.to_token_stream();
    };
    let methods = Method::all(&skeleton.methods, &stub_ident(skeleton.ident));
    let never = "#[durable_object] rejected this impl block; the build reports why";
    let body = quote! {
        const HAS_ALARM: bool = false;

        fn __construct(
            _: ::stead::__private::Context,
        ) -> ::stead::__private::BoxFuture<'static, ::core::result::Result<Self, ::std::string::String>> {
            ::core::unreachable!(#never)
        }

        fn __dispatch<'a>(
            &'a mut self,
            _: u32,
            _: &'a [u8],
        ) -> ::stead::__private::BoxFuture<'a, ::stead::__private::Dispatched> {
            ::core::unreachable!(#never)
        }

        fn __dispatch_sync(&mut self, _: u32, _: &[u8]) -> ::core::option::Option<::stead::__private::Dispatched> {
            ::core::unreachable!(#never)
        }

        fn __alarm(
            &mut self,
            _: ::stead::__private::AlarmInfo,
        ) -> ::stead::__private::BoxFuture<'_, ::core::result::Result<(), ::std::string::String>> {
            ::core::unreachable!(#never)
        }
    };
    let declarations = declarations(skeleton.ident, &skeleton.name, &methods, &body);
    quote!(#item #declarations)
}

/// The stub type, its impls, the method ids, the assertions on the methods'
/// types, and `impl DurableObject` with `body` for the items that differ
/// between the full expansion and the fallback.
///
/// The stub's inherent impl stays outside the `const _` block, so that
/// rustc calls its methods `CounterStub::get` (in a deprecation warning, for
/// one) rather than `_::<impl CounterStub>::get`; the method ids are its
/// private associated `const`s, which the dispatch code names too.
fn declarations(ident: &Ident, name: &str, methods: &[Method<'_>], body: &TokenStream) -> TokenStream {
    let stub = stub_ident(ident);
    let stub_doc = LitStr::new(
        &format!(
            "Typed stub of [`{ident}`]: calls its remote methods wherever the object lives.\n\n\
             Obtained from `Namespace::<{ident}>::stub`; making one does no I/O and never \
             creates the object. Each method queues its call when it is called and returns \
             a future of the reply. Clones share one order: calls issued through a stub and \
             its clones are delivered in the order they were issued."
        ),
        Span::call_site(),
    );
    let core = core_field();
    let id_consts = methods.iter().map(Method::id_const);
    let stub_methods = methods.iter().map(Method::stub_method);
    let method_infos = methods.iter().map(Method::info);
    let assertions = methods.iter().flat_map(Method::assertions);

    quote! {
        #[doc = #stub_doc]
        #[derive(::core::clone::Clone)]
        #[allow(unreachable_pub, private_interfaces)]
        pub struct #stub {
            #core: ::stead::__private::StubCore,
        }

        #(#assertions)*

        #[allow(unreachable_pub, private_interfaces, clippy::manual_async_fn)]
        impl #stub {
            #(#id_consts)*

            /// The id of the object this stub addresses.
            pub fn object_id(&self) -> ::stead::__private::ObjectId {
                self.#core.id()
            }

            #(#stub_methods)*
        }

        const _: () = {
            impl ::core::fmt::Debug for #stub {
                fn fmt(&self, f: &mut ::core::fmt::Formatter<'_>) -> ::core::fmt::Result {
                    ::core::fmt::Debug::fmt(&self.#core, f)
                }
            }

            impl ::stead::__private::ObjectStub for #stub {
                type Object = #ident;

                fn __core(&self) -> &::stead::__private::StubCore {
                    &self.#core
                }
            }

            // The generated code calls the user's methods: deprecating one
            // is meant for its other callers (the stub method inherits it).
            #[allow(deprecated)]
            impl ::stead::__private::DurableObject for #ident {
                type Stub = #stub;
                const NAME: &'static str = #name;
                const METHODS: &'static [::stead::__private::MethodInfo] = &[#(#method_infos),*];

                #body

                fn __stub(core: ::stead::__private::StubCore) -> #stub {
                    #stub { #core: core }
                }
            }
        };
    }
}

/// The stub's one field.
fn core_field() -> Ident {
    Ident::new("__stead_core", Span::mixed_site())
}

/// The stub type of the object type `ident`.
fn stub_ident(ident: &Ident) -> Ident {
    format_ident!("{}Stub", ident)
}

/// The argument and return types of a remote method.
fn remote_types(func: &Function) -> Vec<&Type> {
    func.args.iter().map(|arg| &arg.ty).chain(func.output()).collect()
}

/// One remote method, with its id and fingerprint.
struct Method<'a> {
    func: &'a Function,
    /// The name of the stub's associated `const` that holds the method id.
    id: Ident,
    /// The value of that `const`.
    id_value: TokenStream,
    /// The `const`'s path, for the dispatch patterns and the stub method.
    id_path: TokenStream,
    fingerprint: u64,
    output: TokenStream,
}

impl<'a> Method<'a> {
    /// The remote methods, with their ids.
    ///
    /// A method id is the method's index in `METHODS`. A method under
    /// `#[cfg(..)]` has its table entry, stub method, dispatch arms and id
    /// emitted under the same `cfg`, so where the `cfg` fails all of them
    /// vanish together, and the methods after it must move down one slot.
    /// The ids therefore cannot be written as literals: each one is a
    /// constant expression that counts the methods before it which exist in
    /// this build, `(number of unconditional ones) + cfg!(..) as u32 + ..`
    /// with one `cfg!` per conditional one, so stub, table and dispatch agree
    /// in every configuration without any placeholder entry in the table.
    fn all(funcs: &[&'a Function], stub: &Ident) -> Vec<Self> {
        let mut unconditional = 0u32;
        let mut conditions = Vec::new();
        let mut methods = Vec::with_capacity(funcs.len());
        for (position, &func) in funcs.iter().enumerate() {
            let id = Ident::new(&format!("__STEAD_METHOD_{position}"), Span::mixed_site());
            let id_value = quote!(#unconditional #(+ (::core::cfg!(#conditions) as u32))*);
            let id_path = quote!(#stub::#id);
            match func.cfg_predicate() {
                Some(predicate) => conditions.push(predicate),
                None => unconditional = unconditional.saturating_add(1),
            }
            methods.push(Method::new(func, id, id_value, id_path));
        }
        methods
    }

    fn new(func: &'a Function, id: Ident, id_value: TokenStream, id_path: TokenStream) -> Self {
        let output = func.output().map_or_else(|| quote!(()), ToTokens::to_token_stream);
        let args: Vec<String> = func.args.iter().map(|arg| type_text(&arg.ty)).collect();
        let fingerprint = fingerprint(&func.sig.ident.to_string(), &args, &type_text(&output));
        Method { func, id, id_value, id_path, fingerprint, output }
    }

    /// The `const` that holds the method's id.
    fn id_const(&self) -> TokenStream {
        let (cfgs, id, value) = (&self.func.cfgs, &self.id, &self.id_value);
        quote!(#(#cfgs)* #[doc(hidden)] const #id: u32 = #value;)
    }

    /// `Send + 'static` assertions on the method's types, at the user's types.
    fn assertions(&self) -> Vec<TokenStream> {
        let (cfgs, allows) = (&self.func.cfgs, &self.func.allows);
        remote_types(self.func)
            .into_iter()
            .map(|ty| {
                quote_spanned! {ty.span()=>
                    #(#cfgs)* #(#allows)*
                    const _: () = ::stead::__private::assert_sendable::<#ty>();
                }
            })
            .collect()
    }

    fn info(&self) -> TokenStream {
        let name = self.func.sig.ident.to_string();
        let fingerprint = self.fingerprint;
        let is_async = self.func.is_async();
        let cfgs = &self.func.cfgs;
        quote! {
            #(#cfgs)*
            ::stead::__private::MethodInfo { name: #name, fingerprint: #fingerprint, is_async: #is_async }
        }
    }

    fn stub_method(&self) -> TokenStream {
        let Method { func, fingerprint, output, .. } = self;
        let name = &func.sig.ident;
        let docs = if func.docs.is_empty() {
            let text =
                format!("Calls `{}` on the object; the call is queued before this returns.", func.sig.ident);
            quote!(#[doc = #text])
        } else {
            let docs = &func.docs;
            quote!(#(#docs)*)
        };
        let params = func.args.iter().map(|arg| {
            let (name, ty) = (&arg.name, &arg.ty);
            quote!(#name: #ty)
        });
        let writer = Ident::new("args", Span::mixed_site());
        let pushes = func.args.iter().map(|arg| {
            let (name, ty) = (&arg.name, &arg.ty);
            quote_spanned!(ty.span()=> #writer.push::<#ty>(&#name);)
        });
        let call = quote_spanned!(output.span()=> ::stead::__private::call::<#output>);
        let (cfgs, allows, deprecations) = (&func.cfgs, &func.allows, &func.deprecations);
        let id = &self.id_path;
        let core = core_field();
        quote! {
            #docs
            #(#cfgs)* #(#allows)* #(#deprecations)*
            pub fn #name(&self, #(#params),*)
                -> impl ::core::future::Future<Output = ::stead::__private::Result<#output>>
                       + ::core::marker::Send + 'static + use<>
            {
                #[allow(unused_mut)]
                let mut #writer = ::stead::__private::ArgsWriter::new();
                #(#pushes)*
                #call(&self.#core, #id, #fingerprint, #writer)
            }
        }
    }

    fn dispatch_arm(&self) -> TokenStream {
        let (cfgs, allows) = (&self.func.cfgs, &self.func.allows);
        let id = &self.id_path;
        let body = self.dispatch_body();
        quote!(#(#cfgs)* #(#allows)* #id => #body)
    }

    /// The arm of `__dispatch_sync` (for a plain `fn`): the same body, in a
    /// closure so that its `?`s stop there.
    fn sync_dispatch_arm(&self) -> TokenStream {
        let (cfgs, allows) = (&self.func.cfgs, &self.func.allows);
        let id = &self.id_path;
        let body = self.dispatch_body();
        quote! {
            #(#cfgs)* #(#allows)*
            #id => ::core::option::Option::Some(
                (|| -> ::stead::__private::Dispatched #body)()
            ),
        }
    }

    /// Decodes the arguments, calls the method, encodes its result.
    fn dispatch_body(&self) -> TokenStream {
        let func = self.func;
        let name = &func.sig.ident;
        let name_text = name.to_string();
        let vars: Vec<Ident> =
            (0..func.args.len()).map(|i| Ident::new(&format!("arg{i}"), Span::mixed_site())).collect();
        let args_var = Ident::new("args", Span::mixed_site());
        let reader = Ident::new("reader", Span::mixed_site());
        let reads = func.args.iter().zip(&vars).map(|(arg, var)| {
            let ty = &arg.ty;
            quote_spanned!(ty.span()=> let #var = #reader.read::<#ty>()?;)
        });
        let output = Ident::new("output", Span::mixed_site());
        let output_ty = &self.output;
        let encode = quote_spanned!(output_ty.span()=> ::stead::__private::encode_result::<#output_ty>);
        let this = match func.receiver {
            Receiver::Exclusive => quote!(&mut *self),
            _ => quote!(&*self),
        };
        let call = quote!(Self::#name(#this, #(#vars),*));
        let call = if func.is_async() { quote!(#call.await) } else { call };
        quote! {
            {
                #[allow(unused_mut)]
                let mut #reader = ::stead::__private::ArgsReader::new(#name_text, #args_var);
                #(#reads)*
                #reader.finish()?;
                let #output = #call;
                #encode(#name_text, &#output)
            }
        }
    }
}

fn construct(constructor: &Fallible<'_>) -> TokenStream {
    let call = quote!(Self::new(ctx));
    let call = if constructor.func.is_async() { quote!(#call.await) } else { call };
    if constructor.returns_result {
        quote!(::core::result::Result::map_err(#call, ::stead::__private::render_error))
    } else {
        quote!(::core::result::Result::Ok(#call))
    }
}

/// `HAS_ALARM` and `__alarm`. A handler under `#[cfg(..)]` gets them
/// twice: calling it where the `cfg` holds, and those of a type without a
/// handler where it does not.
fn alarm(handler: Option<&Fallible<'_>>) -> TokenStream {
    let Some(handler) = handler else {
        return no_alarm(&TokenStream::new());
    };
    let func = handler.func;
    let name = &func.sig.ident;
    let call = quote!(Self::#name(self, info));
    let call = if func.is_async() { quote!(#call.await) } else { call };
    let body = if handler.returns_result {
        quote!(::core::result::Result::map_err(#call, ::stead::__private::render_error))
    } else {
        quote!({ #call; ::core::result::Result::Ok(()) })
    };
    let (only_if, otherwise) = match func.cfg_predicate() {
        Some(predicate) => (quote!(#[cfg(#predicate)]), Some(no_alarm(&quote!(#[cfg(not(#predicate))])))),
        None => (TokenStream::new(), None),
    };
    let allows = &func.allows;
    quote! {
        #only_if
        const HAS_ALARM: bool = true;

        #only_if
        #(#allows)*
        fn __alarm(
            &mut self,
            info: ::stead::__private::AlarmInfo,
        ) -> ::stead::__private::BoxFuture<'_, ::core::result::Result<(), ::std::string::String>> {
            ::std::boxed::Box::pin(async move { #body })
        }

        #otherwise
    }
}

/// `HAS_ALARM` and `__alarm` of a type without an alarm handler, each
/// under `cfg` (empty, or a `#[cfg(..)]`).
fn no_alarm(cfg: &TokenStream) -> TokenStream {
    quote! {
        #cfg
        const HAS_ALARM: bool = false;

        #cfg
        fn __alarm(
            &mut self,
            _: ::stead::__private::AlarmInfo,
        ) -> ::stead::__private::BoxFuture<'_, ::core::result::Result<(), ::std::string::String>> {
            ::std::boxed::Box::pin(async { ::core::result::Result::Ok(()) })
        }
    }
}
