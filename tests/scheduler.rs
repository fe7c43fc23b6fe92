//! The scheduler, CPU only: admission limits, the per-step token budget and max_num_seqs,
//! chunked prefill, decode-first ordering, preempt-by-recompute, prefix-cache reuse, image
//! spans and the encoder budget; and a randomized soak against a fake model that checks the
//! KV bookkeeping token by token.

use std::collections::{HashMap, HashSet};

use ocrvl::engine::{
    AdmissionError, FinishReason, ImageSpan, Scheduler, SchedulerConfig, SchedulerOutput, Sequence, StopConditions,
    UpdateOutput,
};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

const EOS: u32 = 1;
const IMAGE_TOKEN: u32 = 7;

fn config(block_size: usize, num_blocks: usize, max_num_seqs: usize, budget: usize) -> SchedulerConfig {
    SchedulerConfig {
        max_model_len: 1024,
        max_num_seqs,
        max_num_batched_tokens: budget,
        enable_prefix_caching: true,
        block_size,
        num_blocks,
        max_encoder_patches_per_step: 1024,
    }
}

fn splitmix(mut x: u64) -> u64 {
    x = x.wrapping_add(0x9e3779b97f4a7c15);
    x = (x ^ (x >> 30)).wrapping_mul(0xbf58476d1ce4e5b9);
    x = (x ^ (x >> 27)).wrapping_mul(0x94d049bb133111eb);
    x ^ (x >> 31)
}

/// The fake model: the token sampled at `position` of sequence `id`, a pure function of the
/// two, so that a run with preemptions must produce what an undisturbed run does. About one
/// token in 64 is EOS.
fn fake_token(id: u64, position: usize) -> u32 {
    let h = splitmix(id.wrapping_mul(0x1_0000_0001) ^ position as u64);
    if h % 64 == 0 {
        EOS
    } else {
        10 + (h % 50_000) as u32
    }
}

fn prompt(id: u64, len: usize) -> Vec<u32> {
    (0..len).map(|i| 10 + (splitmix(id ^ (i as u64) << 20) % 50_000) as u32).collect()
}

fn text_seq(id: u64, prompt_len: usize, max_tokens: usize) -> Sequence {
    Sequence::new(id, prompt(id, prompt_len), Vec::new(), StopConditions::max_tokens(max_tokens))
}

fn check(s: &Scheduler) {
    if let Err(e) = s.check_invariants() {
        panic!("scheduler invariant broken: {e}");
    }
}

/// One step with the fake model: schedule, sample for every sequence that needs logits,
/// update, check the invariants.
fn step(s: &mut Scheduler) -> (SchedulerOutput, UpdateOutput) {
    let out = s.schedule();
    assert!(out.num_tokens() <= s.config().max_num_batched_tokens);
    let sampled: Vec<(u64, u32)> = out
        .scheduled
        .iter()
        .filter(|e| e.needs_logits)
        .map(|e| (e.seq_id, fake_token(e.seq_id, e.start + e.num_tokens)))
        .collect();
    let upd = s.update(&out, &sampled);
    check(s);
    (out, upd)
}

fn run_to_completion(s: &mut Scheduler) -> HashMap<u64, Sequence> {
    let mut done = HashMap::new();
    for _ in 0..100_000 {
        if !s.has_unfinished() {
            return done;
        }
        let (out, upd) = step(s);
        assert!(!out.is_empty(), "no progress with work queued");
        done.extend(upd.finished.into_iter().map(|q| (q.id(), q)));
    }
    panic!("did not finish");
}

/// The output an undisturbed run gives.
fn expected_output(id: u64, prompt_len: usize, stop: &StopConditions) -> (Vec<u32>, FinishReason) {
    let mut out = Vec::new();
    loop {
        let t = fake_token(id, prompt_len + out.len());
        out.push(t);
        if (!stop.ignore_eos && stop.eos_token_id == Some(t)) || stop.stop_token_ids.contains(&t) {
            return (out, FinishReason::Stop);
        }
        if out.len() == stop.max_tokens {
            return (out, FinishReason::Length);
        }
    }
}

