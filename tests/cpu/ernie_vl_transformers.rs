//! ocrvl's ERNIE-4.5-VL prompt positions and image preprocessing against what transformers
//! 5.17 computed for the same inputs (tools/gpu/ernie_oracle.py --variant tiny, GPU host
//! 2026-12-07; files in tests/fixtures/ernie_transformers_save): `get_rope_index`'s 3D
//! positions for a prompt with two images, and `Ernie4_5_VLMoeImageProcessor`'s pixel values
//! (which the oracle's own spec pixels matched within 2.4e-7) for its two images, through
//! ocrvl's shared image processor in its ERNIE layout.

use std::path::{Path, PathBuf};

use ocrvl::config::ErnieVlConfig;
use ocrvl::model::ernie_vl::family::layout_prompt;
use ocrvl::preprocess::image::{ImageGrid, ImageProcessor};
use ocrvl::preprocess::{ProcessorConfig, Rgb8Image};

use crate::npy::read_npy;

fn fixture(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures/ernie_transformers_save")
        .join(name)
}

fn grids() -> Vec<ImageGrid> {
    let g = read_npy(&fixture("image_grid_thw.npy"));
    assert_eq!(g.shape[1], 3);
    g.as_i64()
        .chunks(3)
        .map(|r| ImageGrid {
            t: r[0] as usize,
            h: r[1] as usize,
            w: r[2] as usize,
        })
        .collect()
}

#[test]
fn prompt_positions_match_transformers_rope_index() {
    let cfg = ErnieVlConfig::from_dir(fixture("")).unwrap();
    let ids: Vec<u32> = read_npy(&fixture("input_ids.npy"))
        .as_i64()
        .iter()
        .map(|&x| x as u32)
        .collect();
    let want = read_npy(&fixture("position_ids.npy"));
    assert_eq!(want.shape, vec![3, 1, ids.len()]);
    let layout = layout_prompt(&cfg, &ids, &grids()).unwrap();
    assert_eq!(layout.image_spans().len(), 2);
    let want = want.as_i64();
    for t in 0..ids.len() {
        let got = layout.position(t);
        for axis in 0..3 {
            assert_eq!(
                got[axis] as i64,
                want[axis * ids.len() + t],
                "token {t} (id {}), axis {axis}",
                ids[t]
            );
        }
    }
}

#[test]
fn image_pixels_match_transformers_processor() {
    let want = read_npy(&fixture("pixel_values.npy"));
    let processor = ImageProcessor::new(ProcessorConfig::ernie_vl_defaults());
    let mut got = Vec::new();
    for (i, grid) in grids().iter().enumerate() {
        let img = read_npy(&fixture(&format!("image_{i}.npy")));
        let (h, w) = (img.shape[0], img.shape[1]);
        assert_eq!(img.shape[2], 3);
        let rgb = Rgb8Image::from_raw(w, h, img.data.iter().map(|&v| v as u8).collect()).unwrap();
        let out = processor.process_rgb(&rgb).unwrap();
        assert_eq!(out.grid, *grid, "image {i}");
        got.extend(out.pixel_values);
    }
    assert_eq!(want.shape, vec![got.len() / 588, 588]);
    let worst = got
        .iter()
        .zip(&want.data)
        .map(|(&g, &w)| (g as f64 - w).abs())
        .fold(0.0, f64::max);
    // f32 arithmetic in a different order: a few ulps of values up to ~2.
    assert!(worst < 2e-6, "largest pixel difference {worst}");
}
