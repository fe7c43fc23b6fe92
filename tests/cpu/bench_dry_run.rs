//! `bench --dry-run` on an ERNIE-4.5-VL directory: `--workload all` is that family's
//! workloads (text decode, an image question, a multi-page question) with their request
//! shapes built through the directory's processor and template; a PaddleOCR-VL workload named
//! explicitly is refused, naming it. No GPU: the dry run renders and preprocesses only.

use std::process::Command;

use ocrvl::config::ErnieVlConfig;
use ocrvl::model::ernie_vl::synthetic::{write_synthetic_model, ErnieSyntheticOptions};

#[test]
fn bench_takes_an_ernie_directory_with_its_own_workloads() {
    let dir = tempfile::tempdir().unwrap();
    write_synthetic_model(
        dir.path(),
        &ErnieVlConfig::tiny(),
        &ErnieSyntheticOptions::for_model(true),
    )
    .unwrap();
    let run = |workload: &str| {
        Command::new(env!("CARGO_BIN_EXE_bench"))
            .arg("--model")
            .arg(dir.path())
            .args(["--dry-run", "--workload", workload])
            .env("OCRVL_QUIET", "1")
            .output()
            .unwrap()
    };
    let out = run("all");
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{text}{}", String::from_utf8_lossy(&out.stderr));
    let workloads: Vec<&str> = text
        .lines()
        .filter_map(|l| l.strip_prefix("workload "))
        .map(|l| l.split(':').next().unwrap())
        .collect();
    assert_eq!(workloads, ["decode", "image-qa", "multi-image"]);
    // 1024x768 resizes to 1036x756: 999 image tokens; three 1000x1400 pages: 3 x 1800.
    assert!(text.contains("\"image_tokens\":999"), "{text}");
    assert!(text.contains("\"image_tokens\":5400"), "{text}");

    let out = run("crops");
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("--workload crops"), "{err}");
}
