//! Dense GEMM through cuBLASLt: bf16 operands, f32 accumulation, optional fused epilogue.
//!
//! Row-major semantics, the PyTorch `nn.Linear` convention:
//!
//! ```text
//! out[M, N] = x[M, K] · w[N, K]ᵀ  (+ bias[N])  (then GELU-tanh if asked)  (+ out if accumulate)
//! ```
//!
//! `x` and `out` may have a row stride over their width (views of a wider buffer); `w` is a
//! weight, row-major `[out_features, in_features]` as stored in the checkpoint.
//!
//! cuBLASLt is column-major. A row-major `[R, C]` matrix with row stride `ld` is the
//! column-major `[C, R]` matrix with leading dimension `ld`, so we ask cuBLASLt for
//! `outᵀ[N, M] = op(w')[N, K] · x'[K, M]` with `w'` = `w` read as column-major `[K, N]` and
//! transposed (TRANSA = T), and `x'` = `x` read as column-major `[K, M]` (TRANSB = N). This
//! "TN" form is cuBLASLt's fastest layout for bf16, and the bias epilogue, which adds a vector
//! along the rows of its (column-major) output, then adds `bias[n]` to output feature `n`.
//!
//! Plans (descriptors, layouts and the heuristic's algorithm) are cached per shape, so a
//! decode step at a batch size seen before costs no heuristic query, and the call can be
//! captured in a CUDA graph (cuBLASLt allocates nothing: its workspace is ours).

use std::collections::HashMap;
use std::ffi::c_void;
use std::mem::size_of;

use cudarc::cublaslt::result as lt;
use cudarc::cublaslt::sys;
use cudarc::cublaslt::sys::cublasLtMatmulDescAttributes_t as DescAttr;
use cudarc::cublaslt::sys::cublasLtMatmulPreferenceAttributes_t as PrefAttr;

use super::{DType, DeviceTensor, Gpu, GpuTimer, TensorView, TensorViewMut};
use crate::error::{DriverResultExt, Error, Result};

/// What cuBLASLt applies to the product before writing `out`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Epilogue {
    None,
    /// `+ bias[N]`.
    Bias,
    /// `gelu_tanh(· + bias[N])`: the vision MLP's fc1 (cuBLASLt's GELU is the tanh form).
    GeluTanhBias,
}

#[derive(Clone, Copy, PartialEq, Eq, Hash)]
struct PlanKey {
    m: usize,
    n: usize,
    k: usize,
    ld_x: usize,
    ld_w: usize,
    ld_out: usize,
    out_dtype: DType,
    epilogue: Epilogue,
    // The largest power of two (up to 256) dividing each address: algorithms that assume more
    // alignment than a pointer has read or write out of bounds.
    align: [u32; 4],
}

struct Plan {
    desc: sys::cublasLtMatmulDesc_t,
    layouts: [sys::cublasLtMatrixLayout_t; 3], // w, x, out (out doubles as C)
    algo: sys::cublasLtMatmulAlgo_t,
    /// The heuristic's other candidates, until the first call times them (autotuning).
    untimed: Vec<sys::cublasLtMatmulAlgo_t>,
}

/// Candidates the heuristic is asked for when autotuning (the default of
/// [`Gemm::set_autotune_candidates`]).
pub const AUTOTUNE_CANDIDATES: usize = 8;

impl Drop for Plan {
    fn drop(&mut self) {
        // SAFETY: created in `Gemm::plan` and destroyed once, here. Errors on destruction
        // cannot be acted upon.
        unsafe {
            let _ = lt::destroy_matmul_desc(self.desc);
            for l in self.layouts {
                let _ = lt::destroy_matrix_layout(l);
            }
        }
    }
}

/// A cuBLASLt handle with its workspace and plan cache. One per stream.
pub struct Gemm {
    handle: sys::cublasLtHandle_t,
    workspace: DeviceTensor,
    plans: HashMap<PlanKey, Plan>,
    autotune_max_m: usize,
    autotune_candidates: usize,
}

impl Gemm {
    pub fn new(gpu: &Gpu) -> Result<Gemm> {
        // SAFETY: only probes whether the shared library can be opened.
        if !unsafe { sys::is_culib_present() } {
            return Err(Error::NoDevice("libcublasLt.so could not be loaded".into()));
        }
        gpu.context().bind_to_thread().op("cuCtxSetCurrent")?;
        let handle = lt::create_handle().op("cublasLtCreate")?;
        // NVIDIA's recommended workspace: 32 MiB on Hopper, 4 MiB before it.
        let ws_bytes = if gpu.compute_capability().0 >= 9 {
            32 << 20
        } else {
            4 << 20
        };
        let workspace = DeviceTensor::alloc(gpu, DType::BF16, &[ws_bytes / 2])?;
        Ok(Gemm {
            handle,
            workspace,
            plans: HashMap::new(),
            autotune_max_m: 0,
            autotune_candidates: AUTOTUNE_CANDIDATES,
        })
    }

