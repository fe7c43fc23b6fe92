//! The HTTP server driven over real loopback HTTP.
//!
//! CPU tests (run in CI): the server in front of a service whose start-up failed (a model
//! directory that does not exist), which is what a GPU-less machine gives: health, model
//! listing, metrics, every validation error with its status and the OpenAI error shape, the
//! 503 for a valid request, and a bounded graceful shutdown.
//!
//! GPU tests (`#[ignore = "needs GPU"]`): one server on the full-size synthetic model shared by
//! the tests — generation, streaming, logprobs, concurrency, a client that disconnects
//! mid-stream, errors that only the model can find, and that it keeps serving afterwards.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use base64::Engine as _;
use serde_json::{json, Value};

use ocrvl::config::EngineConfig;
use ocrvl::server::{AppState, Server, ServerConfig, ShutdownReport};
use ocrvl::service::{Service, ServiceConfig};

const MODEL: &str = "ocrvl-test";

struct TestServer {
    addr: SocketAddr,
    metrics: SocketAddr,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    thread: Option<std::thread::JoinHandle<ShutdownReport>>,
}

impl TestServer {
    fn start(service: Service, config: ServerConfig) -> TestServer {
        let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
        let (addr_tx, addr_rx) = std::sync::mpsc::channel();
        let thread = std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_multi_thread()
                .worker_threads(2)
                .enable_all()
                .build()
                .unwrap();
            rt.block_on(async move {
                let state = AppState::new(service, config);
                let server = Server::bind(state, "127.0.0.1:0", Some("127.0.0.1:0")).await.unwrap();
                addr_tx
                    .send((server.local_addr().unwrap(), server.metrics_addr().unwrap()))
                    .unwrap();
                let stop = async {
                    let _ = stop_rx.await;
                };
                server.run(stop, Duration::from_secs(5)).await
            })
        });
        let (addr, metrics) = addr_rx.recv_timeout(Duration::from_secs(30)).expect("server bound");
        TestServer {
            addr,
            metrics,
            stop: Some(stop_tx),
            thread: Some(thread),
        }
    }

    fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.addr)
    }

    /// Signals shutdown and waits for the server to stop.
    fn stop(&mut self) -> ShutdownReport {
        if let Some(s) = self.stop.take() {
            let _ = s.send(());
        }
        self.thread.take().expect("stopped once").join().unwrap()
    }
}

impl Drop for TestServer {
    fn drop(&mut self) {
        if self.thread.is_some() {
            self.stop();
        }
    }
}

fn agent() -> ureq::Agent {
    ureq::Agent::config_builder()
        .http_status_as_error(false)
        .timeout_global(Some(Duration::from_secs(120)))
        .build()
        .into()
}

fn get(url: &str) -> (u16, String) {
    let mut r = agent().get(url).call().unwrap();
    (r.status().as_u16(), r.body_mut().read_to_string().unwrap())
}

fn post(url: &str, body: &str) -> (u16, String) {
    let mut r = agent()
        .post(url)
        .header("content-type", "application/json")
        .send(body)
        .unwrap();
    let status = r.status().as_u16();
    (
        status,
        r.body_mut().with_config().limit(64 << 20).read_to_string().unwrap(),
    )
}

/// Checks the OpenAI error shape and returns the message.
fn error_message(body: &str) -> String {
    let v: Value = serde_json::from_str(body).unwrap_or_else(|e| panic!("not JSON ({e}): {body}"));
    let err = &v["error"];
    assert!(err["message"].is_string(), "{body}");
    assert!(err["type"].is_string(), "{body}");
    assert!(err.get("param").is_some() && err.get("code").is_some(), "{body}");
    err["message"].as_str().unwrap().to_string()
}

fn png(w: u32, h: u32) -> Vec<u8> {
    // Dark strokes on white, a little like a page of text.
    let img = image::RgbImage::from_fn(w, h, |x, y| {
        if (y / 6) % 3 == 0 && (x / 4) % 5 != 0 {
            image::Rgb([20, 20, 20])
        } else {
            image::Rgb([250, 250, 250])
        }
    });
    let mut out = Vec::new();
    img.write_to(&mut std::io::Cursor::new(&mut out), image::ImageFormat::Png)
        .unwrap();
    out
}

fn data_uri(bytes: &[u8]) -> String {
    format!(
        "data:image/png;base64,{}",
        base64::engine::general_purpose::STANDARD.encode(bytes)
    )
}

/// A PNG whose header announces 100000x100000 pixels (its data is a small image's).
fn huge_png_header() -> Vec<u8> {
    let mut b = png(8, 8);
    b[16..20].copy_from_slice(&100_000u32.to_be_bytes());
    b[20..24].copy_from_slice(&100_000u32.to_be_bytes());
    // The IHDR CRC over type and data.
    let mut crc = !0u32;
    for &byte in &b[12..29] {
        crc ^= u32::from(byte);
        for _ in 0..8 {
            crc = if crc & 1 != 0 {
                (crc >> 1) ^ 0xEDB8_8320
            } else {
                crc >> 1
            };
        }
    }
    b[29..33].copy_from_slice(&(!crc).to_be_bytes());
    b
}

