//! Wrappers for `kernels/include/sampling.h`: one launch samples the next token of every row
//! of a batch of logits (greedy, temperature, top-k and top-p, penalties, log-probabilities).
//!
//! The semantics (penalty formulas, the allowed set of top-k and top-p, what the log-prob is
//! of, row statuses) are written once, in the C header. In short: penalties are applied in
//! place to the logits, the allowed set is top-k and top-p applied jointly to the untruncated
//! distribution, the log-prob is that of the processed logits before truncation, and a row with
//! bad logits, history or parameters reports it in `status` with token -1.
//!
//! [`SamplingClass::Base`] (FastDeploy's default, `FD_SAMPLING_CLASS=base`) runs the exact
//! sampler; [`SamplingClass::Rejection`] runs FlashInfer-style dual-pivot rejection sampling.
//! Both draw from the same distribution; for a given seed they draw different tokens.
//!
//! [`sample`] takes device views; [`Sampler`] owns the per-row parameter buffers and the
//! workspace, uploads a batch's parameters from the host, and allocates nothing per step.
//!
//! [`sample_greedy`] is the fast path for batches whose every row is greedy (no penalties, no
//! top-n): one pass over the logits, an argmax with the log-softmax normaliser; the
//! [`Sampler`] takes it by itself when a batch qualifies (docs/notes/sampling_greedy.md).

use crate::error::{Error, Result};
use crate::runtime::{DType, DeviceTensor, Gpu, PinnedStaging, TensorView, TensorViewMut};
use crate::sys;

use super::{c_dtype, check};

/// Which sampler runs (chosen by `FD_SAMPLING_CLASS`, FastDeploy's name, in
/// `config::EnvFlags`; re-exported there).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SamplingClass {
    /// Unset, empty, or "base": softmax then top-k/top-p sampling.
    Base,
    /// "rejection": sort-free rejection sampling for top-k/top-p.
    Rejection,
}

/// The most top-n alternatives a row can return.
pub const MAX_TOP_N: usize = sys::OCRVL_SAMPLING_MAX_TOP_N as usize;
/// The largest vocabulary the kernel supports.
pub const MAX_VOCAB: usize = sys::OCRVL_SAMPLING_MAX_VOCAB as usize;

/// Row status: the token was sampled.
pub const STATUS_OK: i32 = 0;
/// Row status: the logits hold a NaN or +inf (after temperature), or no finite value.
pub const STATUS_BAD_LOGITS: i32 = 1;
/// Row status: the history offsets are malformed or a history token is outside the vocab.
pub const STATUS_BAD_HISTORY: i32 = 2;
/// Row status: a parameter is out of range (see [`SamplingParams::validate`]).
pub const STATUS_BAD_PARAMS: i32 = 3;
/// Row status of [`sample_greedy`] only: the row is not greedy (see
/// [`SamplingParams::is_greedy`]), so the greedy kernel cannot draw it.
pub const STATUS_NOT_GREEDY: i32 = 4;

/// Temperatures below this are greedy (vLLM's epsilon; `kMinTemperature` in the kernels).
pub const GREEDY_TEMPERATURE: f32 = 1e-5;
/// The most blocks [`sample_greedy`] splits a row across.
pub const GREEDY_MAX_SPLITS: usize = sys::OCRVL_SAMPLING_GREEDY_MAX_SPLITS as usize;

/// One row's sampling parameters, as the host holds them.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct SamplingParams {
    /// 0 (anything below 1e-5) is greedy.
    pub temperature: f32,
    /// 0 (or >= vocab) is off; 1 is greedy.
    pub top_k: i32,
    /// >= 1 is off; must be > 0.
    pub top_p: f32,
    pub seed: u64,
    /// The position: the same (seed, step) gives the same token in any batch.
    pub step: u64,
    /// 1 is off; > 0.
    pub repetition_penalty: f32,
    /// 0 is off.
    pub frequency_penalty: f32,
    /// 0 is off.
    pub presence_penalty: f32,
}

impl Default for SamplingParams {
    fn default() -> Self {
        SamplingParams {
            temperature: 1.0,
            top_k: 0,
            top_p: 1.0,
            seed: 0,
            step: 0,
            repetition_penalty: 1.0,
            frequency_penalty: 0.0,
            presence_penalty: 0.0,
        }
    }
}

