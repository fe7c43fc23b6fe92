//! The request workloads of `bench`: their shapes (images rendered, preprocessed and
//! prompted as the service does), the timed run through the engine, and what it reports.

use std::collections::HashMap;
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use half::bf16;
use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use rand::seq::SliceRandom;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use serde_json::{json, Value};

use ocrvl::config::{ErnieVlConfig, FamilyConfig};
use ocrvl::engine::StepTimings;
use ocrvl::engine::{Engine, EngineImage, EngineRequest};
use ocrvl::kernels::sampling::SamplingParams;
use ocrvl::preprocess::{ImageProcessor, PromptBuilder, Rgb8Image, Task};

use crate::{BenchArgs, Workload};

/// The `crops` mix: (kind, width, height, task, output tokens, share of the requests).
///
/// What PaddleOCR-VL reads in its document pipeline: a layout detector cuts each page into
/// regions and every region is one request. Sizes are those regions on an A4 page rendered at
/// 150 dpi (1240 px wide, a text column about 800 px):
/// - a text line (titles, headers, captions, list items): 800x48, one 10-12 pt line with its
///   padding. `smart_resize` lifts it to the 112896-pixel floor (1372x84, 147 image tokens),
///   so short crops cost more than their pixels. 32 tokens out: one line of 10-15 words.
/// - a paragraph: 800x400, about ten lines (812x392, 406 image tokens). 256 tokens out:
///   150-200 words.
/// - a table: 1000x700, a 15-row table across the page (1008x700, 900 image tokens). 512 tokens
///   out: table markup spends tokens on structure as well as cell text.
///
/// Shares: lines outnumber paragraphs on a typical report page and a page holds at most a
/// table or so, hence 50 / 35 / 15 %. Mean output 182 tokens.
const CROPS: [(&str, usize, usize, Task, usize, f64); 3] = [
    ("text-line", 800, 48, Task::Ocr, 32, 0.50),
    ("paragraph", 800, 400, Task::Ocr, 256, 0.35),
    ("table", 1000, 700, Task::Table, 512, 0.15),
];

/// Bail out of a workload when no token has come for this long (an engine that stopped
/// making progress, rather than a GPU run that hangs until its time limit).
const STALL: Duration = Duration::from_secs(60);

type ShapeImage = (Arc<[bf16]>, (usize, usize));

/// One kind of request of a workload.
pub(crate) struct Shape {
    /// The prompt (images' placeholders expanded); empty for text-only shapes, whose prompt is
    /// `random_prompt_len` random ids drawn per request.
    prompt_ids: Vec<u32>,
    random_prompt_len: usize,
    /// Preprocessed pixels (bf16, `[patches, 3·14·14]`, shared by every request of the
    /// shape) and the patch grid, per image in prompt order.
    images: Vec<ShapeImage>,
    output_len: usize,
    pub(crate) info: Value,
}

/// A white page of `width`x`height` with dark text-like bars in lines (and, for a table, a
/// ruled grid): what a scanned document looks like to the resize, at no cost to render.
fn synthetic_page(width: usize, height: usize, table: bool, rng: &mut ChaCha8Rng) -> Rgb8Image {
    let mut data = vec![255u8; width * height * 3];
    let mut fill = |x0: usize, y0: usize, x1: usize, y1: usize, level: u8| {
        for y in y0..y1.min(height) {
            for x in x0..x1.min(width) {
                data[(y * width + x) * 3..][..3].fill(level);
            }
        }
    };
    let glyph = (height / 3).clamp(4, 18);
    let pitch = glyph * 2;
    let margin = (width / 16).max(2);
    let mut y = (height / 12).max(glyph / 2);
    while y + glyph <= height.saturating_sub(glyph / 2).max(glyph) {
        let mut x = margin;
        while x + 4 < width - margin {
            let w = rng.random_range(glyph..glyph * 6);
            fill(x, y, (x + w).min(width - margin), y + glyph, rng.random_range(0..90));
            x += w + rng.random_range(glyph / 2..glyph + 1);
        }
        if table {
            fill(
                margin,
                y + glyph + glyph / 2,
                width - margin,
                y + glyph + glyph / 2 + 2,
                0,
            );
        }
        y += pitch;
    }
    if table {
        for k in 0..=4 {
            let x = margin + k * (width - 2 * margin - 2) / 4;
            fill(x, height / 12, x + 2, y.min(height), 0);
        }
    }
    Rgb8Image::from_raw(width, height, data).expect("width * height * 3 bytes")
}

