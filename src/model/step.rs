//! The flat metadata of one decoder step, built on the host from per-sequence chunks and
//! uploaded in one place: what [`super::text::StepInputs`] views.
//!
//! Token order in the batch: every decode chunk (one token each) first, then the prefill
//! chunks, because the decode kernel takes the first `num_decode` rows and the prefill kernel
//! the rest. [`HostStep::build`] reorders the chunks it is given accordingly and reports, per
//! input chunk, where its logits row went.

use super::text::StepInputs;
use crate::error::{Error, Result};
use crate::runtime::{DeviceTensor, Gpu, TensorView};

/// The part of one sequence that a step computes.
#[derive(Clone, Debug, Default)]
pub struct SeqChunk {
    /// Token ids of the positions computed this step (`start..start + len`).
    pub ids: Vec<u32>,
    /// M-RoPE positions (T, H, W) of those tokens.
    pub positions: [Vec<i32>; 3],
    /// Tokens of this sequence already in the cache (the chunk's first position).
    pub start: usize,
    /// The sequence's block table (covering at least `start + len` positions).
    pub block_table: Vec<i32>,
    /// A single-token decode (uses the decode kernel) rather than a prefill chunk.
    pub is_decode: bool,
    /// Whether the last token of the chunk needs logits.
    pub wants_logits: bool,
    /// Offsets within the chunk of image placeholder tokens, in the order their features are
    /// concatenated in the step's image-feature tensor.
    pub image_slots: Vec<usize>,
}

/// Host arrays of one step.
#[derive(Clone, Debug, Default)]
pub struct HostStep {
    pub ids: Vec<i32>,
    /// [3, T] row-major.
    pub positions: Vec<i32>,
    pub slot_mapping: Vec<i32>,
    pub num_decode: usize,
    pub decode_block_tables: Vec<i32>,
    pub decode_seq_lens: Vec<i32>,
    pub decode_max_len: usize,
    pub prefill_cu_seqlens: Vec<i32>,
    pub prefill_max_q: usize,
    pub prefill_block_tables: Vec<i32>,
    pub prefill_seqused_k: Vec<i32>,
    /// Block-table width shared by both kinds (tables are padded with 0).
    pub max_blocks: usize,
    pub image_rows: Vec<i32>,
    pub logits_rows: Vec<i32>,
    /// For each input chunk, the index of its logits row in the output (None if it wants none).
    pub logits_index: Vec<Option<usize>>,
}

impl HostStep {
    pub fn build(chunks: &[SeqChunk], block_size: usize) -> Result<HostStep> {
        const OP: &str = "build step";
        let mut order: Vec<usize> = (0..chunks.len()).filter(|&i| chunks[i].is_decode).collect();
        let num_decode = order.len();
        order.extend((0..chunks.len()).filter(|&i| !chunks[i].is_decode));
        let max_blocks = chunks.iter().map(|c| c.block_table.len()).max().unwrap_or(0).max(1);
        let mut s = HostStep {
            num_decode,
            max_blocks,
            logits_index: vec![None; chunks.len()],
            ..Default::default()
        };
        let mut pos: [Vec<i32>; 3] = Default::default();
        s.prefill_cu_seqlens.push(0);
        let mut image_dst = Vec::new();
        for &i in &order {
            let c = &chunks[i];
            let len = c.ids.len();
            if len == 0 || (c.is_decode && len != 1) {
                return Err(Error::invalid(
                    OP,
                    format!("chunk {i}: {len} tokens (decode: {})", c.is_decode),
                ));
            }
            if c.positions.iter().any(|p| p.len() != len) {
                return Err(Error::invalid(
                    OP,
                    format!("chunk {i}: positions do not match its {len} tokens"),
                ));
            }
            let end = c.start + len;
            if c.block_table.len() * block_size < end {
                return Err(Error::invalid(
                    OP,
                    format!("chunk {i}: block table too short for {end} tokens"),
                ));
            }
            let row0 = s.ids.len();
            for (j, &id) in c.ids.iter().enumerate() {
                s.ids
                    .push(i32::try_from(id).map_err(|_| Error::invalid(OP, format!("token id {id}")))?);
                let p = c.start + j;
                s.slot_mapping
                    .push(c.block_table[p / block_size] * block_size as i32 + (p % block_size) as i32);
            }
            for (axis, src) in pos.iter_mut().zip(&c.positions) {
                axis.extend_from_slice(src);
            }
            for &slot in &c.image_slots {
                if slot >= len {
                    return Err(Error::invalid(
                        OP,
                        format!("chunk {i}: image slot {slot} outside its {len} tokens"),
                    ));
                }
                image_dst.push((row0 + slot) as i32);
            }
            let mut table = c.block_table.clone();
            table.resize(max_blocks, 0);
            if c.is_decode {
                s.decode_block_tables.extend(table);
                s.decode_seq_lens.push(end as i32);
                s.decode_max_len = s.decode_max_len.max(end);
            } else {
                s.prefill_block_tables.extend(table);
                s.prefill_seqused_k.push(end as i32);
                s.prefill_cu_seqlens.push((s.ids.len() - num_decode) as i32);
                s.prefill_max_q = s.prefill_max_q.max(len);
            }
            if c.wants_logits {
                s.logits_index[i] = Some(s.logits_rows.len());
                s.logits_rows.push((s.ids.len() - 1) as i32);
            }
        }
        s.positions = pos.concat();
        s.image_rows = image_dst;
        Ok(s)
    }

