//! `#[event_handler(...)]`.
//!
//! For `async fn name(event: E, ctx: &mut HandlerContext<..>) -> Result<(), HandlerError>`
//! this emits, each under the function's `cfg` and lint attributes:
//! - the unit struct `name` (with the function's docs), to register as `.handler(name)`;
//! - `impl name { async fn call(event, ctx) { <body> } }`, callable from a unit test as
//!   `name::call(event, &mut ctx).await`; the function's generics and its other attributes
//!   (`#[tracing::instrument]`, `#[inline]`, …) are on `call`;
//! - `impl EventHandler for name`, whose `handle` boxes `Self::call(event, ctx)`;
//! - for the deprecated `dlq` key, a reference to a `#[deprecated]` constant spanned at
//!   the key, so that the compiler warns there.

use proc_macro2::TokenStream;
use quote::{quote, quote_spanned, ToTokens};
use syn::spanned::Spanned;
use syn::{Attribute, Expr, FnArg, Ident, ItemFn, LitStr, ReturnType, Type};

use crate::args::{call_site, crate_path, lit_str, respan, unknown, Arg, Args, Errors, Once};

/// Valid keys, in the order the unknown-key error lists them. `dlq`, the deprecated name
/// of `dead_letter_topic`, is still accepted but not offered.
const KEYS: &[&str] = &[
    "topic",
    "group",
    "backoff",
    "dead_letter_topic",
    "identity",
    "retry_topics",
    "circuit_breaker",
    "key_blocking",
    "crate",
];