/// A JPEG with its last quarter cut off.
fn truncated_jpeg() -> Vec<u8> {
    let img = image::RgbImage::from_fn(64, 48, |x, y| image::Rgb([(x * 4) as u8, (y * 5) as u8, 90]));
    let mut out = Vec::new();
    img.write_to(&mut std::io::Cursor::new(&mut out), image::ImageFormat::Jpeg)
        .unwrap();
    out.truncate(out.len() * 3 / 4);
    out
}

fn chat(images: &[String], text: &str) -> Value {
    let mut content: Vec<Value> = images
        .iter()
        .map(|u| json!({"type": "image_url", "image_url": {"url": u}}))
        .collect();
    content.push(json!({"type": "text", "text": text}));
    json!({"model": MODEL, "messages": [{"role": "user", "content": content}], "temperature": 0})
}

fn with(mut v: Value, key: &str, value: Value) -> Value {
    v[key] = value;
    v
}

// ---------------------------------------------------------------------------------------
// CPU: a service that failed to start.

fn failed_server(max_body_bytes: usize) -> TestServer {
    let engine = EngineConfig {
        model: Some("/nonexistent/ocrvl-test-model".into()),
        ..EngineConfig::default()
    };
    let service = Service::spawn(ServiceConfig {
        engine,
        ..ServiceConfig::default()
    });
    // The missing directory fails at once; wait so the state is settled.
    assert!(service.wait_ready(Some(Duration::from_secs(30))).is_err());
    TestServer::start(
        service,
        ServerConfig {
            served_model_names: vec![MODEL.into(), "alias".into()],
            max_model_len: 4096,
            max_images: 2,
            max_body_bytes,
            ..ServerConfig::default()
        },
    )
}

#[test]
fn health_is_503_with_the_start_up_failure() {
    let s = failed_server(1 << 20);
    let (status, body) = get(&s.url("/health"));
    assert_eq!(status, 503, "{body}");
    let msg = error_message(&body);
    // The reason follows (no GPU here, or the missing model directory on a GPU host).
    assert!(msg.contains("failed to start: "), "{msg}");
}

#[test]
fn models_are_listed_before_ready() {
    let s = failed_server(1 << 20);
    let (status, body) = get(&s.url("/v1/models"));
    assert_eq!(status, 200, "{body}");
    let v: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(v["object"], "list");
    let ids: Vec<&str> = v["data"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["id"].as_str().unwrap())
        .collect();
    assert_eq!(ids, vec![MODEL, "alias"]);
    assert_eq!(v["data"][0]["object"], "model");
    assert_eq!(v["data"][0]["max_model_len"], 4096);
}

