//! ERNIE-4.5-VL through the service (the path `serve` and the C ABI take): a tiny synthetic
//! directory loads by its config's family, a chat request with an image runs to its token
//! limit with the prompt the directory's own template gives (thinking on by default), greedy
//! outputs do not depend on what else runs in the batch, a conversation (system, assistant
//! and two user turns with an image each) gets its template's prompt, and a PaddleOCR-VL task
//! prompt is refused with a message naming it.

use std::time::Duration;

use serde_json::{json, Map};

use ocrvl::config::{EngineConfig, ErnieVlConfig};
use ocrvl::model::ernie_vl::synthetic::{write_synthetic_model, ErnieSyntheticOptions};
use ocrvl::preprocess::image::ImageProcessor;
use ocrvl::preprocess::prompt::{PromptBuilder, Task};
use ocrvl::service::{ChatPart, ChatRole, ChatTurn, OcrRequest, PromptInput, Service, ServiceConfig};

use crate::common::png;

#[test]
#[ignore = "needs GPU"]
fn an_ernie_directory_serves_chat_with_images() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = ErnieVlConfig::tiny();
    write_synthetic_model(dir.path(), &cfg, &ErnieSyntheticOptions::for_model(true)).unwrap();
    let service = Service::spawn(ServiceConfig {
        engine: EngineConfig {
            model: Some(dir.path().to_path_buf()),
            max_model_len: 2048,
            max_num_seqs: 8,
            max_num_batched_tokens: 1024,
            gpu_memory_utilization: 0.1,
            // A repeated request then runs the same computation (no cached prefix splitting
            // its prefill differently), so greedy tokens compare equal on random weights.
            enable_prefix_caching: false,
            ..EngineConfig::default()
        },
        max_images_per_request: 2,
        ..ServiceConfig::default()
    });
    service.wait_ready(None).expect("the ERNIE directory loads");

    let image = png(300, 200);
    let ask = |thinking: Option<bool>| {
        let mut req = OcrRequest::new(vec![image.clone()], PromptInput::Text("Describe the picture.".into()));
        req.max_tokens = Some(8);
        req.ignore_eos = true;
        req.enable_thinking = thinking;
        req
    };
    // The prompt is the directory's template rendered with thinking on unless turned off.
    let grid = ImageProcessor::from_ernie_dir(dir.path(), &cfg)
        .unwrap()
        .process_bytes(&image)
        .unwrap()
        .grid;
    let prompts = PromptBuilder::from_dir(dir.path(), &cfg).unwrap();
    for (thinking, rendered_with) in [(None, true), (Some(true), true), (Some(false), false)] {
        let mut vars = Map::new();
        vars.insert("enable_thinking".into(), json!(rendered_with));
        let want = prompts.build_with(&[grid], "Describe the picture.", &vars).unwrap();
        let c = service.submit(ask(thinking)).unwrap().wait().unwrap();
        assert_eq!(c.prompt_tokens, want.ids.len(), "thinking {thinking:?}");
        assert_eq!(c.token_ids.len(), 8, "thinking {thinking:?}");
        assert!(c.token_ids.iter().all(|&t| (t as usize) < cfg.text.vocab_size));
    }

    // Greedy: the same request alone and among 5 others (some with other images) gives the
    // same tokens.
    let alone = service.submit(ask(None)).unwrap().wait().unwrap().token_ids;
    let mut handles = Vec::new();
    for i in 0..6 {
        let req = if i % 2 == 0 {
            ask(None)
        } else {
            let mut r = OcrRequest::new(vec![png(200 + 28 * i, 150)], PromptInput::Text("What is this?".into()));
            r.max_tokens = Some(12);
            r
        };
        handles.push((i, service.submit(req).unwrap()));
    }
    for (i, h) in handles {
        let c = h.wait().unwrap();
        if i % 2 == 0 {
            assert_eq!(c.token_ids, alone, "request {i} in a batch");
        }
    }

    // A conversation: system, user with an image, assistant, user with another image.
    let second = png(140, 280);
    let turns = vec![
        ChatTurn {
            role: ChatRole::System,
            parts: vec![ChatPart::Text("Be brief.".into())],
            reasoning: None,
        },
        ChatTurn {
            role: ChatRole::User,
            parts: vec![ChatPart::Image, ChatPart::Text("What is it?".into())],
            reasoning: None,
        },
        ChatTurn {
            role: ChatRole::Assistant,
            parts: vec![ChatPart::Text("A pattern.".into())],
            reasoning: Some("Stripes.".into()),
        },
        ChatTurn {
            role: ChatRole::User,
            parts: vec![ChatPart::Text("And this one?".into()), ChatPart::Image],
            reasoning: None,
        },
    ];
    let mut req = OcrRequest::new(vec![image.clone(), second.clone()], PromptInput::Chat(turns));
    req.max_tokens = Some(4);
    let c = service.submit(req).unwrap().wait().unwrap();
    let processor = ImageProcessor::from_ernie_dir(dir.path(), &cfg).unwrap();
    let grids = [grid, processor.process_bytes(&second).unwrap().grid];
    let mut vars = Map::new();
    vars.insert("enable_thinking".into(), json!(true));
    let messages = json!([
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "What is it?"}]},
        {"role": "assistant", "content": "A pattern.", "reasoning_content": "Stripes."},
        {"role": "user", "content": [{"type": "text", "text": "And this one?"}, {"type": "image"}]},
    ]);
    let want = prompts.build_messages(&grids, messages, &vars).unwrap();
    assert_eq!(c.prompt_tokens, want.ids.len());

    let err = service
        .submit(OcrRequest::new(vec![image.clone()], PromptInput::Task(Task::Ocr)))
        .err()
        .expect("a task prompt is refused")
        .to_string();
    assert!(err.contains("PaddleOCR-VL prompt"), "{err}");
    service.shutdown(Duration::ZERO);
}