    /// From now on, a new plan with M <= `max_m` is timed on its first call over the
    /// heuristic's top candidates and keeps the fastest (0 turns it off). The small-M GEMMs
    /// of decode steps are latency-bound and the heuristic's first choice is often not the
    /// fastest there. Timing synchronises the stream, so this must be off while a CUDA graph
    /// is being captured (the engine tunes in the warm-up run before each capture).
    pub fn set_autotune(&mut self, max_m: usize) {
        self.autotune_max_m = max_m;
    }

    /// How many of the heuristic's candidates autotuning times (1 to 64; default
    /// [`AUTOTUNE_CANDIDATES`]), for plans made from now on. bench-gemm compares counts.
    pub fn set_autotune_candidates(&mut self, n: usize) {
        self.autotune_candidates = n.clamp(1, 64);
    }

    /// `out[M,N] = x[M,K] · w[N,K]ᵀ` with the epilogue; `accumulate` adds the old `out`.
    #[allow(clippy::too_many_arguments)]
    pub fn matmul(
        &mut self,
        gpu: &Gpu,
        out: &mut TensorViewMut<'_>,
        x: &TensorView<'_>,
        w: &TensorView<'_>,
        bias: Option<&TensorView<'_>>,
        epilogue: Epilogue,
        accumulate: bool,
    ) -> Result<()> {
        const OP: &str = "gemm";
        let (m, k) = dims2(OP, "x", x.dims())?;
        let (n, kw) = dims2(OP, "w", w.dims())?;
        let (mo, no) = dims2(OP, "out", out.dims())?;
        if kw != k || mo != m || no != n {
            return Err(Error::invalid(
                OP,
                format!(
                    "x {:?} · w {:?}ᵀ does not give out {:?}",
                    x.dims(),
                    w.dims(),
                    out.dims()
                ),
            ));
        }
        if x.dtype() != DType::BF16 || w.dtype() != DType::BF16 {
            return Err(Error::invalid(
                OP,
                format!("x and w must be bf16, got {} and {}", x.dtype(), w.dtype()),
            ));
        }
        if !matches!(out.dtype(), DType::BF16 | DType::F32) {
            return Err(Error::invalid(
                OP,
                format!("out must be bf16 or f32, got {}", out.dtype()),
            ));
        }
        match (epilogue, bias) {
            (Epilogue::None, None) => {}
            (Epilogue::None, Some(_)) => return Err(Error::invalid(OP, "a bias was given with Epilogue::None")),
            (_, None) => return Err(Error::invalid(OP, format!("{epilogue:?} needs a bias"))),
            (_, Some(b)) => b.expect(OP, "bias", out.dtype(), &[n])?,
        }
        if accumulate && epilogue == Epilogue::GeluTanhBias {
            return Err(Error::invalid(
                OP,
                "accumulate with a GELU epilogue would apply GELU to the sum",
            ));
        }
        if m == 0 || n == 0 {
            return Ok(());
        }
        if k == 0 {
            return Err(Error::invalid(OP, "K = 0"));
        }
        let key = PlanKey {
            m,
            n,
            k,
            ld_x: x.stride0(),
            ld_w: w.stride0(),
            ld_out: out.stride0(),
            out_dtype: out.dtype(),
            epilogue,
            align: [
                align_of_ptr(w.device_ptr()),
                align_of_ptr(x.device_ptr()),
                align_of_ptr(out.device_ptr()),
                bias.map_or(256, |b| align_of_ptr(b.device_ptr())),
            ],
        };
        if !self.plans.contains_key(&key) {
            let plan = self.plan(&key)?;
            self.plans.insert(key, plan);
        }
        let beta: f32 = if accumulate { 1.0 } else { 0.0 };
        let ptrs = [w.device_ptr(), x.device_ptr(), out.device_ptr()];
        if !accumulate && !self.plans[&key].untimed.is_empty() {
            self.tune(gpu, &key, bias.map(|b| b.device_ptr()), ptrs)?;
        }
        let plan = &self.plans[&key];
        self.set_bias(plan, bias.map(|b| b.device_ptr()))?;
        self.run(gpu, plan, &plan.algo, ptrs, beta)
    }