#[test]
fn every_validation_error_has_its_status_and_shape() {
    let s = failed_server(64 << 10);
    let url = s.url("/v1/chat/completions");
    let good_image = data_uri(&png(64, 48));
    let ok = chat(std::slice::from_ref(&good_image), "OCR:");
    let big = "x".repeat(100 << 10);
    let cases: Vec<(&str, String, u16, &str)> = vec![
        ("bad JSON", "{\"messages\": [".into(), 400, "invalid request body"),
        (
            "wrong type",
            with(ok.clone(), "temperature", "hot".into()).to_string(),
            400,
            "invalid",
        ),
        ("n = 2", with(ok.clone(), "n", 2.into()).to_string(), 400, "n must be 1"),
        (
            "negative temperature",
            with(ok.clone(), "temperature", (-0.5).into()).to_string(),
            400,
            "temperature",
        ),
        (
            "top_p 1.5",
            with(ok.clone(), "top_p", 1.5.into()).to_string(),
            400,
            "top_p",
        ),
        (
            "repetition_penalty 1e-38",
            with(ok.clone(), "repetition_penalty", 1e-38.into()).to_string(),
            400,
            "repetition_penalty",
        ),
        (
            "temperature 2.5",
            with(ok.clone(), "temperature", 2.5.into()).to_string(),
            400,
            "temperature",
        ),
        (
            "max_tokens 0",
            with(ok.clone(), "max_tokens", 0.into()).to_string(),
            400,
            "max_tokens",
        ),
        (
            "top_logprobs 30",
            with(with(ok.clone(), "logprobs", true.into()), "top_logprobs", 30.into()).to_string(),
            400,
            "top_logprobs",
        ),
        (
            "bad base64",
            chat(&["data:image/png;base64,@@@@".into()], "OCR:").to_string(),
            400,
            "base64",
        ),
        (
            "not an image",
            chat(&["data:image/png;base64,aGVsbG8gd29ybGQ=".into()], "OCR:").to_string(),
            400,
            "not an image",
        ),
        (
            "image over the pixel cap",
            chat(&[data_uri(&huge_png_header())], "OCR:").to_string(),
            400,
            "over the limit of",
        ),
        (
            "truncated JPEG",
            chat(&[data_uri(&truncated_jpeg())], "OCR:").to_string(),
            400,
            "truncated",
        ),
        (
            "too many images",
            chat(&[good_image.clone(), good_image.clone(), good_image.clone()], "OCR:").to_string(),
            400,
            "limit-mm-per-prompt",
        ),
        (
            "remote URL",
            chat(&["http://example.com/a.png".into()], "OCR:").to_string(),
            400,
            "remote image URLs are disabled",
        ),
        (
            "file URL",
            chat(&["file:///etc/passwd".into()], "OCR:").to_string(),
            400,
            "file:// URLs are disabled",
        ),
        (
            "system message",
            json!({"messages": [{"role": "system", "content": "x"}, {"role": "user", "content": "y"}]}).to_string(),
            400,
            "system",
        ),
        (
            "stream with n = 2",
            with(with(ok.clone(), "stream", true.into()), "n", 2.into()).to_string(),
            400,
            "n must be 1",
        ),
        (
            "unknown model",
            with(ok.clone(), "model", "gpt-4o".into()).to_string(),
            404,
            "does not exist",
        ),
        (
            "oversized body",
            with(ok.clone(), "padding", big.into()).to_string(),
            413,
            "over the limit",
        ),
        ("not ready", ok.to_string(), 503, "failed to start"),
        (
            "not ready, streamed",
            with(ok.clone(), "stream", true.into()).to_string(),
            503,
            "failed to start",
        ),
    ];
    for (what, body, want, needle) in cases {
        let (status, answer) = post(&url, &body);
        assert_eq!(status, want, "{what}: {answer}");
        let msg = error_message(&answer);
        assert!(msg.contains(needle), "{what}: `{msg}` lacks `{needle}`");
    }
    let (status, answer) = get(&s.url("/v1/nope"));
    assert_eq!(status, 404);
    error_message(&answer);
}

/// The bodies PaddleX sends per region (issue 14), against a server with the default served
/// names of `serve PaddlePaddle/PaddleOCR-VL`: each passes parsing, the model name and
/// validation, and stops only where the model is needed (503 here, without a GPU).
#[test]
fn paddlex_bodies_reach_the_service() {
    let engine = EngineConfig {
        model: Some("/nonexistent/ocrvl-test-model".into()),
        ..EngineConfig::default()
    };
    let service = Service::spawn(ServiceConfig {
        engine,
        ..ServiceConfig::default()
    });
    assert!(service.wait_ready(Some(Duration::from_secs(30))).is_err());
    let s = TestServer::start(
        service,
        ServerConfig {
            served_model_names: ocrvl::server::cli::default_served_names(Some("PaddlePaddle/PaddleOCR-VL")),
            ..ServerConfig::default()
        },
    );
    let (status, body) = get(&s.url("/v1/models"));
    assert_eq!(status, 200, "{body}");
    for name in [
        "PaddlePaddle/PaddleOCR-VL",
        "PaddleOCR-VL-0.9B",
        "PaddleOCR-VL-1.5-0.9B",
        "PaddleOCR-VL-1.6-0.9B",
    ] {
        assert!(body.contains(&format!("\"{name}\"")), "{name} not listed: {body}");
    }
    let url = s.url("/v1/chat/completions");
    let jpeg = {
        let img = image::RgbImage::from_pixel(64, 32, image::Rgb([250, 250, 250]));
        let mut bytes = Vec::new();
        img.write_to(&mut std::io::Cursor::new(&mut bytes), image::ImageFormat::Jpeg)
            .unwrap();
        format!(
            "data:image/jpeg;base64,{}",
            base64::engine::general_purpose::STANDARD.encode(&bytes)
        )
    };
    let vllm = json!({
        "model": "PaddleOCR-VL-1.5-0.9B",
        "messages": [{"role": "user", "content": [
            {"type": "image_url", "image_url": {"url": jpeg}},
            {"type": "text", "text": "OCR:"}
        ]}],
        "temperature": 0, "max_completion_tokens": 4096, "skip_special_tokens": true,
        "mm_processor_kwargs": {"min_pixels": 112896, "max_pixels": 1003520}
    });
    let mut sglang = vllm.clone();
    sglang.as_object_mut().unwrap().remove("mm_processor_kwargs");
    let fastdeploy = with(with(vllm.clone(), "temperature", 1.into()), "top_p", 0.into());
    let llama_cpp = json!({
        "model": "PaddleOCR-VL-0.9B",
        "messages": [{"role": "user", "content": [
            {"type": "image_url", "image_url": {"url": data_uri(&png(64, 32))}},
            {"type": "text", "text": "OCR:"}
        ]}],
        "temperature": 0, "max_tokens": 4096
    });
    for (kind, body) in [
        ("vllm", vllm.clone()),
        ("sglang", sglang),
        ("fastdeploy", fastdeploy),
        ("llama.cpp", llama_cpp),
    ] {
        let (status, answer) = post(&url, &body.to_string());
        assert_eq!(status, 503, "{kind}: {answer}");
        assert!(error_message(&answer).contains("failed to start"), "{kind}: {answer}");
    }
    // Bounds the model cannot honour are the caller's error.
    let bad = with(
        vllm,
        "mm_processor_kwargs",
        json!({"min_pixels": 2000000, "max_pixels": 1003520}),
    );
    let (status, answer) = post(&url, &bad.to_string());
    assert_eq!(status, 400, "{answer}");
    assert!(error_message(&answer).contains("min_pixels"), "{answer}");
}