/// ERNIE-4.5-VL's image workloads: (kind, image width, height, images per request, question,
/// output tokens).
/// - `image-qa`: a 1024x768 picture (resized to 1036x756, 999 image tokens) and a question
///   whose answer is long: 512 tokens out, the "image question with a 512-token answer";
/// - `multi-image`: three 1000x1400 document pages (1008x1400, 1800 image tokens each) and a
///   question over them, 256 tokens out.
const ERNIE_IMAGES: [(Workload, &str, usize, usize, usize, &str, usize); 2] = [
    (
        Workload::ImageQa,
        "picture",
        1024,
        768,
        1,
        "Describe this picture in detail.",
        512,
    ),
    (
        Workload::MultiImage,
        "pages",
        1000,
        1400,
        3,
        "Summarise what these pages say and how they differ.",
        256,
    ),
];

/// The shapes of workload `w` with their share of the requests.
pub(crate) fn workload_shapes(
    args: &BenchArgs,
    cfg: &FamilyConfig,
    dir: &Path,
    w: Workload,
) -> anyhow::Result<Vec<(Shape, f64)>> {
    if w == Workload::Decode {
        let shape = Shape {
            prompt_ids: Vec::new(),
            random_prompt_len: args.prompt_len,
            images: Vec::new(),
            output_len: args.output_len,
            info: json!({
                "kind": "text", "prompt_tokens": args.prompt_len, "output_tokens": args.output_len, "share": 1.0
            }),
        };
        return Ok(vec![(shape, 1.0)]);
    }
    let cfg = match cfg {
        FamilyConfig::PaddleOcrVl(c) => c,
        FamilyConfig::ErnieVl(c) => return ernie_shapes(c, dir, w),
    };
    let processor = ImageProcessor::from_model_dir(dir, cfg)?;
    let prompts = PromptBuilder::from_dir(dir, cfg)?;
    let specs: Vec<(&'static str, usize, usize, Task, usize, f64)> = match w {
        Workload::Page1080p => vec![("page", 1920, 1080, Task::Ocr, 128, 1.0)],
        Workload::Page360p => vec![("page", 640, 360, Task::Ocr, 512, 1.0)],
        _ => CROPS.to_vec(),
    };
    let mut rng = ChaCha8Rng::seed_from_u64(7);
    let mut shapes = Vec::new();
    for (kind, width, height, task, output_len, share) in specs {
        let page = synthetic_page(width, height, task == Task::Table, &mut rng);
        let t = Instant::now();
        let mut processed = processor.process_rgb_bf16(&page)?;
        let preprocess_ms = t.elapsed().as_secs_f64() * 1e3;
        let pixels = std::mem::take(&mut processed.pixel_values);
        let grid = processed.grid;
        let prompt = prompts.build_task(&[grid], task)?;
        let image_tokens = grid.num_merged_tokens(cfg.vision.spatial_merge_size);
        println!(
            "  {kind} {width}x{height} -> {}x{} px, {}x{} patches (w x h), {image_tokens} image tokens, {} prompt tokens, \
             {output_len} out; preprocessing {preprocess_ms:.1} ms/image on one thread (not timed below)",
            processed.resized_width,
            processed.resized_height,
            grid.w,
            grid.h,
            prompt.ids.len()
        );
        let info = json!({
            "kind": kind,
            "image": format!("{width}x{height}"),
            "resized": format!("{}x{}", processed.resized_width, processed.resized_height),
            "grid_hw": [grid.h, grid.w],
            "image_tokens": image_tokens,
            "prompt_tokens": prompt.ids.len(),
            "output_tokens": output_len,
            "share": share,
            "task": task.prompt(),
            "preprocess_ms": preprocess_ms,
        });
        shapes.push((
            Shape {
                prompt_ids: prompt.ids,
                random_prompt_len: 0,
                images: vec![(pixels.into(), (grid.h, grid.w))],
                output_len,
                info,
            },
            share,
        ));
    }
    Ok(shapes)
}

