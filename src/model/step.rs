//! The flat metadata of one decoder step, built on the host from per-sequence chunks and
//! uploaded in one place: what [`super::text::StepInputs`] views.
//!
//! Token order in the batch: every decode chunk (one token each) first, then the prefill
//! chunks, because the decode kernel takes the first `num_decode` rows and the prefill kernel
//! the rest. [`HostStep::build`] reorders the chunks it is given accordingly and reports, per
//! input chunk, where its logits row went.

use std::ops::Range;

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
        Self::build_with_width(chunks, block_size, 1)
    }

    /// [`Self::build`] with block tables at least `min_width` columns wide (a replayed CUDA
    /// graph reads the tables at the width it was captured with).
    pub fn build_with_width(chunks: &[SeqChunk], block_size: usize, min_width: usize) -> Result<HostStep> {
        const OP: &str = "build step";
        let mut order: Vec<usize> = (0..chunks.len()).filter(|&i| chunks[i].is_decode).collect();
        let num_decode = order.len();
        order.extend((0..chunks.len()).filter(|&i| !chunks[i].is_decode));
        let max_blocks = chunks
            .iter()
            .map(|c| c.block_table.len())
            .max()
            .unwrap_or(0)
            .max(min_width)
            .max(1);
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

    /// Appends every array to `out` in one fixed order and says where each went, so a step is
    /// one upload. The order depends only on the counts (tokens, decodes, prefills, image rows,
    /// logits rows, table width): a decode-only step of a given batch always lands at the same
    /// offsets, which is what a captured CUDA graph needs.
    pub fn pack_into(&self, out: &mut Vec<i32>) -> StepLayout {
        let base = out.len();
        let mut put = |v: &[i32]| {
            let start = out.len() - base;
            out.extend_from_slice(v);
            start..out.len() - base
        };
        let np = self.prefill_seqused_k.len();
        StepLayout {
            ids: put(&self.ids),
            positions: put(&self.positions),
            slot_mapping: put(&self.slot_mapping),
            decode_block_tables: put(&self.decode_block_tables),
            decode_seq_lens: put(&self.decode_seq_lens),
            prefill_cu_seqlens: put(if np > 0 { &self.prefill_cu_seqlens } else { &[] }),
            prefill_block_tables: put(&self.prefill_block_tables),
            prefill_seqused_k: put(&self.prefill_seqused_k),
            image_rows: put(&self.image_rows),
            logits_rows: put(&self.logits_rows),
            num_tokens: self.ids.len(),
            num_decode: self.num_decode,
            num_prefill: np,
            max_blocks: self.max_blocks,
            decode_max_len: self.decode_max_len,
            prefill_max_q: self.prefill_max_q,
        }
    }

    /// Uploads the step into a buffer of its own (tests and tools; the engine packs into a
    /// persistent buffer through page-locked staging).
    pub fn upload(&self, gpu: &Gpu) -> Result<DeviceStep> {
        let mut packed = Vec::new();
        let layout = self.pack_into(&mut packed);
        Ok(DeviceStep {
            buf: DeviceTensor::from_host(
                gpu,
                &[packed.len().max(1)],
                &if packed.is_empty() { vec![0] } else { packed },
            )?,
            layout,
        })
    }
}

/// Where the arrays of a packed step sit (element ranges of an i32 buffer), and the counts
/// that give their shapes.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct StepLayout {
    ids: Range<usize>,
    positions: Range<usize>,
    slot_mapping: Range<usize>,
    decode_block_tables: Range<usize>,
    decode_seq_lens: Range<usize>,
    prefill_cu_seqlens: Range<usize>,
    prefill_block_tables: Range<usize>,
    prefill_seqused_k: Range<usize>,
    image_rows: Range<usize>,
    logits_rows: Range<usize>,
    pub num_tokens: usize,
    pub num_decode: usize,
    pub num_prefill: usize,
    pub max_blocks: usize,
    pub decode_max_len: usize,
    pub prefill_max_q: usize,
}