#[test]
fn metrics_on_both_ports() {
    let s = failed_server(1 << 20);
    for url in [format!("http://{}/metrics", s.metrics), s.url("/metrics")] {
        let mut r = agent().get(&url).call().unwrap();
        assert_eq!(r.status().as_u16(), 200);
        let ct = r.headers().get("content-type").unwrap().to_str().unwrap().to_string();
        assert!(ct.starts_with("text/plain"), "{ct}");
        let text = r.body_mut().read_to_string().unwrap();
        for name in [
            "ocrvl_engine_ready 0",
            "ocrvl_requests_running 0",
            "ocrvl_kv_blocks_free",
            "ocrvl_time_to_first_token_seconds_count 0",
            "ocrvl_requests_total{finish_reason=\"stop\"} 0",
        ] {
            assert!(text.contains(name), "{name} missing:\n{text}");
        }
    }
}

#[test]
fn shutdown_is_prompt_and_refuses_new_connections() {
    let mut s = failed_server(1 << 20);
    let addr = s.addr;
    let t = Instant::now();
    let report = s.stop();
    assert!(report.clean, "{report:?}");
    assert!(t.elapsed() < Duration::from_secs(10), "{:?}", t.elapsed());
    assert!(TcpStream::connect_timeout(&addr, Duration::from_secs(1)).is_err());
}

/// A server whose every admitted request can be held open by a client that never finishes
/// its body: `max_pending` in flight at most, bodies due within `body_timeout`.
fn small_server(max_pending: usize, body_timeout: Duration, header_timeout: Duration) -> TestServer {
    let service = Service::spawn(ServiceConfig {
        engine: EngineConfig {
            model: Some("/nonexistent/ocrvl-test-model".into()),
            ..EngineConfig::default()
        },
        ..ServiceConfig::default()
    });
    assert!(service.wait_ready(Some(Duration::from_secs(30))).is_err());
    TestServer::start(
        service,
        ServerConfig {
            served_model_names: vec![MODEL.into()],
            max_pending_requests: max_pending,
            body_read_timeout: body_timeout,
            header_read_timeout: header_timeout,
            ..ServerConfig::default()
        },
    )
}

/// Sends the headers of a POST announcing `len` body bytes and only `sent` of them.
fn stalled_post(addr: SocketAddr, len: usize, sent: usize) -> TcpStream {
    let mut c = TcpStream::connect(addr).unwrap();
    write!(
        c,
        "POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: {len}\r\n\r\n{}",
        "{".repeat(sent)
    )
    .unwrap();
    c.flush().unwrap();
    c
}

fn read_all(mut c: TcpStream) -> String {
    // A guard against a hang only; the test's outcome does not depend on it.
    c.set_read_timeout(Some(Duration::from_secs(60))).unwrap();
    let mut out = Vec::new();
    let _ = c.read_to_end(&mut out);
    String::from_utf8_lossy(&out).into_owned()
}

#[test]
fn full_server_answers_503_with_retry_after() {
    let s = small_server(2, Duration::from_secs(3), Duration::from_secs(30));
    let stalled: Vec<TcpStream> = (0..2).map(|_| stalled_post(s.addr, 1000, 10)).collect();
    // Wait until both stalled requests are admitted (the metrics port admits nothing).
    let metrics_url = format!("http://{}/metrics", s.metrics);
    let mut in_flight = 0.0;
    for _ in 0..400 {
        in_flight = metric(&get(&metrics_url).1, "ocrvl_http_requests_in_flight");
        if in_flight >= 2.0 {
            break;
        }
        std::thread::sleep(Duration::from_millis(25));
    }
    assert_eq!(in_flight, 2.0);
    // The next request is refused without its body read.
    let body = chat(&[], "OCR:").to_string();
    let r = agent()
        .post(&s.url("/v1/chat/completions"))
        .header("content-type", "application/json")
        .send(&body)
        .unwrap();
    let retry = r.headers().get("retry-after").map(|v| v.to_str().unwrap().to_string());
    let status = r.status().as_u16();
    let text = r.into_body().read_to_string().unwrap();
    assert_eq!(status, 503, "{text}");
    assert_eq!(retry.as_deref(), Some("1"));
    assert!(
        error_message(&text).contains("2 requests are already in flight"),
        "{text}"
    );
    // The stalled bodies never finish: each is answered 408 once its body timeout passes,
    // which frees its place.
    for c in stalled {
        let answer = read_all(c);
        assert!(answer.starts_with("HTTP/1.1 408"), "{answer}");
        assert!(answer.contains("did not arrive within"), "{answer}");
    }
    let (status, answer) = post(&s.url("/v1/chat/completions"), &body);
    assert_eq!(status, 503, "{answer}");
    assert!(error_message(&answer).contains("failed to start"), "{answer}");
}