impl SamplingParams {
    pub fn greedy() -> Self {
        SamplingParams {
            temperature: 0.0,
            ..Default::default()
        }
    }

    /// Whether the row's token is the argmax of its (penalized) logits: temperature below
    /// [`GREEDY_TEMPERATURE`] or top_k 1, the kernels' own test. A NaN temperature is not
    /// greedy (unless top_k is 1); either way the kernel reports it as a bad parameter.
    pub fn is_greedy(&self) -> bool {
        self.temperature < GREEDY_TEMPERATURE || self.top_k == 1
    }

    pub fn has_penalties(&self) -> bool {
        self.repetition_penalty != 1.0 || self.frequency_penalty != 0.0 || self.presence_penalty != 0.0
    }

    /// The kernel's own checks (a row failing them gets [`STATUS_BAD_PARAMS`]), for callers
    /// that want the error before launching.
    pub fn validate(&self) -> Result<()> {
        const OP: &str = "sampling params";
        let bad = |msg: String| Err(Error::invalid(OP, msg));
        if !(self.temperature >= 0.0 && self.temperature.is_finite()) {
            return bad(format!("temperature {} must be finite and >= 0", self.temperature));
        }
        if self.top_k < 0 {
            return bad(format!("top_k {} must be >= 0", self.top_k));
        }
        // NaN fails too.
        if self.top_p.is_nan() || self.top_p <= 0.0 {
            return bad(format!("top_p {} must be > 0", self.top_p));
        }
        if !(self.repetition_penalty > 0.0 && self.repetition_penalty.is_finite()) {
            return bad(format!(
                "repetition_penalty {} must be finite and > 0",
                self.repetition_penalty
            ));
        }
        if !self.frequency_penalty.is_finite() || !self.presence_penalty.is_finite() {
            return bad("frequency and presence penalties must be finite".into());
        }
        Ok(())
    }
}

/// Bytes of workspace [`sample`] needs for `history_capacity` history tokens.
pub fn workspace_bytes(history_capacity: usize) -> usize {
    // SAFETY: a pure function of its argument.
    let n = unsafe { sys::ocrvl_sampling_workspace_size(history_capacity as i64) };
    n.max(0) as usize
}

/// Packs per-row token histories into one token array and `batch + 1` offsets
/// (`cu[b]..cu[b+1]` is row b's history), appending to the two vectors after clearing them.
pub fn pack_history(histories: &[&[i32]], tokens: &mut Vec<i32>, cu: &mut Vec<i32>) -> Result<()> {
    tokens.clear();
    cu.clear();
    cu.push(0);
    for h in histories {
        tokens.extend_from_slice(h);
        let end = i32::try_from(tokens.len())
            .map_err(|_| Error::invalid("pack_history", format!("{} history tokens overflow i32", tokens.len())))?;
        cu.push(end);
    }
    Ok(())
}

/// Penalty inputs on the device.
pub struct PenaltyBatch<'a> {
    /// F32 [batch]
    pub repetition: TensorView<'a>,
    /// F32 [batch]
    pub frequency: TensorView<'a>,
    /// F32 [batch]
    pub presence: TensorView<'a>,
    /// I32 [capacity]: every row's generated tokens, packed.
    pub history: TensorView<'a>,
    /// I32 [batch + 1]: row b owns `history[cu[b]..cu[b+1]]`.
    pub cu_history: TensorView<'a>,
}

/// Per-row parameters on the device.
pub struct SamplingBatch<'a> {
    /// F32 [batch]
    pub temperature: TensorView<'a>,
    /// I32 [batch]
    pub top_k: TensorView<'a>,
    /// F32 [batch]
    pub top_p: TensorView<'a>,
    /// I32 [batch, 2]: the u64 seed's low and high words.
    pub seed: TensorView<'a>,
    /// I32 [batch, 2]: the u64 step's low and high words.
    pub step: TensorView<'a>,
    pub penalties: Option<PenaltyBatch<'a>>,
}

/// Where [`sample`] writes.
pub struct SamplingOutputs<'a> {
    /// I32 [batch]
    pub token: TensorViewMut<'a>,
    /// F32 [batch]
    pub logprob: TensorViewMut<'a>,
    /// I32 [batch]
    pub status: TensorViewMut<'a>,
    /// Top-n alternatives: ids I32 [batch, n] and log-probs F32 [batch, n], 1 <= n <= 20.
    pub top: Option<(TensorViewMut<'a>, TensorViewMut<'a>)>,
}