    /// Times the plan's candidates (each run writes `out`, which the real call overwrites;
    /// only non-accumulating calls are tuned) and keeps the fastest.
    fn tune(&mut self, gpu: &Gpu, key: &PlanKey, bias: Option<u64>, ptrs: [u64; 3]) -> Result<()> {
        let plan = &self.plans[key];
        self.set_bias(plan, bias)?;
        let mut best = (f64::INFINITY, plan.algo);
        for algo in std::iter::once(plan.algo).chain(plan.untimed.iter().copied()) {
            // An algorithm that fails to run is skipped, not fatal.
            if let Ok(ms) = GpuTimer::time_mean_ms(gpu, 2, 10, || self.run(gpu, plan, &algo, ptrs, 0.0)) {
                if ms < best.0 {
                    best = (ms, algo);
                }
            }
        }
        let plan = self.plans.get_mut(key).expect("planned above");
        plan.algo = best.1;
        plan.untimed.clear();
        Ok(())
    }

    fn set_bias(&self, plan: &Plan, bias: Option<u64>) -> Result<()> {
        if let Some(ptr) = bias {
            // SAFETY: the descriptor is live; the attribute is a device pointer by value.
            unsafe {
                lt::set_matmul_desc_attribute(
                    plan.desc,
                    DescAttr::CUBLASLT_MATMUL_DESC_BIAS_POINTER,
                    &ptr as *const u64 as *const c_void,
                    size_of::<u64>(),
                )
            }
            .op("cublasLtMatmulDescSetAttribute(BIAS_POINTER)")?;
        }
        Ok(())
    }

    /// One cublasLtMatmul with `algo`; `ptrs` are w, x, out.
    fn run(&self, gpu: &Gpu, plan: &Plan, algo: &sys::cublasLtMatmulAlgo_t, ptrs: [u64; 3], beta: f32) -> Result<()> {
        let alpha: f32 = 1.0;
        let [lw, lx, lo] = plan.layouts;
        let [w, x, out] = ptrs;
        // SAFETY: shapes, strides and dtypes were checked against the layouts by `matmul`;
        // all pointers are live device memory borrowed for the call; the workspace is ours.
        unsafe {
            lt::matmul(
                self.handle,
                plan.desc,
                &alpha as *const f32 as *const c_void,
                &beta as *const f32 as *const c_void,
                w as *const c_void,
                lw,
                x as *const c_void,
                lx,
                out as *const c_void,
                lo,
                out as *mut c_void,
                lo,
                algo,
                self.workspace.device_ptr() as *mut c_void,
                self.workspace.nbytes(),
                gpu.stream().cu_stream() as sys::cudaStream_t,
            )
        }
        .op("cublasLtMatmul")
    }

