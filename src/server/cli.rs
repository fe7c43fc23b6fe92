//! The `serve` command line: the engine flags (parsed by [`EngineConfig::parse_args`]) plus
//! the server's own, with the names vLLM and FastDeploy users type.

use std::path::PathBuf;
use std::time::Duration;

use crate::config::EngineConfig;
use crate::service::ServiceConfig;

use super::media::{MediaPolicy, RemoteImages};
use super::ServerConfig;

/// The served name of the synthetic model: the name PaddleX clients send, so they work
/// against a trial server unchanged.
pub const SYNTHETIC_SERVED_NAME: &str = "PaddleOCR-VL-0.9B";

pub const USAGE: &str = "\
usage: serve [--model DIR] [--host 0.0.0.0] [--port 8000] [--metrics-port PORT]
             [--served-model-name NAME...] [--max-model-len N] [--max-num-seqs N]
             [--max-num-batched-tokens N] [--gpu-memory-utilization F]
             [--enable-prefix-caching | --no-enable-prefix-caching] [--dtype bfloat16|auto]
             [--enforce-eager] [--no-async-scheduling] [--limit-mm-per-prompt '{\"image\": N}' | image=N]
             [--allowed-local-media-path DIR] [--allow-remote-images]
             [--allowed-media-domains HOST[,HOST...]] [--max-request-bytes N]
             [--max-pending-requests N] [--shutdown-timeout SECS] [--synthetic-dir DIR]
environment: FLAGS_flash_attn_version (2, 3), FD_SAMPLING_CLASS (base, rejection), OCRVL_QUIET";

#[derive(Clone, Debug)]
pub struct ServeArgs {
    pub engine: EngineConfig,
    pub host: String,
    pub port: u16,
    pub metrics_port: Option<u16>,
    pub server: ServerConfig,
    pub shutdown_timeout: Duration,
    pub synthetic_dir: Option<PathBuf>,
    pub help: bool,
}

impl ServeArgs {
    /// Parses the arguments after the program name; an error message names the flag.
    pub fn parse(args: &[String]) -> Result<ServeArgs, String> {
        let (engine, rest) = EngineConfig::parse_args(args).map_err(|e| e.to_string())?;
        let mut out = ServeArgs {
            host: "0.0.0.0".into(),
            port: 8000,
            metrics_port: None,
            server: ServerConfig {
                max_images: ServiceConfig::default().max_images_per_request,
                // Context length, and --max-pending-requests from --max-num-seqs.
                ..ServerConfig::for_engine(&engine)
            },
            shutdown_timeout: Duration::from_secs(30),
            synthetic_dir: None,
            help: false,
            engine,
        };
        let mut names: Vec<String> = Vec::new();
        let mut allow_any_remote = false;
        let mut domains: Vec<String> = Vec::new();
        let mut i = 0;
        while i < rest.len() {
            let arg = &rest[i];
            i += 1;
            let (flag, inline) = match arg.split_once('=') {
                Some((f, v)) if arg.starts_with("--") => (f, Some(v.to_string())),
                _ => (arg.as_str(), None),
            };
            // The value of a valued flag: inline, or the next argument unless it is a flag.
            let mut value = || -> Result<String, String> {
                if let Some(v) = inline.clone() {
                    return Ok(v);
                }
                match rest.get(i) {
                    Some(v) if !v.starts_with("--") => {
                        i += 1;
                        Ok(v.clone())
                    }
                    _ => Err(format!("{flag} needs a value")),
                }
            };
            match flag {
                "-h" | "--help" => out.help = true,
                "--host" => out.host = value()?,
                "--port" => out.port = number(flag, &value()?)?,
                "--metrics-port" => out.metrics_port = Some(number(flag, &value()?)?),
                "--served-model-name" => {
                    // vLLM takes one or more names after the flag.
                    names.push(value()?);
                    while let Some(v) = rest.get(i).filter(|v| !v.starts_with("--")) {
                        names.push(v.clone());
                        i += 1;
                    }
                }
                "--limit-mm-per-prompt" => out.server.max_images = parse_limit_mm(&value()?)?,
                "--allowed-local-media-path" => {
                    let dir = PathBuf::from(value()?);
                    let canonical = dir
                        .canonicalize()
                        .map_err(|e| format!("--allowed-local-media-path {}: {e}", dir.display()))?;
                    out.server.media.local_dir = Some(canonical);
                }
                "--allow-remote-images" => allow_any_remote = true,
                "--allowed-media-domains" => domains.extend(
                    value()?
                        .split(',')
                        .map(|d| d.trim().to_ascii_lowercase())
                        .filter(|d| !d.is_empty()),
                ),
                "--max-request-bytes" => out.server.max_body_bytes = number(flag, &value()?)?,
                "--max-pending-requests" => out.server.max_pending_requests = number(flag, &value()?)?,
                "--shutdown-timeout" => {
                    let v = value()?;
                    let secs: f64 = v.parse().map_err(|_| format!("{flag} {v}: expected seconds"))?;
                    if !(secs.is_finite() && secs >= 0.0) {
                        return Err(format!("{flag} {v}: must be >= 0"));
                    }
                    out.shutdown_timeout = Duration::from_secs_f64(secs);
                }
                "--synthetic-dir" => out.synthetic_dir = Some(PathBuf::from(value()?)),
                other => return Err(format!("unknown argument `{other}` (see --help)")),
            }
        }
        out.server.media.remote = match (allow_any_remote, domains.is_empty()) {
            (_, false) => RemoteImages::Domains(domains),
            (true, true) => RemoteImages::Any,
            (false, true) => RemoteImages::Off,
        };
        if names.is_empty() {
            // vLLM's default: the --model argument as typed.
            names.push(match &out.engine.model {
                Some(m) => m.display().to_string(),
                None => SYNTHETIC_SERVED_NAME.into(),
            });
        }
        out.server.served_model_names = names;
        Ok(out)
    }

