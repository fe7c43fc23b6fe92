//! Golden tests: the request bodies PaddleOCR's pipeline (PaddleX 3.x) sends per layout region
//! to each server kind (issue 14 quotes them), replayed through the server's parsing and
//! planning, down to the service request. What must hold: the model name is served by default,
//! decoding is greedy, the token limit is the one sent, the resize bounds and the special-token
//! flag reach the preprocessing and detokenisation.

use std::io::Cursor;

use base64::Engine as _;
use serde_json::{json, Value};

use ocrvl::server::cli::ServeArgs;
use ocrvl::server::validate::{parse_chat, plan_chat, ChatPlan, Limits};
use ocrvl::service::{OcrRequest, PixelBounds};

/// A small encoded image, as the pipeline crops it: JPEG (the vLLM, SGLang and FastDeploy
/// kinds) or PNG (llama.cpp).
fn image_uri(format: image::ImageFormat) -> String {
    let img = image::RgbImage::from_fn(96, 40, |x, y| image::Rgb([(x * 2) as u8, (y * 5) as u8, 200]));
    let mut bytes = Vec::new();
    img.write_to(&mut Cursor::new(&mut bytes), format).unwrap();
    let mime = match format {
        image::ImageFormat::Png => "image/png",
        _ => "image/jpeg",
    };
    format!(
        "data:{mime};base64,{}",
        base64::engine::general_purpose::STANDARD.encode(&bytes)
    )
}

fn messages(url: &str, task: &str) -> Value {
    json!([{"role": "user", "content": [
        {"type": "image_url", "image_url": {"url": url}},
        {"type": "text", "text": task}
    ]}])
}

/// The vllm-server kind, byte for byte the shape issue 14 gives.
fn vllm_body(model: &str, max_pixels: u64) -> Value {
    json!({
        "model": model,
        "messages": messages(&image_uri(image::ImageFormat::Jpeg), "OCR:"),
        "temperature": 0,
        "max_completion_tokens": 4096,
        "skip_special_tokens": true,
        "mm_processor_kwargs": {"min_pixels": 112896, "max_pixels": max_pixels}
    })
}

/// The limits a server started with the vLLM recipe's command line would use.
fn recipe_limits() -> Limits {
    let argv: Vec<String> =
        "PaddlePaddle/PaddleOCR-VL --trust-remote-code --max-num-batched-tokens 16384 --no-enable-prefix-caching --mm-processor-cache-gb 0"
            .split_whitespace()
            .map(String::from)
            .collect();
    let args = ServeArgs::parse(&argv).unwrap();
    Limits {
        served_model_names: args.server.served_model_names.clone(),
        max_images: args.server.max_images,
        max_model_len: args.server.max_model_len,
        max_temperature: args.server.max_temperature,
        conversations: false,
    }
}

fn plan(body: &Value) -> ChatPlan {
    let req = parse_chat(body.to_string().as_bytes()).unwrap_or_else(|e| panic!("{}: {}", body, e.message));
    plan_chat(req, &recipe_limits()).unwrap_or_else(|e| panic!("{}: {} {}", body["model"], e.status, e.message))
}

fn request(plan: &ChatPlan) -> OcrRequest {
    plan.to_ocr_request(vec![vec![0u8; 4]; plan.image_urls.len()])
}

fn assert_greedy(req: &OcrRequest) {
    assert_eq!(req.sampling.temperature, 0.0, "greedy");
    assert_eq!(req.sampling.top_p, 1.0);
    assert_eq!(req.sampling.top_k, 0);
}

#[test]
fn vllm_server_kind_every_pipeline_model_name() {
    for model in ["PaddleOCR-VL-0.9B", "PaddleOCR-VL-1.5-0.9B", "PaddleOCR-VL-1.6-0.9B"] {
        let p = plan(&vllm_body(model, 1_003_520));
        assert_eq!(p.model, model, "echoed back");
        assert_eq!(p.text, "OCR:");
        assert_eq!(p.image_urls.len(), 1);
        assert!(p.image_urls[0].starts_with("data:image/jpeg;base64,"));
        let req = request(&p);
        assert_greedy(&req);
        assert_eq!(req.max_tokens, Some(4096));
        assert!(req.skip_special_tokens);
        assert_eq!(
            req.pixel_bounds,
            Some(PixelBounds {
                min_pixels: Some(112_896),
                max_pixels: Some(1_003_520)
            })
        );
        assert!(p.ignored_fields.is_empty(), "{:?}", p.ignored_fields);
    }
}

#[test]
fn vllm_server_kind_spotting_bounds() {
    let mut body = vllm_body("PaddleOCR-VL-1.5-0.9B", 1_605_632);
    body["messages"] = messages(&image_uri(image::ImageFormat::Jpeg), "Spotting:");
    let req = request(&plan(&body));
    assert_eq!(req.pixel_bounds.and_then(|b| b.max_pixels), Some(1_605_632));
    assert_greedy(&req);
}

#[test]
fn sglang_server_kind_has_no_processor_kwargs() {
    let mut body = vllm_body("PaddleOCR-VL-1.5-0.9B", 1_003_520);
    body.as_object_mut().unwrap().remove("mm_processor_kwargs");
    let req = request(&plan(&body));
    assert_eq!(req.pixel_bounds, None, "the model's own bounds");
    assert_greedy(&req);
    assert_eq!(req.max_tokens, Some(4096));
}

#[test]
fn fastdeploy_server_kind_temperature_1_top_p_0_is_greedy() {
    let mut body = vllm_body("PaddleOCR-VL-0.9B", 1_003_520);
    body["temperature"] = json!(1);
    body["top_p"] = json!(0);
    let req = request(&plan(&body));
    assert_greedy(&req);
    assert_eq!(req.max_tokens, Some(4096));
}

#[test]
fn llama_cpp_server_kind_max_tokens_and_png() {
    let body = json!({
        "model": "PaddleOCR-VL-1.5-0.9B",
        "messages": messages(&image_uri(image::ImageFormat::Png), "Table Recognition:"),
        "temperature": 0,
        "max_tokens": 4096
    });
    let p = plan(&body);
    assert!(p.image_urls[0].starts_with("data:image/png;base64,"));
    let req = request(&p);
    assert_greedy(&req);
    assert_eq!(req.max_tokens, Some(4096));
    assert!(req.skip_special_tokens, "the default");
}

#[test]
fn the_synthetic_model_and_custom_names_do_not_take_the_pipeline_names() {
    let limits = |argv: &str| {
        let argv: Vec<String> = argv.split_whitespace().map(String::from).collect();
        let args = ServeArgs::parse(&argv).unwrap();
        Limits {
            served_model_names: args.server.served_model_names,
            max_images: args.server.max_images,
            max_model_len: args.server.max_model_len,
            max_temperature: args.server.max_temperature,
            conversations: false,
        }
    };
    let body = vllm_body("PaddleOCR-VL-0.9B", 1_003_520);
    for argv in ["", "PaddlePaddle/PaddleOCR-VL --served-model-name my-ocr"] {
        let e = plan_chat(parse_chat(body.to_string().as_bytes()).unwrap(), &limits(argv)).unwrap_err();
        assert_eq!(e.status, 404, "{argv}");
    }
}
