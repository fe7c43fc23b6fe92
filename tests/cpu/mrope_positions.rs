//! 3-D M-RoPE position ids (MODEL_SPEC §3.9) against hand-computed cases and an independent
//! reference written the way Qwen2-VL's `get_rope_index` is structured (segments of text and
//! image, each starting at the previous segment's max + 1), rather than as a token walk.

use ocrvl::config::ModelConfig;
use ocrvl::preprocess::{decode_position, mrope_positions, ImageGrid, PreprocessError};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

const MERGE: usize = 2;

/// Qwen2-VL-style reference: split the sequence at each image's first placeholder; a text
/// segment of length L gets `start + 0..L` on all axes; an image gets `start + (0, r, c)`;
/// `start` is one past the largest position so far. Returns `[3][seq_len]` and the delta.
fn reference(ids: &[u32], image_id: u32, grids: &[ImageGrid]) -> ([Vec<i64>; 3], i64) {
    let mut rows: [Vec<i64>; 3] = [vec![], vec![], vec![]];
    let mut max_so_far: Option<i64> = None;
    let mut seg_start = 0usize;
    fn push_text(rows: &mut [Vec<i64>; 3], len: usize, max_so_far: &mut Option<i64>) {
        let start = max_so_far.map_or(0, |m| m + 1);
        for k in 0..len as i64 {
            for row in rows.iter_mut() {
                row.push(start + k);
            }
        }
        if len > 0 {
            *max_so_far = Some(start + len as i64 - 1);
        }
    }
    for grid in grids {
        let first = seg_start
            + ids[seg_start..]
                .iter()
                .position(|&id| id == image_id)
                .expect("placeholder");
        push_text(&mut rows, first - seg_start, &mut max_so_far);
        let start = max_so_far.map_or(0, |m| m + 1);
        let (gh, gw) = (grid.h / MERGE, grid.w / MERGE);
        let mut img_max = start;
        for r in 0..gh {
            for c in 0..gw {
                let p = [start, start + r as i64, start + c as i64];
                for (row, v) in rows.iter_mut().zip(p) {
                    row.push(v);
                    img_max = img_max.max(v);
                }
            }
        }
        max_so_far = Some(img_max);
        seg_start = first + gh * gw;
    }
    push_text(&mut rows, ids.len() - seg_start, &mut max_so_far);
    let delta = max_so_far.map_or(0, |m| m + 1) - ids.len() as i64;
    (rows, delta)
}

fn check_against_reference(ids: &[u32], image_id: u32, grids: &[ImageGrid]) {
    let got = mrope_positions(ids, image_id, grids, MERGE).unwrap();
    let (want, want_delta) = reference(ids, image_id, grids);
    assert_eq!(got.seq_len, ids.len());
    for (axis, want_row) in want.iter().enumerate() {
        let got_row: Vec<i64> = got.axis(axis).iter().map(|&v| i64::from(v)).collect();
        assert_eq!(&got_row, want_row, "axis {axis}, grids {grids:?}");
    }
    assert_eq!(i64::from(got.rope_delta), want_delta);
}

#[test]
fn text_only_is_plain_positions() {
    let ids: Vec<u32> = (10..27).collect();
    let pos = mrope_positions(&ids, 1000, &[], MERGE).unwrap();
    let want: Vec<i32> = (0..17).collect();
    for axis in 0..3 {
        assert_eq!(pos.axis(axis), &want[..]);
    }
    assert_eq!(pos.rope_delta, 0);
    assert_eq!(decode_position(17, pos.rope_delta), 17);
}

#[test]
fn empty_sequence() {
    let pos = mrope_positions(&[], 1000, &[], MERGE).unwrap();
    assert_eq!(pos.seq_len, 0);
    assert_eq!(pos.rope_delta, 0);
}

