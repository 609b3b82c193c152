//! W3C trace context between spans and record headers (`traceparent`, `tracestate`).
//! Real with the `opentelemetry` feature; without it both functions do nothing and a
//! `traceparent` given by the caller is still carried.

/// The current span's W3C trace context as headers: `traceparent` and, when not
/// empty, `tracestate`. Empty without the `opentelemetry` feature, or when the current
/// span has no valid OpenTelemetry context (no `tracing-opentelemetry` layer, or not
/// sampled in).
pub fn current_trace_headers() -> Vec<(&'static str, String)> {
    imp::current()
}

/// Makes `span` a child of the W3C trace context in `traceparent` / `tracestate`.
/// Nothing happens when `traceparent` is `None` or malformed, or without the
/// `opentelemetry` feature.
pub fn set_parent_from_headers(span: &tracing::Span, traceparent: Option<&str>, tracestate: Option<&str>) {
    if let Some(tp) = traceparent {
        imp::set_parent(span, tp, tracestate);
    }
}

/// Links `span` to the trace context in `traceparent` (a batch span links the traces
/// of its records).
pub(crate) fn add_link(span: &tracing::Span, traceparent: Option<&str>) {
    if let Some(tp) = traceparent {
        imp::add_link(span, tp);
    }
}

#[cfg(feature = "opentelemetry")]
mod imp {
    use std::collections::HashMap;

    use opentelemetry::propagation::TextMapPropagator;
    use opentelemetry::trace::TraceContextExt;
    use opentelemetry_sdk::propagation::TraceContextPropagator;
    use tracing_opentelemetry::OpenTelemetrySpanExt;

    pub(super) fn current() -> Vec<(&'static str, String)> {
        let cx = tracing::Span::current().context();
        if !cx.span().span_context().is_valid() {
            return Vec::new();
        }
        let mut carrier = HashMap::new();
        TraceContextPropagator::new().inject_context(&cx, &mut carrier);
        let mut out = Vec::with_capacity(2);
        for name in [crate::headers::TRACEPARENT, crate::headers::TRACESTATE] {
            if let Some(v) = carrier.remove(name).filter(|v| !v.is_empty()) {
                out.push((name, v));
            }
        }
        out
    }

    fn extract(traceparent: &str, tracestate: Option<&str>) -> Option<opentelemetry::Context> {
        let mut carrier = HashMap::with_capacity(2);
        carrier.insert(crate::headers::TRACEPARENT.to_owned(), traceparent.to_owned());
        if let Some(ts) = tracestate {
            carrier.insert(crate::headers::TRACESTATE.to_owned(), ts.to_owned());
        }
        let cx = TraceContextPropagator::new().extract(&carrier);
        cx.span().span_context().is_valid().then_some(cx)
    }

    pub(super) fn set_parent(span: &tracing::Span, traceparent: &str, tracestate: Option<&str>) {
        if let Some(cx) = extract(traceparent, tracestate) {
            let _ = span.set_parent(cx);
        }
    }

    pub(super) fn add_link(span: &tracing::Span, traceparent: &str) {
        if let Some(cx) = extract(traceparent, None) {
            span.add_link(cx.span().span_context().clone());
        }
    }
}

#[cfg(not(feature = "opentelemetry"))]
mod imp {
    pub(super) fn current() -> Vec<(&'static str, String)> {
        Vec::new()
    }
    pub(super) fn set_parent(_: &tracing::Span, _: &str, _: Option<&str>) {}
    pub(super) fn add_link(_: &tracing::Span, _: &str) {}
}