#[test]
fn stalled_headers_close_the_connection() {
    let s = small_server(4, Duration::from_secs(30), Duration::from_secs(1));
    let mut c = TcpStream::connect(s.addr).unwrap();
    c.write_all(b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\n")
        .unwrap();
    // The headers never end: the server closes the connection instead of waiting forever
    // (read_all returns on close; its own guard is a minute).
    let answer = read_all(c);
    assert!(!answer.starts_with("HTTP/1.1 200"), "{answer}");
    // The server is still fine.
    let (status, _) = get(&s.url("/v1/models"));
    assert_eq!(status, 200);
}

#[test]
fn declared_oversized_bodies_are_refused_unread() {
    let s = failed_server(1 << 10);
    let c = stalled_post(s.addr, 1 << 20, 0);
    let answer = read_all(c);
    assert!(answer.starts_with("HTTP/1.1 413"), "{answer}");
}

// ---------------------------------------------------------------------------------------
// GPU: the full-size synthetic model.

const GPU_MAX_MODEL_LEN: usize = 2048;

/// The service behind [`gpu_server`], for its counters.
static GPU_SERVICE: OnceLock<Service> = OnceLock::new();

fn gpu_server() -> &'static TestServer {
    static SERVER: OnceLock<TestServer> = OnceLock::new();
    SERVER.get_or_init(|| {
        // No prefix caching: a repeated request then runs exactly the same computation, so
        // greedy answers compare equal even on random weights, whose top logits can be near
        // ties that a prefill split differently (cached prefix + rest) could flip.
        let engine = EngineConfig {
            max_model_len: GPU_MAX_MODEL_LEN,
            max_num_seqs: 8,
            gpu_memory_utilization: 0.5,
            enable_prefix_caching: false,
            ..EngineConfig::default()
        };
        let service = Service::spawn(ServiceConfig {
            engine,
            max_images_per_request: 2,
            ..ServiceConfig::default()
        });
        service.wait_ready(None).expect("the synthetic model starts");
        let _ = GPU_SERVICE.set(service.clone());
        TestServer::start(
            service,
            ServerConfig {
                served_model_names: vec![MODEL.into()],
                max_model_len: GPU_MAX_MODEL_LEN,
                max_images: 2,
                ..ServerConfig::default()
            },
        )
    })
}

/// Per-request resize bounds (`mm_processor_kwargs`) change the image's token count by
/// exactly what `smart_resize` says, and a repeated image is a hit of the preprocessed-image
/// cache (the default --mm-processor-cache-gb) with the same prompt.
#[test]
#[ignore = "needs GPU"]
fn gpu_pixel_bounds_and_image_cache() {
    let s = gpu_server();
    let service = GPU_SERVICE.get().expect("set by gpu_server");
    let url = s.url("/v1/chat/completions");
    // A size no other test sends, so the first request is a miss.
    let (w, h) = (302usize, 198usize);
    let uri = data_uri(&png(w as u32, h as u32));
    let ask = |kwargs: Option<Value>| -> usize {
        let mut body = with(chat(std::slice::from_ref(&uri), "OCR:"), "max_tokens", 2.into());
        if let Some(kw) = kwargs {
            body = with(body, "mm_processor_kwargs", kw);
        }
        let (status, answer) = post(&url, &body.to_string());
        assert_eq!(status, 200, "{answer}");
        let v: Value = serde_json::from_str(&answer).unwrap();
        v["usage"]["prompt_tokens"].as_u64().unwrap() as usize
    };
    let tokens = |min: u64, max: u64| {
        let (rh, rw) = ocrvl::preprocess::smart_resize(h, w, 28, min, max).unwrap();
        (rh / 28) * (rw / 28)
    };
    let before = service.image_cache_stats();
    let default = ask(None);
    let small = ask(Some(json!({"min_pixels": 3136, "max_pixels": 50176})));
    let explicit = ask(Some(json!({"min_pixels": 112896, "max_pixels": 1003520})));
    assert_eq!(
        default - small,
        tokens(112_896, 1_003_520) - tokens(3136, 50176),
        "the small bounds' image has fewer tokens by exactly smart_resize's count"
    );
    assert_eq!(explicit, default, "the hub bounds given explicitly are the defaults");
    let after = service.image_cache_stats();
    assert!(after.misses >= before.misses + 2, "{before:?} -> {after:?}");
    assert!(
        after.hits > before.hits,
        "the third request reuses the first's pixels: {before:?} -> {after:?}"
    );
}

