//! The OpenAI-compatible HTTP server (binary `serve`) on top of [`Service`].
//!
//! ```text
//! HTTP (axum, tokio)                               blocking pool (one task per request)
//! POST /v1/chat/completions
//!   body limit (413) → parse + validate (400/404) ─▶ load images: base64, file://, http(s)
//!   ◀──────────────────────────────────────────────   probe headers (400)
//!   in-flight limit (503) ──────────────────────────▶ Service::submit (400 / 503)
//!   ◀── answer (JSON) or SSE chunks ─────────────────  RequestHandle::recv_timeout, polling
//!                                                      whether the client is still there
//! GET /v1/models, /health, /metrics (also on --metrics-port)
//! ```
//!
//! The engine runs on its own thread behind [`Service`]; its calls block, so they run on
//! tokio's blocking pool and never on the async workers. A client that goes away drops the
//! receiving end of its channel; the blocking task sees that within one poll interval and
//! drops the [`crate::service::RequestHandle`], which aborts the request and frees its KV
//! blocks. Validation that needs no model (JSON, the model name, messages, counts, sampling
//! ranges, image headers) happens before the service is asked, so it answers the same on a
//! machine without a GPU ([`validate`], [`media`]).

pub mod api;
mod chat;
pub mod cli;
pub mod error;
pub mod media;
pub mod metrics;
pub mod otsl;
pub mod validate;

use std::future::{Future, IntoFuture};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use axum::extract::{DefaultBodyLimit, State};
use axum::http::{header, StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::Router;
use tokio::net::TcpListener;
use tokio::sync::watch;

use crate::service::{Service, ServiceState};

pub use error::ApiError;
pub use media::{MediaPolicy, RemoteImages};
pub use metrics::Metrics;

/// The server's own settings (the engine's are in the [`Service`]).
#[derive(Clone, Debug)]
pub struct ServerConfig {
    /// Names the model answers to (`--served-model-name`); the first is reported first.
    pub served_model_names: Vec<String>,
    /// `--max-model-len`, for the model card and an early `max_tokens` check.
    pub max_model_len: usize,
    /// `--limit-mm-per-prompt`: images per request.
    pub max_images: usize,
    /// Request bodies above this are refused with 413 (base64 images make bodies large).
    pub max_body_bytes: usize,
    /// Requests in flight (queued or running) above which new ones get 503; 0 is no limit.
    pub max_pending_requests: usize,
    pub media: MediaPolicy,
}

impl Default for ServerConfig {
    fn default() -> Self {
        ServerConfig {
            served_model_names: vec!["PaddleOCR-VL-0.9B".into()],
            max_model_len: 16384,
            max_images: 4,
            max_body_bytes: 64 << 20,
            max_pending_requests: 0,
            media: MediaPolicy::default(),
        }
    }
}

/// What every handler shares.
pub struct AppState {
    pub service: Service,
    pub config: ServerConfig,
    pub metrics: Metrics,
    in_flight: AtomicUsize,
    shutting_down: AtomicBool,
    /// Unix seconds at start, the models' `created`.
    created: u64,
}

impl AppState {
    pub fn new(service: Service, config: ServerConfig) -> Arc<AppState> {
        Arc::new(AppState {
            service,
            config,
            metrics: Metrics::default(),
            in_flight: AtomicUsize::new(0),
            shutting_down: AtomicBool::new(false),
            created: unix_now(),
        })
    }

    fn limits(&self) -> validate::Limits {
        validate::Limits {
            served_model_names: self.config.served_model_names.clone(),
            max_images: self.config.max_images,
            max_model_len: self.config.max_model_len,
        }
    }

    /// Counts a request in flight until the guard drops; 503 when shutting down or full.
    fn admit(self: &Arc<Self>) -> Result<InFlight, ApiError> {
        if self.shutting_down.load(Ordering::SeqCst) {
            return Err(ApiError::unavailable("the server is shutting down"));
        }
        let n = self.in_flight.fetch_add(1, Ordering::SeqCst);
        let guard = InFlight(self.clone());
        let limit = self.config.max_pending_requests;
        if limit > 0 && n >= limit {
            return Err(ApiError::overloaded(limit));
        }
        Ok(guard)
    }

    pub fn in_flight(&self) -> usize {
        self.in_flight.load(Ordering::SeqCst)
    }
}

/// One request in flight; dropping it (wherever its work ends) releases the count.
struct InFlight(Arc<AppState>);

impl Drop for InFlight {
    fn drop(&mut self) {
        self.0.in_flight.fetch_sub(1, Ordering::SeqCst);
    }
}

/// The API routes; `/metrics` is served here too (as vLLM does) besides `--metrics-port`.
pub fn router(state: Arc<AppState>) -> Router {
    let limit = state.config.max_body_bytes;
    Router::new()
        .route("/v1/chat/completions", post(chat::chat_completions))
        .route("/v1/models", get(models))
        .route("/health", get(health))
        .route("/metrics", get(metrics_text))
        .fallback(fallback)
        .layer(DefaultBodyLimit::max(limit))
        .with_state(state)
}

/// The metrics port's routes.
pub fn metrics_router(state: Arc<AppState>) -> Router {
    Router::new()
        .route("/metrics", get(metrics_text))
        .route("/health", get(health))
        .fallback(fallback)
        .with_state(state)
}

/// Bound listeners and the shared state, ready to [`Server::run`].
pub struct Server {
    state: Arc<AppState>,
    api: TcpListener,
    metrics: Option<TcpListener>,
}

/// How [`Server::run`] ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ShutdownReport {
    /// Requests in flight when the shutdown began.
    pub in_flight_at_signal: usize,
    /// Whether everything stopped within the bound (grace plus a few seconds to close).
    pub clean: bool,
    pub took: Duration,
}

