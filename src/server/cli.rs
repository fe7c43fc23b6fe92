//! The `serve` command line (clap): the engine flags ([`EngineArgs`], shared with `ocr` and
//! `bench`) plus the server's own, with the names vLLM and FastDeploy users type. vLLM's
//! positional model (`serve PaddlePaddle/PaddleOCR-VL ...`) and `--model` are the same thing.

use std::path::PathBuf;
use std::time::Duration;

use clap::error::ErrorKind;
use clap::{ArgAction, CommandFactory, Parser};

use crate::config::{normalize_flag_spelling, EngineArgs, EngineConfig};
use crate::service::ServiceConfig;

use super::media::{MediaPolicy, RemoteImages};
use super::ServerConfig;

/// The served name of the synthetic random-weight model (no model given): not a real model's
/// name, so nobody mistakes its output for PaddleOCR-VL's.
pub const SYNTHETIC_SERVED_NAME: &str = "ocrvl-synthetic";

/// The names PaddleOCR's pipeline (PaddleX) sends in `model` for PaddleOCR-VL v1, 1.5 and 1.6;
/// a PaddleOCR-VL checkpoint answers to all of them by default, so the pipeline works against
/// whichever version is served.
pub const PIPELINE_MODEL_NAMES: [&str; 3] = ["PaddleOCR-VL-0.9B", "PaddleOCR-VL-1.5-0.9B", "PaddleOCR-VL-1.6-0.9B"];

const AFTER_HELP: &str = "\
Flags of vLLM and FastDeploy that change nothing here (--trust-remote-code, --engine-worker-queue-port,
--api-server-count, --workers, --cache-queue-port, --disable-log-stats, --additional-config) are accepted
with a start-up line saying so; --tensor-parallel-size, --pipeline-parallel-size and --data-parallel-size
take 1 only; --quantization takes wint8 only (ERNIE-4.5-VL's experts as int8) and --dtype float16 is refused. Underscores in flag names mean dashes.
Environment: FLAGS_flash_attn_version (2, 3), FD_SAMPLING_CLASS (base, rejection), OCRVL_QUIET.";

/// `serve [MODEL] [flags]`.
#[derive(Parser, Debug)]
#[command(
    name = "serve",
    about = "OpenAI-compatible server for PaddleOCR-VL",
    args_override_self = true,
    allow_negative_numbers = true,
    after_help = AFTER_HELP
)]
pub struct ServeCli {
    /// The model, as vLLM takes it (same as --model).
    #[arg(value_name = "MODEL")]
    pub model_tag: Option<String>,
    #[command(flatten)]
    pub engine: EngineArgs,
    #[arg(long, default_value = "0.0.0.0")]
    pub host: String,
    #[arg(long, default_value_t = 8000)]
    pub port: u16,
    /// Also serve /metrics on this port.
    #[arg(long, value_name = "PORT")]
    pub metrics_port: Option<u16>,
    /// Names the model answers to (replaces the default list; several may follow the flag).
    #[arg(long, value_name = "NAME", num_args = 1.., action = ArgAction::Append)]
    pub served_model_name: Vec<String>,
    /// Images per request: '{"image": N}' or image=N (other modalities must be 0).
    #[arg(long, value_name = "LIMITS", value_parser = parse_limit_mm)]
    pub limit_mm_per_prompt: Option<usize>,
    /// Allow file:// image URLs under this directory.
    #[arg(long, value_name = "DIR")]
    pub allowed_local_media_path: Option<PathBuf>,
    /// Allow http(s) image URLs from any host.
    #[arg(long)]
    pub allow_remote_images: bool,
    /// Allow http(s) image URLs from these hosts only.
    #[arg(long, value_name = "HOST[,HOST...]", value_delimiter = ',', action = ArgAction::Append)]
    pub allowed_media_domains: Vec<String>,
    /// Request bodies above this many bytes get 413.
    #[arg(long, value_name = "N", default_value_t = ServerConfig::default().max_body_bytes)]
    pub max_request_bytes: usize,
    /// Requests in flight above which new ones get 503 with Retry-After (default: 4 x
    /// --max-num-seqs, see `ServerConfig::for_engine`).
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u64).range(1..))]
    pub max_pending_requests: Option<u64>,
    /// Seconds a graceful shutdown waits for running requests.
    #[arg(long, value_name = "SECS", default_value = "30", value_parser = seconds)]
    pub shutdown_timeout: Duration,
    /// Where the synthetic model is written when no model is given.
    #[arg(long, value_name = "DIR")]
    pub synthetic_dir: Option<PathBuf>,
}

