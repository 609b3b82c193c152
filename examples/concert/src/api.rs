//! The HTTP API (axum). Errors are `{"error": {"code", "message"}}` with the stable
//! codes listed in the example's README.

use axum::extract::rejection::{JsonRejection, PathRejection};
use axum::extract::{FromRequest, FromRequestParts, Path, Request, State};
use axum::http::request::Parts;
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use reliable_kafka::{Health, HealthProbe, HealthStatus, Outbox};
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use uuid::Uuid;

use crate::booking::{Booking, BookingError, PayRequest};
use crate::coupon::{request_coupon, CouponError};
use crate::http::ApiError;

/// State shared by the handlers.
#[derive(Debug, Clone)]
pub struct ApiState {
    /// The booking service.
    pub booking: Booking,
    /// The outbox (coupon requests).
    pub outbox: Outbox,
    /// The health of this process's workers (relay, consumer groups, re-driver).
    pub probes: Vec<HealthProbe>,
    /// The Prometheus recorder, when one is installed (`/metrics`).
    pub metrics: Option<metrics_exporter_prometheus::PrometheusHandle>,
}

/// The routes.
pub fn router(state: ApiState) -> Router {
    Router::new()
        .route("/health/live", get(live))
        .route("/health/ready", get(ready))
        .route("/health", get(ready))
        .route("/api/queue/tokens", post(issue_token))
        .route("/api/reservations", post(reserve))
        .route("/api/reservations/{id}", get(reservation))
        .route("/api/reservations/{id}/checkout", post(checkout))
        .route("/api/payments", post(pay))
        .route("/api/payments/{id}", get(payment))
        .route("/api/coupons/{id}/requests", post(coupon))
        .route("/api/users/{id}/coupons", get(coupons))
        .route("/metrics", get(prometheus))
        .route_layer(axum::middleware::from_fn(trace_request))
        .with_state(state)
}

/// A server span per request (OpenTelemetry's HTTP conventions), continuing the
/// caller's `traceparent` when it sends one: the outbox rows the request enqueues carry
/// its trace.
async fn trace_request(req: Request, next: axum::middleware::Next) -> Response {
    use tracing::Instrument;
    let route = req
        .extensions()
        .get::<axum::extract::MatchedPath>()
        .map_or_else(|| req.uri().path().to_owned(), |p| p.as_str().to_owned());
    let span = tracing::info_span!(
        "request",
        "otel.name" = %format_args!("{} {route}", req.method()),
        "otel.kind" = "server",
        "http.request.method" = %req.method(),
        "http.route" = %route,
        "url.path" = %req.uri().path(),
        "http.response.status_code" = tracing::field::Empty,
    );
    {
        let header = |name: &str| req.headers().get(name).and_then(|v| v.to_str().ok());
        reliable_kafka::telemetry::set_parent_from_headers(&span, header("traceparent"), header("tracestate"));
    }
    let response = next.run(req).instrument(span.clone()).await;
    span.record("http.response.status_code", response.status().as_u16());
    response
}

/// The Prometheus exposition (text format 0.0.4) of the library's and the app's
/// metrics; `404` when no recorder is installed.
async fn prometheus(State(s): State<ApiState>) -> Response {
    match &s.metrics {
        Some(h) => ([(axum::http::header::CONTENT_TYPE, "text/plain; version=0.0.4")], h.render()).into_response(),
        None => (StatusCode::NOT_FOUND, "no metrics recorder installed").into_response(),
    }
}

/// Liveness: `200 {"status":"up"}` while every worker's task runs, else `503` naming
/// the stopped ones (restart the process).
async fn live(State(s): State<ApiState>) -> Response {
    let stopped: Vec<String> = s.probes.iter().filter(|p| !p.is_running()).map(|p| p.health().worker).collect();
    if stopped.is_empty() {
        Json(serde_json::json!({ "status": "up" })).into_response()
    } else {
        (StatusCode::SERVICE_UNAVAILABLE, Json(serde_json::json!({ "status": "down", "stopped": stopped })))
            .into_response()
    }
}

/// Readiness: `200` while no worker is unhealthy (degraded ones are listed), else
/// `503`; the body lists each worker's status, reasons and consumer lag.
async fn ready(State(s): State<ApiState>) -> Response {
    let healths: Vec<Health> = s.probes.iter().map(HealthProbe::health).collect();
    let status = Health::worst(&healths);
    let workers: Vec<serde_json::Value> = healths
        .iter()
        .map(|h| {
            serde_json::json!({
                "worker": h.worker, "status": h.status.as_str(), "reasons": h.reasons, "consumer_lag": h.consumer_lag,
            })
        })
        .collect();
    let code = if status == HealthStatus::Unhealthy { StatusCode::SERVICE_UNAVAILABLE } else { StatusCode::OK };
    (code, Json(serde_json::json!({ "status": status.as_str(), "workers": workers }))).into_response()
}

