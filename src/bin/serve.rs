//! `serve`: the OpenAI-compatible HTTP server (see `src/server/` and the README's "Serving").
//!
//! Start-up order: parse flags, start loading the engine on its own thread, bind the ports
//! (so `/health` answers 503 while the model loads, and a taken port fails at once), then log
//! when the engine is ready. A failed start-up is logged and the process keeps serving:
//! `/health` answers 503 with the reason so an operator (or an orchestrator's probe log) sees
//! why, and every request gets the same 503. SIGTERM or SIGINT starts a graceful shutdown
//! bounded by `--shutdown-timeout`; a second signal exits at once.

use std::process::ExitCode;
use std::time::Instant;

use ocrvl::config::EnvFlags;
use ocrvl::server::cli::ServeArgs;
use ocrvl::server::{AppState, Server};
use ocrvl::service::{default_synthetic_dir, Service};

fn main() -> ExitCode {
    let t0 = Instant::now();
    let args: Vec<String> = std::env::args().skip(1).collect();
    let mut args = match ServeArgs::parse(&args) {
        Ok(a) => a,
        // Prints the help (exit 0) or the error naming the flag (exit 2).
        Err(e) => e.exit(),
    };
    for note in &args.notes {
        eprintln!("serve: {note}");
    }
    if let Err(e) = ocrvl::hub::resolve_model_option(&mut args.engine.model, args.revision.as_deref()) {
        eprintln!("serve: {e}");
        return ExitCode::FAILURE;
    }
    let env = match EnvFlags::from_env() {
        Ok(e) => e,
        Err(e) => {
            eprintln!("serve: {e}");
            return ExitCode::from(2);
        }
    };
    // Every request in flight holds one blocking-pool thread while it waits on the engine's
    // channel (a wait, not CPU work: decoding runs on the server's pool of one thread per
    // core), so the pool is sized above --max-pending-requests (4 x --max-num-seqs).
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .max_blocking_threads(2048)
        .build()
    {
        Ok(r) => r,
        Err(e) => {
            eprintln!("serve: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let code = runtime.block_on(serve(args, env, t0));
    // Exit without waiting for blocking tasks the shutdown already gave up on.
    std::process::exit(code);
}

async fn serve(args: ServeArgs, env: EnvFlags, t0: Instant) -> i32 {
    match &args.engine.model {
        Some(dir) => eprintln!("serve: model {}", dir.display()),
        None => {
            let dir = args
                .synthetic_dir
                .clone()
                .or_else(|| default_synthetic_dir().ok())
                .map_or_else(|| "(no HOME)".to_string(), |d| d.display().to_string());
            eprintln!(
                "serve: no --model given: serving a full-size SYNTHETIC PaddleOCR-VL-0.9B (random weights, \
                 synthetic tokenizer; its output is meaningless) from {dir}, as `{}`",
                args.server.served_model_names[0]
            );
        }
    }
    let service = Service::spawn(args.service_config(env));
    let state = AppState::new(service.clone(), args.server.clone());
    let api_addr = format!("{}:{}", args.host, args.port);
    let metrics_addr = args.metrics_port.map(|p| format!("{}:{p}", args.host));
    let server = match Server::bind(state, &api_addr, metrics_addr.as_deref()).await {
        Ok(s) => s,
        Err(e) => {
            eprintln!("serve: cannot listen on {api_addr} (or the metrics port): {e}");
            return 1;
        }
    };
    let api = server.local_addr().map_or(api_addr, |a| a.to_string());
    let metrics = server
        .metrics_addr()
        .map_or(String::new(), |a| format!(", metrics on http://{a}/metrics"));
    eprintln!(
        "serve: listening on http://{api} (models: {}){metrics} after {:.2} s; /health is 503 until the engine is ready",
        args.server.served_model_names.join(", "),
        t0.elapsed().as_secs_f64()
    );

    // Report the end of start-up from a plain thread (waiting blocks).
    std::thread::spawn(move || match service.wait_ready(None) {
        Ok(()) => eprintln!(
            "serve: ready: engine up {:.2} s after launch",
            t0.elapsed().as_secs_f64()
        ),
        Err(e) => eprintln!(
            "serve: START-UP FAILED after {:.2} s: {e}\nserve: still serving /health (503 with this reason); \
             stop the process and fix the cause",
            t0.elapsed().as_secs_f64()
        ),
    });

    let report = server.run(shutdown_signal(), args.shutdown_timeout).await;
    if report.clean {
        0
    } else {
        1
    }
}

/// Resolves on the first SIGINT or SIGTERM; a second one exits at once.
async fn shutdown_signal() {
    wait_signal().await;
    eprintln!("serve: signal received; send another to exit immediately");
    tokio::spawn(async {
        wait_signal().await;
        eprintln!("serve: second signal: exiting now");
        std::process::exit(130);
    });
}

async fn wait_signal() {
    let ctrl_c = tokio::signal::ctrl_c();
    #[cfg(unix)]
    {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut term) => {
                tokio::select! {
                    _ = ctrl_c => {}
                    _ = term.recv() => {}
                }
            }
            Err(_) => {
                let _ = ctrl_c.await;
            }
        }
    }
    #[cfg(not(unix))]
    {
        let _ = ctrl_c.await;
    }
}