#[derive(Clone, Debug)]
pub struct ServeArgs {
    pub engine: EngineConfig,
    /// `--revision`, for a hub repo id.
    pub revision: Option<String>,
    pub host: String,
    pub port: u16,
    pub metrics_port: Option<u16>,
    pub server: ServerConfig,
    pub shutdown_timeout: Duration,
    pub synthetic_dir: Option<PathBuf>,
    /// `--mm-processor-cache-gb`, in bytes.
    pub image_cache_bytes: usize,
    pub chat_template: Option<PathBuf>,
    /// One line per accepted flag that has no effect (printed at start-up).
    pub notes: Vec<String>,
}

impl ServeArgs {
    /// Parses the arguments after the program name. `--help` comes back as an error of kind
    /// [`ErrorKind::DisplayHelp`]; `clap::Error::exit` prints either and exits.
    pub fn parse(args: &[String]) -> Result<ServeArgs, clap::Error> {
        let argv = std::iter::once("serve".to_string()).chain(normalize_flag_spelling(args));
        let cli = ServeCli::try_parse_from(argv)?;
        cli.into_args()
    }
}

impl ServeCli {
    fn into_args(self) -> Result<ServeArgs, clap::Error> {
        let fail = |msg: String| ServeCli::command().error(ErrorKind::ValueValidation, msg);
        let mut engine_args = self.engine;
        match (&self.model_tag, &engine_args.model) {
            (Some(tag), Some(flag)) if tag != flag => {
                return Err(fail(format!(
                    "the model is given twice, as `{tag}` and as --model {flag}; give one"
                )))
            }
            (Some(tag), _) => engine_args.model = Some(tag.clone()),
            _ => {}
        }
        let settings = engine_args.resolve().map_err(fail)?;
        // Context length, and --max-pending-requests from --max-num-seqs, unless given.
        let defaults = ServerConfig::for_engine(&settings.engine);
        let mut server = ServerConfig {
            max_images: self
                .limit_mm_per_prompt
                .unwrap_or(ServiceConfig::default().max_images_per_request),
            max_body_bytes: self.max_request_bytes,
            max_pending_requests: self
                .max_pending_requests
                .map_or(defaults.max_pending_requests, |n| n as usize),
            reasoning_parser: settings.reasoning_parser,
            ..defaults
        };
        if let Some(dir) = &self.allowed_local_media_path {
            let canonical = dir
                .canonicalize()
                .map_err(|e| fail(format!("--allowed-local-media-path {}: {e}", dir.display())))?;
            server.media.local_dir = Some(canonical);
        }
        let domains: Vec<String> = self
            .allowed_media_domains
            .iter()
            .map(|d| d.trim().to_ascii_lowercase())
            .filter(|d| !d.is_empty())
            .collect();
        server.media.remote = match (self.allow_remote_images, domains.is_empty()) {
            (_, false) => RemoteImages::Domains(domains),
            (true, true) => RemoteImages::Any,
            (false, true) => RemoteImages::Off,
        };
        // `--served-model-name` takes several values, so a model typed after it is taken as
        // a name (as in vLLM); without this check that would serve the synthetic model.
        if engine_args.model.is_none() {
            if let Some(m) = self
                .served_model_name
                .iter()
                .find(|n| n.contains('/') || std::path::Path::new(n.as_str()).is_dir())
            {
                return Err(fail(format!(
                    "`{m}` follows --served-model-name, which takes every name after it; put the model \
                     first (`serve {m} --served-model-name ...`) or give it with --model"
                )));
            }
        }
        server.served_model_names = if self.served_model_name.is_empty() {
            default_served_names(engine_args.model.as_deref())
        } else {
            self.served_model_name
        };
        Ok(ServeArgs {
            engine: settings.engine,
            revision: settings.revision,
            host: self.host,
            port: self.port,
            metrics_port: self.metrics_port,
            server,
            shutdown_timeout: self.shutdown_timeout,
            synthetic_dir: self.synthetic_dir,
            image_cache_bytes: settings.image_cache_bytes,
            chat_template: settings.chat_template,
            notes: settings.notes,
        })
    }
}