/// ERNIE-4.5-VL's image workloads ([`ERNIE_IMAGES`]): one shape each, the prompt through the
/// directory's template with thinking on (FastDeploy's default).
fn ernie_shapes(cfg: &ErnieVlConfig, dir: &Path, w: Workload) -> anyhow::Result<Vec<(Shape, f64)>> {
    let (_, kind, width, height, count, question, output_len) = ERNIE_IMAGES
        .into_iter()
        .find(|spec| spec.0 == w)
        .with_context(|| format!("workload {} is not ERNIE-4.5-VL's", w.name()))?;
    let processor = ImageProcessor::from_ernie_dir(dir, cfg)?;
    let prompts = PromptBuilder::from_dir(dir, cfg)?;
    let mut rng = ChaCha8Rng::seed_from_u64(7);
    let mut images = Vec::with_capacity(count);
    let mut grids = Vec::with_capacity(count);
    let t = Instant::now();
    for _ in 0..count {
        let mut processed = processor.process_rgb_bf16(&synthetic_page(width, height, false, &mut rng))?;
        let grid = processed.grid;
        images.push((std::mem::take(&mut processed.pixel_values).into(), (grid.h, grid.w)));
        grids.push(grid);
    }
    let preprocess_ms = t.elapsed().as_secs_f64() * 1e3 / count as f64;
    let mut vars = serde_json::Map::new();
    vars.insert("enable_thinking".into(), Value::Bool(true));
    let prompt = prompts.build_with(&grids, question, &vars)?;
    let image_tokens: usize = grids
        .iter()
        .map(|g| g.num_merged_tokens(cfg.vision.spatial_merge_size))
        .sum();
    println!(
        "  {count} x {kind} {width}x{height} -> {}x{} patches (h x w) each, {image_tokens} image tokens, {} prompt \
         tokens, {output_len} out; preprocessing {preprocess_ms:.1} ms/image on one thread (not timed below)",
        grids[0].h,
        grids[0].w,
        prompt.ids.len()
    );
    let info = json!({
        "kind": kind,
        "images": count,
        "image": format!("{width}x{height}"),
        "grid_hw": [grids[0].h, grids[0].w],
        "image_tokens": image_tokens,
        "prompt_tokens": prompt.ids.len(),
        "output_tokens": output_len,
        "share": 1.0,
        "question": question,
        "preprocess_ms": preprocess_ms,
    });
    let shape = Shape {
        prompt_ids: prompt.ids,
        random_prompt_len: 0,
        images,
        output_len,
        info,
    };
    Ok(vec![(shape, 1.0)])
}

/// A request of `shape` with at most `max_tokens` tokens out.
fn make_request(shape: &Shape, vocab: usize, max_tokens: usize, rng: &mut ChaCha8Rng) -> EngineRequest {
    let prompt_ids = if shape.random_prompt_len > 0 {
        // Plain-text ids, clear of the special tokens at both ends of the vocabulary.
        let lo = 1000.min(vocab / 4) as u32;
        let hi = (vocab.saturating_sub(4000) as u32).max(lo + 1);
        (0..shape.random_prompt_len).map(|_| rng.random_range(lo..hi)).collect()
    } else {
        shape.prompt_ids.clone()
    };
    let images = shape
        .images
        .iter()
        .map(|(pixels, grid)| EngineImage {
            pixels: pixels.clone(),
            grid: *grid,
            content_hash: rng.random(),
        })
        .collect();
    EngineRequest {
        prompt_ids,
        images,
        sampling: SamplingParams::greedy(),
        max_tokens: max_tokens.min(shape.output_len),
        stop_token_ids: Vec::new(),
        ignore_eos: true,
        top_logprobs: 0,
    }
}

