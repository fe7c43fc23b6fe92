//! The C examples in ffi/examples/, compiled with the system C compiler against the static
//! and the shared library, and run.
//!
//! CI (no GPU): `abi_checks` runs every check that needs no GPU (version, struct sizes, null
//! pointers, bad configs, a missing model directory, no device) and `ocr_image` shows its
//! no-device error. The engine is created on device 99, which no host has, so these tests
//! give the same answers on a GPU host.
//!
//! GPU host (`--include-ignored`): `ocr_image` OCRs a generated page end to end on the
//! synthetic model, and `abi_checks --with-engine` checks bad requests, cancel and destroy on
//! a live engine. Where the host has no C toolchain (the GPU bundle), `OCRVL_FFI_BIN_DIR`
//! names a directory with prebuilt, statically linked `ocr_image` and `abi_checks`.

mod ffi_support;

use std::mem::size_of;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use ffi_support::{build_example, run, Link};
use ocrvl::ffi::{ocrvl_engine_config, ocrvl_request_info, ocrvl_sampling_params, ocrvl_token_event};

/// Per-test scratch space under target/tmp, unique per run (several `cargo test` runs may
/// share the tree) and removed at the end; under the system temp directory where target/tmp
/// (fixed at compile time) cannot be used, as on the GPU host of the bundle.
fn scratch(name: &str) -> tempfile::TempDir {
    let base = PathBuf::from(env!("CARGO_TARGET_TMPDIR"));
    let prefix = format!("ffi_c-{name}-");
    let mut builder = tempfile::Builder::new();
    builder.prefix(&prefix);
    std::fs::create_dir_all(&base)
        .ok()
        .and_then(|_| builder.tempdir_in(&base).ok())
        .unwrap_or_else(|| builder.tempdir().expect("a scratch directory"))
}

/// The example built with `link`, or the prebuilt one from `OCRVL_FFI_BIN_DIR`.
fn example(source: &str, link: Link, dir: &Path) -> PathBuf {
    let name = format!("{}_{:?}", source.trim_end_matches(".c"), link).to_lowercase();
    if let Some(bin) = std::env::var_os("OCRVL_FFI_BIN_DIR") {
        let exe = PathBuf::from(bin).join(source.trim_end_matches(".c"));
        assert!(exe.is_file(), "OCRVL_FFI_BIN_DIR has no {}", exe.display());
        return exe;
    }
    build_example(source, &name, link, dir)
}

fn no_gpu_here() -> bool {
    ocrvl::runtime::Gpu::new(0).is_err()
}

/// Runs abi_checks' GPU-free checks and returns its stdout after checking the verdict.
fn abi_checks(exe: &Path, device: u32, synthetic: &Path, dir: &Path) -> String {
    let mut cmd = Command::new(exe);
    cmd.args(["--device", &device.to_string(), "--synthetic-dir"])
        .arg(synthetic);
    let r = run(cmd, Duration::from_secs(120), dir);
    assert!(
        r.status.success() && r.stdout.contains("\n0 failure(s)"),
        "{} failed ({}):\n{}\n{}",
        exe.display(),
        r.status,
        r.stdout,
        r.stderr
    );
    r.stdout
}