#[test]
fn admission_rejects_what_can_never_run() {
    let mut s = Scheduler::new(config(16, 8, 4, 64)).unwrap();
    let err = s.add(text_seq(1, 1000, 25)).unwrap_err();
    assert_eq!(
        err.to_string(),
        "prompt of 1000 tokens plus max_tokens 25 exceeds --max-model-len 1024"
    );
    assert_eq!(s.add(text_seq(2, 0, 5)), Err(AdmissionError::EmptyPrompt));
    assert_eq!(s.add(text_seq(3, 5, 0)), Err(AdmissionError::ZeroMaxTokens));
    // 8 blocks of 16 hold 128 tokens of KV: 100 + 29 needs 128 (the last token's KV is never
    // written), 100 + 30 needs 129.
    assert!(s.add(text_seq(4, 100, 29)).is_ok());
    assert!(matches!(
        s.add(text_seq(5, 100, 30)),
        Err(AdmissionError::ExceedsCache { needed: 9, num_blocks: 8, .. })
    ));
    assert_eq!(s.add(text_seq(4, 10, 1)), Err(AdmissionError::DuplicateId(4)));

    let with_images = |images: Vec<ImageSpan>| Sequence::new(9, prompt(9, 50), images, StopConditions::max_tokens(1));
    let img = |start, len, num_patches| ImageSpan {
        start,
        len,
        content_hash: 1,
        num_patches,
    };
    for (images, reason) in [
        (vec![img(40, 11, 4)], "ends past the prompt"),
        (vec![img(10, 0, 4)], "is empty"),
        (vec![img(10, 10, 4), img(15, 5, 4)], "overlaps or precedes the previous image"),
    ] {
        match s.add(with_images(images)) {
            Err(AdmissionError::BadImageSpan { reason: r, .. }) => assert_eq!(r, reason),
            other => panic!("expected a bad span ({reason}), got {other:?}"),
        }
    }
    assert!(matches!(
        s.add(with_images(vec![img(0, 10, 1025)])),
        Err(AdmissionError::ImageOverEncoderBudget { num_patches: 1025, budget: 1024, .. })
    ));
    assert_eq!(s.num_waiting(), 1, "only the valid sequence was queued");
    check(&s);
}

#[test]
fn invalid_configs_are_refused() {
    let mut c = config(16, 8, 4, 64);
    c.block_size = 24;
    assert!(Scheduler::new(c).is_err());
    let mut c = config(16, 0, 4, 64);
    assert!(Scheduler::new(c.clone()).is_err());
    c.num_blocks = 1 << 28;
    assert!(Scheduler::new(c).is_err(), "slots past i32");
}

#[test]
fn max_num_seqs_is_respected() {
    let mut s = Scheduler::new(config(16, 64, 3, 4096)).unwrap();
    for id in 0..10 {
        s.add(text_seq(id, 20, 5)).unwrap();
    }
    let (out, _) = step(&mut s);
    assert_eq!(out.scheduled.len(), 3);
    assert_eq!(s.num_running(), 3);
    let mut max_running = 0;
    while s.has_unfinished() {
        step(&mut s);
        max_running = max_running.max(s.num_running());
    }
    assert_eq!(max_running, 3);
}

#[test]
fn a_long_prompt_is_prefilled_in_chunks_within_the_budget() {
    let mut s = Scheduler::new(config(16, 128, 4, 256)).unwrap();
    s.add(text_seq(1, 1000, 3)).unwrap();
    let mut chunks = Vec::new();
    for _ in 0..4 {
        let (out, _) = step(&mut s);
        let e = &out.scheduled[0];
        chunks.push((e.start, e.num_tokens, e.needs_logits));
        assert_eq!(out.slot_mapping.len(), e.num_tokens);
        assert_eq!(out.input_ids, s.sequence(1).unwrap().token_ids()[e.start..e.start + e.num_tokens]);
    }
    assert_eq!(chunks, vec![(0, 256, false), (256, 256, false), (512, 256, false), (768, 232, true)]);
    let seq = s.sequence(1).unwrap();
    assert_eq!(seq.output_token_ids(), [fake_token(1, 1000)]);
    assert_eq!(seq.block_table().len(), 1000usize.div_ceil(16));
}