/// `n` shape indices with the shapes' shares, in a seeded random order.
fn request_order(shares: &[f64], n: usize, rng: &mut ChaCha8Rng) -> Vec<usize> {
    let mut order = Vec::with_capacity(n);
    let mut assigned = 0.0;
    for (i, share) in shares.iter().enumerate() {
        assigned += share;
        let upto = if i + 1 == shares.len() {
            n
        } else {
            (assigned * n as f64).round() as usize
        };
        order.resize(upto.max(order.len()), i);
    }
    order.shuffle(rng);
    order
}

/// Nearest-rank percentile of `v` (sorted in place); NaN when empty.
fn percentile(v: &mut [f64], q: f64) -> f64 {
    v.sort_by(f64::total_cmp);
    v.get(((v.len() as f64 - 1.0) * q).round() as usize)
        .copied()
        .unwrap_or(f64::NAN)
}

/// Per request: submission time, first and last token times, tokens out.
struct Track {
    submitted: f64,
    first: f64,
    last: f64,
    tokens: usize,
}

fn progress_bar(len: u64, name: &str) -> ProgressBar {
    let bar = ProgressBar::with_draw_target(Some(len), ProgressDrawTarget::stderr());
    let style = ProgressStyle::with_template(
        "{prefix:>10} [{elapsed_precise}] {wide_bar} {human_pos}/{human_len} tokens out ({per_sec}, eta {eta}) {msg}",
    )
    .expect("valid progress template");
    bar.set_style(style);
    bar.set_prefix(name.to_string());
    bar
}

