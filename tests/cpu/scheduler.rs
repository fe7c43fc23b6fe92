//! The scheduler, CPU only: admission limits, the per-step token budget and max_num_seqs,
//! chunked prefill, decode-first ordering, preempt-by-recompute, prefix-cache reuse, image
//! spans and the encoder budget; and a randomized soak against a fake model that checks the
//! KV bookkeeping token by token.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::ops::Range;

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
    (0..len)
        .map(|i| 10 + (splitmix(id ^ (i as u64) << 20) % 50_000) as u32)
        .collect()
}

fn text_seq(id: u64, prompt_len: usize, max_tokens: usize) -> Sequence {
    Sequence::new(
        id,
        prompt(id, prompt_len),
        Vec::new(),
        StopConditions::max_tokens(max_tokens),
    )
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
        Err(AdmissionError::ExceedsCache {
            needed: 9,
            num_blocks: 8,
            ..
        })
    ));
    assert_eq!(s.add(text_seq(4, 10, 1)), Err(AdmissionError::DuplicateId(4)));

    let with_images = |images: Vec<ImageSpan>| Sequence::new(9, prompt(9, 50), images, StopConditions::max_tokens(1));
    let img = |start, len, num_patches| image(start, len, 1, num_patches);
    for (images, reason) in [
        (vec![img(40, 11, 4)], "ends past the prompt"),
        (vec![img(10, 0, 4)], "is empty"),
        (
            vec![img(10, 10, 4), img(15, 5, 4)],
            "overlaps or precedes the previous image",
        ),
    ] {
        match s.add(with_images(images)) {
            Err(AdmissionError::BadImageSpan { reason: r, .. }) => assert_eq!(r, reason),
            other => panic!("expected a bad span ({reason}), got {other:?}"),
        }
    }
    assert!(matches!(
        s.add(with_images(vec![img(0, 10, 1025)])),
        Err(AdmissionError::ImageOverEncoderBudget {
            num_patches: 1025,
            budget: 1024,
            ..
        })
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
        assert_eq!(
            out.input_ids,
            s.sequence(1).unwrap().token_ids()[e.start..e.start + e.num_tokens]
        );
    }
    assert_eq!(
        chunks,
        vec![(0, 256, false), (256, 256, false), (512, 256, false), (768, 232, true)]
    );
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
    s.add(image_seq(1, 200, &images, 5)).unwrap();
    s.add(text_seq(2, 10, 5)).unwrap();
    let (out, _) = step(&mut s);
    assert_eq!(entries(&out), vec![(1, 0, 30), (2, 0, 10)]);
    assert_eq!(out.num_decodes, 0);
    let (out, _) = step(&mut s);
    assert_eq!(out.num_decodes, 1);
    let first = &out.scheduled[0];
    assert_eq!(
        (first.seq_id, first.start, first.num_tokens, first.is_decode),
        (2, 10, 1, true)
    );
    let second = &out.scheduled[1];
    assert_eq!(
        (second.seq_id, second.start, second.num_tokens, second.is_decode),
        (1, 30, 170, false)
    );
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
    // (prefix caching, prompt length, where the repeat starts and how much it computes). A
    // 96-token prompt is six full blocks, but its last token must be computed for logits and
    // a cached block is never written: five blocks are reused and the sixth recomputed.
    for (enable, len, want) in [(true, 100, (96, 4)), (true, 96, (80, 16)), (false, 100, (0, 100))] {
        let mut c = config(16, 64, 4, 512);
        c.enable_prefix_caching = enable;
        let mut s = Scheduler::new(c).unwrap();
        let same_prompt = |id| Sequence::new(id, prompt(99, len), Vec::new(), StopConditions::max_tokens(4));
        s.add(same_prompt(1)).unwrap();
        let first = run_to_completion(&mut s);
        s.add(same_prompt(2)).unwrap();
        let (out, _) = step(&mut s);
        assert_eq!(entries(&out), vec![(2, want.0, want.1)]);
        assert_eq!(s.stats().prefix_cache_hit_tokens, want.0 as u64);
        let done = run_to_completion(&mut s);
        for (id, seq) in [(1, &first[&1]), (2, &done[&2])] {
            assert_eq!(
                seq.output_token_ids(),
                expected_output(id, len, &StopConditions::max_tokens(4)).0
            );
        }
        assert_eq!(s.pool().num_free(), 64);
    }
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
    assert_eq!(
        (s.num_running(), s.num_waiting()),
        (1, 3),
        "a 100-token prompt uses the 64-token budget"
    );
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
    let id = (0..10_000u64)
        .find(|&id| (0..5).any(|k| fake_token(id, 20 + k) == EOS))
        .unwrap();
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
    s.add(Sequence::new(id, prompt(id, 20), Vec::new(), eos_stop.clone()))
        .unwrap();
    s.add(Sequence::new(id + 1, prompt(id, 20), Vec::new(), stop_id.clone()))
        .unwrap();
    s.add(Sequence::new(id + 2, prompt(id, 20), Vec::new(), ignore.clone()))
        .unwrap();
    let done = run_to_completion(&mut s);
    for (sid, stop) in [(id, &eos_stop), (id + 1, &stop_id), (id + 2, &ignore)] {
        let (want, reason) = expected_output(sid, 20, stop);
        assert_eq!(done[&sid].output_token_ids(), want);
        assert_eq!(done[&sid].finish_reason(), Some(reason));
    }
    assert_eq!(done[&id].finish_reason(), Some(FinishReason::Stop));
    assert_eq!(done[&(id + 1)].output_token_ids().len(), 3);
}