#[test]
fn decodes_come_first_then_prefill_chunks() {
    let mut c = config(16, 128, 4, 200);
    c.max_encoder_patches_per_step = 300;
    let mut s = Scheduler::new(c).unwrap();
    // A arrives first; its first chunk stops before its second image (over the encoder
    // budget with the first), which leaves budget for B's short prompt in the same step.
    // In the next step B decodes while A is still prefilling.
    let images = vec![image(10, 10, 1, 200), image(30, 40, 2, 200)];
    s.add(Sequence::new(1, image_prompt(200, &images), images, StopConditions::max_tokens(5))).unwrap();
    s.add(text_seq(2, 10, 5)).unwrap();
    let (out, _) = step(&mut s);
    assert_eq!(out.scheduled.iter().map(|e| (e.seq_id, e.num_tokens)).collect::<Vec<_>>(), vec![(1, 30), (2, 10)]);
    assert_eq!(out.num_decodes, 0);
    let (out, _) = step(&mut s);
    assert_eq!(out.num_decodes, 1);
    let first = &out.scheduled[0];
    assert_eq!((first.seq_id, first.start, first.num_tokens, first.is_decode), (2, 10, 1, true));
    let second = &out.scheduled[1];
    assert_eq!((second.seq_id, second.start, second.num_tokens, second.is_decode), (1, 30, 170, false));
    // The batch's token order follows the entries: B's one token, then A's chunk.
    assert_eq!(out.input_ids[0], s.sequence(2).unwrap().token_ids()[10]);
    assert_eq!(out.logits_token_indices(), vec![0, 170]);
    let bs = 16;
    let table = &first.block_table;
    assert_eq!(out.slot_mapping[0], (table[10 / bs] as usize * bs + 10 % bs) as i32);
}

#[test]
fn preemption_frees_blocks_and_recompute_keeps_outputs() {
    // 8 blocks of 4 tokens. Two sequences of 12-token prompts generating 16 tokens need up
    // to 7 blocks each, so they cannot both finish without one being preempted.
    let mut s = Scheduler::new(config(4, 8, 4, 64)).unwrap();
    s.add(text_seq(1, 12, 16)).unwrap();
    s.add(text_seq(2, 12, 16)).unwrap();
    let mut preempted = Vec::new();
    let mut done = HashMap::new();
    while s.has_unfinished() {
        let (out, upd) = step(&mut s);
        for &id in &out.preempted {
            // The latest arrival goes; it keeps its generated tokens and holds no blocks.
            assert_eq!(id, 2);
            let seq = s.sequence(id).unwrap();
            assert!(seq.num_output_tokens() > 0);
            assert_eq!((seq.num_computed_tokens(), seq.block_table().len()), (0, 0));
        }
        preempted.extend(out.preempted);
        done.extend(upd.finished.into_iter().map(|q| (q.id(), q)));
    }
    assert!(!preempted.is_empty());
    assert_eq!(s.stats().num_preemptions, preempted.len() as u64);
    for id in [1, 2] {
        let (want, reason) = expected_output(id, 12, &StopConditions::max_tokens(16));
        assert_eq!(done[&id].output_token_ids(), want, "sequence {id}");
        assert_eq!(done[&id].finish_reason(), Some(reason));
    }
    assert_eq!(s.pool().num_free(), 8);
}

#[test]
fn a_repeated_prompt_reuses_the_cached_prefix() {
    for enable in [true, false] {
        let mut c = config(16, 64, 4, 512);
        c.enable_prefix_caching = enable;
        let mut s = Scheduler::new(c).unwrap();
        let same_prompt = |id| Sequence::new(id, prompt(99, 100), Vec::new(), StopConditions::max_tokens(4));
        s.add(same_prompt(1)).unwrap();
        let first = run_to_completion(&mut s);
        s.add(same_prompt(2)).unwrap();
        let (out, _) = step(&mut s);
        let e = &out.scheduled[0];
        if enable {
            // (100 - 1) / 16 = 6 full blocks reused; 4 tokens computed.
            assert_eq!((e.start, e.num_tokens), (96, 4));
            assert_eq!(s.stats().prefix_cache_hit_tokens, 96);
        } else {
            assert_eq!((e.start, e.num_tokens), (0, 100));
        }
        let done = run_to_completion(&mut s);
        for (id, seq) in [(1, &first[&1]), (2, &done[&2])] {
            assert_eq!(seq.output_token_ids(), expected_output(id, 100, &StopConditions::max_tokens(4)).0);
        }
        assert_eq!(s.pool().num_free(), 64);
    }
}

#[test]
fn a_prompt_of_whole_blocks_recomputes_its_last_block() {
    let mut s = Scheduler::new(config(16, 64, 4, 512)).unwrap();
    let same = |id| Sequence::new(id, prompt(5, 96), Vec::new(), StopConditions::max_tokens(2));
    s.add(same(1)).unwrap();
    run_to_completion(&mut s);
    s.add(same(2)).unwrap();
    let (out, _) = step(&mut s);
    // Six full blocks, but the last token must be computed for logits, and a cached block is
    // never written: five blocks reused, the sixth recomputed.
    assert_eq!((out.scheduled[0].start, out.scheduled[0].num_tokens), (80, 16));
}

