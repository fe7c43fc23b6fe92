//! A thread-safe front to the engine, shared by the C ABI, the server and the `ocr` command.
//!
//! The [`Engine`] runs on one thread of its own (it owns the CUDA stream and is not `Send`);
//! everything else talks to it through channels:
//!
//! ```text
//! caller threads                               engine thread
//! Service::submit ── preprocess (decode,        loop: take commands (add, abort, shutdown)
//!   resize, patchify, prompt, tokenise)  ─Add─▶       engine.step()
//!   ◀── Ok(id) | Err(why) ───────────────────       send each token to its request's channel
//! RequestHandle::recv ◀── token / finish ──────       publish stats
//!   detokenise, stop strings (caller's thread)
//! ```
//!
//! The expensive per-request CPU work (image decoding and resizing, tokenisation,
//! detokenisation) happens on the callers' threads, so the engine thread only schedules, builds
//! steps and launches GPU work. A request whose handle is dropped is aborted and its KV blocks
//! return to the pool.

mod detokenize;
mod handle;
pub mod image_cache;
pub mod limits;
mod pixel_bounds;
pub mod reasoning;
mod request_images;
mod request_prompt;
mod synthetic;

pub use detokenize::IncrementalDetokenizer;
pub use handle::{Completion, Event, RequestHandle, Timings};
pub use image_cache::{ImageCache, ImageCacheStats};
pub use limits::RequestLimits;
pub use pixel_bounds::{PixelBounds, ResolvedBounds};
pub use synthetic::{default_synthetic_dir, ensure_synthetic_model};

use std::collections::HashMap;
use std::panic::AssertUnwindSafe;
use std::path::PathBuf;
use std::sync::mpsc::{self, Receiver, RecvTimeoutError, Sender, SyncSender, TryRecvError};
use std::sync::{Arc, Condvar, Mutex, OnceLock};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use crate::config::{EngineConfig, EnvFlags, FamilyConfig, ModelConfig, ModelFamilyKind};
use crate::engine::{Engine, EngineRequest, EngineStats, FinishReason};
use crate::error::{Error, Result};
use crate::kernels::sampling::SamplingParams;
use crate::preprocess::image::ImageProcessor;
use crate::preprocess::prompt::{PromptBuilder, PromptTokens, Task};
use crate::runtime::Gpu;
use reasoning::{starts_reasoning, ReasoningParser, ThinkTokens};

/// Everything needed to start a service.
#[derive(Clone, Debug)]
pub struct ServiceConfig {
    /// `engine.model` is the hub model directory; `None` serves a full-size synthetic model
    /// (random weights), written once under `synthetic_dir`.
    pub engine: EngineConfig,
    pub env: EnvFlags,
    /// CUDA device ordinal.
    pub device: usize,
    /// Where the synthetic model lives; `None` is `~/.cache/ocrvl/synthetic/...`.
    pub synthetic_dir: Option<PathBuf>,
    /// Most images one request may carry (`--limit-mm-per-prompt`).
    pub max_images_per_request: usize,
    /// Upper end of `temperature` ([`limits::DEFAULT_MAX_TEMPERATURE`], vLLM's, unless widened).
    pub max_temperature: f32,
    /// Cap on an image's decoded `width * height`; `None` is
    /// [`limits::DECODED_PIXELS_PER_MAX_PIXELS`] times the processor's `max_pixels`.
    pub max_decoded_pixels: Option<u64>,
    /// Bytes of the preprocessed-image cache (`--mm-processor-cache-gb`); 0 turns it off.
    pub image_cache_bytes: usize,
    /// A chat template replacing the model directory's (`--chat-template`): a file, or the
    /// template itself, as vLLM takes it.
    pub chat_template: Option<PathBuf>,
}