/// vLLM's default (the model as typed) plus the pipeline's names; the synthetic model gets
/// its own name.
pub fn default_served_names(model: Option<&str>) -> Vec<String> {
    let Some(model) = model else {
        return vec![SYNTHETIC_SERVED_NAME.to_string()];
    };
    let mut names = vec![model.to_string()];
    for name in PIPELINE_MODEL_NAMES {
        if !names.iter().any(|n| n == name) {
            names.push(name.to_string());
        }
    }
    names
}

impl ServeArgs {
    pub fn service_config(&self, env: crate::config::EnvFlags) -> ServiceConfig {
        ServiceConfig {
            engine: self.engine.clone(),
            env,
            synthetic_dir: self.synthetic_dir.clone(),
            max_images_per_request: self.server.max_images,
            max_temperature: self.server.max_temperature,
            image_cache_bytes: self.image_cache_bytes,
            chat_template: self.chat_template.clone(),
            ..ServiceConfig::default()
        }
    }

    pub fn media(&self) -> &MediaPolicy {
        &self.server.media
    }
}

fn seconds(v: &str) -> Result<Duration, String> {
    match v.parse::<f64>() {
        Ok(s) if s.is_finite() && s >= 0.0 => Ok(Duration::from_secs_f64(s)),
        Ok(_) => Err("must be >= 0".into()),
        Err(_) => Err("expected seconds".into()),
    }
}