#[test]
fn running_sequences_share_cached_blocks() {
    let mut s = Scheduler::new(config(16, 64, 4, 512)).unwrap();
    let same = |id| Sequence::new(id, prompt(6, 70), Vec::new(), StopConditions::max_tokens(50));
    s.add(same(1)).unwrap();
    step(&mut s);
    step(&mut s);
    s.add(same(2)).unwrap();
    let (out, _) = step(&mut s);
    let e2 = out.scheduled.iter().find(|e| e.seq_id == 2).unwrap();
    assert_eq!(e2.start, 64);
    let t1 = s.sequence(1).unwrap().block_table().to_vec();
    let t2 = s.sequence(2).unwrap().block_table().to_vec();
    assert_eq!(t1[..4], t2[..4]);
    assert_ne!(t1[4], t2[4]);
    for &b in &t1[..4] {
        assert_eq!(s.pool().ref_count(b), 2);
    }
    s.abort(1).unwrap();
    check(&s);
    for &b in &t2[..4] {
        assert_eq!(s.pool().ref_count(b), 1);
    }
    s.abort(2).unwrap();
    check(&s);
    assert_eq!(s.pool().num_free(), 64);
}

#[test]
fn abort_frees_everything_from_any_state() {
    let mut s = Scheduler::new(config(16, 64, 2, 64)).unwrap();
    for id in 0..4 {
        s.add(text_seq(id, 100, 10)).unwrap();
    }
    step(&mut s);
    assert_eq!((s.num_running(), s.num_waiting()), (1, 3), "a 100-token prompt uses the 64-token budget");
    let running = s.abort(0).unwrap();
    assert_eq!(running.finish_reason(), Some(FinishReason::Aborted));
    let waiting = s.abort(3).unwrap();
    assert_eq!(waiting.finish_reason(), Some(FinishReason::Aborted));
    assert!(s.abort(3).is_none());
    check(&s);
    // Abort between schedule and update: the update skips it.
    let out = s.schedule();
    let id = out.scheduled[0].seq_id;
    s.abort(id).unwrap();
    let upd = s.update(&out, &[]);
    assert!(upd.finished.is_empty());
    check(&s);
    let rest: Vec<u64> = (0..4).filter(|&i| s.sequence(i).is_some()).collect();
    for id in rest {
        s.abort(id);
    }
    assert!(!s.has_unfinished());
    assert_eq!(s.pool().num_free(), 64);
}

#[test]
fn stop_conditions_finish_sequences() {
    let mut s = Scheduler::new(config(16, 64, 4, 512)).unwrap();
    // Find a sequence id whose fake output hits EOS within a few tokens.
    let id = (0..10_000u64).find(|&id| (0..5).any(|k| fake_token(id, 20 + k) == EOS)).unwrap();
    let eos_stop = StopConditions {
        max_tokens: 50,
        eos_token_id: Some(EOS),
        stop_token_ids: Vec::new(),
        ignore_eos: false,
    };
    let ignore = StopConditions {
        ignore_eos: true,
        ..eos_stop.clone()
    };
    let stop_id = StopConditions {
        stop_token_ids: vec![fake_token(id + 1, 22)],
        ..StopConditions::max_tokens(50)
    };
    s.add(Sequence::new(id, prompt(id, 20), Vec::new(), eos_stop.clone())).unwrap();
    s.add(Sequence::new(id + 1, prompt(id, 20), Vec::new(), stop_id.clone())).unwrap();
    s.add(Sequence::new(id + 2, prompt(id, 20), Vec::new(), ignore.clone())).unwrap();
    let done = run_to_completion(&mut s);
    for (sid, stop) in [(id, &eos_stop), (id + 1, &stop_id), (id + 2, &ignore)] {
        let (want, reason) = expected_output(sid, 20, stop);
        assert_eq!(done[&sid].output_token_ids(), want);
        assert_eq!(done[&sid].finish_reason(), Some(reason));
    }
    assert_eq!(done[&id].finish_reason(), Some(FinishReason::Stop));
    assert_eq!(done[&(id + 1)].output_token_ids().len(), 3);
}

fn image(start: usize, len: usize, content_hash: u64, num_patches: usize) -> ImageSpan {
    ImageSpan {
        start,
        len,
        content_hash,
        num_patches,
    }
}