/// `Json<T>` whose rejection is an [`ApiError`] with code `invalid_request`.
pub struct ApiJson<T>(pub T);

impl<S: Send + Sync, T: DeserializeOwned> FromRequest<S> for ApiJson<T> {
    type Rejection = ApiError;

    async fn from_request(req: Request, state: &S) -> Result<Self, ApiError> {
        Json::<T>::from_request(req, state).await.map(|Json(v)| ApiJson(v)).map_err(|r: JsonRejection| {
            // 415 (no JSON content type) is reported as a plain bad request.
            let status =
                if r.status() == StatusCode::UNSUPPORTED_MEDIA_TYPE { StatusCode::BAD_REQUEST } else { r.status() };
            ApiError::new(status, "invalid_request", r.body_text())
        })
    }
}

/// A positive integer id from the path; anything else is `400 invalid_request`.
pub struct Id(pub i64);

impl<S: Send + Sync> FromRequestParts<S> for Id {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, ApiError> {
        let Path(id) = Path::<i64>::from_request_parts(parts, state)
            .await
            .map_err(|r: PathRejection| ApiError::new(StatusCode::BAD_REQUEST, "invalid_request", r.body_text()))?;
        positive("id", id).map(Id)
    }
}

fn positive(field: &str, v: i64) -> Result<i64, ApiError> {
    if v > 0 {
        Ok(v)
    } else {
        Err(ApiError::new(StatusCode::BAD_REQUEST, "invalid_request", format!("`{field}` must be a positive integer")))
    }
}

impl From<BookingError> for ApiError {
    fn from(e: BookingError) -> Self {
        let (status, code) = match &e {
            BookingError::InvalidToken { .. } => (StatusCode::UNAUTHORIZED, "queue_token_invalid"),
            BookingError::SeatTaken { .. } => (StatusCode::CONFLICT, "seat_unavailable"),
            BookingError::NotFound { .. } => (StatusCode::NOT_FOUND, "not_found"),
            BookingError::NotPayable { .. } => (StatusCode::CONFLICT, "reservation_not_payable"),
            BookingError::KeyReused { .. } => (StatusCode::UNPROCESSABLE_ENTITY, "idempotency_key_reused"),
            _ => {
                tracing::error!(error = %reliable_kafka::report(&e), "request failed");
                return ApiError::new(
                    StatusCode::INTERNAL_SERVER_ERROR,
                    "internal_error",
                    "internal error; retry later",
                );
            }
        };
        ApiError::new(status, code, e.to_string())
    }
}

impl From<CouponError> for ApiError {
    fn from(e: CouponError) -> Self {
        let (status, code) = match &e {
            CouponError::SoldOut { .. } => (StatusCode::CONFLICT, "coupon_sold_out"),
            CouponError::AlreadyRequested { .. } => (StatusCode::CONFLICT, "coupon_already_requested"),
            CouponError::NotFound { .. } => (StatusCode::NOT_FOUND, "not_found"),
            CouponError::Busy { .. } => (StatusCode::SERVICE_UNAVAILABLE, "coupon_busy"),
            _ => {
                tracing::error!(error = %reliable_kafka::report(&e), "coupon request failed");
                return ApiError::new(
                    StatusCode::INTERNAL_SERVER_ERROR,
                    "internal_error",
                    "internal error; retry later",
                );
            }
        };
        ApiError::new(status, code, e.to_string())
    }
}

/// Body of `POST /api/queue/tokens`.
#[derive(Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TokenRequest {
    /// User.
    pub user_id: i64,
}

/// Answer of `POST /api/queue/tokens`.
#[derive(Debug, Serialize, Deserialize)]
pub struct TokenResponse {
    /// User.
    pub user_id: i64,
    /// Active queue token; send it as `X-Queue-Token`.
    pub token: String,
}

async fn issue_token(State(s): State<ApiState>, ApiJson(req): ApiJson<TokenRequest>) -> Result<Response, ApiError> {
    let user_id = positive("user_id", req.user_id)?;
    let token = s.booking.enter_queue(user_id).await?;
    Ok((StatusCode::CREATED, Json(TokenResponse { user_id, token })).into_response())
}

