//! Host-side step metadata, no GPU: the flat batch a decoder step is built from, and the
//! vision batch's 2x2-merge permutation.

use ocrvl::model::step::{HostStep, SeqChunk};
use ocrvl::model::vision::VisionBatchHost;

fn chunk(ids: &[u32], start: usize, table: &[i32], decode: bool, logits: bool, slots: &[usize]) -> SeqChunk {
    let n = ids.len();
    SeqChunk {
        ids: ids.to_vec(),
        positions: [0, 1, 2].map(|a| (0..n).map(|j| (start + j) as i32 * 10 + a).collect()),
        start,
        block_table: table.to_vec(),
        is_decode: decode,
        wants_logits: logits,
        image_slots: slots.to_vec(),
    }
}

#[test]
fn decodes_go_first_and_every_array_follows_the_order() {
    let bs = 16;
    // Input order: a prefill chunk, a decode, a second prefill chunk, another decode.
    let chunks = [
        chunk(&[1, 2, 3], 5, &[7], false, true, &[1]),
        chunk(&[9], 20, &[3, 4], true, true, &[]),
        chunk(&[4, 5], 0, &[11, 12], false, false, &[0, 1]),
        chunk(&[8], 33, &[0, 1, 2], true, true, &[]),
    ];
    let s = HostStep::build(&chunks, bs).unwrap();
    assert_eq!(s.num_decode, 2);
    assert_eq!(s.ids, vec![9, 8, 1, 2, 3, 4, 5]);
    // Slot = block_table[p / bs] * bs + p % bs for each token's position p.
    assert_eq!(
        s.slot_mapping,
        vec![
            4 * 16 + 4,
            2 * 16 + 1,
            7 * 16 + 5,
            7 * 16 + 6,
            7 * 16 + 7,
            11 * 16,
            11 * 16 + 1
        ]
    );
    // Keys per sequence include the new tokens.
    assert_eq!(s.decode_seq_lens, vec![21, 34]);
    assert_eq!(s.decode_max_len, 34);
    assert_eq!(s.prefill_seqused_k, vec![8, 2]);
    assert_eq!(s.prefill_cu_seqlens, vec![0, 3, 5]);
    assert_eq!(s.prefill_max_q, 3);
    // Block tables padded to the widest (3), in batch order.
    assert_eq!(s.max_blocks, 3);
    assert_eq!(s.decode_block_tables, vec![3, 4, 0, 0, 1, 2]);
    assert_eq!(s.prefill_block_tables, vec![7, 0, 0, 11, 12, 0]);
    // Positions: [3, T] row-major, following the batch order.
    let t = s.num_tokens();
    assert_eq!(&s.positions[..t], &[200, 330, 50, 60, 70, 0, 10]);
    assert_eq!(&s.positions[t..2 * t], &[201, 331, 51, 61, 71, 1, 11]);
    // Logits rows: the last token of each chunk that wants them; indexed by input chunk.
    assert_eq!(s.logits_rows, vec![0, 1, 4]);
    assert_eq!(s.logits_index, vec![Some(2), Some(0), None, Some(1)]);
    // Image slots map to batch rows in the order the features are concatenated.
    assert_eq!(s.image_rows, vec![3, 5, 6]);
}

#[test]
fn malformed_chunks_are_rejected() {
    let bs = 16;
    let short_table = chunk(&[1; 20], 0, &[0], false, true, &[]);
    assert!(HostStep::build(&[short_table], bs)
        .unwrap_err()
        .to_string()
        .contains("block table too short"));
    let two_token_decode = chunk(&[1, 2], 4, &[0], true, true, &[]);
    assert!(HostStep::build(&[two_token_decode], bs).is_err());
    let slot_outside = chunk(&[1, 2], 0, &[0], false, true, &[2]);
    assert!(HostStep::build(&[slot_outside], bs)
        .unwrap_err()
        .to_string()
        .contains("image slot"));
    let mut bad_positions = chunk(&[1, 2], 0, &[0], false, true, &[]);
    bad_positions.positions[2].pop();
    assert!(HostStep::build(&[bad_positions], bs).is_err());
}

#[test]
fn vision_batch_merge_rows_follow_the_spec_order() {
    // Merged token (i, j) of an image = [P(2i,2j), P(2i,2j+1), P(2i+1,2j), P(2i+1,2j+1)], merged
    // tokens in raster order over (h/2, w/2), images one after another (MODEL_SPEC §3.7).
    let grids = [(4usize, 6usize), (2, 2), (6, 2)];
    let b = VisionBatchHost::new(&grids).unwrap();
    let mut want = vec![usize::MAX; b.num_patches()];
    let (mut patch_base, mut merged_base) = (0, 0);
    for &(h, w) in &grids {
        for i in 0..h / 2 {
            for j in 0..w / 2 {
                let m = merged_base + i * (w / 2) + j;
                for (k, (dy, dx)) in [(0, 0), (0, 1), (1, 0), (1, 1)].into_iter().enumerate() {
                    want[patch_base + (2 * i + dy) * w + 2 * j + dx] = 4 * m + k;
                }
            }
        }
        patch_base += h * w;
        merged_base += h * w / 4;
    }
    let got: Vec<usize> = b.merge_rows.iter().map(|&r| r as usize).collect();
    assert_eq!(got, want);
    assert_eq!(b.cu_patches, vec![0, 24, 28, 40]);
    assert_eq!(b.max_patches, 24);
    assert_eq!(b.num_merged(), 10);
    // Row/col of each patch within its image.
    assert_eq!((b.rows[7], b.cols[7]), (1, 1));
    assert_eq!((b.rows[24], b.cols[24]), (0, 0));
    assert!(
        VisionBatchHost::new(&[(3, 4)]).is_err(),
        "odd grids cannot be merged 2x2"
    );
}