fn image_prompt(len: usize, images: &[ImageSpan]) -> Vec<u32> {
    let mut p = prompt(77, len);
    for img in images {
        p[img.start..img.end()].fill(IMAGE_TOKEN);
    }
    p
}

#[test]
fn a_chunk_splitting_an_image_comes_with_its_encoder_input() {
    let mut s = Scheduler::new(config(16, 64, 4, 32)).unwrap();
    // The image covers 20..70: chunks 0..32, 32..64, 64..96 all meet it.
    let images = vec![image(20, 50, 9, 200)];
    s.add(Sequence::new(1, image_prompt(100, &images), images, StopConditions::max_tokens(2))).unwrap();
    let (out, upd) = step(&mut s);
    assert_eq!(out.encoder_inputs, vec![(1, 0)]);
    assert!(upd.freed_encoder_outputs.is_empty(), "the span is only partly computed");
    let (out, upd) = step(&mut s);
    assert!(out.encoder_inputs.is_empty(), "encoded once, kept");
    assert!(upd.freed_encoder_outputs.is_empty());
    let (out, upd) = step(&mut s);
    assert!(out.encoder_inputs.is_empty());
    assert_eq!(upd.freed_encoder_outputs, vec![(1, 0)], "span done: features dropped");
}

#[test]
fn the_encoder_budget_stops_a_chunk_before_the_image() {
    let mut c = config(16, 64, 4, 512);
    c.max_encoder_patches_per_step = 300;
    let mut s = Scheduler::new(c).unwrap();
    let images = vec![image(10, 40, 1, 200), image(60, 40, 2, 200)];
    s.add(Sequence::new(1, image_prompt(120, &images), images.clone(), StopConditions::max_tokens(2))).unwrap();
    let (out, upd) = step(&mut s);
    // 200 + 200 patches > 300: the chunk stops at the second image's first token.
    assert_eq!(out.encoder_inputs, vec![(1, 0)]);
    assert_eq!((out.scheduled[0].start, out.scheduled[0].num_tokens), (0, 60));
    assert_eq!(upd.freed_encoder_outputs, vec![(1, 0)]);
    let (out, _) = step(&mut s);
    assert_eq!(out.encoder_inputs, vec![(1, 1)]);
    assert_eq!((out.scheduled[0].start, out.scheduled[0].num_tokens), (60, 60));

    // With the budget taken by an earlier sequence, a later one waits (first come, first
    // served) even if its own chunk would start with text.
    let mut c = config(16, 64, 4, 512);
    c.max_encoder_patches_per_step = 250;
    let mut s = Scheduler::new(c).unwrap();
    let a = vec![image(0, 40, 1, 200)];
    let b = vec![image(5, 40, 2, 200)];
    s.add(Sequence::new(1, image_prompt(50, &a), a, StopConditions::max_tokens(3))).unwrap();
    s.add(Sequence::new(2, image_prompt(50, &b), b, StopConditions::max_tokens(3))).unwrap();
    let (out, _) = step(&mut s);
    assert_eq!(out.encoder_inputs, vec![(1, 0)]);
    assert_eq!(
        out.scheduled.iter().map(|e| (e.seq_id, e.num_tokens)).collect::<Vec<_>>(),
        vec![(1, 50), (2, 5)],
        "sequence 2 computes the text before its image"
    );
    let (out, _) = step(&mut s);
    assert_eq!(out.encoder_inputs, vec![(2, 0)]);
}

#[test]
fn cached_image_blocks_need_no_encoding() {
    let mut s = Scheduler::new(config(16, 64, 4, 512)).unwrap();
    let images = vec![image(4, 40, 5, 160)];
    let p = image_prompt(100, &images);
    s.add(Sequence::new(1, p.clone(), images.clone(), StopConditions::max_tokens(1))).unwrap();
    run_to_completion(&mut s);
    s.add(Sequence::new(2, p.clone(), images.clone(), StopConditions::max_tokens(1))).unwrap();
    let (out, _) = step(&mut s);
    assert_eq!(out.scheduled[0].start, 96);
    assert!(out.encoder_inputs.is_empty(), "the whole span is in cached blocks");
    // Another image content at the same place shares only the blocks before it.
    let other = vec![image(4, 40, 6, 160)];
    s.add(Sequence::new(3, p, other, StopConditions::max_tokens(1))).unwrap();
    let (out, _) = step(&mut s);
    assert_eq!(out.scheduled[0].start, 0, "block 0 holds image tokens, so nothing is shared");
    assert_eq!(out.encoder_inputs, vec![(3, 0)]);
}