fn small_request(max_tokens: u64) -> Value {
    with(
        chat(&[data_uri(&png(224, 160))], "OCR:"),
        "max_tokens",
        max_tokens.into(),
    )
}

/// `data:` payloads of an SSE stream, up to and including `[DONE]`.
fn sse_payloads(reader: impl Read) -> Vec<String> {
    let mut out = Vec::new();
    for line in BufReader::new(reader).lines() {
        let line = line.unwrap();
        if let Some(data) = line.strip_prefix("data: ").or_else(|| line.strip_prefix("data:")) {
            out.push(data.trim().to_string());
            if data.trim() == "[DONE]" {
                break;
            }
        }
    }
    out
}

fn metric(text: &str, name: &str) -> f64 {
    text.lines()
        .find_map(|l| l.strip_prefix(name).and_then(|v| v.strip_prefix(' ')))
        .unwrap_or_else(|| panic!("{name} missing"))
        .parse()
        .unwrap()
}

fn metrics(s: &TestServer) -> String {
    get(&format!("http://{}/metrics", s.metrics)).1
}

#[test]
#[ignore = "needs GPU"]
fn gpu_chat_completion_with_an_image() {
    let s = gpu_server();
    assert_eq!(get(&s.url("/health")).0, 200);
    let (status, body) = post(&s.url("/v1/chat/completions"), &small_request(16).to_string());
    assert_eq!(status, 200, "{body}");
    let v: Value = serde_json::from_str(&body).unwrap();
    assert!(v["id"].as_str().unwrap().starts_with("chatcmpl-"));
    assert_eq!(v["object"], "chat.completion");
    assert_eq!(v["model"], MODEL);
    let choice = &v["choices"][0];
    assert_eq!(choice["message"]["role"], "assistant");
    assert!(choice["message"]["content"].is_string());
    let reason = choice["finish_reason"].as_str().unwrap();
    let usage = &v["usage"];
    let completion = usage["completion_tokens"].as_u64().unwrap();
    assert!(
        usage["prompt_tokens"].as_u64().unwrap() > 40,
        "image tokens count: {usage}"
    );
    assert!((1..=16).contains(&completion));
    assert_eq!(reason == "length", completion == 16, "{v}");
    assert_eq!(
        usage["total_tokens"].as_u64().unwrap(),
        usage["prompt_tokens"].as_u64().unwrap() + completion
    );
    assert!(metric(&metrics(s), "ocrvl_images_encoded_total") >= 1.0);
}

#[test]
#[ignore = "needs GPU"]
fn gpu_stream_matches_the_answer_and_logprobs() {
    let s = gpu_server();
    let req = with(
        with(small_request(24), "logprobs", true.into()),
        "top_logprobs",
        2.into(),
    );
    let (status, body) = post(&s.url("/v1/chat/completions"), &req.to_string());
    assert_eq!(status, 200, "{body}");
    let once: Value = serde_json::from_str(&body).unwrap();
    let text = once["choices"][0]["message"]["content"].as_str().unwrap().to_string();
    let n = once["usage"]["completion_tokens"].as_u64().unwrap() as usize;
    let lp = once["choices"][0]["logprobs"]["content"].as_array().unwrap();
    assert_eq!(lp.len(), n);
    assert!(lp
        .iter()
        .all(|t| t["top_logprobs"].as_array().unwrap().len() == 2 && t["logprob"].as_f64().unwrap() <= 0.0));

    let req = with(
        with(req, "stream", true.into()),
        "stream_options",
        json!({"include_usage": true}),
    );
    let r = agent()
        .post(&s.url("/v1/chat/completions"))
        .header("content-type", "application/json")
        .send(req.to_string())
        .unwrap();
    assert_eq!(r.status().as_u16(), 200);
    let ct = r.headers().get("content-type").unwrap().to_str().unwrap().to_string();
    assert!(ct.starts_with("text/event-stream"), "{ct}");
    let payloads = sse_payloads(r.into_body().into_reader());
    assert_eq!(payloads.last().map(String::as_str), Some("[DONE]"));
    let chunks: Vec<Value> = payloads[..payloads.len() - 1]
        .iter()
        .map(|p| serde_json::from_str(p).unwrap())
        .collect();
    assert_eq!(chunks[0]["choices"][0]["delta"]["role"], "assistant");
    let mut streamed = String::new();
    let mut streamed_logprobs = 0;
    let mut finish = None;
    for c in &chunks {
        assert_eq!(c["object"], "chat.completion.chunk");
        assert_eq!(c["id"], chunks[0]["id"]);
        if let Some(choice) = c["choices"].as_array().unwrap().first() {
            streamed.push_str(choice["delta"]["content"].as_str().unwrap_or(""));
            streamed_logprobs += choice["logprobs"]["content"].as_array().map_or(0, Vec::len);
            if let Some(r) = choice["finish_reason"].as_str() {
                finish = Some(r.to_string());
            }
        }
    }
    assert_eq!(streamed, text, "greedy: the stream spells the same text");
    assert_eq!(finish.as_deref(), once["choices"][0]["finish_reason"].as_str());
    assert_eq!(streamed_logprobs, n);
    let last = chunks.last().unwrap();
    assert!(
        last["choices"].as_array().unwrap().is_empty(),
        "include_usage: a usage chunk ends"
    );
    assert_eq!(last["usage"], once["usage"]);
}