impl Default for ServiceConfig {
    fn default() -> Self {
        ServiceConfig {
            engine: EngineConfig::default(),
            env: EnvFlags::default(),
            device: 0,
            synthetic_dir: None,
            max_images_per_request: 4,
            max_temperature: limits::DEFAULT_MAX_TEMPERATURE,
            max_decoded_pixels: None,
            image_cache_bytes: (crate::config::cli_args::DEFAULT_MM_PROCESSOR_CACHE_GB * (1u64 << 30) as f64) as usize,
            chat_template: None,
        }
    }
}

/// Where the service is in its life.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ServiceState {
    /// Loading the model (the first minutes of a synthetic model: writing it).
    Starting,
    Ready,
    /// Start-up failed; the message says why. Nothing is served.
    Failed(String),
    /// The engine hit an unrecoverable (sticky) CUDA error: the context is unusable, every
    /// request fails, and only a restart of the process helps. The message says which.
    Unhealthy(String),
    /// Shut down; nothing more is accepted.
    Stopped,
}

/// The prompt text: one of the model's tasks ([`crate::preprocess::prompt::Task::ALL`]), free
/// text (one user turn after the images), or a conversation (models whose template has system
/// and assistant turns: ERNIE-4.5-VL).
#[derive(Clone, Debug)]
pub enum PromptInput {
    Task(Task),
    Text(String),
    Chat(Vec<ChatTurn>),
}

/// One message of a conversation.
#[derive(Clone, Debug, PartialEq)]
pub struct ChatTurn {
    pub role: ChatRole,
    pub parts: Vec<ChatPart>,
    /// An assistant turn's thinking text (rendered by templates that keep it).
    pub reasoning: Option<String>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ChatRole {
    System,
    User,
    Assistant,
}

impl ChatRole {
    pub fn name(self) -> &'static str {
        match self {
            ChatRole::System => "system",
            ChatRole::User => "user",
            ChatRole::Assistant => "assistant",
        }
    }
}

/// A piece of a message: text, or the request's next image (images are numbered in the order
/// their parts appear over the whole conversation).
#[derive(Clone, Debug, PartialEq)]
pub enum ChatPart {
    Text(String),
    Image,
}

/// One request as a caller gives it: encoded images and a prompt.
#[derive(Clone, Debug)]
pub struct OcrRequest {
    /// Encoded images (PNG, JPEG, WebP, BMP, TIFF, GIF), in prompt order.
    pub images: Vec<Vec<u8>>,
    pub prompt: PromptInput,
    pub sampling: SamplingParams,
    /// `None`: up to `--max-model-len` minus the prompt.
    pub max_tokens: Option<usize>,
    /// Strings that end generation; not included in the text.
    pub stop: Vec<String>,
    /// Token ids that end generation (the model's EOS always does unless `ignore_eos`).
    pub stop_token_ids: Vec<u32>,
    pub ignore_eos: bool,
    /// Alternatives reported per generated token (0 for none, at most 20).
    pub top_logprobs: usize,
    /// Resize bounds for this request's images instead of the processor config's
    /// (`mm_processor_kwargs`); checked against the processor and `--max-model-len`.
    pub pixel_bounds: Option<PixelBounds>,
    /// Leave special tokens out of the text (the default, as in vLLM).
    pub skip_special_tokens: bool,
    /// vLLM's flag for slow tokenizers; see [`RequestHandle`]'s detokenisation for its effect.
    pub spaces_between_special_tokens: bool,
    /// `chat_template_kwargs.enable_thinking`: ERNIE-4.5-VL's thinking switch (on when not
    /// given, as FastDeploy renders it); passed to the template of any model that reads it.
    pub enable_thinking: Option<bool>,
}

impl OcrRequest {
    pub fn new(images: Vec<Vec<u8>>, prompt: PromptInput) -> OcrRequest {
        OcrRequest {
            images,
            prompt,
            sampling: SamplingParams {
                temperature: 0.0,
                ..SamplingParams::default()
            },
            max_tokens: None,
            stop: Vec::new(),
            stop_token_ids: Vec::new(),
            ignore_eos: false,
            top_logprobs: 0,
            pixel_bounds: None,
            skip_special_tokens: true,
            spaces_between_special_tokens: true,
            enable_thinking: None,
        }
    }
}