// ---- randomized soak ----

/// A request as the test follows it: its tokens as streamed to a client (prompt, then every
/// token the step loop sampled for it, appended once), and for each position a fingerprint
/// of the whole prefix up to it, which is what the fake KV cache stores. A slot holding the
/// right fingerprint holds the right KV for that position in that context.
struct Tracked {
    tokens: Vec<u32>,
    fingerprints: Vec<u64>,
    prompt_len: usize,
    images: Vec<ImageSpan>,
    stop: StopConditions,
}

impl Tracked {
    fn new(prompt: Vec<u32>, images: Vec<ImageSpan>, stop: StopConditions) -> Self {
        let mut t = Tracked {
            tokens: Vec::new(),
            fingerprints: Vec::new(),
            prompt_len: prompt.len(),
            images,
            stop,
        };
        for tok in prompt {
            t.push(tok);
        }
        t
    }

    fn push(&mut self, token: u32) {
        let p = self.tokens.len();
        let image = self.images.iter().find(|i| i.start <= p && p < i.end());
        let image = image.map_or(0, |i| splitmix(i.content_hash ^ ((p - i.start) as u64) << 32));
        let prev = self.fingerprints.last().copied().unwrap_or(0);
        self.fingerprints.push(splitmix(prev ^ splitmix(token as u64 ^ image)));
        self.tokens.push(token);
    }
}

struct SoakCase {
    seed: u64,
    block_size: usize,
    num_blocks: usize,
    max_num_seqs: usize,
    budget: usize,
    prefix_caching: bool,
    num_requests: u64,
}

/// A prompt: maybe one of a few shared templates (text with an image), then a random suffix
/// that may hold an image; placeholder tokens are `IMAGE_TOKEN`.
fn random_prompt(rng: &mut ChaCha8Rng, templates: &[(Vec<u32>, Vec<ImageSpan>)], max_len: usize) -> (Vec<u32>, Vec<ImageSpan>) {
    let (mut toks, mut images) = if rng.random_bool(0.5) {
        templates[rng.random_range(0..templates.len())].clone()
    } else {
        (Vec::new(), Vec::new())
    };
    let suffix = if !toks.is_empty() && rng.random_bool(0.2) { 0 } else { rng.random_range(1..150) };
    for _ in 0..suffix {
        toks.push(rng.random_range(10..60_000));
    }
    if suffix > 2 && rng.random_bool(0.3) {
        let len = rng.random_range(1..=48.min(suffix - 1));
        let start = toks.len() - suffix + rng.random_range(0..=suffix - len);
        toks[start..start + len].fill(IMAGE_TOKEN);
        images.push(image(start, len, rng.random_range(10..13), 4 * len));
    }
    toks.truncate(max_len);
    images.retain(|i| i.end() <= toks.len());
    (toks, images)
}

