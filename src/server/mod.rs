//! The OpenAI-compatible HTTP server (binary `serve`) on top of [`Service`].
//!
//! ```text
//! accept loop (header read timeout) → POST /v1/chat/completions
//!   admit: requests in flight < --max-pending-requests, else 503 + Retry-After
//!   wait for a preparing permit (at most max_preparing_requests read and prepare at once)
//!   read the body (413 over the limit, 408 past the body timeout) → parse + validate (400/404)
//!   load images on the blocking pool: base64, file://, http(s) (public addresses only);
//!     probe headers: format, pixel count, truncation (400)
//!   Service::submit on the CPU pool (one thread per core): decode, preprocess (400 / 503)
//!   release the permit; wait for tokens on the blocking pool, polling whether the client is
//!     still there ── answer (JSON) or SSE chunks
//! GET /v1/models, /health, /metrics (also on --metrics-port)
//! ```
//!
//! The engine runs on its own thread behind [`Service`]. Memory is bounded by design: bodies
//! and decoded images exist only for requests holding a preparing permit, decodes run one per
//! core, and each image's pixel count is checked from its header before it is decoded. A
//! client that goes away drops the receiving end of its channel; the waiting task sees that
//! within one poll interval and drops the [`crate::service::RequestHandle`], which aborts the
//! request and frees its KV blocks. Validation that needs no model (JSON, the model name,
//! messages, counts, sampling ranges, image headers) happens before the service is asked, so
//! it answers the same on a machine without a GPU ([`validate`], [`media`]).

pub mod api;
mod chat;
pub mod cli;
pub mod error;
pub mod fetch;
mod listen;
pub mod media;
pub mod metrics;
pub mod otsl;
pub mod pool;
pub mod validate;

use std::future::Future;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use axum::extract::State;
use axum::http::{header, StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::Router;
use tokio::net::TcpListener;
use tokio::sync::{watch, Semaphore};

use crate::config::{EngineConfig, ModelFamilyKind};
use crate::service::limits::DEFAULT_MAX_TEMPERATURE;
use crate::service::reasoning::ReasoningParser;
use crate::service::{Service, ServiceState};

pub use error::ApiError;
pub use media::{MediaPolicy, RemoteImages};
pub use metrics::Metrics;

/// `--max-pending-requests` by default: this many requests per engine slot
/// (`--max-num-seqs`), so a full batch can run while three more batches' worth wait.
pub const PENDING_PER_SEQ: usize = 4;

/// The server's own settings (the engine's are in the [`Service`]). The command line starts
/// from [`ServerConfig::for_engine`] and overrides what its flags give.
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
    /// Requests in flight (being read, prepared, queued or running) above which new ones get
    /// 503 with `Retry-After`. Default [`PENDING_PER_SEQ`] x `--max-num-seqs`.
    pub max_pending_requests: usize,
    /// Requests whose body is being read, images loaded or preprocessed at once; the others
    /// admitted wait (holding only their connection) until one finishes. Bounds the memory of
    /// request bodies and decoded images. Default: twice the preprocessing threads.
    pub max_preparing_requests: usize,
    /// Threads that decode and preprocess images (`Service::submit`). Default: the cores.
    pub preprocess_threads: usize,
    /// A connection that has not sent its complete request headers within this is closed.
    pub header_read_timeout: Duration,
    /// A request body not received completely within this (once the request was admitted) is
    /// answered 408.
    pub body_read_timeout: Duration,
    /// Upper end of `temperature` (vLLM's 2 unless widened).
    pub max_temperature: f32,
    pub media: MediaPolicy,
    /// `--reasoning-parser`: thinking text goes to `reasoning_content`.
    pub reasoning_parser: Option<ReasoningParser>,
}