/// Body of `POST /api/reservations`.
#[derive(Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ReserveRequest {
    /// User.
    pub user_id: i64,
    /// Seat.
    pub seat_id: i64,
}

/// Header carrying the queue token.
pub const QUEUE_TOKEN_HEADER: &str = "x-queue-token";
/// Header carrying the checkout's idempotency key.
pub const IDEMPOTENCY_KEY_HEADER: &str = "idempotency-key";

async fn reserve(
    State(s): State<ApiState>,
    headers: HeaderMap,
    ApiJson(req): ApiJson<ReserveRequest>,
) -> Result<Response, ApiError> {
    let user_id = positive("user_id", req.user_id)?;
    let seat_id = positive("seat_id", req.seat_id)?;
    let token = headers.get(QUEUE_TOKEN_HEADER).and_then(|v| v.to_str().ok()).ok_or_else(|| {
        ApiError::new(StatusCode::UNAUTHORIZED, "queue_token_invalid", "the `X-Queue-Token` header is required")
    })?;
    let r = s.booking.reserve(user_id, seat_id, token).await?;
    Ok((StatusCode::CREATED, Json(r)).into_response())
}

async fn reservation(State(s): State<ApiState>, Id(id): Id) -> Result<Response, ApiError> {
    Ok(Json(s.booking.reservation(id).await?).into_response())
}

/// Answer of `POST /api/reservations/{id}/checkout`.
#[derive(Debug, Serialize, Deserialize)]
pub struct CheckoutResponse {
    /// Send as `Idempotency-Key` with the payment request.
    pub idempotency_key: Uuid,
}

async fn checkout(State(s): State<ApiState>, Id(id): Id) -> Result<Response, ApiError> {
    let key = s.booking.open_checkout(id).await?;
    Ok((StatusCode::CREATED, Json(CheckoutResponse { idempotency_key: key })).into_response())
}

async fn pay(
    State(s): State<ApiState>,
    headers: HeaderMap,
    ApiJson(req): ApiJson<PayRequest>,
) -> Result<Response, ApiError> {
    positive("reservation_id", req.reservation_id)?;
    positive("user_id", req.user_id)?;
    let key = headers
        .get(IDEMPOTENCY_KEY_HEADER)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| Uuid::parse_str(v).ok())
        .ok_or_else(|| {
        ApiError::new(
            StatusCode::BAD_REQUEST,
            "idempotency_key_required",
            "the `Idempotency-Key` header must hold the UUID returned by the checkout",
        )
    })?;
    let p = s.booking.pay(key, &req).await?;
    // In progress at the gateway, or accepted with the payment record on its way.
    let status =
        if p.status == "IN_PROGRESS" || p.status == "ACCEPTED" { StatusCode::ACCEPTED } else { StatusCode::OK };
    Ok((status, Json(p)).into_response())
}

async fn payment(State(s): State<ApiState>, Id(id): Id) -> Result<Response, ApiError> {
    Ok(Json(s.booking.payment(id).await?).into_response())
}

/// Body of `POST /api/coupons/{id}/requests`.
#[derive(Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CouponRequest {
    /// User.
    pub user_id: i64,
}

async fn coupon(
    State(s): State<ApiState>,
    Id(coupon_id): Id,
    ApiJson(req): ApiJson<CouponRequest>,
) -> Result<Response, ApiError> {
    let user_id = positive("user_id", req.user_id)?;
    request_coupon(s.booking.pool(), s.booking.store(), &s.outbox, coupon_id, user_id).await?;
    Ok((
        StatusCode::ACCEPTED,
        Json(serde_json::json!({ "coupon_id": coupon_id, "user_id": user_id, "status": "REQUESTED" })),
    )
        .into_response())
}

/// A coupon as listed by `GET /api/users/{id}/coupons`.
#[derive(Debug, Serialize, Deserialize, sqlx::FromRow)]
pub struct CouponView {
    /// Coupon kind.
    pub coupon_id: i64,
    /// Code.
    pub code: String,
}

async fn coupons(State(s): State<ApiState>, Id(user_id): Id) -> Result<Response, ApiError> {
    let list: Vec<CouponView> = crate::sql!(
        s.booking.pool(),
        query_as("SELECT coupon_id, code FROM coupon WHERE user_id = $1 ORDER BY id").bind(user_id).fetch_all()
    )
    .map_err(BookingError::from)?;
    Ok(Json(list).into_response())
}