/// The worked example of MODEL_SPEC §3.9: 5 text tokens, a 14×20 merged image, then text.
#[test]
fn spec_example_14x20() {
    let t = ModelConfig::paddleocr_vl_0_9b().tokens;
    let (img, start, end) = (t.image_token_id, t.vision_start_token_id, t.vision_end_token_id);
    // <|begin_of_sentence|> User : " " <|IMAGE_START|> [280] <|IMAGE_END|> OCR : \n Assistant : \n
    let mut ids = vec![100_273, 2969, 93963, 93919, start];
    ids.extend(std::iter::repeat_n(img, 280));
    ids.extend([end, 5, 6, 7, 8, 9, 10]);
    let grid = ImageGrid { t: 1, h: 28, w: 40 };
    let pos = mrope_positions(&ids, img, &[grid], MERGE).unwrap();

    for i in 0..5 {
        assert_eq!(pos.at(i), [i as i32; 3]);
    }
    for k in 0..280 {
        let (r, c) = ((k / 20) as i32, (k % 20) as i32);
        assert_eq!(pos.at(5 + k), [5, 5 + r, 5 + c], "image token {k}");
    }
    assert_eq!(pos.at(285), [25; 3], "IMAGE_END at 5 + max(14, 20)");
    assert_eq!(pos.at(ids.len() - 1), [31; 3]);
    assert_eq!(pos.rope_delta, -260);
    // The first generated token sits right after the prompt's last position.
    assert_eq!(decode_position(ids.len(), pos.rope_delta), 32);
    check_against_reference(&ids, img, &[grid]);
}

#[test]
fn tall_image_advances_by_rows() {
    // Merged grid 5×2: the next text starts at start + max(5, 2) = start + 5.
    let ids = [7, 9, 1000, 1000, 1000, 1000, 1000, 1000, 1000, 1000, 1000, 1000, 9, 7];
    let pos = mrope_positions(&ids, 1000, &[ImageGrid { t: 1, h: 10, w: 4 }], MERGE).unwrap();
    assert_eq!(pos.axis(0), &[0, 1, 2, 2, 2, 2, 2, 2, 2, 2, 2, 2, 7, 8]);
    assert_eq!(pos.axis(1), &[0, 1, 2, 2, 3, 3, 4, 4, 5, 5, 6, 6, 7, 8]);
    assert_eq!(pos.axis(2), &[0, 1, 2, 3, 2, 3, 2, 3, 2, 3, 2, 3, 7, 8]);
    assert_eq!(pos.rope_delta, 9 - 14);
}

/// Text, image 0 (3 tokens), text, images 1 and 2 back to back (2 + 1 tokens), text; image
/// token 1000.
fn three_images() -> ([u32; 11], [ImageGrid; 3]) {
    let img = 1000;
    let g = [
        ImageGrid { t: 1, h: 2, w: 6 },
        ImageGrid { t: 1, h: 4, w: 2 },
        ImageGrid { t: 1, h: 2, w: 2 },
    ];
    ([1, 2, img, img, img, 3, img, img, img, 4, 5], g)
}

#[test]
fn several_images_and_back_to_back_images() {
    let img = 1000;
    let (ids, g) = three_images();
    let pos = mrope_positions(&ids, img, &g, MERGE).unwrap();
    assert_eq!(pos.at(2), [2, 2, 2]);
    assert_eq!(pos.at(4), [2, 2, 4]);
    assert_eq!(pos.at(5), [5, 5, 5]); // 2 + max(1, 3)
    assert_eq!(pos.at(6), [6, 6, 6]); // image 1, 2×1 merged
    assert_eq!(pos.at(7), [6, 7, 6]);
    assert_eq!(pos.at(8), [8, 8, 8]); // image 2 starts at 6 + max(2, 1)
    assert_eq!(pos.at(9), [9, 9, 9]);
    check_against_reference(&ids, img, &g);
}