#[test]
fn c_examples_gpu_free_paths_static_and_shared() {
    let tmp = scratch("gpu_free");
    let dir = tmp.path();
    let synthetic = dir.join("synthetic-model");
    for link in [Link::Static, Link::Shared] {
        let exe = example("abi_checks.c", link, dir);
        let out = abi_checks(&exe, 99, &synthetic, dir);
        // The C compiler's struct layout is the Rust one.
        for (name, size) in [
            ("ocrvl_engine_config", size_of::<ocrvl_engine_config>()),
            ("ocrvl_sampling_params", size_of::<ocrvl_sampling_params>()),
            ("ocrvl_token_event", size_of::<ocrvl_token_event>()),
            ("ocrvl_request_info", size_of::<ocrvl_request_info>()),
        ] {
            let line = format!("sizeof {name} {size}\n");
            assert!(out.contains(&line), "{link:?}: want `{}` in:\n{out}", line.trim());
        }
        assert!(out.contains(&format!("abi_version {}\n", ocrvl::ffi::OCRVL_ABI_VERSION)));
        for check in [
            "gpu_memory_utilization 1.5: OCRVL_INVALID_ARGUMENT",
            "quantization 7: OCRVL_INVALID_ARGUMENT",
            "engine on a missing device: OCRVL_NO_DEVICE",
        ] {
            assert!(out.contains(check), "{link:?}: want `{check}` in:\n{out}");
        }
        // Device 0 too where there is no GPU at all (CI): the plain "no driver" case.
        if no_gpu_here() {
            abi_checks(&exe, 0, &synthetic, dir);
        }
    }
    // The device is checked before the synthetic model would be written.
    assert!(!synthetic.exists(), "a failed create wrote {}", synthetic.display());
}

#[test]
fn ocr_image_reports_no_device_with_the_message() {
    let tmp = scratch("ocr_image_no_device");
    let dir = tmp.path();
    let exe = example("ocr_image.c", Link::Static, dir);
    let png = dir.join("page.png");
    ffi_support::write_page_png(&png, 256, 128);
    let mut cmd = Command::new(&exe);
    cmd.args(["--device", "99", "--synthetic-dir"])
        .arg(dir.join("synthetic-model"))
        .arg(&png);
    let r = run(cmd, Duration::from_secs(120), dir);
    assert_eq!(r.status.code(), Some(1), "stdout:\n{}\nstderr:\n{}", r.stdout, r.stderr);
    assert!(
        r.stderr
            .contains("ocrvl_engine_create failed: OCRVL_NO_DEVICE: ocrvl_engine_create: no CUDA device"),
        "stderr:\n{}",
        r.stderr
    );
    // Usage errors are exit status 2.
    let r = run(Command::new(&exe), Duration::from_secs(30), dir);
    assert_eq!(r.status.code(), Some(2), "{}", r.stderr);
}

/// Where the synthetic model goes: $OCRVL_SYNTHETIC_DIR (reused across runs), else `dir`.
fn synthetic_dir(dir: &Path) -> PathBuf {
    std::env::var_os("OCRVL_SYNTHETIC_DIR").map_or_else(|| dir.join("synthetic-model"), PathBuf::from)
}