fn class_to_c(class: SamplingClass) -> sys::OcrvlSamplingClass {
    match class {
        SamplingClass::Base => sys::OcrvlSamplingClass_OCRVL_SAMPLING_EXACT,
        SamplingClass::Rejection => sys::OcrvlSamplingClass_OCRVL_SAMPLING_REJECTION,
    }
}

fn expect_vec(op: &'static str, what: &str, v: &TensorView<'_>, dtype: DType, dims: &[usize]) -> Result<()> {
    v.expect(op, what, dtype, dims)?;
    if !v.is_contiguous() {
        return Err(Error::invalid(op, format!("{what} must be contiguous")));
    }
    Ok(())
}

/// `(batch, vocab)` of a sampler's logits: `[batch, vocab]`, f32 or bf16, vocab in
/// 1..=MAX_VOCAB; errors name `op`.
fn logits_shape(op: &'static str, dims: &[usize], dtype: DType) -> Result<(usize, usize)> {
    let [batch, vocab] = dims else {
        return Err(Error::invalid(
            op,
            format!("logits must be [batch, vocab], got {dims:?}"),
        ));
    };
    let (batch, vocab) = (*batch, *vocab);
    if !matches!(dtype, DType::F32 | DType::BF16) {
        return Err(Error::invalid(
            op,
            format!("logits are {dtype}; only f32 and bf16 are supported"),
        ));
    }
    if vocab == 0 || vocab > MAX_VOCAB {
        return Err(Error::invalid(op, format!("vocab {vocab} outside 1..={MAX_VOCAB}")));
    }
    if batch > i32::MAX as usize {
        return Err(Error::invalid(op, format!("batch {batch} too large")));
    }
    Ok((batch, vocab))
}

