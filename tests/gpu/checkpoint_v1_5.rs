//! A PaddleOCR-VL-1.5 checkpoint end to end (issue 14, items 1 and 5): a synthetic directory in
//! the 1.5 layout, placed in a prepared Hugging Face cache in ModelScope's subfolder layout,
//! resolved from its repo id with downloads forbidden, then served for every task. The prompt
//! the engine builds must be the one the directory's own files give (processor_config.json's
//! pixel bound, chat_template.jinja, the 1.5 tokenizer).

use std::time::Duration;

use ocrvl::config::{EngineConfig, ModelConfig};
use ocrvl::hub::{hf_repo_dir, resolve_model_with, HubOptions, RepoId, MODEL_SUBFOLDER};
use ocrvl::model::synthetic::{synthetic_config, write_synthetic_model, CheckpointVersion, SyntheticOptions};
use ocrvl::preprocess::image::ImageProcessor;
use ocrvl::preprocess::prompt::{PromptBuilder, Task};
use ocrvl::service::{OcrRequest, PromptInput, Service, ServiceConfig};

use crate::common::png;

const REPO: &str = "PaddlePaddle/PaddleOCR-VL-1.5";
const COMMIT: &str = "15150000000000000000000000000000000000ab";
/// PaddleX's bound for spotting, above the hub's 1003520: an image between the two keeps
/// more patches only if processor_config.json is what the engine read.
const MAX_PIXELS: u64 = 1_605_632;

#[test]
#[ignore = "needs GPU"]
fn a_1_5_checkpoint_from_the_hf_cache_serves_every_task() {
    let cache = tempfile::tempdir().unwrap();
    let repo_dir = hf_repo_dir(cache.path(), &RepoId::parse(REPO).unwrap());
    let model = repo_dir.join("snapshots").join(COMMIT).join(MODEL_SUBFOLDER);
    let version = CheckpointVersion::V1_5;
    let opts = SyntheticOptions {
        version,
        seed: 15,
        include_unused: false,
        lm_head_scale: 16.0,
        ..SyntheticOptions::default()
    };
    write_synthetic_model(&model, &synthetic_config(version, true), &opts).unwrap();
    let pc_path = model.join("processor_config.json");
    let mut pc: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(&pc_path).unwrap()).unwrap();
    pc["image_processor"]["max_pixels"] = MAX_PIXELS.into();
    pc["image_processor"]["size"]["longest_edge"] = MAX_PIXELS.into();
    std::fs::write(&pc_path, pc.to_string()).unwrap();
    std::fs::create_dir_all(repo_dir.join("refs")).unwrap();
    std::fs::write(repo_dir.join("refs/main"), COMMIT).unwrap();

    let hub = HubOptions {
        hf_cache: cache.path().to_path_buf(),
        modelscope_cache: None,
        endpoint: "http://127.0.0.1:9".into(),
        token: None,
        offline: true,
        progress: false,
    };
    let dir = resolve_model_with(REPO, None, &hub).unwrap();
    assert_eq!(dir, model);

    let cfg = ModelConfig::from_dir(&dir).unwrap();
    let prompts = PromptBuilder::from_dir(&dir, &cfg).unwrap();
    let processor = ImageProcessor::from_model_dir(&dir, &cfg).unwrap();
    let image = png(1400, 1000);
    let processed = processor.process_bytes(&image).unwrap();
    let area = (processed.resized_height * processed.resized_width) as u64;
    assert!(area > 1_003_520 && area <= MAX_PIXELS, "resized to {area} px");

    let service = Service::spawn(ServiceConfig {
        engine: EngineConfig {
            model: Some(dir.clone()),
            max_model_len: 4096,
            max_num_seqs: 8,
            gpu_memory_utilization: 0.2,
            ..EngineConfig::default()
        },
        max_images_per_request: 1,
        ..ServiceConfig::default()
    });
    service.wait_ready(None).expect("the 1.5 checkpoint loads");
    for task in Task::ALL {
        let mut req = OcrRequest::new(vec![image.clone()], PromptInput::Task(task));
        req.max_tokens = Some(8);
        let c = service.submit(req).unwrap().wait().unwrap();
        let expected = prompts.build_task(&[processed.grid], task).unwrap();
        assert_eq!(c.prompt_tokens, expected.ids.len(), "{task:?}");
        assert!(!c.token_ids.is_empty(), "{task:?}");
        // With special tokens kept the text still decodes (spotting reads its locations so).
        service.decode(&c.token_ids, false).unwrap();
    }
    service.shutdown(Duration::ZERO);
}