#[test]
#[ignore = "needs GPU"]
fn ocr_image_end_to_end_on_the_synthetic_model() {
    let tmp = scratch("gpu_end_to_end");
    let dir = tmp.path();
    let synthetic = synthetic_dir(dir);
    let png = dir.join("page.png");
    ffi_support::write_page_png(&png, 448, 224);
    for link in [Link::Static, Link::Shared] {
        // The bundle's prebuilt binaries are static only; run them once.
        if link == Link::Shared && std::env::var_os("OCRVL_FFI_BIN_DIR").is_some() {
            continue;
        }
        let exe = example("ocr_image.c", link, dir);
        let mut cmd = Command::new(&exe);
        cmd.args([
            "--max-model-len",
            "4096",
            "--max-num-seqs",
            "8",
            "--gpu-memory-utilization",
            "0.5",
        ])
        .args(["--max-tokens", "48", "--synthetic-dir"])
        .arg(&synthetic)
        .arg(&png);
        // The first run writes the 1.9 GB synthetic model.
        let r = run(cmd, Duration::from_secs(900), dir);
        assert!(
            r.status.success(),
            "{link:?}: {} ({}):\nstdout:\n{}\nstderr:\n{}",
            exe.display(),
            r.status,
            r.stdout,
            r.stderr
        );
        let (streamed, rest) = r
            .stdout
            .rsplit_once("\n--- final text (")
            .unwrap_or_else(|| panic!("no final text section in:\n{}", r.stdout));
        let (len, rest) = rest.split_once(" bytes) ---\n").unwrap();
        let (final_text, finish) = rest.rsplit_once("\n--- finish: ").unwrap();
        eprintln!(
            "{link:?}: {} bytes of text; finish: {}",
            final_text.len(),
            finish.trim()
        );
        assert_eq!(len.parse::<usize>().unwrap(), final_text.len());
        assert_eq!(
            streamed, final_text,
            "{link:?}: the streamed text differs from the final text"
        );
        assert!(!final_text.is_empty(), "{link:?}: no text came out");
        // Random weights: end of sequence (stop) is possible, else the 48-token limit.
        assert!(
            finish.starts_with("length, ") || finish.starts_with("stop, "),
            "{link:?}: finish line {finish:?}"
        );
        let completion: u64 = finish
            .split("completion tokens ")
            .nth(1)
            .and_then(|s| s.split_whitespace().next())
            .and_then(|s| s.parse().ok())
            .unwrap_or_else(|| panic!("no completion token count in {finish:?}"));
        assert!((1..=48).contains(&completion), "{completion} completion tokens");
        if finish.starts_with("length, ") {
            assert_eq!(completion, 48);
        }
    }
    // Bad requests, cancel and destroy-with-a-live-request on a real engine.
    let exe = example("abi_checks.c", Link::Static, dir);
    let mut cmd = Command::new(&exe);
    cmd.arg("--with-engine")
        .arg(&png)
        .arg("--synthetic-dir")
        .arg(&synthetic);
    let r = run(cmd, Duration::from_secs(900), dir);
    assert!(
        r.status.success() && r.stdout.contains("\n0 failure(s)"),
        "abi_checks --with-engine ({}):\n{}\n{}",
        r.status,
        r.stdout,
        r.stderr
    );
}

/// The C ABI on an ERNIE-4.5-VL directory (the tiny synthetic one): a free-text prompt
/// (OCRVL_TASK_PROMPT) streams text and finishes at the token limit or a stop; a PaddleOCR-VL
/// task is refused with ocrvl_submit's status and a message naming it.
#[test]
#[ignore = "needs GPU"]
fn ocr_image_serves_an_ernie_directory_with_a_prompt() {
    use ocrvl::config::ErnieVlConfig;
    use ocrvl::model::ernie_vl::synthetic::{write_synthetic_model, ErnieSyntheticOptions};

    let tmp = scratch("gpu_ernie");
    let dir = tmp.path();
    let model = dir.join("ernie-tiny");
    write_synthetic_model(&model, &ErnieVlConfig::tiny(), &ErnieSyntheticOptions::for_model(true)).unwrap();
    let png = dir.join("picture.png");
    ffi_support::write_page_png(&png, 336, 224);
    let exe = example("ocr_image.c", Link::Static, dir);
    let args = |extra: &[&str]| {
        let mut cmd = Command::new(&exe);
        cmd.args([
            "--max-model-len",
            "2048",
            "--max-num-seqs",
            "4",
            "--gpu-memory-utilization",
            "0.1",
        ])
        .args(["--max-tokens", "12", "--model"])
        .arg(&model)
        .args(extra)
        .arg(&png);
        cmd
    };
    let r = run(
        args(&["--prompt", "Describe the picture."]),
        Duration::from_secs(300),
        dir,
    );
    assert!(r.status.success(), "{}:\n{}\n{}", r.status, r.stdout, r.stderr);
    let finish = r.stdout.rsplit_once("\n--- finish: ").map(|x| x.1).unwrap_or_default();
    assert!(
        finish.starts_with("length, ") || finish.starts_with("stop, "),
        "finish line {finish:?} in:\n{}",
        r.stdout
    );

    let r = run(args(&["--task", "table"]), Duration::from_secs(300), dir);
    assert!(
        !r.status.success(),
        "a task on ERNIE-4.5-VL must be refused:\n{}",
        r.stdout
    );
    assert!(
        r.stderr.contains("ocrvl_submit") && r.stderr.contains("PaddleOCR-VL prompt"),
        "{}",
        r.stderr
    );
}