/// Samples one token per row of `logits` (F32 or BF16 [batch, vocab]; rows may be strided).
/// Penalties, when given, are applied to `logits` in place. `workspace` needs
/// [`workspace_bytes`] of the history capacity (any dtype), and may be `None` without
/// penalties.
pub fn sample(
    gpu: &Gpu,
    class: SamplingClass,
    logits: &mut TensorViewMut<'_>,
    params: &SamplingBatch<'_>,
    out: &mut SamplingOutputs<'_>,
    workspace: Option<&mut TensorViewMut<'_>>,
) -> Result<()> {
    const OP: &str = "sampling";
    let (batch, vocab) = logits_shape(OP, logits.dims(), logits.dtype())?;
    expect_vec(OP, "temperature", &params.temperature, DType::F32, &[batch])?;
    expect_vec(OP, "top_k", &params.top_k, DType::I32, &[batch])?;
    expect_vec(OP, "top_p", &params.top_p, DType::F32, &[batch])?;
    expect_vec(OP, "seed", &params.seed, DType::I32, &[batch, 2])?;
    expect_vec(OP, "step", &params.step, DType::I32, &[batch, 2])?;
    expect_vec(OP, "token", &out.token.as_view(), DType::I32, &[batch])?;
    expect_vec(OP, "logprob", &out.logprob.as_view(), DType::F32, &[batch])?;
    expect_vec(OP, "status", &out.status.as_view(), DType::I32, &[batch])?;
    let (num_top, top_ids, top_logprobs) = match &out.top {
        None => (0usize, std::ptr::null_mut(), std::ptr::null_mut()),
        Some((ids, lps)) => {
            let d = ids.dims();
            let n = if d.len() == 2 { d[1] } else { 0 };
            if n == 0 || n > MAX_TOP_N {
                return Err(Error::invalid(
                    OP,
                    format!("top ids must be [batch, n] with 1 <= n <= {MAX_TOP_N}, got {d:?}"),
                ));
            }
            expect_vec(OP, "top ids", &ids.as_view(), DType::I32, &[batch, n])?;
            expect_vec(OP, "top logprobs", &lps.as_view(), DType::F32, &[batch, n])?;
            (n, ids.device_ptr() as *mut i32, lps.device_ptr() as *mut f32)
        }
    };

    let mut args = sys::OcrvlSamplingArgs {
        logits: logits.device_ptr() as *mut _,
        logits_stride: logits.stride0() as i64,
        logits_dtype: c_dtype(logits.dtype()),
        batch: batch as i32,
        vocab: vocab as i32,
        temperature: params.temperature.device_ptr() as *const f32,
        top_k: params.top_k.device_ptr() as *const i32,
        top_p: params.top_p.device_ptr() as *const f32,
        seed: params.seed.device_ptr() as *const u32,
        step: params.step.device_ptr() as *const u32,
        repetition_penalty: std::ptr::null(),
        frequency_penalty: std::ptr::null(),
        presence_penalty: std::ptr::null(),
        history: std::ptr::null(),
        cu_history: std::ptr::null(),
        history_capacity: 0,
        token: out.token.device_ptr() as *mut i32,
        logprob: out.logprob.device_ptr() as *mut f32,
        status: out.status.device_ptr() as *mut i32,
        num_top: num_top as i32,
        top_ids,
        top_logprobs,
        sampling_class: class_to_c(class),
    };
    let (mut ws_ptr, mut ws_bytes) = (std::ptr::null_mut(), 0i64);
    if let Some(p) = &params.penalties {
        for (what, v) in [
            ("repetition_penalty", &p.repetition),
            ("frequency_penalty", &p.frequency),
            ("presence_penalty", &p.presence),
        ] {
            expect_vec(OP, what, v, DType::F32, &[batch])?;
        }
        expect_vec(OP, "cu_history", &p.cu_history, DType::I32, &[batch + 1])?;
        let capacity = p.history.numel();
        expect_vec(OP, "history", &p.history, DType::I32, &[capacity])?;
        let need = workspace_bytes(capacity);
        if need > 0 {
            let ws = workspace
                .as_ref()
                .ok_or_else(|| Error::invalid(OP, format!("penalties need a workspace of {need} bytes")))?;
            let have = ws.numel() * ws.dtype().size_bytes();
            if have < need || !ws.is_contiguous() {
                return Err(Error::invalid(
                    OP,
                    format!(
                        "workspace of {have} bytes (contiguous: {}); {need} needed",
                        ws.is_contiguous()
                    ),
                ));
            }
            ws_ptr = ws.device_ptr() as *mut std::ffi::c_void;
            ws_bytes = have as i64;
        }
        args.repetition_penalty = p.repetition.device_ptr() as *const f32;
        args.frequency_penalty = p.frequency.device_ptr() as *const f32;
        args.presence_penalty = p.presence.device_ptr() as *const f32;
        args.history = p.history.device_ptr() as *const i32;
        args.cu_history = p.cu_history.device_ptr() as *const i32;
        args.history_capacity = capacity as i64;
    }
    // SAFETY: every pointer addresses a device buffer of the shape checked above on this GPU,
    // and the stream is the one all of them are used on.
    let status = unsafe { sys::ocrvl_sampling(&args, ws_ptr, ws_bytes, gpu.raw_stream()) };
    check(OP, status)
}

/// Blocks per row that [`sample_greedy`] uses by default for `batch` rows of `vocab` logits on
/// `gpu` (kernels/sampling/greedy.cuh says why): 1 once the batch fills the GPU.
pub fn greedy_num_splits(gpu: &Gpu, batch: usize, vocab: usize) -> usize {
    greedy_num_splits_for(batch, vocab, gpu.sm_count())
}

/// [`greedy_num_splits`] for a GPU of `num_sms` multiprocessors.
pub fn greedy_num_splits_for(batch: usize, vocab: usize, num_sms: usize) -> usize {
    let clamp = |v: usize| v.min(i32::MAX as usize) as i32;
    // SAFETY: a pure function of its arguments.
    let n = unsafe { sys::ocrvl_sampling_greedy_num_splits(clamp(batch), clamp(vocab), clamp(num_sms)) };
    n.max(1) as usize
}

/// Bytes of workspace [`sample_greedy`] needs for `batch` rows split `num_splits` ways (0 for
/// one split).
pub fn greedy_workspace_bytes(batch: usize, num_splits: usize) -> usize {
    let (Ok(b), Ok(s)) = (i32::try_from(batch), i32::try_from(num_splits)) else {
        return usize::MAX;
    };
    // SAFETY: a pure function of its arguments.
    let n = unsafe { sys::ocrvl_sampling_greedy_workspace_size(b, s) };
    if n < 0 {
        usize::MAX
    } else {
        n as usize
    }
}