    pub fn service_config(&self, env: crate::config::EnvFlags) -> ServiceConfig {
        ServiceConfig {
            engine: self.engine.clone(),
            env,
            synthetic_dir: self.synthetic_dir.clone(),
            max_images_per_request: self.server.max_images,
            max_temperature: self.server.max_temperature,
            ..ServiceConfig::default()
        }
    }

    pub fn media(&self) -> &MediaPolicy {
        &self.server.media
    }
}

fn number<T: std::str::FromStr>(flag: &str, v: &str) -> Result<T, String> {
    v.parse().map_err(|_| format!("{flag} {v}: expected a whole number"))
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
        ServeArgs::parse(&args)
    }

    #[test]
    fn defaults() {
        let a = parse("").unwrap();
        assert_eq!((a.host.as_str(), a.port, a.metrics_port), ("0.0.0.0", 8000, None));
        assert_eq!(a.server.served_model_names, vec![SYNTHETIC_SERVED_NAME.to_string()]);
        assert_eq!(a.server.media.remote, RemoteImages::Off);
        assert_eq!(a.shutdown_timeout, Duration::from_secs(30));
        let a = parse("--model /models/PaddleOCR-VL").unwrap();
        assert_eq!(a.server.served_model_names, vec!["/models/PaddleOCR-VL".to_string()]);
    }

    #[test]
    fn flags() {
        let a = parse(
            "--port 9000 --host=127.0.0.1 --metrics-port 9001 --served-model-name a b --max-model-len 4096 \
             --limit-mm-per-prompt image=2 --allowed-media-domains Example.com,cdn.x --shutdown-timeout 2.5 \
             --no-enable-prefix-caching --max-pending-requests 100",
        )
        .unwrap();
        assert_eq!(
            (a.port, a.metrics_port, a.host.as_str()),
            (9000, Some(9001), "127.0.0.1")
        );
        assert_eq!(a.server.served_model_names, vec!["a".to_string(), "b".to_string()]);
        assert_eq!((a.engine.max_model_len, a.server.max_model_len), (4096, 4096));
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
    }

    #[test]
    fn errors_name_the_flag() {
        for (args, needle) in [
            ("--port", "--port needs a value"),
            ("--port x", "--port x"),
            ("--bogus", "unknown argument `--bogus`"),
            ("--max-num-seqs 0", "--max-num-seqs"),
            ("--allowed-local-media-path /no/such/dir", "--allowed-local-media-path"),
            ("--shutdown-timeout -1", "--shutdown-timeout"),
        ] {
            let e = parse(args).unwrap_err();
            assert!(e.contains(needle), "{args}: {e}");
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