/// Counters and gauges for metrics, refreshed after every engine step.
#[derive(Clone, Debug, Default)]
pub struct ServiceStats {
    pub engine: EngineStats,
    pub requests_submitted: u64,
    pub requests_finished: u64,
    pub requests_aborted: u64,
    pub requests_failed: u64,
    pub prompt_tokens: u64,
    pub generation_tokens: u64,
    pub steps: u64,
    /// The preprocessed-image cache (`--mm-processor-cache-gb`), read when the stats are taken.
    pub image_cache: ImageCacheStats,
}

/// What callers share: the model's front half and the channel to the engine thread.
pub(crate) struct Frontend {
    /// PaddleOCR-VL's config; None for another family.
    pub(crate) model: Option<ModelConfig>,
    pub(crate) family: ModelFamilyKind,
    /// End-of-sequence ids beyond the engine's one (ERNIE-4.5-VL's generation config lists
    /// several): stop ids of every request that does not ignore EOS.
    pub(crate) extra_eos_ids: Vec<u32>,
    /// `<think>` and `</think>` when the tokenizer has both (for `--reasoning-parser`).
    pub(crate) think_tokens: Option<ThinkTokens>,
    pub(crate) processor: ImageProcessor,
    pub(crate) prompts: PromptBuilder,
    pub(crate) max_model_len: usize,
    pub(crate) limits: RequestLimits,
    pub(crate) image_cache: ImageCache,
}

/// Messages from the engine thread to one request.
#[derive(Debug)]
pub(crate) enum EngineEvent {
    Token {
        token: u32,
        logprob: f32,
        top: Vec<(u32, f32)>,
        at: Instant,
    },
    Finished {
        reason: FinishReason,
        at: Instant,
    },
    Failed(String),
}

enum Command {
    Add {
        request: EngineRequest,
        events: Sender<EngineEvent>,
        reply: SyncSender<Result<u64>>,
    },
    Abort(u64),
    Shutdown {
        deadline: Instant,
    },
}

struct Status {
    state: Mutex<ServiceState>,
    changed: Condvar,
    frontend: OnceLock<Arc<Frontend>>,
    stats: Mutex<ServiceStats>,
    /// Why start-up failed, as the typed error (the state holds only its text), so callers
    /// such as the C ABI can tell "no GPU" from "bad model directory".
    failure: OnceLock<Error>,
}

struct Inner {
    status: Arc<Status>,
    commands: Mutex<Sender<Command>>,
    thread: Mutex<Option<JoinHandle<()>>>,
}

impl Drop for Inner {
    fn drop(&mut self) {
        // The last handle is gone: stop the engine thread (the closed channel tells it) and
        // wait, so the GPU memory is released when the service value is.
        if let Ok(tx) = self.commands.lock() {
            let _ = tx.send(Command::Shutdown {
                deadline: Instant::now(),
            });
        }
        if let Some(t) = self.thread.lock().ok().and_then(|mut t| t.take()) {
            let _ = t.join();
        }
    }
}

/// A handle to a running engine; cheap to clone, usable from any thread.
#[derive(Clone)]
pub struct Service {
    inner: Arc<Inner>,
}