/// Runs workload `w` through `engine`: a warm-up, then the timed requests. Prints the result
/// and returns it as JSON.
pub(crate) fn engine_workload(
    args: &BenchArgs,
    engine: &mut Engine,
    cfg: &FamilyConfig,
    dir: &Path,
    w: Workload,
) -> anyhow::Result<Value> {
    let n = args.requests(w);
    println!("\nworkload {}: {n} requests", w.name());
    let shapes = workload_shapes(args, cfg, dir, w)?;
    let vocab = cfg.vocab_size();
    let shares: Vec<f64> = shapes.iter().map(|s| s.1).collect();
    let mut rng = ChaCha8Rng::seed_from_u64(11);

    // Warm-up: requests of every shape, a few tokens each, through every kernel once.
    let warm = Instant::now();
    let warm_order = request_order(&shares, args.warmup, &mut rng);
    for &i in &warm_order {
        engine.add_request(make_request(&shapes[i].0, vocab, 8, &mut rng))?;
    }
    while engine.has_unfinished() {
        engine.step()?;
        fail_on_failed_requests(engine)?;
    }
    if args.warmup > 0 {
        println!(
            "  warm-up: {} requests, 8 tokens out, {:.1} s",
            args.warmup,
            warm.elapsed().as_secs_f64()
        );
    }

    let order = request_order(&shares, n, &mut rng);
    let total_out: usize = order.iter().map(|&i| shapes[i].0.output_len).sum();
    let bar = progress_bar(total_out as u64, w.name());
    let stats0 = engine.stats();
    let timings0 = engine.step_timings();
    let max_waiting = args.engine.max_num_seqs;
    let mut tracks: HashMap<u64, Track> = HashMap::with_capacity(n);
    let (mut submitted, mut finished) = (0, 0);
    let (mut input_tokens, mut output_tokens) = (0usize, 0usize);
    let mut step_ms = Vec::new();
    let (mut peak_used, mut peak_blocks) = (0usize, 0usize);
    let mut last_token = Instant::now();
    let mut last_line = Instant::now();
    // Requests are made before the clock starts, as a server's front end would have them
    // decoded and preprocessed off the engine's thread: copying a page's pixels in this loop
    // would leave the GPU waiting on the bench, not on the engine.
    let mut pending: std::collections::VecDeque<EngineRequest> = order
        .iter()
        .map(|&i| make_request(&shapes[i].0, vocab, usize::MAX, &mut rng))
        .collect();
    let t0 = Instant::now();
    while submitted < n || engine.has_unfinished() {
        while submitted < n && engine.stats().num_waiting < max_waiting {
            let req = pending.pop_front().expect("one request per submission");
            input_tokens += req.prompt_ids.len();
            let now = t0.elapsed().as_secs_f64();
            let id = engine.add_request(req)?;
            tracks.insert(
                id,
                Track {
                    submitted: now,
                    first: f64::NAN,
                    last: f64::NAN,
                    tokens: 0,
                },
            );
            submitted += 1;
        }
        let s = Instant::now();
        let outs = engine.step()?;
        step_ms.push(s.elapsed().as_secs_f64() * 1e3);
        fail_on_failed_requests(engine)?;
        let now = t0.elapsed().as_secs_f64();
        for o in &outs {
            if let Some(t) = tracks.get_mut(&o.request_id) {
                if t.tokens == 0 {
                    t.first = now;
                }
                t.last = now;
                t.tokens += 1;
            }
            finished += usize::from(o.finished.is_some());
        }
        output_tokens += outs.len();
        let (free, total) = engine.gpu().memory_info()?;
        peak_used = peak_used.max(total - free);
        let st = engine.stats();
        peak_blocks = peak_blocks.max(st.kv_blocks_total - st.kv_blocks_free);
        if !outs.is_empty() {
            last_token = Instant::now();
            bar.inc(outs.len() as u64);
            bar.set_message(format!("{finished}/{n} requests done"));
        } else if last_token.elapsed() > STALL {
            bail!(
                "workload {}: no token for {} s ({finished}/{n} requests done, {} running, {} waiting)",
                w.name(),
                STALL.as_secs(),
                st.num_running,
                st.num_waiting
            );
        }
        if bar.is_hidden() && last_line.elapsed().as_secs() >= 10 {
            eprintln!(
                "  {}: {:.0} s, {output_tokens}/{total_out} tokens out, {finished}/{n} requests done",
                w.name(),
                now
            );
            last_line = Instant::now();
        }
    }
    let secs = t0.elapsed().as_secs_f64();
    bar.finish_and_clear();
    let stats1 = engine.stats();
    let timings = step_timings_json(&timings0, &engine.step_timings());

    let mut ttft: Vec<f64> = tracks.values().map(|t| (t.first - t.submitted) * 1e3).collect();
    let mut tpot: Vec<f64> = tracks
        .values()
        .filter(|t| t.tokens > 1)
        .map(|t| (t.last - t.first) / (t.tokens - 1) as f64 * 1e3)
        .collect();
    let steps = step_ms.len();
    let step_mean = step_ms.iter().sum::<f64>() / steps.max(1) as f64;
    let r = json!({
        "workload": w.name(),
        "requests": n,
        "warmup_requests": args.warmup,
        "shapes": shapes.iter().map(|s| s.0.info.clone()).collect::<Vec<_>>(),
        "arrival": "bounded queue: at most max_num_seqs requests waiting; TTFT from submission",
        "seconds": secs,
        "input_tokens": input_tokens,
        "output_tokens": output_tokens,
        "requests_per_s": n as f64 / secs,
        "input_tokens_per_s": input_tokens as f64 / secs,
        "output_tokens_per_s": output_tokens as f64 / secs,
        "ttft_p50_ms": percentile(&mut ttft, 0.5),
        "ttft_p99_ms": percentile(&mut ttft, 0.99),
        "tpot_p50_ms": percentile(&mut tpot, 0.5),
        "tpot_p99_ms": percentile(&mut tpot, 0.99),
        "peak_gpu_memory_gb": peak_used as f64 / 1e9,
        "peak_gpu_memory_source": "cuMemGetInfo total - free after every step (whole device, KV pool included)",
        "peak_kv_blocks_used": peak_blocks,
        "kv_blocks_total": stats1.kv_blocks_total,
        "steps": steps,
        "step_ms_mean": step_mean,
        "step_ms_p50": percentile(&mut step_ms, 0.5),
        "step_ms_p99": percentile(&mut step_ms, 0.99),
        "tokens_out_per_step": output_tokens as f64 / steps.max(1) as f64,
        "step_timings": timings,
        "preemptions": stats1.num_preemptions - stats0.num_preemptions,
        "prefix_cache_hit_tokens": stats1.prefix_cache_hit_tokens - stats0.prefix_cache_hit_tokens,
    });
    let f = |k: &str| r[k].as_f64().unwrap_or(f64::NAN);
    println!(
        "  {secs:.1} s: {:.2} req/s, {:.0} input tok/s, {:.0} output tok/s",
        f("requests_per_s"),
        f("input_tokens_per_s"),
        f("output_tokens_per_s")
    );
    println!(
        "  TTFT p50 {:.0} ms p99 {:.0} ms; TPOT p50 {:.2} ms p99 {:.2} ms",
        f("ttft_p50_ms"),
        f("ttft_p99_ms"),
        f("tpot_p50_ms"),
        f("tpot_p99_ms")
    );
    println!(
        "  peak GPU memory {:.1} GB (cuMemGetInfo after every step); KV blocks in use at peak {peak_blocks} of {}",
        f("peak_gpu_memory_gb"),
        stats1.kv_blocks_total
    );
    println!(
        "  {steps} steps: {step_mean:.2} ms mean, p50 {:.2} ms, p99 {:.2} ms, {:.1} tokens out per step; \
         {} preemptions, {} prefix-cache hit tokens",
        f("step_ms_p50"),
        f("step_ms_p99"),
        f("tokens_out_per_step"),
        r["preemptions"],
        r["prefix_cache_hit_tokens"]
    );
    let t = &r["step_timings"];
    let ms = |k: &str| t[k].as_f64().unwrap_or(f64::NAN);
    println!(
        "  engine host time per step: prepare {:.3} ms, launch {:.3} ms, wait for tokens {:.3} ms, update {:.3} ms; \
         {} of {} steps replayed a CUDA graph, {} planned ahead (async scheduling); \
         GPU idle between steps {:.3} ms",
        ms("prepare_ms"),
        ms("launch_ms"),
        ms("wait_ms"),
        ms("update_ms"),
        t["graph_steps"],
        t["steps"],
        t["ahead_steps"],
        ms("gpu_idle_ms")
    );
    println!(
        "  GPU time: vision passes {:.2} s, {} steps with prefill {:.2} s, decode-only steps {:.2} s (of {secs:.1} s)",
        ms("vision_gpu_s"),
        t["mixed_steps"],
        ms("mixed_gpu_s"),
        ms("decode_gpu_s")
    );
    Ok(r)
}