fn soak(case: SoakCase) {
    let max_model_len = case.num_blocks * case.block_size;
    let encoder_budget = 256;
    let cfg = SchedulerConfig {
        max_model_len,
        max_num_seqs: case.max_num_seqs,
        max_num_batched_tokens: case.budget,
        enable_prefix_caching: case.prefix_caching,
        block_size: case.block_size,
        num_blocks: case.num_blocks,
        max_encoder_patches_per_step: encoder_budget,
    };
    let bs = case.block_size;
    let mut s = Scheduler::new(cfg).unwrap();
    let mut rng = ChaCha8Rng::seed_from_u64(case.seed);
    let templates: Vec<(Vec<u32>, Vec<ImageSpan>)> = (0..4)
        .map(|_| {
            let len = rng.random_range(1..200);
            let mut toks: Vec<u32> = (0..len).map(|_| rng.random_range(10..60_000)).collect();
            let mut images = Vec::new();
            if len > 10 && rng.random_bool(0.7) {
                let ilen = rng.random_range(1..=48.min(len - 1));
                let start = rng.random_range(0..=len - ilen);
                toks[start..start + ilen].fill(IMAGE_TOKEN);
                images.push(image(start, ilen, rng.random_range(1..3), 4 * ilen));
            }
            (toks, images)
        })
        .collect();

    let mut tracked: HashMap<u64, Tracked> = HashMap::new();
    let mut live: Vec<u64> = Vec::new();
    let mut kv: Vec<Option<(usize, u64)>> = vec![None; case.num_blocks * bs];
    let mut encoded: HashSet<(u64, usize)> = HashSet::new();
    let mut preempted: HashSet<u64> = HashSet::new();
    let (mut added, mut finished, mut aborted, mut finished_after_preemption) = (0u64, 0u64, 0u64, 0u64);
    let mut abort = |id: u64, s: &mut Scheduler, tracked: &mut HashMap<u64, Tracked>, live: &mut Vec<u64>| {
        let seq = s.abort(id).expect("a live sequence");
        assert_eq!(seq.finish_reason(), Some(FinishReason::Aborted));
        tracked.remove(&id);
        live.retain(|&l| l != id);
        aborted += 1;
    };

    for step_no in 0.. {
        assert!(step_no < 2_000_000, "soak did not finish");
        if step_no % 200_000 == 0 || step_no > 1_999_990 {
            let r: Vec<_> = live.iter().filter_map(|&id| s.sequence(id)).take(6).map(|q| (q.id(), q.status(), q.total_len(), q.num_computed_tokens(), q.images().len(), q.block_table().len())).collect();
            eprintln!("DBG step {step_no} added {added} running {} waiting {} free {} {r:?} {:?}", s.num_running(), s.num_waiting(), s.pool().num_free(), s.stats());
        }
        if added < case.num_requests {
            for _ in 0..rng.random_range(0..=3) {
                let (prompt, images) = random_prompt(&mut rng, &templates, max_model_len - 1);
                let max_tokens = rng.random_range(1..=200.min(max_model_len - prompt.len()));
                let stop = StopConditions {
                    max_tokens,
                    eos_token_id: Some(EOS),
                    stop_token_ids: if rng.random_bool(0.1) { vec![rng.random_range(10..60_000)] } else { vec![] },
                    ignore_eos: rng.random_bool(0.2),
                };
                s.add(Sequence::new(added, prompt.clone(), images.clone(), stop.clone())).unwrap();
                tracked.insert(added, Tracked::new(prompt, images, stop));
                live.push(added);
                added += 1;
            }
        }
        if !live.is_empty() && rng.random_bool(0.01) {
            let id = live[rng.random_range(0..live.len())];
            encoded.retain(|&(sid, _)| sid != id);
            abort(id, &mut s, &mut tracked, &mut live);
        }
        if !s.has_unfinished() {
            if added == case.num_requests {
                break;
            }
            continue; // idle until the next arrival
        }

        let out = s.schedule();
        assert!(!out.is_empty(), "step {step_no}: nothing scheduled with work queued");
        assert!(out.num_tokens() <= case.budget);
        assert!(out.scheduled.len() <= case.max_num_seqs);
        assert!(out.scheduled.iter().enumerate().all(|(i, e)| e.is_decode == (i < out.num_decodes)));
        for &(sid, k) in &out.freed_encoder_outputs {
            assert!(out.preempted.contains(&sid));
            assert!(encoded.remove(&(sid, k)), "freed an encoder output never made");
        }
        let mut patches = 0;
        for &(sid, k) in &out.encoder_inputs {
            assert!(encoded.insert((sid, k)), "step {step_no}: image ({sid}, {k}) re-encoded while held");
            patches += tracked[&sid].images[k].num_patches;
        }
        assert!(patches <= encoder_budget);
        for &id in &out.preempted {
            assert!(out.scheduled.iter().all(|e| e.seq_id != id));
            preempted.insert(id);
        }

        // The fake model writes the KV of every scheduled token ...
        let slot = |table: &[u32], p: usize| table[p / bs] as usize * bs + p % bs;
        let mut cursor = 0;
        for e in &out.scheduled {
            let t = &tracked[&e.seq_id];
            let end = e.start + e.num_tokens;
            assert!(end <= t.tokens.len());
            assert_eq!(e.needs_logits, end == t.tokens.len());
            for p in e.start..end {
                assert_eq!(out.input_ids[cursor], t.tokens[p], "step {step_no}: seq {} position {p}", e.seq_id);
                let sl = slot(&e.block_table, p);
                assert_eq!(out.slot_mapping[cursor], sl as i32);
                // Written blocks belong to this sequence alone and are not in the cache.
                let block = e.block_table[p / bs];
                assert_eq!(s.pool().ref_count(block), 1, "step {step_no}: writing a shared block");
                assert_eq!(s.pool().block_hash(block), None, "step {step_no}: writing a cached block");
                kv[sl] = Some((p, t.fingerprints[p]));
                cursor += 1;
            }
            for (k, img) in t.images.iter().enumerate() {
                if img.intersects(e.start, end) {
                    assert!(encoded.contains(&(e.seq_id, k)), "step {step_no}: image span scheduled unencoded");
                }
            }
        }
        assert_eq!(cursor, out.num_tokens());
        // ... then, where it produces logits, "attends" over the whole context: every
        // position must hold the KV of its own prefix (shared prefix blocks included).
        // Checking at logits only keeps the soak quick; every chunk's tokens are read again
        // when the sequence reaches its end.
        for e in out.scheduled.iter().filter(|e| e.needs_logits) {
            let t = &tracked[&e.seq_id];
            for p in 0..e.start + e.num_tokens {
                let got = kv[slot(&e.block_table, p)];
                assert_eq!(got, Some((p, t.fingerprints[p])), "step {step_no}: seq {} reads bad KV at {p}", e.seq_id);
            }
        }

        let sampled: Vec<(u64, u32)> = out
            .scheduled
            .iter()
            .filter(|e| e.needs_logits)
            .map(|e| (e.seq_id, fake_token(e.seq_id, e.start + e.num_tokens)))
            .collect();
        // Now and then a client disconnects while the step runs.
        if rng.random_bool(0.005) {
            let id = out.scheduled[rng.random_range(0..out.scheduled.len())].seq_id;
            encoded.retain(|&(sid, _)| sid != id);
            abort(id, &mut s, &mut tracked, &mut live);
        }
        let upd = s.update(&out, &sampled);
        for &(sid, k) in &upd.freed_encoder_outputs {
            assert!(encoded.remove(&(sid, k)), "step {step_no}: freed an encoder output never made");
        }
        for &(sid, tok) in &sampled {
            if let Some(t) = tracked.get_mut(&sid) {
                t.push(tok); // streamed to the client exactly once
            }
        }
        for seq in upd.finished {
            let id = seq.id();
            let t = tracked.remove(&id).expect("finished a tracked sequence");
            live.retain(|&l| l != id);
            assert_eq!(seq.output_token_ids(), &t.tokens[t.prompt_len..], "seq {id}: output differs from the stream");
            let (want, reason) = expected_output(id, t.prompt_len, &t.stop);
            assert_eq!(seq.output_token_ids(), want, "seq {id}: output differs from an undisturbed run");
            assert_eq!(seq.finish_reason(), Some(reason), "seq {id}");
            finished += 1;
            finished_after_preemption += preempted.contains(&id) as u64;
        }
        if let Err(e) = s.check_invariants() {
            panic!("step {step_no}: {e}");
        }
        assert!(encoded.iter().all(|(sid, _)| tracked.contains_key(sid)));
    }

    assert_eq!(s.pool().num_free(), case.num_blocks, "blocks leaked");
    assert!(encoded.is_empty(), "encoder outputs leaked: {encoded:?}");
    assert_eq!(finished + aborted, case.num_requests);
    assert!(finished_after_preemption > 0, "the soak forced no preemption: shrink the pool");
    let stats = s.stats();
    assert_eq!(case.prefix_caching, stats.prefix_cache_hit_tokens > 0, "{stats:?}");
    println!(
        "seed {}: {finished} finished ({finished_after_preemption} after preemption), {aborted} aborted, {stats:?}",
        case.seed
    );
}

#[test]
fn soak_small_pool_prefix_caching() {
    soak(SoakCase {
        seed: 1,
        block_size: 16,
        num_blocks: 40,
        max_num_seqs: 16,
        budget: 128,
        prefix_caching: true,
        num_requests: 3000,
    });
}

#[test]
fn soak_tiny_blocks_no_prefix_caching() {
    soak(SoakCase {
        seed: 2,
        block_size: 4,
        num_blocks: 150,
        max_num_seqs: 32,
        budget: 96,
        prefix_caching: false,
        num_requests: 3000,
    });
}

#[test]
fn soak_budget_below_max_num_seqs() {
    soak(SoakCase {
        seed: 3,
        block_size: 8,
        num_blocks: 80,
        max_num_seqs: 64,
        budget: 24,
        prefix_caching: true,
        num_requests: 2000,
    });
}

#[test]
fn soak_many_seqs_large_budget() {
    soak(SoakCase {
        seed: 4,
        block_size: 16,
        num_blocks: 64,
        max_num_seqs: 256,
        budget: 512,
        prefix_caching: true,
        num_requests: 3000,
    });
}
