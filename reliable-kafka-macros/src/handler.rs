//! `#[event_handler(...)]`.

use proc_macro2::TokenStream;
use quote::{format_ident, quote, quote_spanned};
use syn::spanned::Spanned;
use syn::{Expr, FnArg, ItemFn, LitStr, ReturnType, Type};

use crate::args::{call_site, crate_path, lit_str, unknown, Args, Errors, Once};

const KEYS: &[&str] = &["topic", "group", "backoff", "dlq", "crate"];

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

fn expand_fn(args: TokenStream, func: &ItemFn) -> syn::Result<TokenStream> {
    let args: Args = syn::parse2(args)?;
    let mut errors = Errors::default();
    let mut topic = Once::<LitStr>::default();
    let mut group = Once::<LitStr>::default();
    let mut backoff = Once::<Expr>::default();
    let mut dlq = Once::<LitStr>::default();
    let mut krate = Once::<LitStr>::default();
    for arg in args.0 {
        let r: syn::Result<()> = (|| {
            match arg.key.to_string().as_str() {
                "topic" => topic.set(&arg.key, non_empty(lit_str(&arg.value)?)?, &mut errors),
                "group" => group.set(&arg.key, non_empty(lit_str(&arg.value)?)?, &mut errors),
                "dlq" => dlq.set(&arg.key, non_empty(lit_str(&arg.value)?)?, &mut errors),
                "crate" => krate.set(&arg.key, lit_str(&arg.value)?, &mut errors),
                "backoff" => backoff.set(&arg.key, arg.value.clone(), &mut errors),
                _ => return Err(unknown(&arg.key, KEYS)),
            }
            Ok(())
        })();
        if let Err(e) = r {
            errors.push(e);
        }
    }
    if group.0.is_none() {
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

    let krate = crate_path(krate.0)?;
    let event_ty = event_ty.expect("checked");
    let vis = &func.vis;
    let name = &sig.ident;
    let docs = func.attrs.iter().filter(|a| a.path().is_ident("doc"));
    let other_attrs: Vec<_> = func.attrs.iter().filter(|a| !a.path().is_ident("doc")).collect();
    let inner_name = format_ident!("__{}_impl", name);
    let mut inner = func.clone();
    inner.sig.ident = inner_name.clone();
    inner.vis = syn::Visibility::Inherited;
    inner.attrs = other_attrs.into_iter().cloned().collect();

    let group = group.0.expect("checked");
    let topic = topic.0.map(|t| quote!(.topic(#t)));
    let dlq = dlq.0.map(|t| quote!(.dead_letter_topic(#t)));
    let backoff = backoff.0.map(|b| quote_spanned!(b.span()=> .backoff(#b)));
    let ret_span = match &sig.output {
        ReturnType::Type(_, t) => t.span(),
        ReturnType::Default => sig.span(),
    };
    // Spanned at the user's return type, so a wrong one is reported there.
    let call = quote_spanned!(ret_span=> #krate::__private::handler_future(#inner_name(event, ctx)));
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
        #[allow(non_camel_case_types)]
        #[derive(Debug, Clone, Copy, Default)]
        #vis struct #name;

        impl #impl_generics #krate::EventHandler #trait_args for #name #where_clause {
            type Event = #event_ty;

            fn options(&self) -> #krate::HandlerOptions {
                #krate::HandlerOptions::new().group(#group) #topic #dlq #backoff
            }

            fn handle<'a>(
                &'a self,
                event: #event_ty,
                ctx: &'a mut #ctx_ty,
            ) -> #krate::__private::BoxFuture<'a, ::core::result::Result<(), #krate::HandlerError>> {
                #inner
                #call
            }
        }
    })
}

fn non_empty(s: LitStr) -> syn::Result<LitStr> {
    if s.value().is_empty() {
        Err(syn::Error::new(s.span(), "must not be empty"))
    } else {
        Ok(s)
    }
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