/// The greedy fast path: token, log-prob and status of every row of `logits` (F32 or BF16
/// [batch, vocab], rows may be strided; only read) in one pass over the logits, as [`sample`]
/// gives them for greedy rows (log-probs up to f32 summation order). For batches whose every
/// row is greedy, without penalties and without top-n alternatives; a row that is not greedy
/// gets [`STATUS_NOT_GREEDY`]. `num_splits` blocks share each row (`None`: the
/// [`greedy_num_splits`] choice); more than one needs a `workspace` of
/// [`greedy_workspace_bytes`].
pub fn sample_greedy(
    gpu: &Gpu,
    logits: &TensorView<'_>,
    params: &SamplingBatch<'_>,
    out: &mut SamplingOutputs<'_>,
    num_splits: Option<usize>,
    workspace: Option<&mut TensorViewMut<'_>>,
) -> Result<()> {
    const OP: &str = "sampling_greedy";
    let (batch, vocab) = logits_shape(OP, logits.dims(), logits.dtype())?;
    if params.penalties.is_some() {
        return Err(Error::invalid(
            OP,
            "the greedy path applies no penalties; rows with penalties go through `sample`",
        ));
    }
    if out.top.is_some() {
        return Err(Error::invalid(
            OP,
            "the greedy path gives no top-n alternatives; such rows go through `sample`",
        ));
    }
    expect_vec(OP, "temperature", &params.temperature, DType::F32, &[batch])?;
    expect_vec(OP, "top_k", &params.top_k, DType::I32, &[batch])?;
    expect_vec(OP, "top_p", &params.top_p, DType::F32, &[batch])?;
    expect_vec(OP, "token", &out.token.as_view(), DType::I32, &[batch])?;
    expect_vec(OP, "logprob", &out.logprob.as_view(), DType::F32, &[batch])?;
    expect_vec(OP, "status", &out.status.as_view(), DType::I32, &[batch])?;
    let splits = num_splits.unwrap_or_else(|| greedy_num_splits(gpu, batch, vocab));
    if splits == 0 || splits > GREEDY_MAX_SPLITS {
        return Err(Error::invalid(
            OP,
            format!("{splits} splits outside 1..={GREEDY_MAX_SPLITS}"),
        ));
    }
    let need = greedy_workspace_bytes(batch, splits);
    let (mut ws_ptr, mut ws_bytes) = (std::ptr::null_mut(), 0i64);
    if need > 0 {
        let ws = workspace
            .as_ref()
            .ok_or_else(|| Error::invalid(OP, format!("{splits} splits need a workspace of {need} bytes")))?;
        let have = ws.numel() * ws.dtype().size_bytes();
        if have < need || !ws.is_contiguous() || ws.device_ptr() % 16 != 0 {
            return Err(Error::invalid(
                OP,
                format!(
                    "workspace of {have} bytes (contiguous: {}, 16-byte aligned: {}); {need} needed",
                    ws.is_contiguous(),
                    ws.device_ptr() % 16 == 0
                ),
            ));
        }
        ws_ptr = ws.device_ptr() as *mut std::ffi::c_void;
        ws_bytes = have as i64;
    }
    let args = sys::OcrvlSamplingGreedyArgs {
        logits: logits.device_ptr() as *const _,
        logits_stride: logits.stride0() as i64,
        logits_dtype: c_dtype(logits.dtype()),
        batch: batch as i32,
        vocab: vocab as i32,
        temperature: params.temperature.device_ptr() as *const f32,
        top_k: params.top_k.device_ptr() as *const i32,
        top_p: params.top_p.device_ptr() as *const f32,
        token: out.token.device_ptr() as *mut i32,
        logprob: out.logprob.device_ptr() as *mut f32,
        status: out.status.device_ptr() as *mut i32,
        num_splits: splits as i32,
    };
    // SAFETY: every pointer addresses a device buffer of the shape checked above on this GPU
    // (the workspace holds `need` bytes, 16-byte aligned), used on this stream.
    let status = unsafe { sys::ocrvl_sampling_greedy(&args, ws_ptr, ws_bytes, gpu.raw_stream()) };
    check(OP, status)
}