    fn plan(&self, key: &PlanKey) -> Result<Plan> {
        let bf16 = sys::cudaDataType::CUDA_R_16BF;
        let out_t = match key.out_dtype {
            DType::F32 => sys::cudaDataType::CUDA_R_32F,
            _ => bf16,
        };
        let desc = lt::create_matmul_desc(
            sys::cublasComputeType_t::CUBLAS_COMPUTE_32F,
            sys::cudaDataType::CUDA_R_32F,
        )
        .op("cublasLtMatmulDescCreate")?;
        let mut plan = Plan {
            desc,
            layouts: [std::ptr::null_mut(); 3],
            algo: unsafe { std::mem::zeroed() },
            untimed: Vec::new(),
        };
        // Column-major views (see the module doc): w' is [K, N] ld ld_w, x' is [K, M] ld ld_x,
        // out' is [N, M] ld ld_out.
        plan.layouts[0] = lt::create_matrix_layout(bf16, key.k as u64, key.n as u64, key.ld_w as i64)
            .op("cublasLtMatrixLayoutCreate(w)")?;
        plan.layouts[1] = lt::create_matrix_layout(bf16, key.k as u64, key.m as u64, key.ld_x as i64)
            .op("cublasLtMatrixLayoutCreate(x)")?;
        plan.layouts[2] = lt::create_matrix_layout(out_t, key.n as u64, key.m as u64, key.ld_out as i64)
            .op("cublasLtMatrixLayoutCreate(out)")?;

        let trans_a: i32 = 1; // CUBLAS_OP_T
        let trans_b: i32 = 0; // CUBLAS_OP_N
        let epilogue = match key.epilogue {
            Epilogue::None => sys::cublasLtEpilogue_t::CUBLASLT_EPILOGUE_DEFAULT,
            Epilogue::Bias => sys::cublasLtEpilogue_t::CUBLASLT_EPILOGUE_BIAS,
            Epilogue::GeluTanhBias => sys::cublasLtEpilogue_t::CUBLASLT_EPILOGUE_GELU_BIAS,
        };
        // SAFETY: each attribute value has the type and size the cuBLASLt docs give for it.
        unsafe {
            set_desc(desc, DescAttr::CUBLASLT_MATMUL_DESC_TRANSA, &trans_a)?;
            set_desc(desc, DescAttr::CUBLASLT_MATMUL_DESC_TRANSB, &trans_b)?;
            set_desc(desc, DescAttr::CUBLASLT_MATMUL_DESC_EPILOGUE, &epilogue)?;
            if key.epilogue != Epilogue::None {
                set_desc(desc, DescAttr::CUBLASLT_MATMUL_DESC_BIAS_DATA_TYPE, &out_t)?;
            }
        }

        let pref = lt::create_matmul_pref().op("cublasLtMatmulPreferenceCreate")?;
        let ws = self.workspace.nbytes() as u64;
        let heuristic = (|| {
            // SAFETY: as above; `pref` lives until the destroy below.
            unsafe {
                set_pref(pref, PrefAttr::CUBLASLT_MATMUL_PREF_MAX_WORKSPACE_BYTES, &ws)?;
                set_pref(
                    pref,
                    PrefAttr::CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_A_BYTES,
                    &key.align[0],
                )?;
                set_pref(
                    pref,
                    PrefAttr::CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_B_BYTES,
                    &key.align[1],
                )?;
                set_pref(
                    pref,
                    PrefAttr::CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_C_BYTES,
                    &key.align[2],
                )?;
                set_pref(
                    pref,
                    PrefAttr::CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_D_BYTES,
                    &key.align[2],
                )?;
                let wanted = if key.m <= self.autotune_max_m {
                    self.autotune_candidates
                } else {
                    1
                };
                let mut results: Vec<sys::cublasLtMatmulHeuristicResult_t> = vec![std::mem::zeroed(); wanted];
                let mut count = 0;
                sys::cublasLtMatmulAlgoGetHeuristic(
                    self.handle,
                    desc,
                    plan.layouts[0],
                    plan.layouts[1],
                    plan.layouts[2],
                    plan.layouts[2],
                    pref,
                    wanted as i32,
                    results.as_mut_ptr(),
                    &mut count,
                )
                .result()
                .op("cublasLtMatmulAlgoGetHeuristic")?;
                results.truncate(count.max(0) as usize);
                if results.is_empty() {
                    return Err(Error::invalid("gemm", "the heuristic returned no algorithm"));
                }
                Ok(results)
            }
        })();
        // SAFETY: created above, destroyed once.
        unsafe {
            let _ = lt::destroy_matmul_pref(pref);
        }
        let results = heuristic.map_err(|e| {
            Error::invalid(
                "gemm",
                format!("no cuBLASLt algorithm for M={} N={} K={} ({e})", key.m, key.n, key.k),
            )
        })?;
        plan.algo = results[0].algo;
        plan.untimed = results[1..].iter().map(|r| r.algo).collect();
        Ok(plan)
    }
}

impl Drop for Gemm {
    fn drop(&mut self) {
        self.plans.clear();
        // SAFETY: the handle was created in `new` and is destroyed once.
        unsafe {
            let _ = lt::destroy_handle(self.handle);
        }
    }
}

unsafe fn set_desc<T>(desc: sys::cublasLtMatmulDesc_t, attr: DescAttr, value: &T) -> Result<()> {
    lt::set_matmul_desc_attribute(desc, attr, value as *const T as *const c_void, size_of::<T>())
        .op("cublasLtMatmulDescSetAttribute")
}

unsafe fn set_pref<T>(pref: sys::cublasLtMatmulPreference_t, attr: PrefAttr, value: &T) -> Result<()> {
    lt::set_matmul_pref_attribute(pref, attr, value as *const T as *const c_void, size_of::<T>())
        .op("cublasLtMatmulPreferenceSetAttribute")
}

fn dims2(op: &'static str, what: &str, dims: &[usize]) -> Result<(usize, usize)> {
    match dims {
        [a, b] => Ok((*a, *b)),
        _ => Err(Error::invalid(op, format!("{what} must be 2-D, got {dims:?}"))),
    }
}

fn align_of_ptr(ptr: u64) -> u32 {
    if ptr == 0 {
        256
    } else {
        (1u64 << ptr.trailing_zeros().min(8)) as u32
    }
}