/// `{"image": N}` (vLLM's JSON form) or `image=N` (its older form); other modalities may
/// only be 0, since the model reads images alone.
pub fn parse_limit_mm(v: &str) -> Result<usize, String> {
    let bad = |why: &str| format!("--limit-mm-per-prompt {v}: {why}");
    let mut image = None;
    let mut check = |k: &str, n: u64| -> Result<(), String> {
        match k {
            "image" => {
                image = Some(usize::try_from(n).map_err(|_| bad("too large"))?);
                Ok(())
            }
            _ if n == 0 => Ok(()),
            other => Err(bad(&format!("this model takes images only, not `{other}`"))),
        }
    };
    if v.trim_start().starts_with('{') {
        let map: serde_json::Map<String, serde_json::Value> =
            serde_json::from_str(v).map_err(|e| bad(&format!("not a JSON object: {e}")))?;
        for (k, n) in &map {
            let n = n.as_u64().ok_or_else(|| bad("counts must be whole numbers"))?;
            check(k, n)?;
        }
    } else {
        for pair in v.split(',').filter(|p| !p.trim().is_empty()) {
            let (k, n) = pair.split_once('=').ok_or_else(|| bad("expected image=N"))?;
            let n: u64 = n.trim().parse().map_err(|_| bad("counts must be whole numbers"))?;
            check(k.trim(), n)?;
        }
    }
    let n = image.ok_or_else(|| bad("no image count"))?;
    if n == 0 {
        return Err(bad("the image count must be at least 1"));
    }
    Ok(n)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(s: &str) -> Result<ServeArgs, String> {
        let args: Vec<String> = s.split_whitespace().map(String::from).collect();
        ServeArgs::parse(&args).map_err(|e| e.to_string())
    }

    #[test]
    fn defaults() {
        let a = parse("").unwrap();
        assert_eq!((a.host.as_str(), a.port, a.metrics_port), ("0.0.0.0", 8000, None));
        assert_eq!(a.server.served_model_names, vec![SYNTHETIC_SERVED_NAME.to_string()]);
        assert_eq!(a.server.media.remote, RemoteImages::Off);
        assert_eq!(a.shutdown_timeout, Duration::from_secs(30));
        assert_eq!(a.engine, EngineConfig::default());
        let d = ServerConfig::default();
        assert_eq!(
            (a.server.max_body_bytes, a.server.max_pending_requests),
            (d.max_body_bytes, d.max_pending_requests)
        );
        assert_eq!(a.server.max_images, ServiceConfig::default().max_images_per_request);
        assert_eq!(a.image_cache_bytes, 4 << 30);
        assert!(a.notes.is_empty());
    }

    #[test]
    fn served_names_default_to_the_model_and_the_pipeline_names() {
        let a = parse("--model /models/PaddleOCR-VL").unwrap();
        assert_eq!(
            a.server.served_model_names,
            vec![
                "/models/PaddleOCR-VL",
                "PaddleOCR-VL-0.9B",
                "PaddleOCR-VL-1.5-0.9B",
                "PaddleOCR-VL-1.6-0.9B"
            ]
        );
        // Positional, as vLLM; a name already in the list is not repeated.
        let a = parse("PaddleOCR-VL-0.9B").unwrap();
        assert_eq!(a.server.served_model_names.len(), 3);
        assert_eq!(
            a.engine.model.as_deref(),
            Some(std::path::Path::new("PaddleOCR-VL-0.9B"))
        );
        // --served-model-name replaces the list: several after one flag, or the flag repeated.
        let a = parse("PaddlePaddle/PaddleOCR-VL --served-model-name a b").unwrap();
        assert_eq!(a.server.served_model_names, vec!["a", "b"]);
        let a = parse("--served-model-name a --served-model-name=b").unwrap();
        assert!(a.server.served_model_names.ends_with(&["b".to_string()]));
        assert!(!a.server.served_model_names.contains(&SYNTHETIC_SERVED_NAME.to_string()));
    }

    #[test]
    fn flags() {
        let a = parse(
            "--port 9000 --host=127.0.0.1 --metrics-port 9001 --served-model-name a b --max-model-len 4096 \
             --limit-mm-per-prompt image=2 --allowed-media-domains Example.com,cdn.x --shutdown-timeout 2.5 \
             --no-enable-prefix-caching --max-pending-requests 100 --max_num_seqs=8",
        )
        .unwrap();
        assert_eq!(
            (a.port, a.metrics_port, a.host.as_str()),
            (9000, Some(9001), "127.0.0.1")
        );
        assert_eq!(a.server.served_model_names, vec!["a".to_string(), "b".to_string()]);
        assert_eq!((a.engine.max_model_len, a.server.max_model_len), (4096, 4096));
        assert_eq!(a.engine.max_num_seqs, 8);
        assert!(!a.engine.enable_prefix_caching);
        assert_eq!(a.server.max_images, 2);
        assert_eq!(a.server.max_pending_requests, 100);
        assert_eq!(
            a.server.media.remote,
            RemoteImages::Domains(vec!["example.com".into(), "cdn.x".into()])
        );
        assert_eq!(a.shutdown_timeout, Duration::from_millis(2500));
        assert_eq!(
            parse("--allow-remote-images").unwrap().server.media.remote,
            RemoteImages::Any
        );
        assert_eq!(a.service_config(Default::default()).max_images_per_request, 2);
        // Last value wins, as with argparse.
        assert_eq!(parse("--port 1 --port 2").unwrap().port, 2);
    }

    #[test]
    fn errors_name_the_flag() {
        for (args, needle) in [
            ("--port", "--port"),
            ("--port x", "--port"),
            ("--bogus", "--bogus"),
            ("--max-num-seqs 0", "--max-num-seqs"),
            ("--allowed-local-media-path /no/such/dir", "--allowed-local-media-path"),
            ("--shutdown-timeout -1", "--shutdown-timeout"),
            ("a --model b", "given twice"),
            ("--served-model-name x PaddlePaddle/PaddleOCR-VL", "put the model first"),
            ("--dtype float16", "--dtype"),
            ("--tensor-parallel-size 2", "--tensor-parallel-size"),
            ("--quantization fp8", "--quantization"),
            (
                "--limit-mm-per-prompt {\"image\":1,\"video\":1}",
                "--limit-mm-per-prompt",
            ),
        ] {
            let e = parse(args).unwrap_err();
            assert!(e.contains(needle), "{args}: {e}");
        }
    }

    #[test]
    fn help_is_its_own_outcome() {
        let e = ServeArgs::parse(&["--help".to_string()]).unwrap_err();
        assert_eq!(e.kind(), ErrorKind::DisplayHelp);
        let text = e.to_string();
        for flag in [
            "--served-model-name",
            "--max-model-len",
            "--mm-processor-cache-gb",
            "[MODEL]",
        ] {
            assert!(text.contains(flag), "{flag} missing from --help");
        }
    }

    #[test]
    fn limit_mm_forms() {
        assert_eq!(parse_limit_mm(r#"{"image": 3}"#).unwrap(), 3);
        assert_eq!(parse_limit_mm(r#"{"image": 2, "video": 0}"#).unwrap(), 2);
        assert_eq!(parse_limit_mm("image=5").unwrap(), 5);
        assert_eq!(parse_limit_mm("image=5,video=0").unwrap(), 5);
        for bad in [
            r#"{"video": 1, "image": 1}"#,
            "image=0",
            "image",
            "{",
            r#"{"image": -1}"#,
            "audio=0",
        ] {
            assert!(parse_limit_mm(bad).is_err(), "{bad}");
        }
    }
}