impl ServerConfig {
    /// The defaults for an engine configured as `engine` (its context length and batch size).
    pub fn for_engine(engine: &EngineConfig) -> ServerConfig {
        let threads = pool::default_threads();
        ServerConfig {
            served_model_names: vec!["PaddleOCR-VL-0.9B".into()],
            max_model_len: engine.max_model_len,
            max_images: 4,
            max_body_bytes: 64 << 20,
            max_pending_requests: PENDING_PER_SEQ * engine.max_num_seqs,
            max_preparing_requests: 2 * threads,
            preprocess_threads: threads,
            header_read_timeout: Duration::from_secs(30),
            body_read_timeout: Duration::from_secs(60),
            max_temperature: DEFAULT_MAX_TEMPERATURE,
            media: MediaPolicy::default(),
            reasoning_parser: None,
        }
    }
}

impl Default for ServerConfig {
    fn default() -> Self {
        ServerConfig::for_engine(&EngineConfig::default())
    }
}

/// What every handler shares.
pub struct AppState {
    pub service: Service,
    pub config: ServerConfig,
    pub metrics: Metrics,
    in_flight: AtomicUsize,
    /// Permits for requests being read and prepared (`max_preparing_requests`).
    preparing: Arc<Semaphore>,
    /// Where `Service::submit` (decode, preprocess) runs.
    pool: pool::CpuPool,
    shutting_down: AtomicBool,
    /// Unix seconds at start, the models' `created`.
    created: u64,
}

impl AppState {
    pub fn new(service: Service, config: ServerConfig) -> Arc<AppState> {
        Arc::new(AppState {
            service,
            preparing: Arc::new(Semaphore::new(config.max_preparing_requests.max(1))),
            pool: pool::CpuPool::new(config.preprocess_threads),
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
            max_temperature: self.config.max_temperature,
            conversations: self.service.model_family() == Some(ModelFamilyKind::ErnieVl),
        }
    }

    /// Counts a request in flight until the guard drops; 503 when shutting down or full.
    fn admit(self: &Arc<Self>) -> Result<InFlight, ApiError> {
        if self.shutting_down.load(Ordering::SeqCst) {
            return Err(ApiError::unavailable("the server is shutting down"));
        }
        let n = self.in_flight.fetch_add(1, Ordering::SeqCst);
        let guard = InFlight(self.clone());
        // At least one: a limit of 0 would refuse everything.
        let limit = self.config.max_pending_requests.max(1);
        if n >= limit {
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
    // The body limit is enforced where the body is read (`chat::read_body`), after admission.
    Router::new()
        .route("/v1/chat/completions", post(chat::chat_completions))
        .route("/v1/models", get(models))
        .route("/health", get(health))
        .route("/metrics", get(metrics_text))
        .fallback(fallback)
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
        let header_timeout = self.state.config.header_read_timeout;
        let api = tokio::spawn(listen::serve(
            self.api,
            router(self.state.clone()),
            header_timeout,
            stop_rx.clone(),
        ));
        let metrics = self.metrics.map(|l| {
            tokio::spawn(listen::serve(
                l,
                metrics_router(self.state.clone()),
                header_timeout,
                stop_rx.clone(),
            ))
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
        ServiceState::Unhealthy(why) => {
            ApiError::unavailable(format!("the engine hit an unrecoverable GPU error: {why}")).into_response()
        }
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
    let mut body = state.metrics.render(&state.service.stats(), ready);
    // The server's own gauges: requests admitted and not yet answered (the limit is
    // --max-pending-requests), and whether the engine is unusable after a GPU fault.
    let unhealthy = matches!(state.service.state(), ServiceState::Unhealthy(_));
    body.push_str(&format!(
        "# HELP ocrvl_http_requests_in_flight Requests admitted and not yet answered.\n\
         # TYPE ocrvl_http_requests_in_flight gauge\nocrvl_http_requests_in_flight {}\n\
         # HELP ocrvl_http_max_pending_requests The limit on requests in flight (503 beyond).\n\
         # TYPE ocrvl_http_max_pending_requests gauge\nocrvl_http_max_pending_requests {}\n\
         # HELP ocrvl_engine_unhealthy 1 after an unrecoverable GPU error.\n\
         # TYPE ocrvl_engine_unhealthy gauge\nocrvl_engine_unhealthy {}\n",
        state.in_flight(),
        state.config.max_pending_requests,
        u8::from(unhealthy)
    ));
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