impl Service {
    /// Starts loading in the background and returns at once; [`Service::state`] and
    /// [`Service::wait_ready`] follow the start-up.
    pub fn spawn(config: ServiceConfig) -> Service {
        let status = Arc::new(Status {
            state: Mutex::new(ServiceState::Starting),
            changed: Condvar::new(),
            frontend: OnceLock::new(),
            stats: Mutex::new(ServiceStats::default()),
            failure: OnceLock::new(),
        });
        let (tx, rx) = mpsc::channel();
        let thread_status = status.clone();
        let thread = std::thread::Builder::new()
            .name("ocrvl-engine".into())
            .spawn(move || {
                // A panic in the engine (a bug) must not leave callers waiting on `Starting`
                // forever (`start`, the C ABI's create): it becomes a failed state, and the
                // requests in flight see their channels close.
                let status = thread_status.clone();
                if let Err(p) = std::panic::catch_unwind(AssertUnwindSafe(|| engine_thread(config, status, rx))) {
                    let msg = p
                        .downcast_ref::<&str>()
                        .map(|s| s.to_string())
                        .or_else(|| p.downcast_ref::<String>().cloned())
                        .unwrap_or_default();
                    set_state(
                        &thread_status,
                        ServiceState::Failed(format!("the engine thread panicked: {msg}")),
                    );
                }
            })
            .expect("spawn the engine thread");
        Service {
            inner: Arc::new(Inner {
                status,
                commands: Mutex::new(tx),
                thread: Mutex::new(Some(thread)),
            }),
        }
    }

    /// Starts and waits until the engine is ready (or failed to start).
    pub fn start(config: ServiceConfig) -> Result<Service> {
        let s = Service::spawn(config);
        s.wait_ready(None)?;
        Ok(s)
    }

    pub fn state(&self) -> ServiceState {
        self.inner
            .status
            .state
            .lock()
            .map(|s| s.clone())
            .unwrap_or(ServiceState::Stopped)
    }

    /// Blocks until ready; an error names why start-up failed, or says it timed out.
    pub fn wait_ready(&self, timeout: Option<Duration>) -> Result<()> {
        let deadline = timeout.map(|t| Instant::now() + t);
        let mut state = self.inner.status.state.lock().map_err(|_| poisoned())?;
        loop {
            match &*state {
                ServiceState::Ready => return Ok(()),
                ServiceState::Failed(why) => return Err(Error::NotReady(format!("start-up failed: {why}"))),
                ServiceState::Stopped => return Err(Error::NotReady("the service is stopped".into())),
                ServiceState::Unhealthy(why) => return Err(Error::NotReady(format!("the engine is unhealthy: {why}"))),
                ServiceState::Starting => {}
            }
            state = match deadline {
                None => self.inner.status.changed.wait(state).map_err(|_| poisoned())?,
                Some(d) => {
                    let left = d.saturating_duration_since(Instant::now());
                    if left.is_zero() {
                        return Err(Error::NotReady("still starting".into()));
                    }
                    self.inner
                        .status
                        .changed
                        .wait_timeout(state, left)
                        .map_err(|_| poisoned())?
                        .0
                }
            };
        }
    }

    /// The error that made start-up fail (state [`ServiceState::Failed`]), typed.
    pub fn startup_error(&self) -> Option<&Error> {
        self.inner.status.failure.get()
    }

    /// The per-request limits once the model is loaded.
    pub fn limits(&self) -> Option<&RequestLimits> {
        self.inner.status.frontend.get().map(|f| &f.limits)
    }

    /// PaddleOCR-VL's config once loaded (None for another family).
    pub fn model_config(&self) -> Option<&ModelConfig> {
        self.inner.status.frontend.get().and_then(|f| f.model.as_ref())
    }

    /// The served model's family once loaded.
    pub fn model_family(&self) -> Option<ModelFamilyKind> {
        self.inner.status.frontend.get().map(|f| f.family)
    }

    pub fn stats(&self) -> ServiceStats {
        let mut stats = self.inner.status.stats.lock().map(|s| s.clone()).unwrap_or_default();
        stats.image_cache = self.image_cache_stats();
        stats
    }

