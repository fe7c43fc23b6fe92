//! The decode step as CUDA graphs: one captured forward per padded batch size, replayed by
//! decode-only steps (`ModelRunner::launch`). A graph reads the packed
//! step at the start of the runner's `meta` buffer in the layout it was captured with and
//! writes logits rows `0..batch`; padding rows decode on the scratch block.

use cudarc::driver::CudaGraph;

use super::model_runner::{ModelRunner, BLOCK_SIZE};
use crate::error::{Error, Result};
use crate::kernels::decode::decode_num_splits;
use crate::model::step::{HostStep, SeqChunk, StepLayout};
use crate::runtime::capture_graph;

/// A decode forward captured for one padded batch size.
pub(super) struct DecodeGraph {
    pub graph: CudaGraph,
    pub layout: StepLayout,
}

/// Decode batch sizes that get a graph: 1, 2, 4, 8, then every multiple of 8, up to and
/// including `max_num_seqs`. A batch runs in the smallest graph that holds it; padding is at
/// most 7 rows past 8, a few percent of the step at the sizes where it matters.
pub fn graph_batch_sizes(max_num_seqs: usize) -> Vec<usize> {
    let mut v: Vec<usize> = [1, 2, 4].into_iter().filter(|&b| b < max_num_seqs).collect();
    v.extend((1..).map(|k| 8 * k).take_while(|&b| b < max_num_seqs));
    v.push(max_num_seqs);
    v
}

impl ModelRunner {
    /// Captures the decode graph of every batch size of [`graph_batch_sizes`]; the error
    /// names the batch that failed and the way around it.
    pub fn capture_decode_graphs(&mut self, max_num_seqs: usize) -> Result<()> {
        for b in graph_batch_sizes(max_num_seqs) {
            self.capture_decode_graph(b).map_err(|err| {
                Error::invalid(
                    "engine",
                    format!(
                        "capturing the decode graph of batch {b} failed ({err}); --enforce-eager runs without graphs"
                    ),
                )
            })?;
        }
        Ok(())
    }

    /// Batch sizes with a captured decode graph.
    pub fn graph_batch_sizes(&self) -> Vec<usize> {
        self.graphs.keys().copied().collect()
    }

    /// A decode row of padding (on the scratch block).
    fn padding_chunk(&self) -> SeqChunk {
        SeqChunk {
            ids: vec![0],
            positions: [vec![0], vec![0], vec![0]],
            start: 0,
            block_table: vec![self.scratch_block],
            is_decode: true,
            wants_logits: true,
            image_slots: Vec::new(),
        }
    }

    /// Runs the decode forward of `batch` rows once (so every GEMM plan exists), then captures
    /// it. The split count is fixed at the heuristic's choice for a full-length context.
    fn capture_decode_graph(&mut self, batch: usize) -> Result<()> {
        let chunks = vec![self.padding_chunk(); batch];
        let host = HostStep::build_with_width(&chunks, BLOCK_SIZE, self.table_width)?;
        let b = &mut self.buffers;
        b.packed.clear();
        let layout = host.pack_into(&mut b.packed);
        let mut dst = b.meta.view_mut().narrow0(0, layout.len())?;
        b.staging.upload(&self.gpu, &b.packed, &mut dst)?;
        let splits = decode_num_splits(
            batch,
            self.model.num_kv_heads(),
            self.table_width * BLOCK_SIZE,
            self.gpu.sm_count(),
        );
        // The warm-up run times the decode GEMMs' candidate algorithms (never while capturing:
        // timing synchronises). OCRVL_GEMM_AUTOTUNE=0 keeps the heuristic's.
        self.gemm.set_autotune(if self.gemm_autotune { usize::MAX } else { 0 });
        let warm = self.eager_forward(&layout, None, batch, Some(splits));
        self.gemm.set_autotune(0);
        warm?;
        let gpu = self.gpu.clone();
        let graph = capture_graph(&gpu, || self.eager_forward(&layout, None, batch, Some(splits)))?;
        self.graphs.insert(batch, DecodeGraph { graph, layout });
        self.gpu.synchronize()
    }
}