/// Owns the device buffers of a batch's sampling parameters (up to `max_batch` rows and
/// `history_capacity` history tokens) and the workspaces; uploads each step's parameters.
///
/// It picks the kernel per batch, on the host, from the parameters `set_batch` was given: a
/// batch whose every row is greedy, with no penalties to apply and no top-n alternatives
/// asked, goes through [`sample_greedy`] (one pass, an argmax); any other batch through
/// [`sample`], whose results for greedy rows are the same. CUDA graphs capture only the
/// decode forward (engine/cuda_graphs.rs); the sampler always launches eagerly after it, so the
/// choice is made afresh every step and never baked into a graph. Were the sampler ever
/// captured, the choice (and the split count, a function of the batch size) would have to be
/// part of the graph's key.
pub struct Sampler {
    max_batch: usize,
    history_capacity: usize,
    batch: usize,
    penalties: bool,
    /// Every row of the batch is greedy ([`SamplingParams::is_greedy`]).
    all_greedy: bool,
    /// Greedy batches may take the one-pass greedy kernel ([`Sampler::set_greedy_kernel`]).
    greedy_kernel: bool,
    buf: ParamBuffers,
    workspace: DeviceTensor,
    /// The greedy path's per-(row, split) partials, sized for the largest batch.
    greedy_workspace: DeviceTensor,
    host_i32: Vec<i32>,
    host_cu: Vec<i32>,
    staging: PinnedStaging,
}

struct ParamBuffers {
    temperature: DeviceTensor,
    top_k: DeviceTensor,
    top_p: DeviceTensor,
    seed: DeviceTensor,
    step: DeviceTensor,
    repetition: DeviceTensor,
    frequency: DeviceTensor,
    presence: DeviceTensor,
    history: DeviceTensor,
    cu_history: DeviceTensor,
}

impl ParamBuffers {
    fn views(&self, n: usize, penalties: bool) -> Result<SamplingBatch<'_>> {
        let penalties = if penalties {
            Some(PenaltyBatch {
                repetition: self.repetition.view().narrow0(0, n)?,
                frequency: self.frequency.view().narrow0(0, n)?,
                presence: self.presence.view().narrow0(0, n)?,
                history: self.history.view(),
                cu_history: self.cu_history.view().narrow0(0, n + 1)?,
            })
        } else {
            None
        };
        Ok(SamplingBatch {
            temperature: self.temperature.view().narrow0(0, n)?,
            top_k: self.top_k.view().narrow0(0, n)?,
            top_p: self.top_p.view().narrow0(0, n)?,
            seed: self.seed.view().narrow0(0, n)?,
            step: self.step.view().narrow0(0, n)?,
            penalties,
        })
    }
}

impl Sampler {
    pub fn new(gpu: &Gpu, max_batch: usize, history_capacity: usize) -> Result<Sampler> {
        let f = |dims: &[usize]| DeviceTensor::zeros(gpu, DType::F32, dims);
        let i = |dims: &[usize]| DeviceTensor::zeros(gpu, DType::I32, dims);
        // The split count never falls as the vocab grows, so the largest vocab bounds it.
        let greedy_bytes = (1..=max_batch)
            .map(|b| greedy_workspace_bytes(b, greedy_num_splits(gpu, b, MAX_VOCAB)))
            .max()
            .unwrap_or(0);
        Ok(Sampler {
            max_batch,
            history_capacity,
            batch: 0,
            penalties: false,
            all_greedy: false,
            greedy_kernel: false,
            buf: ParamBuffers {
                temperature: f(&[max_batch])?,
                top_k: i(&[max_batch])?,
                top_p: f(&[max_batch])?,
                seed: i(&[max_batch, 2])?,
                step: i(&[max_batch, 2])?,
                repetition: f(&[max_batch])?,
                frequency: f(&[max_batch])?,
                presence: f(&[max_batch])?,
                history: i(&[history_capacity])?,
                cu_history: i(&[max_batch + 1])?,
            },
            workspace: DeviceTensor::zeros(gpu, DType::I32, &[workspace_bytes(history_capacity).div_ceil(4)])?,
            // I32 elements; allocations are at least 256-byte aligned, as the kernel needs 16.
            greedy_workspace: DeviceTensor::zeros(gpu, DType::I32, &[greedy_bytes.div_ceil(4).max(1)])?,
            host_i32: Vec::with_capacity(2 * max_batch),
            host_cu: Vec::with_capacity(max_batch + 1),
            // Eight per-row arrays of 4-8 bytes, the history and its offsets, each part
            // 256-byte aligned in the staging buffer.
            staging: PinnedStaging::new(gpu, 48 * max_batch + 4 * (history_capacity + max_batch + 1) + 16 * 256)?,
        })
    }