    /// Preprocesses `req` on the calling thread and queues it. Every problem with the request
    /// (an undecodable image, too many images, a prompt over `--max-model-len`, bad sampling
    /// values) is an error here, and nothing is queued.
    pub fn submit(&self, req: OcrRequest) -> Result<RequestHandle> {
        const OP: &str = "submit";
        let front = self.ready_frontend()?;
        // Every count, size and range first: nothing is decoded for a request that is refused.
        front.limits.check(&req)?;
        front.check_prompt_kind(&req.prompt)?;
        req.sampling.validate()?;
        let mut images = Vec::with_capacity(req.images.len());
        let mut grids = Vec::with_capacity(req.images.len());
        let processor = front.processor_for(req.pixel_bounds)?;
        for (i, bytes) in req.images.iter().enumerate() {
            let image = front
                .preprocess(&processor, bytes)
                .map_err(|e| Error::invalid(OP, format!("image {i}: {e}")))?;
            grids.push(crate::preprocess::ImageGrid {
                t: 1,
                h: image.grid.0,
                w: image.grid.1,
            });
            images.push(image);
        }
        let prompt = front.build_prompt(&req, &grids)?;
        let prompt_len = prompt.ids.len();
        if prompt_len >= front.max_model_len {
            return Err(Error::invalid(
                OP,
                format!(
                    "the prompt is {prompt_len} tokens (images included); --max-model-len {} leaves no room \
                     to generate",
                    front.max_model_len
                ),
            ));
        }
        let room = front.max_model_len - prompt_len;
        let max_tokens = match req.max_tokens {
            None => room,
            Some(0) => return Err(Error::invalid(OP, "max_tokens must be at least 1")),
            Some(n) if n > room => {
                return Err(Error::invalid(
                    OP,
                    format!(
                        "the prompt is {prompt_len} tokens and max_tokens is {n}: {} in all, over \
                         --max-model-len {}",
                        prompt_len + n,
                        front.max_model_len
                    ),
                ))
            }
            Some(n) => n,
        };
        let prompt_opens_thinking = front
            .think_tokens
            .is_some_and(|t| starts_reasoning(ReasoningParser::Ernie45Vl, t, &prompt.ids));
        let engine_req = EngineRequest {
            prompt_ids: prompt.ids,
            images,
            sampling: req.sampling,
            max_tokens,
            stop_token_ids: if req.ignore_eos {
                req.stop_token_ids.clone()
            } else {
                [&req.stop_token_ids[..], &front.extra_eos_ids[..]].concat()
            },
            ignore_eos: req.ignore_eos,
            top_logprobs: req.top_logprobs,
        };
        let text = handle::TextOptions {
            stop: req.stop,
            skip_special_tokens: req.skip_special_tokens,
            spaces_between_special_tokens: req.spaces_between_special_tokens,
            prompt_opens_thinking,
        };
        let (events_tx, events_rx) = mpsc::channel();
        let (reply_tx, reply_rx) = mpsc::sync_channel(1);
        let submitted = Instant::now();
        self.send(Command::Add {
            request: engine_req,
            events: events_tx,
            reply: reply_tx,
        })?;
        let id = reply_rx
            .recv()
            .map_err(|_| Error::NotReady("the engine stopped".into()))??;
        Ok(RequestHandle::new(
            id,
            self.clone(),
            front,
            events_rx,
            text,
            prompt_len,
            submitted,
        ))
    }

    /// Counters of the preprocessed-image cache (`--mm-processor-cache-gb`); zeros until the
    /// model is loaded.
    pub fn image_cache_stats(&self) -> ImageCacheStats {
        self.inner
            .status
            .frontend
            .get()
            .map(|f| f.image_cache.stats())
            .unwrap_or_default()
    }

    /// Token ids to text with the model's tokenizer (the token strings of logprobs); an error
    /// until the model is loaded.
    pub fn decode(&self, ids: &[u32], skip_special_tokens: bool) -> Result<String> {
        let front = self
            .inner
            .status
            .frontend
            .get()
            .ok_or_else(|| Error::NotReady("the engine is still starting".into()))?;
        Ok(front.prompts.decode(ids, skip_special_tokens)?)
    }