fn image(start: usize, len: usize, content_hash: u128, num_patches: usize) -> ImageSpan {
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

fn image_seq(id: u64, prompt_len: usize, images: &[ImageSpan], max_tokens: usize) -> Sequence {
    let p = image_prompt(prompt_len, images);
    Sequence::new(id, p, images.to_vec(), StopConditions::max_tokens(max_tokens))
}

/// `(seq_id, start, num_tokens)` of each scheduled entry, in batch order.
fn entries(out: &SchedulerOutput) -> Vec<(u64, usize, usize)> {
    out.scheduled
        .iter()
        .map(|e| (e.seq_id, e.start, e.num_tokens))
        .collect()
}

#[test]
fn a_chunk_splitting_an_image_comes_with_its_encoder_input() {
    let mut s = Scheduler::new(config(16, 64, 4, 32)).unwrap();
    // The image covers 20..70: chunks 0..32, 32..64, 64..96 all meet it.
    let images = vec![image(20, 50, 9, 200)];
    s.add(image_seq(1, 100, &images, 2)).unwrap();
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
    s.add(image_seq(1, 120, &images, 2)).unwrap();
    let (out, upd) = step(&mut s);
    // 200 + 200 patches > 300: the chunk stops at the second image's first token.
    assert_eq!(out.encoder_inputs, vec![(1, 0)]);
    assert_eq!((out.scheduled[0].start, out.scheduled[0].num_tokens), (0, 60));
    assert_eq!(upd.freed_encoder_outputs, vec![(1, 0)]);
    let (out, _) = step(&mut s);
    assert_eq!(out.encoder_inputs, vec![(1, 1)]);
    assert_eq!((out.scheduled[0].start, out.scheduled[0].num_tokens), (60, 60));

    // With the budget taken by an earlier sequence's image, a later one computes only the
    // text before its own image, and encodes it next step.
    let mut c = config(16, 64, 4, 512);
    c.max_encoder_patches_per_step = 250;
    let mut s = Scheduler::new(c).unwrap();
    let a = vec![image(0, 40, 1, 200)];
    let b = vec![image(5, 40, 2, 200)];
    s.add(image_seq(1, 50, &a, 3)).unwrap();
    s.add(image_seq(2, 50, &b, 3)).unwrap();
    let (out, _) = step(&mut s);
    assert_eq!(out.encoder_inputs, vec![(1, 0)]);
    assert_eq!(
        entries(&out),
        vec![(1, 0, 50), (2, 0, 5)],
        "sequence 2 computes the text before its image"
    );
    let (out, _) = step(&mut s);
    assert_eq!(out.encoder_inputs, vec![(2, 0)]);
}

#[test]
fn cached_image_blocks_need_no_encoding() {
    let mut s = Scheduler::new(config(16, 64, 4, 512)).unwrap();
    let images = vec![image(4, 40, 5, 160)];
    s.add(image_seq(1, 100, &images, 1)).unwrap();
    run_to_completion(&mut s);
    s.add(image_seq(2, 100, &images, 1)).unwrap();
    let (out, _) = step(&mut s);
    assert_eq!(out.scheduled[0].start, 96);
    assert!(out.encoder_inputs.is_empty(), "the whole span is in cached blocks");
    // Other image content at the same place shares nothing: block 0 holds image tokens.
    s.add(image_seq(3, 100, &[image(4, 40, 6, 160)], 1)).unwrap();
    let (out, _) = step(&mut s);
    assert_eq!(out.scheduled[0].start, 0);
    assert_eq!(out.encoder_inputs, vec![(3, 0)]);
}

#[test]
fn a_span_partly_in_cached_blocks_is_encoded() {
    // Sequence 1 computes 0..64 in two chunks and is aborted: blocks 0..4 stay cached.
    let mut s = Scheduler::new(config(16, 64, 4, 32)).unwrap();
    let images = vec![image(40, 50, 5, 200)];
    s.add(image_seq(1, 100, &images, 1)).unwrap();
    step(&mut s);
    step(&mut s);
    s.abort(1).unwrap();
    s.add(image_seq(2, 100, &images, 1)).unwrap();
    let (out, _) = step(&mut s);
    assert_eq!(entries(&out), vec![(2, 64, 32)]);
    assert_eq!(
        out.encoder_inputs,
        vec![(2, 0)],
        "tokens 64..90 of the span still need the features"
    );
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
    fn push(&mut self, token: u32) {
        let p = self.tokens.len();
        let image = self.images.iter().find(|i| i.start <= p && p < i.end());
        let image = image.map_or(0, |i| splitmix(i.content_hash as u64 ^ ((p - i.start) as u64) << 32));
        let prev = self.fingerprints.last().copied().unwrap_or(0);
        self.fingerprints.push(splitmix(prev ^ splitmix(token as u64 ^ image)));
        self.tokens.push(token);
    }
}

/// Appends `len` random tokens, maybe with an image (content hash from `contents`) in them.
fn push_random_text(rng: &mut ChaCha8Rng, p: &mut (Vec<u32>, Vec<ImageSpan>), len: usize, contents: Range<u64>) {
    let from = p.0.len();
    p.0.extend((0..len).map(|_| rng.random_range(10..60_000u32)));
    if len > 2 && rng.random_bool(0.5) {
        let ilen = rng.random_range(1..=48.min(len - 1));
        let start = from + rng.random_range(0..=len - ilen);
        p.0[start..start + ilen].fill(IMAGE_TOKEN);
        p.1.push(image(start, ilen, rng.random_range(contents) as u128, 4 * ilen));
    }
}

/// A prompt: maybe one of a few shared templates, then a random suffix.
fn random_prompt(rng: &mut ChaCha8Rng, templates: &[(Vec<u32>, Vec<ImageSpan>)], max_len: usize) -> Tracked {
    let mut p = match rng.random_bool(0.5) {
        true => templates[rng.random_range(0..templates.len())].clone(),
        false => (Vec::new(), Vec::new()),
    };
    let suffix = if !p.0.is_empty() && rng.random_bool(0.2) {
        0
    } else {
        rng.random_range(1..150)
    };
    push_random_text(rng, &mut p, suffix, 10..13);
    p.0.truncate(max_len);
    p.1.retain(|i| i.end() <= p.0.len());
    let max_tokens = rng.random_range(1..=200.min(max_len + 1 - p.0.len()));
    let stop_token_ids = (0..rng.random_bool(0.1) as usize)
        .map(|_| rng.random_range(10..60_000))
        .collect();
    let ignore_eos = rng.random_bool(0.2);
    let (eos_token_id, prompt_len, images) = (Some(EOS), p.0.len(), p.1);
    let stop = StopConditions {
        max_tokens,
        eos_token_id,
        stop_token_ids,
        ignore_eos,
    };
    let mut t = Tracked {
        tokens: vec![],
        fingerprints: vec![],
        prompt_len,
        images,
        stop,
    };
    p.0.into_iter().for_each(|tok| t.push(tok));
    t
}

/// The soak's fake engine: the scheduler, the requests as followed, a fake KV cache of
/// fingerprints, the held encoder outputs, and counts.
struct Soak {
    s: Scheduler,
    rng: ChaCha8Rng,
    bs: usize,
    tracked: BTreeMap<u64, Tracked>,
    kv: Vec<Option<(usize, u64)>>,
    encoded: HashSet<(u64, usize)>,
    preempted: HashSet<u64>,
    added: u64,
    finished: u64,
    aborted: u64,
    finished_after_preemption: u64,
    /// Steps planned by `schedule_ahead`, and their rows whose sequence the step before
    /// finished (computed for nothing, never streamed).
    ahead_steps: u64,
    wasted_rows: u64,
}

impl Soak {
    fn abort(&mut self, id: u64) {
        let seq = self.s.abort(id).expect("a live sequence");
        assert_eq!(seq.finish_reason(), Some(FinishReason::Aborted));
        self.tracked.remove(&id);
        self.encoded.retain(|&(sid, _)| sid != id);
        self.aborted += 1;
    }

    /// The token and prefix fingerprint at position `p` of a followed request; one past its
    /// known tokens is the token the previous step samples (a step planned ahead reads it on
    /// the GPU before the host has it).
    fn token_at(&self, id: u64, p: usize) -> (u32, u64) {
        let t = &self.tracked[&id];
        if p < t.tokens.len() {
            return (t.tokens[p], t.fingerprints[p]);
        }
        assert_eq!(p, t.tokens.len(), "seq {id}: position {p} two tokens ahead");
        let token = fake_token(id, p);
        let prev = t.fingerprints.last().copied().unwrap_or(0);
        (token, splitmix(prev ^ splitmix(token as u64)))
    }

    /// Checks a planned step and does the GPU's part of it: writes the KV of every
    /// scheduled token, then at each logits row "attends" over the whole context, where
    /// every position must hold the KV of its own prefix (shared prefix blocks included).
    /// Checking at logits only keeps the soak quick; every chunk's tokens are read again when
    /// the sequence reaches its end.
    fn launch(&mut self, out: &SchedulerOutput, step: usize) {
        let bs = self.bs;
        let ahead = out.scheduled.iter().any(|e| e.prev_row.is_some());
        assert!(!ahead || out.scheduled.iter().all(|e| e.prev_row.is_some() && e.is_decode));
        for &(sid, k) in &out.freed_encoder_outputs {
            assert!(out.preempted.contains(&sid) && self.encoded.remove(&(sid, k)));
        }
        let mut patches = 0;
        for &(sid, k) in &out.encoder_inputs {
            assert!(
                self.encoded.insert((sid, k)),
                "step {step}: image ({sid}, {k}) re-encoded while held"
            );
            patches += self.tracked[&sid].images[k].num_patches;
        }
        assert!(patches <= self.s.config().max_encoder_patches_per_step);
        for &id in &out.preempted {
            assert!(out.scheduled.iter().all(|e| e.seq_id != id));
            self.preempted.insert(id);
        }
        let slot = |table: &[u32], p: usize| table[p / bs] as usize * bs + p % bs;
        let mut cursor = 0;
        for e in &out.scheduled {
            let t = &self.tracked[&e.seq_id];
            let end = e.start + e.num_tokens;
            let known = t.tokens.len() + ahead as usize;
            assert!(end <= known && e.needs_logits == (end == known));
            for p in e.start..end {
                let (block, sl) = (e.block_table[p / bs], slot(&e.block_table, p));
                let (token, fingerprint) = self.token_at(e.seq_id, p);
                // A step planned ahead carries 0 for the token the GPU fills in.
                let want_id = if ahead { 0 } else { token };
                assert_eq!((out.input_ids[cursor], out.slot_mapping[cursor]), (want_id, sl as i32));
                // Written blocks belong to this sequence alone and are not in the cache.
                let pool = self.s.pool();
                assert!(
                    pool.ref_count(block) == 1 && pool.block_hash(block).is_none(),
                    "step {step}"
                );
                self.kv[sl] = Some((p, fingerprint));
                cursor += 1;
            }
            for (k, img) in t.images.iter().enumerate() {
                let held = self.encoded.contains(&(e.seq_id, k));
                assert!(
                    held || !img.intersects(e.start, end),
                    "step {step}: span scheduled unencoded"
                );
            }
        }
        assert_eq!(cursor, out.num_tokens());
        for e in out.scheduled.iter().filter(|e| e.needs_logits) {
            for p in 0..e.start + e.num_tokens {
                let want = self.token_at(e.seq_id, p).1;
                assert_eq!(
                    self.kv[slot(&e.block_table, p)],
                    Some((p, want)),
                    "step {step}: seq {} at {p}",
                    e.seq_id
                );
            }
        }
    }

    /// The step's tokens reach the host: sample, maybe lose a client meanwhile, update, and
    /// check what finished against an undisturbed run.
    fn complete(&mut self, out: &SchedulerOutput, step: usize) {
        // Rows of sequences gone since the launch (finished by the step before, or aborted)
        // are dropped, as the engine drops them.
        let sampled: Vec<(u64, u32)> = out
            .scheduled
            .iter()
            .filter(|e| e.needs_logits)
            .filter(|e| {
                let live = self.tracked.contains_key(&e.seq_id);
                self.wasted_rows += (!live && e.prev_row.is_some()) as u64;
                live
            })
            .map(|e| (e.seq_id, fake_token(e.seq_id, e.start + e.num_tokens)))
            .collect();
        // Now and then a client disconnects while the step runs.
        if !sampled.is_empty() && self.rng.random_bool(0.005) {
            let id = sampled[self.rng.random_range(0..sampled.len())].0;
            self.abort(id);
        }
        let upd = self.s.update(out, &sampled);
        for &(sid, k) in &upd.freed_encoder_outputs {
            assert!(
                self.encoded.remove(&(sid, k)),
                "step {step}: freed an encoder output never made"
            );
        }
        for &(sid, tok) in &sampled {
            if let Some(t) = self.tracked.get_mut(&sid) {
                t.push(tok); // streamed to the client exactly once
            }
        }
        for seq in upd.finished {
            let (id, got) = (seq.id(), seq.output_token_ids());
            let t = self.tracked.remove(&id).expect("finished a tracked sequence");
            assert_eq!(
                got,
                &t.tokens[t.prompt_len..],
                "seq {id}: output differs from the stream"
            );
            let (want, reason) = expected_output(id, t.prompt_len, &t.stop);
            assert_eq!(got, want, "seq {id}: output differs from an undisturbed run");
            assert_eq!(seq.finish_reason(), Some(reason), "seq {id}");
            self.finished += 1;
            self.finished_after_preemption += self.preempted.contains(&id) as u64;
        }
        if let Err(e) = self.s.check_invariants() {
            panic!("step {step}: {e}");
        }
        assert!(self.encoded.iter().all(|(sid, _)| self.tracked.contains_key(sid)));
    }
}

/// Thousands of random requests (shared prefixes, images, random lengths, EOS, aborts at any
/// time) through a pool small enough to force preemptions, against a fake model that keeps
/// a fake KV cache and checks every token it reads. Arguments: the seed, the block size and
/// count, `max_num_seqs`, `max_num_batched_tokens`, prefix caching, the number of requests,
/// and whether decode steps are planned ahead (`schedule_ahead` while the step before runs,
/// as the engine's async scheduling does).
#[allow(clippy::too_many_arguments)]
fn soak(
    seed: u64,
    bs: usize,
    num_blocks: usize,
    max_num_seqs: usize,
    budget: usize,
    prefix: bool,
    n: u64,
    ahead: bool,
) {
    let max_model_len = num_blocks * bs;
    let mut cfg = config(bs, num_blocks, max_num_seqs, budget);
    (
        cfg.max_model_len,
        cfg.enable_prefix_caching,
        cfg.max_encoder_patches_per_step,
    ) = (max_model_len, prefix, 256);
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    let templates: Vec<(Vec<u32>, Vec<ImageSpan>)> = (0..4)
        .map(|_| {
            let mut p = (Vec::new(), Vec::new());
            let len = rng.random_range(1..200);
            push_random_text(&mut rng, &mut p, len, 1..3);
            p
        })
        .collect();
    let mut soak = Soak {
        s: Scheduler::new(cfg).unwrap(),
        rng,
        bs,
        tracked: BTreeMap::new(),
        kv: vec![None; num_blocks * bs],
        encoded: HashSet::new(),
        preempted: HashSet::new(),
        added: 0,
        finished: 0,
        aborted: 0,
        finished_after_preemption: 0,
        ahead_steps: 0,
        wasted_rows: 0,
    };

    let mut in_flight: Option<SchedulerOutput> = None;
    let mut steps = 0;
    while steps < 2_000_000 {
        steps += 1;
        // Arrivals in bursts, keeping a queue (a bounded one: a long queue adds nothing the
        // scheduler looks at, and slows the invariant walk).
        for _ in 0..soak.rng.random_range(0..=3) {
            if soak.added < n && soak.s.num_waiting() < 48 {
                let t = random_prompt(&mut soak.rng, &templates, max_model_len - 1);
                let seq = Sequence::new(soak.added, t.tokens.clone(), t.images.clone(), t.stop.clone());
                soak.s.add(seq).unwrap();
                soak.tracked.insert(soak.added, t);
                soak.added += 1;
            }
        }
        if !soak.tracked.is_empty() && soak.rng.random_bool(0.01) {
            let id = *soak
                .tracked
                .keys()
                .nth(soak.rng.random_range(0..soak.tracked.len()))
                .unwrap();
            soak.abort(id);
        }
        let current = match in_flight.take() {
            Some(out) => out,
            None => {
                if !soak.s.has_unfinished() {
                    if soak.added == n {
                        break;
                    }
                    continue; // idle until the next arrival
                }
                let out = soak.s.schedule();
                assert!(!out.is_empty(), "step {steps}: nothing scheduled with work queued");
                assert!(out
                    .scheduled
                    .iter()
                    .enumerate()
                    .all(|(i, e)| e.is_decode == (i < out.num_decodes) && e.prev_row.is_none()));
                soak.launch(&out, steps);
                out
            }
        };
        assert!(current.num_tokens() <= budget && current.scheduled.len() <= max_num_seqs);
        // The engine plans ahead after decode-only steps (the ones it runs as graphs).
        if ahead && current.scheduled.iter().all(|e| e.is_decode) {
            if let Some(next) = soak.s.schedule_ahead(&current) {
                let mut last = None;
                for e in &next.scheduled {
                    let r = e.prev_row.expect("planned ahead");
                    let prev = &current.scheduled[r];
                    assert!(last < Some(r), "rows keep the running step's order");
                    assert_eq!((prev.seq_id, prev.start + 1), (e.seq_id, e.start));
                    last = Some(r);
                }
                soak.launch(&next, steps);
                soak.ahead_steps += 1;
                in_flight = Some(next);
            }
        }
        soak.complete(&current, steps);
    }

    let s = &soak.s;
    assert!(soak.added == n && !s.has_unfinished(), "soak did not finish");
    assert_eq!(s.pool().num_free(), num_blocks, "blocks leaked");
    assert!(soak.encoded.is_empty(), "encoder outputs leaked: {:?}", soak.encoded);
    assert_eq!(soak.finished + soak.aborted, n);
    assert!(
        soak.finished_after_preemption > 0,
        "the soak forced no preemption: shrink the pool"
    );
    assert_eq!(ahead, soak.ahead_steps > 0, "steps planned ahead: {}", soak.ahead_steps);
    assert_eq!(
        ahead,
        soak.wasted_rows > 0,
        "rows ahead of a finish: {}",
        soak.wasted_rows
    );
    let stats = s.stats();
    assert_eq!(prefix, stats.prefix_cache_hit_tokens > 0, "{stats:?}");
    println!(
        "seed {seed}, {steps} steps ({} planned ahead, {} rows wasted): {} finished ({} after preemption), {} aborted, {stats:?}",
        soak.ahead_steps, soak.wasted_rows, soak.finished, soak.finished_after_preemption, soak.aborted
    );
}

#[test]
fn soak_small_pool_prefix_caching() {
    soak(1, 16, 40, 16, 128, true, 3000, false);
}

#[test]
fn soak_tiny_blocks_no_prefix_caching() {
    soak(2, 4, 150, 32, 96, false, 3000, false);
}

#[test]
fn soak_budget_below_max_num_seqs() {
    soak(3, 8, 80, 64, 24, true, 2000, false);
}

#[test]
fn soak_many_seqs_large_budget() {
    soak(4, 16, 64, 256, 512, true, 3000, false);
}

#[test]
fn soak_ahead_small_pool_prefix_caching() {
    soak(5, 16, 40, 16, 128, true, 3000, true);
}

#[test]
fn soak_ahead_tiny_blocks_no_prefix_caching() {
    soak(6, 4, 150, 32, 96, false, 3000, true);
}

#[test]
fn soak_ahead_many_seqs_large_budget() {
    soak(7, 16, 64, 256, 512, true, 3000, true);
}