pub fn expand(args: TokenStream, item: TokenStream) -> TokenStream {
    // On an error, still emit the function so the rest of the crate type-checks and the
    // IDE keeps working; the user sees only the macro's own errors.
    let func: ItemFn = match syn::parse2(item.clone()) {
        Ok(f) => f,
        Err(e) => {
            let e =
                syn::Error::new(e.span(), "`#[event_handler]` must be placed on an `async fn`").into_compile_error();
            return quote!(#e #item);
        }
    };
    match expand_fn(args, &func) {
        Ok(ts) => ts,
        Err(e) => {
            let e = e.into_compile_error();
            quote!(#e #func)
        }
    }
}

/// A `topic`, `group` or `dead_letter_topic` value with the key it was given under.
struct Named {
    key: Ident,
    value: Expr,
}

/// The parsed `#[event_handler(...)]` arguments.
#[derive(Default)]
struct HandlerArgs {
    topic: Once<Named>,
    group: Once<Named>,
    backoff: Once<Expr>,
    identity: Once<Expr>,
    /// Given as `dead_letter_topic` or as the deprecated `dlq` (then `key` is `dlq`).
    dead_letter_topic: Once<Named>,
    /// Delays in ms, parsed from the literal.
    retry_topics: Once<(LitStr, Vec<u64>)>,
    circuit_breaker: Once<Expr>,
    key_blocking: Once<Expr>,
    krate: Once<LitStr>,
}

/// `"1s, 10s, 1m"` as ms; the same grammar as `RetryTopics::parse`.
fn retry_delays(lit: &LitStr) -> syn::Result<Vec<u64>> {
    let text = lit.value();
    text.split(',')
        .map(|d| {
            let d = d.trim();
            let split = d.find(|c: char| !c.is_ascii_digit()).unwrap_or(d.len());
            let n: Option<u64> = d[..split].parse().ok();
            let unit = match d[split..].trim() {
                "ms" => Some(1),
                "s" => Some(1_000),
                "m" => Some(60_000),
                "h" => Some(3_600_000),
                _ => None,
            };
            n.zip(unit).and_then(|(n, u)| n.checked_mul(u)).ok_or_else(|| {
                syn::Error::new(
                    lit.span(),
                    format!("`{d}` is not a delay like 500ms, 10s, 1m or 1h (delays are comma-separated)"),
                )
            })
        })
        .collect()
}

fn parse_args(args: TokenStream, errors: &mut Errors) -> syn::Result<HandlerArgs> {
    let args: Args = syn::parse2(args)?;
    let mut out = HandlerArgs::default();
    for arg in args.0 {
        let r: syn::Result<()> = (|| {
            let key = arg.key.clone();
            match key.to_string().as_str() {
                // A bad value is reported but still counts as given: no "missing `group`".
                "topic" => out.topic.set(&key, named(&arg, errors), errors),
                "group" => out.group.set(&key, named(&arg, errors), errors),
                "dead_letter_topic" | "dlq" => {
                    let value = named(&arg, errors);
                    match &out.dead_letter_topic.0 {
                        Some(first) if first.key != key => errors.push(syn::Error::new(
                            key.span(),
                            format!(
                                "both `{}` and `{key}` given; `dlq` is the deprecated name of \
                                 `dead_letter_topic`: keep only `dead_letter_topic`",
                                first.key
                            ),
                        )),
                        _ => out.dead_letter_topic.set(&key, value, errors),
                    }
                }
                "crate" => out.krate.set(&key, lit_str(&arg.value)?, errors),
                "backoff" => out.backoff.set(&key, arg.value.clone(), errors),
                "identity" => out.identity.set(&key, arg.value.clone(), errors),
                "retry_topics" => {
                    let lit = lit_str(&arg.value)?;
                    let delays = retry_delays(&lit)?;
                    out.retry_topics.set(&key, (lit, delays), errors)
                }
                "circuit_breaker" => out.circuit_breaker.set(&key, arg.value.clone(), errors),
                "key_blocking" => out.key_blocking.set(&key, arg.value.clone(), errors),
                _ => return Err(unknown(&key, KEYS)),
            }
            Ok(())
        })();
        if let Err(e) = r {
            errors.push(e);
        }
    }
    Ok(out)
}

fn expand_fn(args: TokenStream, func: &ItemFn) -> syn::Result<TokenStream> {
    let mut errors = Errors::default();
    let args = parse_args(args, &mut errors)?;
    if args.group.0.is_none() {
        errors.push(syn::Error::new(
            call_site(),
            "missing `group` argument, e.g. `#[event_handler(group = \"payment-compensator-group\")]`",
        ));
    }

    let sig = &func.sig;
    if sig.asyncness.is_none() {
        errors.push(syn::Error::new(sig.fn_token.span(), "an event handler must be an `async fn`"));
    }
    if sig.generics.params.iter().any(|p| !matches!(p, syn::GenericParam::Type(_))) {
        errors.push(syn::Error::new_spanned(
            &sig.generics,
            "an event handler can only be generic over types (e.g. `<DB: Backend>`)",
        ));
    }
    if let Some(r) = &sig.receiver() {
        errors.push(syn::Error::new_spanned(r, "an event handler is a free function, not a method"));
    }
    if matches!(sig.output, ReturnType::Default) {
        errors.push(syn::Error::new(
            sig.paren_token.span.close(),
            "an event handler must return `Result<(), HandlerError>`",
        ));
    }
    let typed: Vec<&syn::PatType> = sig
        .inputs
        .iter()
        .filter_map(|a| match a {
            FnArg::Typed(t) => Some(t),
            FnArg::Receiver(_) => None,
        })
        .collect();
    let shape = "expected `(event: YourEvent, ctx: &mut HandlerContext)`";
    let mut backend_ty = None;
    let event_ty = match typed.as_slice() {
        [event, ctx] => {
            backend_ty = context_backend(&ctx.ty);
            if !matches!(&*ctx.ty, Type::Reference(r) if r.mutability.is_some()) {
                errors.push(syn::Error::new_spanned(
                    &ctx.ty,
                    format!("the second argument must be `&mut HandlerContext`; {shape}"),
                ));
            }
            if matches!(&*event.ty, Type::Reference(_)) {
                errors.push(syn::Error::new_spanned(&event.ty, "the event is passed by value; remove the `&`"));
            }
            Some((*event.ty).clone())
        }
        _ => {
            errors.push(syn::Error::new(
                sig.inputs.span(),
                format!("an event handler takes exactly two arguments; {shape}"),
            ));
            None
        }
    };
    errors.finish()?;

    let krate = crate_path(args.krate.0)?;
    let event_ty = event_ty.expect("checked");
    let vis = &func.vis;
    let name = &sig.ident;
    let attrs = Attrs::split(&func.attrs);
    let (docs, all, fn_only) = (&attrs.docs, &attrs.all, &attrs.fn_only);
    // `handle` calls `call`: no warning there for a handler marked `#[deprecated]`.
    let allow_deprecated = attrs.deprecated.then(|| quote!(#[allow(deprecated)]));

    // The function itself, renamed `call`, keeping its generics, arguments and spans.
    let mut call_sig = sig.clone();
    call_sig.ident = Ident::new("call", sig.ident.span());
    let block = &func.block;

    // `.group(GROUP)`: the method name at the key, the argument with its own tokens, so
    // a value that is no `&str` is reported at the value (and "required by" at the key).
    let option = |method: &str, named: Named| {
        let m = Ident::new(method, named.key.span());
        let v = named.value;
        quote_spanned!(v.span()=> .#m(#v))
    };
    let group = option("group", args.group.0.expect("checked"));
    let topic = args.topic.0.map(|t| option("topic", t));
    let deprecated_dlq = args.dead_letter_topic.0.as_ref().filter(|d| d.key == "dlq").map(|d| {
        // A use of the `#[deprecated]` constant with every token at the `dlq` key (also
        // those of `#krate`), so the warning points there whichever token of the path the
        // compiler reports; a separate item, outside any `#[allow(deprecated)]` of ours.
        let path = respan(quote!(#krate::__private::DEPRECATED_DLQ_ARGUMENT), d.key.span());
        quote_spanned!(d.key.span()=> #(#all)* const _: () = #path;)
    });
    let dead_letter_topic = args.dead_letter_topic.0.map(|d| option("dead_letter_topic", d));
    let backoff = args.backoff.0.map(|b| quote_spanned!(b.span()=> .backoff(#b)));
    let identity = args.identity.0.map(|i| quote_spanned!(i.span()=> .identity(#i)));
    let retry_topics = args.retry_topics.0.map(|(lit, delays)| {
        quote_spanned!(lit.span()=> .retry_topics(#krate::RetryTopics::new([#(::core::time::Duration::from_millis(#delays)),*])))
    });
    let circuit_breaker = args.circuit_breaker.0.map(|b| quote_spanned!(b.span()=> .circuit_breaker(#b)));
    let key_blocking = args.key_blocking.0.map(|k| quote_spanned!(k.span()=> .key_blocking(#k)));

    // The first and last token of the return type: the call below spans from one to
    // the other, so a wrong return type is underlined whole.
    let (ret_first, ret_last) = match &sig.output {
        ReturnType::Type(_, t) => {
            let spans: Vec<_> = t.to_token_stream().into_iter().map(|t| t.span()).collect();
            (spans.first().copied().unwrap_or_else(|| t.span()), spans.last().copied().unwrap_or_else(|| t.span()))
        }
        ReturnType::Default => (sig.span(), sig.span()),
    };
    // `Self::call::<A, B>` when the function is generic, so the trait impl's type
    // parameters reach `call` even when they appear in no argument.
    let type_params: Vec<&Ident> = sig.generics.type_params().map(|p| &p.ident).collect();
    let turbofish = (!type_params.is_empty()).then(|| quote!(::<#(#type_params),*>));
    // Spanned at the user's return type, so a wrong one is reported there.
    let args = quote_spanned!(ret_last=> (event, ctx));
    let call = quote_spanned!(ret_first=> #krate::__private::handler_future(Self::call #turbofish #args));
    // `HandlerContext<X>` makes an `EventHandler<X>`; plain `HandlerContext` the default
    // (PostgreSQL). Type parameters of the function become those of the impl.
    let (impl_generics, _, where_clause) = sig.generics.split_for_impl();
    let trait_args = backend_ty.map(|b| quote!(<#b>));
    let ctx_ty = match backend_ty {
        Some(b) => quote!(#krate::HandlerContext<#b>),
        None => quote!(#krate::HandlerContext),
    };

    Ok(quote! {
        #(#docs)*
        #(#all)*
        #[allow(non_camel_case_types)]
        #[derive(::core::fmt::Debug, ::core::clone::Clone, ::core::marker::Copy, ::core::default::Default)]
        #vis struct #name;

        #(#all)*
        impl #name {
            #(#docs)*
            #(#fn_only)*
            #vis #call_sig #block
        }

        #(#all)*
        impl #impl_generics #krate::EventHandler #trait_args for #name #where_clause {
            type Event = #event_ty;

            fn options(&self) -> #krate::HandlerOptions {
                #krate::HandlerOptions::new() #group #topic #dead_letter_topic #backoff #identity #retry_topics
                    #circuit_breaker #key_blocking
            }

            #allow_deprecated
            fn handle<'a>(
                &'a self,
                event: #event_ty,
                ctx: &'a mut #ctx_ty,
            ) -> #krate::__private::BoxFuture<'a, ::core::result::Result<(), #krate::HandlerError>> {
                #call
            }
        }

        #deprecated_dlq
    })
}

/// The function's outer attributes, by the generated items they go to.
struct Attrs<'a> {
    /// `///` docs and `#[doc(..)]`: the struct and `call`.
    docs: Vec<&'a Attribute>,
    /// Whether `#[deprecated]` is among `fn_only`. (Not on the struct: the impls name
    /// it, and an `#[allow(deprecated)]` on the inherent impl would cover the body.)
    deprecated: bool,
    /// `cfg`, `cfg_attr` and lint levels (`allow`, `warn`, `deny`, `forbid`): every
    /// generated item, so `#[cfg(test)]` removes all of them. (The compiler strips
    /// `cfg`/`cfg_attr` before running the macro; this covers tokens that still have them.)
    all: Vec<&'a Attribute>,
    /// Everything else (`#[expect(..)]`, `#[inline]`, `#[tracing::instrument]`, …): `call`
    /// only, the one function there is; most would be errors on a struct or an impl.
    fn_only: Vec<&'a Attribute>,
}

impl<'a> Attrs<'a> {
    fn split(attrs: &'a [Attribute]) -> Self {
        const ALL: &[&str] = &["cfg", "cfg_attr", "allow", "warn", "deny", "forbid"];
        let mut out = Attrs { docs: Vec::new(), deprecated: false, all: Vec::new(), fn_only: Vec::new() };
        for attr in attrs {
            let path = attr.path();
            if path.is_ident("doc") {
                out.docs.push(attr);
            } else if ALL.iter().any(|n| path.is_ident(n)) {
                out.all.push(attr);
            } else {
                out.deprecated |= path.is_ident("deprecated");
                out.fn_only.push(attr);
            }
        }
        out
    }
}

/// A `topic`/`group`/`dead_letter_topic` argument. Its value is a non-empty string
/// literal, or any other expression (a `const`, `Event::TOPIC`, `concat!(..)`) left to the
/// type checker; other literals are reported here.
fn named(arg: &Arg, errors: &mut Errors) -> Named {
    match &arg.value {
        Expr::Lit(syn::ExprLit { lit: syn::Lit::Str(s), .. }) if s.value().is_empty() => {
            errors.push(syn::Error::new(s.span(), "must not be empty"));
        }
        Expr::Lit(syn::ExprLit { lit: syn::Lit::Str(_), .. }) => {}
        Expr::Lit(other) => errors.push(syn::Error::new_spanned(
            other,
            "expected a string: a literal such as `\"orders\"` or a `&'static str` constant such as `TOPIC`",
        )),
        _ => {}
    }
    Named { key: arg.key.clone(), value: arg.value.clone() }
}

/// The backend type argument of `&mut HandlerContext<X>`, if written.
fn context_backend(ty: &Type) -> Option<&Type> {
    let Type::Reference(r) = ty else { return None };
    let Type::Path(p) = &*r.elem else { return None };
    let last = p.path.segments.last()?;
    let syn::PathArguments::AngleBracketed(args) = &last.arguments else { return None };
    args.args.iter().find_map(|a| match a {
        syn::GenericArgument::Type(t) => Some(t),
        _ => None,
    })
}