impl StepLayout {
    /// Elements the packed step takes.
    pub fn len(&self) -> usize {
        self.logits_rows.end
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Where the token ids start in the packed step (elements).
    pub fn ids_offset(&self) -> usize {
        self.ids.start
    }

    /// Logits rows of the step.
    pub fn logits_len(&self) -> usize {
        self.logits_rows.len()
    }

    /// Whether both put every array at the same offsets with the same shape (what a replayed
    /// graph needs); the longest lengths, which only steer heuristics, may differ.
    pub fn same_arrays(&self, other: &StepLayout) -> bool {
        StepLayout {
            decode_max_len: 0,
            prefill_max_q: 0,
            ..self.clone()
        } == StepLayout {
            decode_max_len: 0,
            prefill_max_q: 0,
            ..other.clone()
        }
    }

    /// The forward's inputs as views of `buf` (i32, holding the packed step from element 0);
    /// `image_features` bf16 [n, hidden] in `image_slots` order.
    pub fn inputs<'a>(&self, buf: TensorView<'a>, image_features: Option<TensorView<'a>>) -> Result<StepInputs<'a>> {
        const OP: &str = "step inputs";
        if buf.numel() < self.len() {
            return Err(Error::invalid(
                OP,
                format!("a buffer of {} for a step of {}", buf.numel(), self.len()),
            ));
        }
        let view = |r: &Range<usize>, dims: &[usize]| -> Result<Option<TensorView<'a>>> {
            if r.is_empty() {
                Ok(None)
            } else {
                buf.narrow0(r.start, r.len())?.reshape(dims).map(Some)
            }
        };
        let need = |v: Option<TensorView<'a>>, what: &str| -> Result<TensorView<'a>> {
            v.ok_or_else(|| Error::invalid(OP, format!("a step without {what}")))
        };
        let (t, nd, np, w) = (self.num_tokens, self.num_decode, self.num_prefill, self.max_blocks);
        let n_img = self.image_rows.len();
        let image_rows = match (view(&self.image_rows, &[n_img])?, image_features) {
            (None, _) => None,
            (Some(rows), Some(f)) if f.dims()[0] == n_img => Some((rows, f)),
            (Some(_), f) => {
                return Err(Error::invalid(
                    OP,
                    format!("{n_img} image slots but features {:?}", f.map(|f| f.dims().to_vec())),
                ))
            }
        };
        Ok(StepInputs {
            ids: need(view(&self.ids, &[t])?, "tokens")?,
            positions: need(view(&self.positions, &[3, t])?, "positions")?,
            slot_mapping: need(view(&self.slot_mapping, &[t])?, "slots")?,
            num_decode: nd,
            decode_block_tables: view(&self.decode_block_tables, &[nd, w])?,
            decode_seq_lens: view(&self.decode_seq_lens, &[nd])?,
            decode_max_len: self.decode_max_len,
            decode_splits: None,
            prefill_cu_seqlens: view(&self.prefill_cu_seqlens, &[np + 1])?,
            prefill_max_q: self.prefill_max_q,
            prefill_block_tables: view(&self.prefill_block_tables, &[np, w])?,
            prefill_seqused_k: view(&self.prefill_seqused_k, &[np])?,
            image_rows,
            // A step whose chunks all stop mid-prompt wants no logits: an empty view.
            logits_rows: buf.narrow0(self.logits_rows.start, self.logits_rows.len())?,
        })
    }
}

/// One sequence of a decode-only step, for [`StepLayout::pack_decode`].
#[derive(Clone, Copy, Debug)]
pub struct DecodeRow<'a> {
    pub id: u32,
    /// M-RoPE position (T, H, W) of the token.
    pub positions: [i32; 3],
    /// Tokens already in the cache: the token's position.
    pub start: usize,
    pub block_table: &'a [u32],
}

impl StepLayout {
    /// Packs a decode-only step into this layout (a captured graph's) without building chunks:
    /// the same values [`HostStep::build_with_width`] and [`HostStep::pack_into`] give for
    /// the same rows padded to the layout's batch with one-token rows on block `pad_block`
    /// (the decode hot path at batch 256 spends a quarter of a millisecond less per step).
    pub fn pack_decode(
        &self,
        out: &mut Vec<i32>,
        rows: &[DecodeRow<'_>],
        block_size: usize,
        pad_block: i32,
    ) -> Result<()> {
        const OP: &str = "pack decode step";
        let (b, w) = (self.num_decode, self.max_blocks);
        if self.num_prefill != 0 || self.num_tokens != b || !self.image_rows.is_empty() || self.logits_rows.len() != b {
            return Err(Error::invalid(
                OP,
                "the layout is not a decode-only step with one logits row each",
            ));
        }
        if rows.len() > b {
            return Err(Error::invalid(OP, format!("{} rows for a batch of {b}", rows.len())));
        }
        out.clear();
        out.resize(self.len(), 0);
        let pad = [pad_block as u32];
        for i in 0..b {
            let r = rows.get(i).copied().unwrap_or(DecodeRow {
                id: 0,
                positions: [0; 3],
                start: 0,
                block_table: &pad,
            });
            let t = r.start;
            if r.block_table.len() > w || r.block_table.len() * block_size <= t {
                return Err(Error::invalid(
                    OP,
                    format!(
                        "row {i}: a table of {} blocks for position {t} (width {w})",
                        r.block_table.len()
                    ),
                ));
            }
            out[self.ids.start + i] =
                i32::try_from(r.id).map_err(|_| Error::invalid(OP, format!("token id {}", r.id)))?;
            for (axis, &p) in r.positions.iter().enumerate() {
                out[self.positions.start + axis * b + i] = p;
            }
            out[self.slot_mapping.start + i] =
                (r.block_table[t / block_size] as usize * block_size + t % block_size) as i32;
            let row = self.decode_block_tables.start + i * w;
            for (dst, &blk) in out[row..row + r.block_table.len()].iter_mut().zip(r.block_table) {
                *dst = blk as i32;
            }
            out[self.decode_seq_lens.start + i] = (t + 1) as i32;
            out[self.logits_rows.start + i] = i as i32;
        }
        Ok(())
    }
}

/// A step's metadata on the device, in a buffer of its own.
pub struct DeviceStep {
    buf: DeviceTensor,
    layout: StepLayout,
}

impl DeviceStep {
    /// The forward's inputs; `image_features` bf16 [n, hidden] in `image_slots` order.
    pub fn inputs<'a>(&'a self, image_features: Option<TensorView<'a>>) -> Result<StepInputs<'a>> {
        self.layout.inputs(self.buf.view(), image_features)
    }
}
