//! Property tests over request bodies and parameters: nothing panics, every refusal is a 400
//! (404 for an unknown model) that names the field at fault, and a request is accepted exactly
//! when every value is inside the ranges vLLM enforces (an independent oracle below).

use proptest::prelude::*;
use serde_json::{json, Map, Value};

use ocrvl::error::Error;
use ocrvl::kernels::sampling::SamplingParams;
use ocrvl::server::validate::{parse_chat, plan_chat, Limits};
use ocrvl::service::{OcrRequest, PromptInput, RequestLimits};

const MAX_MODEL_LEN: i64 = 4096;

fn limits() -> Limits {
    Limits {
        served_model_names: vec!["ocrvl".into()],
        max_images: 2,
        max_model_len: MAX_MODEL_LEN as usize,
        max_temperature: 2.0,
        conversations: false,
    }
}

/// Floats around and far from every range edge, NaN-free (JSON has none).
fn float() -> impl Strategy<Value = f64> {
    prop_oneof![
        Just(0.0),
        Just(1.0),
        Just(2.0),
        Just(-2.0),
        Just(1e-38),
        Just(1e-6),
        Just(1e300),
        -3.0..3.0f64,
        -1e6..1e6f64,
    ]
}

fn int() -> impl Strategy<Value = i64> {
    prop_oneof![
        Just(-1i64),
        Just(0),
        Just(1),
        Just(20),
        Just(21),
        -5..5i64,
        any::<i64>()
    ]
}

/// A body: one user message plus any subset of the sampling fields.
fn body() -> impl Strategy<Value = Value> {
    let fields = (
        proptest::option::of(float()),
        proptest::option::of(float()),
        proptest::option::of(int()),
        proptest::option::of(float()),
        proptest::option::of(float()),
        proptest::option::of(float()),
        proptest::option::of(int()),
        proptest::option::of(int()),
        proptest::option::of(any::<bool>()),
        proptest::option::of(int()),
        prop_oneof![Just("ocrvl"), Just("gpt-4o")],
    );
    fields.prop_map(|(t, p, k, fp, pp, rp, mt, n, lp, tlp, model)| {
        let mut m = Map::new();
        m.insert("model".into(), model.into());
        m.insert("messages".into(), json!([{"role": "user", "content": "OCR:"}]));
        let mut put = |k: &str, v: Option<Value>| {
            if let Some(v) = v {
                m.insert(k.into(), v);
            }
        };
        put("temperature", t.map(Value::from));
        put("top_p", p.map(Value::from));
        put("top_k", k.map(Value::from));
        put("frequency_penalty", fp.map(Value::from));
        put("presence_penalty", pp.map(Value::from));
        put("repetition_penalty", rp.map(Value::from));
        put("max_tokens", mt.map(Value::from));
        put("n", n.map(Value::from));
        put("logprobs", lp.map(Value::from));
        put("top_logprobs", tlp.map(Value::from));
        Value::Object(m)
    })
}

