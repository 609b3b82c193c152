//! `key = value` argument lists shared by both macros.

use proc_macro2::{Group, Span, TokenStream, TokenTree};
use syn::parse::{Parse, ParseStream};
use syn::punctuated::Punctuated;
use syn::{Expr, Ident, LitStr, Token};

/// One `key = value` pair; `crate` is accepted as a key.
pub struct Arg {
    pub key: Ident,
    pub value: Expr,
}

impl Parse for Arg {
    fn parse(input: ParseStream<'_>) -> syn::Result<Self> {
        let key = if input.peek(Token![crate]) {
            let kw: Token![crate] = input.parse()?;
            Ident::new("crate", kw.span)
        } else {
            input.parse::<Ident>()?
        };
        input.parse::<Token![=]>()?;
        let value = input.parse()?;
        Ok(Arg { key, value })
    }
}

/// A comma-separated list of [`Arg`].
pub struct Args(pub Vec<Arg>);

impl Parse for Args {
    fn parse(input: ParseStream<'_>) -> syn::Result<Self> {
        Ok(Args(Punctuated::<Arg, Token![,]>::parse_terminated(input)?.into_iter().collect()))
    }
}

/// Collects errors so one expansion reports all of them (as serde_derive's `Ctxt`).
#[derive(Default)]
pub struct Errors(Option<syn::Error>);

impl Errors {
    pub fn push(&mut self, e: syn::Error) {
        match &mut self.0 {
            Some(all) => all.combine(e),
            None => self.0 = Some(e),
        }
    }

    pub fn finish(self) -> syn::Result<()> {
        self.0.map_or(Ok(()), Err)
    }
}

/// A value settable once; a second assignment is an error at the repeated key.
pub struct Once<T>(pub Option<T>);

impl<T> Default for Once<T> {
    fn default() -> Self {
        Once(None)
    }
}

impl<T> Once<T> {
    pub fn set(&mut self, key: &Ident, value: T, errors: &mut Errors) {
        if self.0.is_some() {
            errors.push(syn::Error::new(key.span(), format!("duplicate `{key}` argument")));
        } else {
            self.0 = Some(value);
        }
    }
}

/// The unknown-key error, listing the valid keys.
pub fn unknown(key: &Ident, valid: &[&str]) -> syn::Error {
    syn::Error::new(
        key.span(),
        format!(
            "unknown argument `{key}`; expected one of: {}",
            valid.iter().map(|k| format!("`{k}`")).collect::<Vec<_>>().join(", ")
        ),
    )
}

/// The value as a string literal.
pub fn lit_str(value: &Expr) -> syn::Result<LitStr> {
    match value {
        Expr::Lit(syn::ExprLit { lit: syn::Lit::Str(s), .. }) => Ok(s.clone()),
        other => Err(syn::Error::new_spanned(other, "expected a string literal")),
    }
}

/// The `crate = "path"` override, or `::reliable_kafka`.
pub fn crate_path(value: Option<LitStr>) -> syn::Result<syn::Path> {
    match value {
        Some(s) => s.parse(),
        None => Ok(syn::parse_quote!(::reliable_kafka)),
    }
}

/// Span of the whole call site, for "missing key" errors when there is no better one.
pub fn call_site() -> Span {
    Span::call_site()
}

/// The tokens with every span, inside groups too, set to `span`: for generated code whose
/// diagnostics must point at one token of the user, including interpolated paths such
/// as `#krate` that carry spans of their own.
pub fn respan(tokens: TokenStream, span: Span) -> TokenStream {
    tokens
        .into_iter()
        .map(|tt| match tt {
            TokenTree::Group(g) => {
                let mut group = Group::new(g.delimiter(), respan(g.stream(), span));
                group.set_span(span);
                TokenTree::Group(group)
            }
            mut other => {
                other.set_span(span);
                other
            }
        })
        .collect()
}