impl Server {
    /// Binds the API address and, when given, the metrics address (`host:port`, port 0 picks
    /// a free one). Binding happens before the model loads, so `/health` answers (503) from
    /// the start and a taken port fails at once.
    pub async fn bind(state: Arc<AppState>, api: &str, metrics: Option<&str>) -> std::io::Result<Server> {
        let api = TcpListener::bind(api).await?;
        let metrics = match metrics {
            Some(addr) => Some(TcpListener::bind(addr).await?),
            None => None,
        };
        Ok(Server { state, api, metrics })
    }

    pub fn state(&self) -> &Arc<AppState> {
        &self.state
    }

    pub fn local_addr(&self) -> std::io::Result<SocketAddr> {
        self.api.local_addr()
    }

    pub fn metrics_addr(&self) -> Option<SocketAddr> {
        self.metrics.as_ref().and_then(|l| l.local_addr().ok())
    }

    /// Serves until `shutdown` resolves, then: refuse new requests (503), stop accepting
    /// connections, let running requests finish for up to `grace` (the engine aborts what is
    /// left then, and their streams end with finish_reason "abort"), and return.
    pub async fn run(self, shutdown: impl Future<Output = ()> + Send + 'static, grace: Duration) -> ShutdownReport {
        let (stop_tx, stop_rx) = watch::channel(false);
        let stopped = |mut rx: watch::Receiver<bool>| async move {
            let _ = rx.wait_for(|s| *s).await;
        };
        let api = tokio::spawn(
            axum::serve(self.api, router(self.state.clone()))
                .with_graceful_shutdown(stopped(stop_rx.clone()))
                .into_future(),
        );
        let metrics = self.metrics.map(|l| {
            tokio::spawn(
                axum::serve(l, metrics_router(self.state.clone()))
                    .with_graceful_shutdown(stopped(stop_rx.clone()))
                    .into_future(),
            )
        });
        shutdown.await;
        let t0 = Instant::now();
        let state = self.state;
        state.shutting_down.store(true, Ordering::SeqCst);
        let in_flight = state.in_flight();
        crate::log::info(format!(
            "serve: shutting down: refusing new requests, {in_flight} in flight, waiting up to {:.0} s",
            grace.as_secs_f64()
        ));
        let _ = stop_tx.send(true);
        let service = state.service.clone();
        let engine = tokio::task::spawn_blocking(move || service.shutdown(grace));
        let all = async move {
            let _ = engine.await;
            let _ = api.await;
            if let Some(m) = metrics {
                let _ = m.await;
            }
        };
        // The engine aborts what is left at `grace`; the few seconds more let the streams of
        // the aborted requests send their last chunk and close.
        let clean = tokio::time::timeout(grace + Duration::from_secs(5), all).await.is_ok();
        let took = t0.elapsed();
        crate::log::info(format!(
            "serve: stopped in {:.2} s{}",
            took.as_secs_f64(),
            if clean { "" } else { " (gave up waiting)" }
        ));
        ShutdownReport {
            in_flight_at_signal: in_flight,
            clean,
            took,
        }
    }
}

async fn health(State(state): State<Arc<AppState>>) -> Response {
    if state.shutting_down.load(Ordering::SeqCst) {
        return ApiError::unavailable("the server is shutting down").into_response();
    }
    match state.service.state() {
        ServiceState::Ready => json_response(StatusCode::OK, &serde_json::json!({"status": "ok"})),
        ServiceState::Starting => ApiError::unavailable("the engine is still starting").into_response(),
        ServiceState::Failed(why) => {
            ApiError::unavailable(format!("the engine failed to start: {why}")).into_response()
        }
        ServiceState::Stopped => ApiError::unavailable("the engine is stopped").into_response(),
    }
}

async fn models(State(state): State<Arc<AppState>>) -> Response {
    let list = api::ModelList {
        object: "list",
        data: state
            .config
            .served_model_names
            .iter()
            .map(|name| api::ModelCard {
                id: name.clone(),
                object: "model",
                created: state.created,
                owned_by: "ocrvl",
                max_model_len: state.config.max_model_len,
            })
            .collect(),
    };
    json_response(StatusCode::OK, &list)
}

async fn metrics_text(State(state): State<Arc<AppState>>) -> Response {
    let ready = state.service.state() == ServiceState::Ready;
    let body = state.metrics.render(&state.service.stats(), ready);
    (
        StatusCode::OK,
        [(header::CONTENT_TYPE, "text/plain; version=0.0.4; charset=utf-8")],
        body,
    )
        .into_response()
}

async fn fallback(uri: Uri) -> Response {
    ApiError::not_found(uri.path()).into_response()
}

/// A JSON body with its content type (axum's `Json` needs a feature we do without).
pub(crate) fn json_response(status: StatusCode, value: &impl serde::Serialize) -> Response {
    match serde_json::to_vec(value) {
        Ok(body) => (status, [(header::CONTENT_TYPE, "application/json")], body).into_response(),
        Err(e) => (
            StatusCode::INTERNAL_SERVER_ERROR,
            format!("cannot serialise the response: {e}"),
        )
            .into_response(),
    }
}

pub(crate) fn unix_now() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs())
}