#[test]
fn random_prompts_match_the_reference() {
    let seed = 0x5EED_0006;
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    let img = 100_295;
    for case in 0..200 {
        let n_images = rng.random_range(0..5);
        let mut ids = Vec::new();
        let mut grids = Vec::new();
        for _ in 0..n_images {
            for _ in 0..rng.random_range(0..6) {
                ids.push(rng.random_range(3..1000));
            }
            let grid = ImageGrid {
                t: 1,
                h: 2 * rng.random_range(1..12),
                w: 2 * rng.random_range(1..12),
            };
            ids.extend(std::iter::repeat_n(img, grid.num_merged_tokens(MERGE)));
            grids.push(grid);
        }
        for _ in 0..rng.random_range(0..6) {
            ids.push(rng.random_range(3..1000));
        }
        let got = mrope_positions(&ids, img, &grids, MERGE).unwrap();
        let (want, delta) = reference(&ids, img, &grids);
        for (axis, row) in want.iter().enumerate() {
            let got_row: Vec<i64> = got.axis(axis).iter().map(|&v| i64::from(v)).collect();
            assert_eq!(&got_row, row, "seed {seed:#x} case {case} axis {axis}");
        }
        assert_eq!(i64::from(got.rope_delta), delta, "seed {seed:#x} case {case}");
        // Decode positions continue from the prompt's largest position on every axis.
        let max = (0..3).flat_map(|a| got.axis(a).iter().copied()).max().unwrap_or(-1);
        assert_eq!(decode_position(ids.len(), got.rope_delta), max + 1);
    }
}

#[test]
fn mismatched_placeholders_are_errors() {
    let img = 1000;
    let grid = ImageGrid { t: 1, h: 4, w: 4 }; // 4 merged tokens
    let short = [1, img, img, img, 2];
    let err = mrope_positions(&short, img, &[grid], MERGE).unwrap_err();
    assert!(matches!(err, PreprocessError::Positions(_)), "{err}");
    assert!(err.to_string().contains("needs 4 placeholder tokens"), "{err}");

    let extra = [1, img, img, img, img, img, 2];
    let err = mrope_positions(&extra, img, &[grid], MERGE).unwrap_err();
    assert!(err.to_string().contains("only 1 image grids"), "{err}");

    let unused = [1, img, img, img, img, 2];
    let err = mrope_positions(&unused, img, &[grid, grid], MERGE).unwrap_err();
    assert!(err.to_string().contains("2 image grids given"), "{err}");

    let odd = ImageGrid { t: 1, h: 3, w: 4 };
    let err = mrope_positions(&short, img, &[odd], MERGE).unwrap_err();
    assert!(matches!(err, PreprocessError::InvalidGrid { .. }), "{err}");
}

/// The walk reports each image's placeholder run (what `Prompt::image_spans` holds and the
/// engine's sequences take), back-to-back images as two runs, and `of_token` is the one
/// position rule: the prompt's own positions, then `index + rope_delta` on all three axes.
#[test]
fn image_spans_and_token_positions() {
    let img = 1000;
    let (ids, g) = three_images();
    let pos = mrope_positions(&ids, img, &g, MERGE).unwrap();
    assert_eq!(pos.image_spans, vec![2..5, 6..8, 8..9]);
    for (span, grid) in pos.image_spans.iter().zip(&g) {
        assert_eq!(span.len(), grid.num_merged_tokens(MERGE));
    }
    for t in 0..ids.len() {
        assert_eq!(pos.of_token(t), pos.at(t), "prompt token {t}");
    }
    for t in ids.len()..ids.len() + 5 {
        assert_eq!(
            pos.of_token(t),
            [decode_position(t, pos.rope_delta); 3],
            "generated token {t}"
        );
    }
    // The first generated token continues one past the last prompt token's position (10).
    assert_eq!(pos.at(ids.len() - 1), [10, 10, 10]);
    assert_eq!(pos.of_token(ids.len()), [11, 11, 11]);
    let text = mrope_positions(&[5, 6, 7], img, &[], MERGE).unwrap();
    assert!(text.image_spans.is_empty());
}