    pub fn num_tokens(&self) -> usize {
        self.ids.len()
    }

    pub fn upload(&self, gpu: &Gpu) -> Result<DeviceStep> {
        let t = self.ids.len();
        let nd = self.num_decode;
        let np = self.prefill_seqused_k.len();
        let opt = |v: &[i32], dims: &[usize]| -> Result<Option<DeviceTensor>> {
            if v.is_empty() {
                Ok(None)
            } else {
                DeviceTensor::from_host(gpu, dims, v).map(Some)
            }
        };
        Ok(DeviceStep {
            ids: DeviceTensor::from_host(gpu, &[t], &self.ids)?,
            positions: DeviceTensor::from_host(gpu, &[3, t], &self.positions)?,
            slot_mapping: DeviceTensor::from_host(gpu, &[t], &self.slot_mapping)?,
            decode_block_tables: opt(&self.decode_block_tables, &[nd, self.max_blocks])?,
            decode_seq_lens: opt(&self.decode_seq_lens, &[nd])?,
            prefill_cu_seqlens: if np > 0 {
                opt(&self.prefill_cu_seqlens, &[np + 1])?
            } else {
                None
            },
            prefill_block_tables: opt(&self.prefill_block_tables, &[np, self.max_blocks])?,
            prefill_seqused_k: opt(&self.prefill_seqused_k, &[np])?,
            image_rows: opt(&self.image_rows, &[self.image_rows.len()])?,
            logits_rows: DeviceTensor::from_host(gpu, &[self.logits_rows.len()], &self.logits_rows)?,
            host: self.clone(),
        })
    }
}

/// A step's metadata on the device.
pub struct DeviceStep {
    pub host: HostStep,
    ids: DeviceTensor,
    positions: DeviceTensor,
    slot_mapping: DeviceTensor,
    decode_block_tables: Option<DeviceTensor>,
    decode_seq_lens: Option<DeviceTensor>,
    prefill_cu_seqlens: Option<DeviceTensor>,
    prefill_block_tables: Option<DeviceTensor>,
    prefill_seqused_k: Option<DeviceTensor>,
    image_rows: Option<DeviceTensor>,
    logits_rows: DeviceTensor,
}

impl DeviceStep {
    /// The forward's inputs; `image_features` bf16 [n, hidden] in `image_slots` order.
    pub fn inputs<'a>(&'a self, image_features: Option<TensorView<'a>>) -> Result<StepInputs<'a>> {
        let image_rows = match (&self.image_rows, image_features) {
            (None, _) => None,
            (Some(rows), Some(f)) if f.dims()[0] == rows.numel() => Some((rows.view(), f)),
            (Some(rows), f) => {
                return Err(Error::invalid(
                    "step inputs",
                    format!(
                        "{} image slots but features {:?}",
                        rows.numel(),
                        f.map(|f| f.dims().to_vec())
                    ),
                ))
            }
        };
        Ok(StepInputs {
            ids: self.ids.view(),
            positions: self.positions.view(),
            slot_mapping: self.slot_mapping.view(),
            num_decode: self.host.num_decode,
            decode_block_tables: self.decode_block_tables.as_ref().map(DeviceTensor::view),
            decode_seq_lens: self.decode_seq_lens.as_ref().map(DeviceTensor::view),
            decode_max_len: self.host.decode_max_len,
            prefill_cu_seqlens: self.prefill_cu_seqlens.as_ref().map(DeviceTensor::view),
            prefill_max_q: self.host.prefill_max_q,
            prefill_block_tables: self.prefill_block_tables.as_ref().map(DeviceTensor::view),
            prefill_seqused_k: self.prefill_seqused_k.as_ref().map(DeviceTensor::view),
            image_rows,
            logits_rows: self.logits_rows.view(),
        })
    }
}
