//! HTTP plumbing shared by the API and the demo servers: serving a router on a local
//! port, and JSON errors with stable codes.

use std::net::SocketAddr;

use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::{Json, Router};
use reliable_kafka::CancellationToken;
use serde::Serialize;
use tokio::task::JoinHandle;

/// A server running on a local port.
#[derive(Debug)]
pub struct Server {
    /// Where it listens.
    pub addr: SocketAddr,
    shutdown: CancellationToken,
    join: JoinHandle<()>,
}

impl Server {
    /// Serves `router` on `addr` (port 0 picks a free one).
    ///
    /// # Errors
    /// When the address cannot be bound.
    pub async fn start(router: Router, addr: SocketAddr) -> std::io::Result<Self> {
        let listener = tokio::net::TcpListener::bind(addr).await?;
        let addr = listener.local_addr()?;
        let shutdown = CancellationToken::new();
        let token = shutdown.clone();
        let join = tokio::spawn(async move {
            let _ = axum::serve(listener, router).with_graceful_shutdown(async move { token.cancelled().await }).await;
        });
        Ok(Server { addr, shutdown, join })
    }

    /// `http://<addr>`.
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// Stops accepting, finishes open requests, waits.
    pub async fn stop(self) {
        self.shutdown.cancel();
        let _ = self.join.await;
    }
}

/// A JSON error: `{"error": {"code": "...", "message": "..."}}`. Codes are stable and
/// documented in the example's README; messages are for people.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ApiError {
    /// HTTP status.
    pub status: StatusCode,
    /// Stable machine-readable code, e.g. `seat_unavailable`.
    pub code: &'static str,
    /// Explanation.
    pub message: String,
}

#[derive(Serialize)]
struct ErrorBody<'a> {
    error: ErrorInner<'a>,
}

#[derive(Serialize)]
struct ErrorInner<'a> {
    code: &'a str,
    message: &'a str,
}

impl ApiError {
    /// An error response.
    pub fn new(status: StatusCode, code: &'static str, message: impl Into<String>) -> Self {
        ApiError { status, code, message: message.into() }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let body = ErrorBody { error: ErrorInner { code: self.code, message: &self.message } };
        (self.status, Json(body)).into_response()
    }
}