#[test]
#[ignore = "needs GPU"]
fn gpu_concurrent_requests() {
    let s = gpu_server();
    let url = s.url("/v1/chat/completions");
    let body = Arc::new(small_request(32).to_string());
    let threads: Vec<_> = (0..8)
        .map(|_| {
            let (url, body) = (url.clone(), body.clone());
            std::thread::spawn(move || post(&url, &body))
        })
        .collect();
    let answers: Vec<(u16, String)> = threads.into_iter().map(|t| t.join().unwrap()).collect();
    // Each answer is whole. Their texts are not compared: a batch of 8 runs other GEMM shapes
    // than one request, and random weights have near-tied logits that bf16 can flip.
    for (status, body) in &answers {
        assert_eq!(*status, 200, "{body}");
        let v: Value = serde_json::from_str(body).unwrap();
        let n = v["usage"]["completion_tokens"].as_u64().unwrap();
        assert!((1..=32).contains(&n), "{v}");
        assert!(v["choices"][0]["message"]["content"].is_string());
    }
    assert_eq!(get(&s.url("/health")).0, 200);
}

#[test]
#[ignore = "needs GPU"]
fn gpu_disconnect_mid_stream_frees_blocks() {
    let s = gpu_server();
    let idle = wait_idle(s);
    let aborted_before = metric(&metrics(s), "ocrvl_requests_total{finish_reason=\"abort\"}");
    let body = with(small_request(1500), "stream", true.into()).to_string();
    // By hand, so the connection is surely closed (a client library might pool it).
    let mut conn = TcpStream::connect(s.addr).unwrap();
    write!(
        conn,
        "POST /v1/chat/completions HTTP/1.1\r\nHost: test\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    )
    .unwrap();
    let mut reader = BufReader::new(conn.try_clone().unwrap());
    let mut data_lines = 0;
    let mut line = String::new();
    while data_lines < 5 {
        line.clear();
        assert!(reader.read_line(&mut line).unwrap() > 0, "stream ended early");
        if line.contains("data: ") {
            data_lines += 1;
        }
    }
    let busy = metrics(s);
    assert!(
        metric(&busy, "ocrvl_kv_blocks_free") < idle,
        "the request holds blocks while running"
    );
    conn.shutdown(std::net::Shutdown::Both).unwrap();
    drop((reader, conn));
    let t = Instant::now();
    loop {
        let m = metrics(s);
        if metric(&m, "ocrvl_kv_blocks_free") == idle && metric(&m, "ocrvl_requests_running") == 0.0 {
            assert!(metric(&m, "ocrvl_requests_total{finish_reason=\"abort\"}") > aborted_before);
            break;
        }
        assert!(t.elapsed() < Duration::from_secs(10), "blocks not freed:\n{m}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Waits until nothing runs and returns the free block count then.
fn wait_idle(s: &TestServer) -> f64 {
    let t = Instant::now();
    loop {
        let m = metrics(s);
        if metric(&m, "ocrvl_requests_running") == 0.0 && metric(&m, "ocrvl_requests_waiting") == 0.0 {
            return metric(&m, "ocrvl_kv_blocks_free");
        }
        assert!(t.elapsed() < Duration::from_secs(60), "never idle:\n{m}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[test]
#[ignore = "needs GPU"]
fn gpu_errors_only_the_model_finds_then_keeps_serving() {
    let s = gpu_server();
    let url = s.url("/v1/chat/completions");
    // Two full-size images: about 2 x 1280 tokens, over --max-model-len 2048.
    let page = data_uri(&png(1000, 1000));
    let (status, body) = post(&url, &chat(&[page.clone(), page], "OCR:").to_string());
    assert_eq!(status, 400, "{body}");
    assert!(error_message(&body).contains("max-model-len"), "{body}");
    // A small prompt asking for more tokens than fit.
    let (status, body) = post(&url, &small_request(GPU_MAX_MODEL_LEN as u64 - 10).to_string());
    assert_eq!(status, 400, "{body}");
    // A PNG whose header is fine but whose data is cut off: passes the probe, fails the decode.
    let full = png(300, 200);
    let cut = data_uri(&full[..full.len() * 2 / 3]);
    let (status, body) = post(&url, &chat(&[cut], "OCR:").to_string());
    assert_eq!(status, 400, "{body}");
    error_message(&body);
    let (status, body) = post(&url, &small_request(4).to_string());
    assert_eq!(status, 200, "still serving: {body}");
    assert_eq!(get(&s.url("/health")).0, 200);
}

/// ERNIE-4.5-VL behind `serve --reasoning-parser ernie-45-vl`: with thinking on (the
/// default) the output starts as reasoning, with `enable_thinking: false` it is all content;
/// either way `reasoning_content` + `content` is the text the service gives for the same
/// greedy request (less the `</think>` marker), and a stream's deltas join to the same two
/// fields.
#[test]
#[ignore = "needs GPU"]
fn gpu_ernie_reasoning_content() {
    use ocrvl::config::ErnieVlConfig;
    use ocrvl::model::ernie_vl::synthetic::{write_synthetic_model, ErnieSyntheticOptions};
    use ocrvl::service::reasoning::ReasoningParser;
    use ocrvl::service::{OcrRequest, PromptInput};

    let dir = tempfile::tempdir().unwrap();
    let cfg = ErnieVlConfig::tiny();
    write_synthetic_model(dir.path(), &cfg, &ErnieSyntheticOptions::for_model(true)).unwrap();
    let service = Service::spawn(ServiceConfig {
        engine: EngineConfig {
            model: Some(dir.path().to_path_buf()),
            max_model_len: 2048,
            max_num_seqs: 4,
            // A fixed KV cache (4 sequences of 2048 tokens in blocks of 64): the share-based
            // budget counts what the process already holds, and the shared PaddleOCR-VL server
            // of the earlier tests keeps half the card for the whole run, so 0.1 and 0.5 both
            // left no block on an H100 (rounds 8 and 9).
            num_gpu_blocks_override: Some(4 * 2048 / 64),
            enable_prefix_caching: false,
            ..EngineConfig::default()
        },
        max_images_per_request: 1,
        ..ServiceConfig::default()
    });
    service.wait_ready(None).expect("the ERNIE directory loads");
    let s = TestServer::start(
        service.clone(),
        ServerConfig {
            served_model_names: vec![MODEL.into()],
            max_model_len: 2048,
            max_images: 1,
            reasoning_parser: Some(ReasoningParser::Ernie45Vl),
            ..ServerConfig::default()
        },
    );
    let image = png(252, 196);
    let url = s.url("/v1/chat/completions");
    for thinking in [true, false] {
        let mut direct = OcrRequest::new(vec![image.clone()], PromptInput::Text("Describe.".into()));
        direct.max_tokens = Some(12);
        direct.ignore_eos = true;
        direct.enable_thinking = Some(thinking);
        let text = service.submit(direct).unwrap().wait().unwrap().text;

        let body = with(
            with(
                with(chat(&[data_uri(&image)], "Describe."), "max_tokens", 12.into()),
                "ignore_eos",
                true.into(),
            ),
            "chat_template_kwargs",
            json!({"enable_thinking": thinking}),
        );
        let (status, answer) = post(&url, &body.to_string());
        assert_eq!(status, 200, "{answer}");
        let v: Value = serde_json::from_str(&answer).unwrap();
        let message = &v["choices"][0]["message"];
        let reasoning = message["reasoning_content"]
            .as_str()
            .expect("reasoning_content")
            .to_string();
        let content = message["content"].as_str().unwrap().to_string();
        // The first `</think>` (if the random model writes one) belongs to neither field.
        let expect = if thinking {
            text.replacen("</think>", "", 1)
        } else {
            text.clone()
        };
        assert_eq!(format!("{reasoning}{content}"), expect, "thinking {thinking}");
        if !thinking {
            assert_eq!(reasoning, "", "thinking off: all content");
        }

        let (status, stream) = post(&url, &with(body, "stream", true.into()).to_string());
        assert_eq!(status, 200, "{stream}");
        let (mut r, mut c) = (String::new(), String::new());
        for payload in sse_payloads(stream.as_bytes()) {
            if payload == "[DONE]" {
                break;
            }
            let chunk: Value = serde_json::from_str(&payload).unwrap();
            if let Some(delta) = chunk["choices"].get(0).map(|ch| &ch["delta"]) {
                r += delta["reasoning_content"].as_str().unwrap_or("");
                c += delta["content"].as_str().unwrap_or("");
            }
        }
        assert_eq!((r, c), (reasoning, content), "thinking {thinking}: the stream's fields");
    }
    service.shutdown(Duration::ZERO);
}