    /// The rows of the next [`Sampler::sample`]. `histories` is empty (no penalties) or one
    /// slice per row. Parameters are not validated here: a bad row gets [`STATUS_BAD_PARAMS`]
    /// from the kernel and the other rows are sampled.
    pub fn set_batch(&mut self, gpu: &Gpu, params: &[SamplingParams], histories: &[&[i32]]) -> Result<()> {
        const OP: &str = "Sampler::set_batch";
        let n = params.len();
        if n > self.max_batch {
            return Err(Error::invalid(
                OP,
                format!("{n} rows over max_batch {}", self.max_batch),
            ));
        }
        if !histories.is_empty() && histories.len() != n {
            return Err(Error::invalid(
                OP,
                format!("{} histories for {n} rows", histories.len()),
            ));
        }
        self.batch = n;
        self.penalties = !histories.is_empty() && params.iter().any(SamplingParams::has_penalties);
        self.all_greedy = params.iter().all(SamplingParams::is_greedy);
        if n == 0 {
            return Ok(());
        }
        // Every array goes up in one page-locked batch of async copies: the CPU does not wait
        // for the GPU (pageable copies would each wait for the step's forward to finish).
        let f32s = |f: &dyn Fn(&SamplingParams) -> f32| -> Vec<f32> { params.iter().map(f).collect() };
        let words = |v: u64| [v as u32 as i32, (v >> 32) as u32 as i32];
        let temperature = f32s(&|p| p.temperature);
        let top_p = f32s(&|p| p.top_p);
        let repetition = f32s(&|p| p.repetition_penalty);
        let frequency = f32s(&|p| p.frequency_penalty);
        let presence = f32s(&|p| p.presence_penalty);
        let top_k: Vec<i32> = params.iter().map(|p| p.top_k).collect();
        let seed: Vec<i32> = params.iter().flat_map(|p| words(p.seed)).collect();
        let step: Vec<i32> = params.iter().flat_map(|p| words(p.step)).collect();
        if self.penalties {
            pack_history(histories, &mut self.host_i32, &mut self.host_cu)?;
            if self.host_i32.len() > self.history_capacity {
                return Err(Error::invalid(
                    OP,
                    format!(
                        "{} history tokens over the capacity {}",
                        self.host_i32.len(),
                        self.history_capacity
                    ),
                ));
            }
        }
        let b = &mut self.buf;
        let mut parts: Vec<(&[u8], TensorViewMut<'_>)> = vec![
            (
                bytemuck::cast_slice(&temperature),
                b.temperature.view_mut().narrow0(0, n)?,
            ),
            (bytemuck::cast_slice(&top_p), b.top_p.view_mut().narrow0(0, n)?),
            (
                bytemuck::cast_slice(&repetition),
                b.repetition.view_mut().narrow0(0, n)?,
            ),
            (bytemuck::cast_slice(&frequency), b.frequency.view_mut().narrow0(0, n)?),
            (bytemuck::cast_slice(&presence), b.presence.view_mut().narrow0(0, n)?),
            (bytemuck::cast_slice(&top_k), b.top_k.view_mut().narrow0(0, n)?),
            (bytemuck::cast_slice(&seed), b.seed.view_mut().narrow0(0, n)?),
            (bytemuck::cast_slice(&step), b.step.view_mut().narrow0(0, n)?),
        ];
        if self.penalties {
            let len = self.host_i32.len();
            parts.push((
                bytemuck::cast_slice(&self.host_i32),
                b.history.view_mut().narrow0(0, len)?,
            ));
            parts.push((
                bytemuck::cast_slice(&self.host_cu),
                b.cu_history.view_mut().narrow0(0, n + 1)?,
            ));
        }
        self.staging.upload_parts(gpu, &mut parts)
    }

    /// Rows set by the last [`Sampler::set_batch`].
    pub fn batch(&self) -> usize {
        self.batch
    }

    /// Samples `logits` ([batch, vocab], batch = the rows of the last `set_batch`).
    pub fn sample(
        &mut self,
        gpu: &Gpu,
        class: SamplingClass,
        logits: &mut TensorViewMut<'_>,
        out: &mut SamplingOutputs<'_>,
    ) -> Result<()> {
        if logits.dims().first() != Some(&self.batch) {
            return Err(Error::invalid(
                "Sampler::sample",
                format!("logits {:?} for a batch of {} rows", logits.dims(), self.batch),
            ));
        }
        let params = self.buf.views(self.batch, self.penalties)?;
        if self.uses_greedy_path(out.top.is_some()) {
            let mut ws = self.greedy_workspace.view_mut();
            return sample_greedy(gpu, &logits.as_view(), &params, out, None, Some(&mut ws));
        }
        let mut ws = self.workspace.view_mut();
        sample(gpu, class, logits, &params, out, Some(&mut ws))
    }