#[test]
fn graph_batch_sizes_cover_every_batch() {
    use ocrvl::engine::graph_batch_sizes;
    assert_eq!(graph_batch_sizes(1), vec![1]);
    assert_eq!(graph_batch_sizes(10), vec![1, 2, 4, 8, 10]);
    let full = graph_batch_sizes(256);
    assert_eq!(&full[..5], &[1, 2, 4, 8, 16]);
    assert_eq!(*full.last().unwrap(), 256);
    assert!(full.windows(2).all(|w| w[0] < w[1] && w[1] - w[0] <= 8));
}

#[test]
fn a_padded_decode_step_packs_to_the_same_layout_whatever_its_rows() {
    // A graph replays at fixed offsets: two decode steps of the same padded batch and table
    // width must pack identically apart from the values.
    let bs = 64;
    let chunk = |id: u32, start: usize, table: Vec<i32>| SeqChunk {
        ids: vec![id],
        positions: [vec![start as i32], vec![start as i32], vec![start as i32]],
        start,
        block_table: table,
        is_decode: true,
        wants_logits: true,
        image_slots: Vec::new(),
    };
    let a = vec![chunk(5, 3, vec![1]), chunk(6, 70, vec![2, 3])];
    let b = vec![chunk(7, 130, vec![4, 5, 6]), chunk(8, 0, vec![9])];
    let (mut pa, mut pb) = (Vec::new(), Vec::new());
    let la = HostStep::build_with_width(&a, bs, 16).unwrap().pack_into(&mut pa);
    let lb = HostStep::build_with_width(&b, bs, 16).unwrap().pack_into(&mut pb);
    assert!(la.same_arrays(&lb), "{la:?} vs {lb:?}");
    assert_ne!(la.decode_max_len, lb.decode_max_len);
    assert_eq!(pa.len(), pb.len());
    assert_eq!(la.len(), pa.len());
    assert_eq!(la.max_blocks, 16);
    // Too narrow a width is widened to the longest table, never cut.
    let lc = HostStep::build_with_width(&b, bs, 1).unwrap();
    assert_eq!(lc.max_blocks, 3);
}

#[test]
fn pack_decode_equals_building_the_padded_chunks() {
    use ocrvl::model::step::DecodeRow;
    let bs = 64;
    let (batch, width, pad) = (8, 6, 99);
    let tables: Vec<Vec<u32>> = vec![vec![3], vec![4, 5], vec![7, 8, 9, 10, 11, 12], vec![1], vec![2, 6, 13]];
    let starts = [0usize, 100, 383, 63, 150];
    let rows: Vec<DecodeRow> = tables
        .iter()
        .zip(starts)
        .enumerate()
        .map(|(i, (t, start))| DecodeRow {
            id: 10 + i as u32,
            positions: [start as i32 + 5, start as i32 - 2, i as i32],
            start,
            block_table: t,
        })
        .collect();
    // The same step as chunks, padded as the engine pads graph steps.
    let mut chunks: Vec<SeqChunk> = rows
        .iter()
        .map(|r| SeqChunk {
            ids: vec![r.id],
            positions: r.positions.map(|p| vec![p]),
            start: r.start,
            block_table: r.block_table.iter().map(|&b| b as i32).collect(),
            is_decode: true,
            wants_logits: true,
            image_slots: Vec::new(),
        })
        .collect();
    chunks.resize(
        batch,
        SeqChunk {
            ids: vec![0],
            positions: [vec![0], vec![0], vec![0]],
            start: 0,
            block_table: vec![pad],
            is_decode: true,
            wants_logits: true,
            image_slots: Vec::new(),
        },
    );
    let mut want = Vec::new();
    let layout = HostStep::build_with_width(&chunks, bs, width)
        .unwrap()
        .pack_into(&mut want);
    let mut got = vec![-7; 3];
    layout.pack_decode(&mut got, &rows, bs, pad).unwrap();
    assert_eq!(got, want);
    // Too many rows, or a table that does not reach the position, are errors.
    let many = vec![rows[0]; batch + 1];
    assert!(layout.pack_decode(&mut got, &many, bs, pad).is_err());
    let short = [DecodeRow { start: 64, ..rows[0] }];
    assert!(layout.pack_decode(&mut got, &short, bs, pad).is_err());
}
