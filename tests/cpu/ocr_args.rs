//! `ocr`'s prompt choice: `--prompt TEXT` (free text, what ERNIE-4.5-VL takes) or `--task`
//! (PaddleOCR-VL's prompts), never both; refused before any model or GPU is touched.

use std::process::Command;

#[test]
fn ocr_takes_a_prompt_or_a_task_not_both() {
    let out = Command::new(env!("CARGO_BIN_EXE_ocr"))
        .args(["page.png", "--task", "table", "--prompt", "Describe it."])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("--prompt") && err.contains("--task"), "{err}");

    let help = Command::new(env!("CARGO_BIN_EXE_ocr")).arg("--help").output().unwrap();
    let help = String::from_utf8_lossy(&help.stdout);
    assert!(help.contains("--prompt <TEXT>"), "{help}");
}