    /// Aborts a request by id (what dropping its handle does).
    pub fn abort(&self, id: u64) {
        let _ = self.send(Command::Abort(id));
    }

    /// Stops accepting work, lets running requests finish until `grace` has passed, aborts the
    /// rest, and waits for the engine thread to exit.
    pub fn shutdown(&self, grace: Duration) {
        let _ = self.send(Command::Shutdown {
            deadline: Instant::now() + grace,
        });
        if let Some(t) = self.inner.thread.lock().ok().and_then(|mut t| t.take()) {
            let _ = t.join();
        }
    }

    fn ready_frontend(&self) -> Result<Arc<Frontend>> {
        match self.state() {
            ServiceState::Ready => {}
            ServiceState::Starting => return Err(Error::NotReady("the engine is still starting".into())),
            ServiceState::Failed(why) => return Err(Error::NotReady(format!("the engine failed to start: {why}"))),
            ServiceState::Stopped => return Err(Error::NotReady("the engine is shut down".into())),
            ServiceState::Unhealthy(why) => {
                return Err(Error::NotReady(format!(
                    "the engine hit an unrecoverable GPU error and serves nothing more ({why}); restart the \
                     process"
                )))
            }
        }
        self.inner
            .status
            .frontend
            .get()
            .cloned()
            .ok_or_else(|| Error::NotReady("the engine is still starting".into()))
    }

    fn send(&self, cmd: Command) -> Result<()> {
        let tx = self.inner.commands.lock().map_err(|_| poisoned())?;
        tx.send(cmd).map_err(|_| Error::NotReady("the engine stopped".into()))
    }
}

fn poisoned() -> Error {
    Error::NotReady("the engine thread panicked".into())
}

fn set_state(status: &Status, state: ServiceState) {
    if let Ok(mut s) = status.state.lock() {
        *s = state;
    }
    status.changed.notify_all();
}

/// Loads the model and the front half (tokenizer, processor) on the engine thread.
fn load(config: &ServiceConfig) -> Result<(Engine, Frontend)> {
    let t0 = Instant::now();
    // The GPU first: a machine without one (or a wrong device ordinal) fails at once with
    // NoDevice, before minutes of writing a synthetic model.
    let gpu = Gpu::new(config.device)?;
    let dir = match &config.engine.model {
        Some(d) => d.clone(),
        None => ensure_synthetic_model(config.synthetic_dir.as_deref())?,
    };
    let family = FamilyConfig::from_dir(&dir)?;
    let (processor, tokens) = match &family {
        FamilyConfig::PaddleOcrVl(m) => (ImageProcessor::from_model_dir(&dir, m)?, PromptTokens::from(m)),
        FamilyConfig::ErnieVl(c) => (ImageProcessor::from_ernie_dir(&dir, c)?, PromptTokens::from(c)),
    };
    let mut limits = RequestLimits::new(
        config.max_images_per_request,
        processor.config.max_pixels,
        processor.config.factor() as u64,
        family.vocab_size(),
        config.engine.max_model_len,
    );
    limits.max_temperature = config.max_temperature;
    if let Some(px) = config.max_decoded_pixels {
        limits.max_decoded_pixels = px;
    }
    let processor = processor.with_max_decoded_pixels(limits.max_decoded_pixels);
    let mut prompts = PromptBuilder::from_dir(&dir, tokens)?;
    if let Some(spec) = &config.chat_template {
        // vLLM's rule: a path, or else the template itself.
        let inline = spec
            .to_str()
            .filter(|t| !spec.exists() && (t.contains("{{") || t.contains("{%")));
        prompts = match inline {
            Some(text) => prompts.with_chat_template_text(text.to_string(), "--chat-template (inline)".into())?,
            None => prompts.with_chat_template_file(spec)?,
        };
    }
    let t1 = Instant::now();
    let engine = Engine::new(gpu, &dir, &config.engine, config.env)?;
    crate::log::info(format!(
        "ocrvl: model {} ready: config and tokenizer {:.2} s, weights, KV cache and graphs {:.2} s ({} KV blocks)",
        dir.display(),
        (t1 - t0).as_secs_f64(),
        t1.elapsed().as_secs_f64(),
        engine.num_kv_blocks()
    ));
    Ok((
        engine,
        Frontend {
            model: family.paddleocr_vl().cloned(),
            family: family.kind(),
            think_tokens: think_tokens(&prompts),
            extra_eos_ids: match &family {
                FamilyConfig::ErnieVl(c) => c.tokens.eos_token_ids.iter().skip(1).copied().collect(),
                FamilyConfig::PaddleOcrVl(_) => Vec::new(),
            },
            processor,
            prompts,
            max_model_len: config.engine.max_model_len,
            limits,
            image_cache: ImageCache::new(config.image_cache_bytes),
        },
    ))
}

