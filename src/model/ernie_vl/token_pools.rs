//! Which expert pool each prompt token goes to (docs/ERNIE_4_5_VL_SPEC.md §3.8): the MoE
//! block's `token_pool` (0 text, 1 vision). transformers routes every token its processor types
//! non-zero in `moe_mm_token_type_ids` to the vision pool: image and video placeholders and the
//! `<|IMAGE_START|>` / `<|IMAGE_END|>` (`<|VIDEO_START|>` / `<|VIDEO_END|>`) markers. FastDeploy
//! routes only the placeholders there. The choice is [`MarkerRouting`]; the spec leaves it to a
//! measurement on the GPU host (`ernie_oracle.py --start-end-text`). Generated tokens are text.

use crate::config::ErnieVlConfig;

/// The text pool's index in the MoE block.
pub const TEXT_POOL: i32 = 0;
/// The vision pool's index in the MoE block.
pub const VISION_POOL: i32 = 1;

/// Where the image and video start/end markers go.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum MarkerRouting {
    /// transformers: the markers go to the vision pool with the placeholders.
    #[default]
    Vision,
    /// FastDeploy: only the placeholders go to the vision pool.
    Text,
}

/// The pool of each of `ids` (a prompt; decode tokens are all [`TEXT_POOL`]).
pub fn token_pools(cfg: &ErnieVlConfig, ids: &[u32], markers: MarkerRouting) -> Vec<i32> {
    let t = &cfg.tokens;
    let placeholder = |id: u32| id == t.image_token_id || t.video_token_id == Some(id);
    let marker = |id: u32| {
        [
            t.image_start_token_id,
            t.image_end_token_id,
            t.video_start_token_id,
            t.video_end_token_id,
        ]
        .contains(&id)
    };
    ids.iter()
        .map(|&id| {
            if placeholder(id) || (markers == MarkerRouting::Vision && marker(id)) {
                VISION_POOL
            } else {
                TEXT_POOL
            }
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn placeholders_and_markers_go_to_the_vision_pool() {
        let cfg = ErnieVlConfig::tiny();
        let t = &cfg.tokens;
        // "User: Picture 1:" <start> 3 x <image> <end> "Describe." (text ids 5..)
        let ids = [
            5,
            6,
            t.image_start_token_id,
            t.image_token_id,
            t.image_token_id,
            t.image_token_id,
            t.image_end_token_id,
            7,
        ];
        assert_eq!(
            token_pools(&cfg, &ids, MarkerRouting::Vision),
            vec![0, 0, 1, 1, 1, 1, 1, 0]
        );
        assert_eq!(
            token_pools(&cfg, &ids, MarkerRouting::Text),
            vec![0, 0, 0, 1, 1, 1, 0, 0]
        );
        assert_eq!(MarkerRouting::default(), MarkerRouting::Vision);
        // Video markers follow the same rule.
        let v = [t.video_start_token_id, 9, t.video_end_token_id];
        assert_eq!(token_pools(&cfg, &v, MarkerRouting::Vision), vec![1, 0, 1]);
        assert_eq!(token_pools(&cfg, &v, MarkerRouting::Text), vec![0, 0, 0]);
        assert!(token_pools(&cfg, &[], MarkerRouting::Vision).is_empty());
    }
}