/// The fields that the oracle finds out of range (as the JSON deserialiser sees them: f32).
fn oracle(b: &Value) -> Vec<&'static str> {
    let f = |k: &str| b.get(k).and_then(Value::as_f64).map(|v| v as f32);
    let i = |k: &str| b.get(k).and_then(Value::as_i64);
    let mut bad = Vec::new();
    let top_p = f("top_p").unwrap_or(1.0);
    // top_p 0 is greedy: the temperature no longer matters.
    if top_p != 0.0 && !(0.0..=2.0).contains(&f("temperature").unwrap_or(0.0)) {
        bad.push("temperature");
    }
    if !(top_p == 0.0 || (top_p > 0.0 && top_p <= 1.0)) {
        bad.push("top_p");
    }
    if i("top_k").unwrap_or(0) < -1 {
        bad.push("top_k");
    }
    for k in ["frequency_penalty", "presence_penalty"] {
        if !(-2.0..=2.0).contains(&f(k).unwrap_or(0.0)) {
            bad.push(k);
        }
    }
    let rp = f("repetition_penalty").unwrap_or(1.0);
    if !(1e-6..=2.0).contains(&rp) {
        bad.push("repetition_penalty");
    }
    if let Some(mt) = i("max_tokens") {
        if !(1..MAX_MODEL_LEN).contains(&mt) {
            bad.push("max_tokens");
        }
    }
    if i("n").is_some_and(|n| n != 1) {
        bad.push("n");
    }
    let logprobs = b.get("logprobs").and_then(Value::as_bool).unwrap_or(false);
    if let Some(k) = i("top_logprobs") {
        if !(0..=20).contains(&k) || (k > 0 && !logprobs) {
            bad.push("top_logprobs");
        }
    }
    bad
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 2000, ..ProptestConfig::default() })]

    #[test]
    fn bodies_are_accepted_exactly_when_in_range(b in body()) {
        let bad = oracle(&b);
        let got = parse_chat(b.to_string().as_bytes()).and_then(|r| plan_chat(r, &limits()));
        if b["model"] != "ocrvl" {
            let e = got.expect_err("unknown model");
            prop_assert_eq!(e.status.as_u16(), 404);
            return Ok(());
        }
        match got {
            Ok(plan) => {
                prop_assert!(bad.is_empty(), "accepted {} though {:?} are out of range", b, bad);
                // What was accepted is what the service accepts too.
                let req = plan.to_ocr_request(vec![]);
                prop_assert!(ocrvl::service::limits::check_sampling(&req.sampling, 2.0).is_ok());
            }
            Err(e) => {
                prop_assert_eq!(e.status.as_u16(), 400, "{}: {}", b, e.message);
                let param = e.param.clone().unwrap_or_default();
                prop_assert!(bad.contains(&param.as_str()), "{}: refused for `{}` ({}) but the oracle says {:?}", b, param, e.message, bad);
            }
        }
    }

    #[test]
    fn arbitrary_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..300)) {
        if let Err(e) = parse_chat(&bytes).and_then(|r| plan_chat(r, &limits())) {
            prop_assert!(matches!(e.status.as_u16(), 400 | 404), "{}", e.status);
        }
    }

    #[test]
    fn service_limits_name_the_field(
        images in 0..5usize,
        prompt_len in prop_oneof![0..10usize, 65_530..65_540usize],
        stops in proptest::collection::vec(0..600usize, 0..40),
        ids in proptest::collection::vec(0..1100u32, 0..1100),
        top_logprobs in 0..25usize,
        max_tokens in proptest::option::of(0..3usize),
        temperature in float(),
        repetition_penalty in float(),
    ) {
        let l = RequestLimits::new(2, 1_003_520, 28, 1000, MAX_MODEL_LEN as usize);
        let mut req = OcrRequest::new(vec![vec![]; images], PromptInput::Text("x".repeat(prompt_len)));
        req.stop = stops.iter().map(|&n| "s".repeat(n)).collect();
        req.stop_token_ids = ids.clone();
        req.top_logprobs = top_logprobs;
        req.max_tokens = max_tokens;
        req.sampling = SamplingParams {
            temperature: temperature as f32,
            repetition_penalty: repetition_penalty as f32,
            ..SamplingParams::greedy()
        };
        let mut bad: Vec<&str> = Vec::new();
        if images > 2 || prompt_len > 4096 * 16 { bad.push("messages"); }
        if stops.len() > 32 || stops.iter().any(|&n| n == 0 || n > 512) { bad.push("stop"); }
        if ids.len() > 1024 || ids.iter().any(|&i| i >= 1000) { bad.push("stop_token_ids"); }
        if top_logprobs > 20 { bad.push("top_logprobs"); }
        if max_tokens == Some(0) { bad.push("max_tokens"); }
        let (t, rp) = (temperature as f32, repetition_penalty as f32);
        if !(0.0..=2.0).contains(&t) { bad.push("temperature"); }
        if !(1e-6..=2.0).contains(&rp) { bad.push("repetition_penalty"); }
        match l.check(&req) {
            Ok(()) => prop_assert!(bad.is_empty(), "accepted though {:?}", bad),
            Err(Error::Request { field, .. }) => prop_assert!(bad.contains(&field), "refused for {} but {:?}", field, bad),
            Err(other) => prop_assert!(false, "not a field error: {}", other),
        }
    }
}