/// The engine's host-time breakdown over the timed window, in ms per step.
fn step_timings_json(before: &StepTimings, after: &StepTimings) -> Value {
    let steps = after.steps - before.steps;
    let per_step = |a: f64, b: f64| (a - b) * 1e3 / steps.max(1) as f64;
    json!({
        "steps": steps,
        "graph_steps": after.graph_steps - before.graph_steps,
        "prepare_ms": per_step(after.prepare_s, before.prepare_s),
        "launch_ms": per_step(after.launch_s, before.launch_s),
        "wait_ms": per_step(after.wait_s, before.wait_s),
        "update_ms": per_step(after.update_s, before.update_s),
        "ahead_steps": after.ahead_steps - before.ahead_steps,
        "gpu_idle_ms": per_step(after.gpu_idle_s, before.gpu_idle_s),
        // GPU time over the window, in seconds: vision passes, mixed steps, decode-only steps.
        "vision_gpu_s": after.vision_gpu_s - before.vision_gpu_s,
        "mixed_gpu_s": after.mixed_gpu_s - before.mixed_gpu_s,
        "decode_gpu_s": after.decode_gpu_s - before.decode_gpu_s,
        "mixed_steps": after.mixed_steps - before.mixed_steps,
    })
}

/// A request the engine ended alone (a non-finite logits row) is a broken measurement: stop
/// with its reason rather than wait for tokens that will never come.
fn fail_on_failed_requests(engine: &mut Engine) -> anyhow::Result<()> {
    match engine.take_failed().first() {
        Some((id, why)) => anyhow::bail!("request {id} failed: {why}"),
        None => Ok(()),
    }
}