/// The think markers' ids, when the tokenizer has both.
fn think_tokens(prompts: &PromptBuilder) -> Option<ThinkTokens> {
    let t = prompts.tokenizer();
    Some(ThinkTokens {
        start: t.token_to_id("<think>")?,
        end: t.token_to_id("</think>")?,
    })
}

fn current_state(status: &Status) -> ServiceState {
    status.state.lock().map(|s| s.clone()).unwrap_or(ServiceState::Stopped)
}

fn engine_thread(config: ServiceConfig, status: Arc<Status>, rx: Receiver<Command>) {
    let (mut engine, front) = match load(&config) {
        Ok(x) => x,
        Err(e) => {
            let why = e.to_string();
            // Before the state changes, so a caller woken by it finds the typed error.
            let _ = status.failure.set(e);
            set_state(&status, ServiceState::Failed(why.clone()));
            // Answer whatever arrives until every sender is gone, so no caller blocks.
            // A shutdown ends the thread too: `Service::shutdown` and the last handle's drop
            // send one and then join, while still holding the sender.
            while let Ok(cmd) = rx.recv() {
                match cmd {
                    Command::Add { reply, .. } => {
                        let _ = reply.send(Err(Error::NotReady(format!("the engine failed to start: {why}"))));
                    }
                    Command::Shutdown { .. } => return,
                    Command::Abort(_) => {}
                }
            }
            return;
        }
    };
    let _ = status.frontend.set(Arc::new(front));
    set_state(&status, ServiceState::Ready);

    let mut live: HashMap<u64, Sender<EngineEvent>> = HashMap::new();
    let mut shutdown: Option<Instant> = None;
    let mut stats = ServiceStats::default();
    loop {
        // Commands: block only when there is nothing to run.
        loop {
            let cmd = if engine.has_unfinished() || shutdown.is_some() {
                match rx.try_recv() {
                    Ok(c) => c,
                    Err(TryRecvError::Empty) => break,
                    Err(TryRecvError::Disconnected) => {
                        shutdown.get_or_insert_with(Instant::now);
                        break;
                    }
                }
            } else {
                match rx.recv_timeout(Duration::from_millis(100)) {
                    Ok(c) => c,
                    Err(RecvTimeoutError::Timeout) => continue,
                    Err(RecvTimeoutError::Disconnected) => {
                        shutdown.get_or_insert_with(Instant::now);
                        break;
                    }
                }
            };
            match cmd {
                Command::Add { request, events, reply } => {
                    if shutdown.is_some() {
                        let _ = reply.send(Err(Error::NotReady("the engine is shutting down".into())));
                        continue;
                    }
                    let prompt_len = request.prompt_ids.len() as u64;
                    match engine.add_request(request) {
                        Ok(id) => {
                            stats.requests_submitted += 1;
                            stats.prompt_tokens += prompt_len;
                            live.insert(id, events);
                            let _ = reply.send(Ok(id));
                        }
                        Err(e) => {
                            let _ = reply.send(Err(e));
                        }
                    }
                }
                Command::Abort(id) => {
                    if let Some(tx) = live.remove(&id) {
                        engine.abort(id);
                        // The handle learns the end from the engine (a cancel, or a stop string
                        // it already saw); a closed channel alone would read as a failure.
                        let _ = tx.send(EngineEvent::Finished {
                            reason: FinishReason::Aborted,
                            at: Instant::now(),
                        });
                        stats.requests_aborted += 1;
                        // The freed blocks show in the stats now, not at the next step (there
                        // may be none while idle).
                        publish(&status, &engine, &stats);
                    }
                }
                Command::Shutdown { deadline } => {
                    let d = shutdown.map_or(deadline, |s| s.min(deadline));
                    shutdown = Some(d);
                }
            }
        }
        if let Some(deadline) = shutdown {
            if !engine.has_unfinished() || Instant::now() >= deadline {
                for (id, tx) in live.drain() {
                    engine.abort(id);
                    stats.requests_aborted += 1;
                    let _ = tx.send(EngineEvent::Finished {
                        reason: FinishReason::Aborted,
                        at: Instant::now(),
                    });
                }
                publish(&status, &engine, &stats);
                set_state(&status, ServiceState::Stopped);
                return;
            }
        }
        if !engine.has_unfinished() {
            continue;
        }
        match engine.step() {
            Ok(outputs) => {
                stats.steps += 1;
                let now = Instant::now();
                for o in outputs {
                    stats.generation_tokens += 1;
                    let Some(tx) = live.get(&o.request_id) else { continue };
                    let mut gone = tx
                        .send(EngineEvent::Token {
                            token: o.token,
                            logprob: o.logprob,
                            top: o.top,
                            at: now,
                        })
                        .is_err();
                    if let Some(reason) = o.finished {
                        gone |= tx.send(EngineEvent::Finished { reason, at: now }).is_err();
                        live.remove(&o.request_id);
                        stats.requests_finished += 1;
                    } else if gone {
                        // The caller went away: free its blocks now.
                        live.remove(&o.request_id);
                        engine.abort(o.request_id);
                        stats.requests_aborted += 1;
                    }
                }
                // Requests that failed alone (a non-finite logits row): the engine has ended
                // them; only they learn of it.
                for (id, why) in engine.take_failed() {
                    if let Some(tx) = live.remove(&id) {
                        stats.requests_failed += 1;
                        let _ = tx.send(EngineEvent::Failed(why));
                    }
                }
            }
            Err(e) => {
                // A failed step fails the requests in it; the engine keeps serving new ones,
                // unless the CUDA context is gone (a sticky error): then the service turns
                // unhealthy (`/health` 503), says so once, and refuses new requests.
                let msg = e.to_string();
                if e.is_sticky_cuda() {
                    if !matches!(current_state(&status), ServiceState::Unhealthy(_)) {
                        crate::log::always(format!(
                            "ocrvl: UNRECOVERABLE GPU ERROR: {msg}; the engine serves nothing more, restart the process"
                        ));
                        set_state(&status, ServiceState::Unhealthy(msg.clone()));
                    }
                } else {
                    crate::log::info(format!("ocrvl: engine step failed: {msg}"));
                }
                for (id, tx) in live.drain() {
                    engine.abort(id);
                    stats.requests_failed += 1;
                    let _ = tx.send(EngineEvent::Failed(msg.clone()));
                }
            }
        }
        publish(&status, &engine, &stats);
    }
}

fn publish(status: &Status, engine: &Engine, stats: &ServiceStats) {
    if let Ok(mut s) = status.stats.lock() {
        *s = ServiceStats {
            engine: engine.stats(),
            ..stats.clone()
        };
    }
}