    /// Whether [`Sampler::sample`] takes the greedy path for the batch of the last
    /// `set_batch` (with or without top-n alternatives asked).
    pub fn uses_greedy_path(&self, top_n: bool) -> bool {
        self.greedy_kernel && self.all_greedy && !self.penalties && !top_n
    }

    /// Lets all-greedy batches take the one-pass greedy kernel. Off in a new sampler; the
    /// engine turns it on unless `OCRVL_GREEDY_KERNEL=0` (measured faster at every batch
    /// size, with the engine's GPU tests passing on it: docs/notes/sampling_greedy.md).
    pub fn set_greedy_kernel(&mut self, on: bool) {
        self.greedy_kernel = on;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn greedy_split_count_fills_the_gpu_in_one_wave() {
        const H100_SMS: usize = 132;
        const VOCAB: usize = 103424;
        // A batch that gives every SM a row runs one block per row (no combine launch).
        for batch in [132, 133, 256, 1024] {
            assert_eq!(greedy_num_splits_for(batch, VOCAB, H100_SMS), 1, "batch {batch}");
        }
        // Smaller batches: about two blocks per SM, never more (one wave), no slice under
        // 16384 logits (103424 allows 6), never over the cap.
        for batch in 1..H100_SMS {
            let s = greedy_num_splits_for(batch, VOCAB, H100_SMS);
            assert!((1..=6).contains(&s), "batch {batch}: {s} splits");
            assert!(batch * s <= 2 * H100_SMS, "batch {batch}: {s} splits overfill");
            assert!(
                s == 6 || batch * (s + 1) > 2 * H100_SMS,
                "batch {batch}: {s} splits leave SMs idle"
            );
        }
        assert_eq!(greedy_num_splits_for(1, VOCAB, H100_SMS), 6);
        assert_eq!(greedy_num_splits_for(32, VOCAB, H100_SMS), 6);
        assert_eq!(greedy_num_splits_for(66, VOCAB, H100_SMS), 4);
        assert_eq!(greedy_num_splits_for(131, VOCAB, H100_SMS), 2);
        // Small vocabularies are never split; huge ones stop at the cap.
        assert_eq!(greedy_num_splits_for(1, 1000, H100_SMS), 1);
        assert_eq!(greedy_num_splits_for(1, MAX_VOCAB, H100_SMS), GREEDY_MAX_SPLITS);
        // Degenerate inputs still give a usable count.
        assert_eq!(greedy_num_splits_for(0, VOCAB, H100_SMS), 1);
    }

    #[test]
    fn greedy_workspace_is_16_bytes_per_split_row() {
        assert_eq!(greedy_workspace_bytes(256, 1), 0);
        assert_eq!(greedy_workspace_bytes(7, 6), 7 * 6 * 16);
        assert_eq!(greedy_workspace_bytes(1, GREEDY_MAX_SPLITS), 16 * GREEDY_MAX_SPLITS);
        assert_eq!(greedy_workspace_bytes(4, 0), usize::MAX);
        assert_eq!(greedy_workspace_bytes(4, GREEDY_MAX_SPLITS + 1), usize::MAX);
    }

    #[test]
    fn greedy_rows_are_the_kernels_greedy_rows() {
        let p = SamplingParams::default();
        assert!(SamplingParams::greedy().is_greedy());
        assert!(SamplingParams { temperature: 9e-6, ..p }.is_greedy());
        assert!(SamplingParams {
            temperature: 0.7,
            top_k: 1,
            ..p
        }
        .is_greedy());
        assert!(SamplingParams { temperature: -1.0, ..p }.is_greedy()); // the kernel reports it
        assert!(!SamplingParams { temperature: 1e-5, ..p }.is_greedy());
        assert!(!SamplingParams {
            temperature: f32::NAN,
            ..p
        }
        .is_greedy());
        assert!(!SamplingParams {
            temperature: 0.7,
            top_k: 2,
            ..p
        }
        .is_greedy());
    }
}
