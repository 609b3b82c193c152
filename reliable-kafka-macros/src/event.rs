//! `#[derive(Event)]`.

use proc_macro2::TokenStream;
use quote::{quote, quote_spanned};
use syn::{Data, DeriveInput, Expr, Fields, Ident, LitInt, LitStr};

use crate::args::{crate_path, lit_str, unknown, Args, Errors, Once};

const KEYS: &[&str] = &["topic", "key", "version", "name", "codec", "crate"];

pub fn expand(input: DeriveInput) -> syn::Result<TokenStream> {
    let mut errors = Errors::default();
    let mut topic = Once::<LitStr>::default();
    let mut key = Once::<Ident>::default();
    let mut version = Once::<LitInt>::default();
    let mut name = Once::<LitStr>::default();
    let mut codec = Once::<syn::Path>::default();
    let mut krate = Once::<LitStr>::default();

    let mut seen_attr = false;
    for attr in input.attrs.iter().filter(|a| a.path().is_ident("event")) {
        seen_attr = true;
        let args: Args = match attr.parse_args() {
            Ok(a) => a,
            Err(e) => {
                errors.push(e);
                continue;
            }
        };
        for arg in args.0 {
            let k = arg.key.to_string();
            let parsed: syn::Result<()> = (|| {
                match k.as_str() {
                    "topic" => {
                        let s = lit_str(&arg.value)?;
                        if s.value().is_empty() {
                            return Err(syn::Error::new(s.span(), "topic must not be empty"));
                        }
                        topic.set(&arg.key, s, &mut errors)
                    }
                    "key" => match &arg.value {
                        Expr::Path(p) if p.path.get_ident().is_some() => {
                            key.set(&arg.key, p.path.get_ident().unwrap().clone(), &mut errors)
                        }
                        other => {
                            return Err(syn::Error::new_spanned(other, "expected a field name, e.g. `key = order_id`"))
                        }
                    },
                    "version" => match &arg.value {
                        Expr::Lit(syn::ExprLit { lit: syn::Lit::Int(i), .. }) => {
                            let v: u32 = i.base10_parse()?;
                            if v == 0 {
                                return Err(syn::Error::new(i.span(), "version must be at least 1"));
                            }
                            version.set(&arg.key, i.clone(), &mut errors)
                        }
                        other => {
                            return Err(syn::Error::new_spanned(
                                other,
                                "expected an integer literal, e.g. `version = 2`",
                            ))
                        }
                    },
                    "name" => name.set(&arg.key, lit_str(&arg.value)?, &mut errors),
                    "codec" => match &arg.value {
                        Expr::Path(p) => codec.set(&arg.key, p.path.clone(), &mut errors),
                        other => {
                            return Err(syn::Error::new_spanned(
                                other,
                                "expected a type path, e.g. `codec = my::Codec`",
                            ))
                        }
                    },
                    "crate" => krate.set(&arg.key, lit_str(&arg.value)?, &mut errors),
                    _ => return Err(unknown(&arg.key, KEYS)),
                }
                Ok(())
            })();
            if let Err(e) = parsed {
                errors.push(e);
            }
        }
    }
    if topic.0.is_none() {
        let msg = if seen_attr {
            "missing `topic` in `#[event(...)]`, e.g. `#[event(topic = \"orders\")]`"
        } else {
            "missing `#[event(topic = \"...\")]` attribute"
        };
        errors.push(syn::Error::new(input.ident.span(), msg));
    }
    if let Some(k) = &key.0 {
        match &input.data {
            Data::Struct(s) => match &s.fields {
                Fields::Named(named) => {
                    if !named.named.iter().any(|f| f.ident.as_ref() == Some(k)) {
                        errors.push(syn::Error::new(k.span(), format!("no field `{k}` in `{}`", input.ident)));
                    }
                }
                _ => errors.push(syn::Error::new(k.span(), "`key` needs a struct with named fields")),
            },
            _ => errors.push(syn::Error::new(k.span(), "`key` needs a struct with named fields")),
        }
    }
    errors.finish()?;

    let krate = crate_path(krate.0)?;
    let ident = &input.ident;
    let (impl_g, ty_g, where_g) = input.generics.split_for_impl();
    let topic = topic.0.expect("checked");
    let version = version.0.map(|v| quote!(#v)).unwrap_or_else(|| quote!(1));
    let name = name.0.map(|n| quote!(#n)).unwrap_or_else(|| {
        let s = ident.to_string();
        quote!(#s)
    });
    let codec = codec.0.map(|c| quote!(#c)).unwrap_or_else(|| quote!(#krate::JsonCodec));
    let key_body = match &key.0 {
        Some(k) => {
            quote_spanned!(k.span()=> #krate::__private::Option::Some(#krate::__private::ToString::to_string(&self.#k)))
        }
        None => quote!(#krate::__private::Option::None),
    };
    Ok(quote! {
        impl #impl_g #krate::Event for #ident #ty_g #where_g {
            const TOPIC: &'static str = #topic;
            const EVENT_TYPE: &'static str = #name;
            const SCHEMA_VERSION: u32 = #version;
            type Codec = #codec;
            fn key(&self) -> #krate::__private::Option<#krate::__private::String> {
                #key_body
            }
        }
    })
}
