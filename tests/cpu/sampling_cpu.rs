//! Host-side logic of the sampling family that needs no GPU: parameter checks, history
//! packing, the workspace size, the Philox copy the tests use, and the reference's rules.

use crate::ref_sampling as rs;
use ocrvl::kernels::sampling::{pack_history, workspace_bytes, SamplingParams};

#[test]
fn philox_matches_the_papers_known_answers() {
    // Random123's kat_vectors for philox4x32_10 (the constants of kernels/common/philox.cuh).
    assert_eq!(
        rs::philox4x32_10([0; 4], [0; 2]),
        [0x6627e8d5, 0xe169c58d, 0xbc57ac4c, 0x9b00dbd8]
    );
    assert_eq!(
        rs::philox4x32_10([u32::MAX; 4], [u32::MAX; 2]),
        [0x408f276d, 0x41c83b0e, 0xa20bc7c6, 0x6d5451fd]
    );
    assert_eq!(
        rs::philox4x32_10(
            [0x243f6a88, 0x85a308d3, 0x13198a2e, 0x03707344],
            [0xa4093822, 0x299f31d0]
        ),
        [0xd16cfe09, 0x94fdcceb, 0x5001e420, 0x24126ea1]
    );
}

#[test]
fn params_are_checked_like_the_kernel_does() {
    assert!(SamplingParams::default().validate().is_ok());
    assert!(SamplingParams::greedy().validate().is_ok());
    let bad = [
        SamplingParams {
            temperature: -0.1,
            ..Default::default()
        },
        SamplingParams {
            temperature: f32::INFINITY,
            ..Default::default()
        },
        SamplingParams {
            top_k: -1,
            ..Default::default()
        },
        SamplingParams {
            top_p: 0.0,
            ..Default::default()
        },
        SamplingParams {
            top_p: f32::NAN,
            ..Default::default()
        },
        SamplingParams {
            repetition_penalty: 0.0,
            ..Default::default()
        },
        SamplingParams {
            frequency_penalty: f32::NAN,
            ..Default::default()
        },
        SamplingParams {
            presence_penalty: f32::NEG_INFINITY,
            ..Default::default()
        },
    ];
    for p in bad {
        assert!(p.validate().is_err(), "{p:?} should be rejected");
    }
    // top_p above 1 and top_k above the vocab mean "off", not an error.
    assert!(SamplingParams {
        top_p: 1.5,
        top_k: 1 << 20,
        ..Default::default()
    }
    .validate()
    .is_ok());
    assert!(!SamplingParams::default().has_penalties());
    assert!(SamplingParams {
        presence_penalty: 0.5,
        ..Default::default()
    }
    .has_penalties());
}

#[test]
fn histories_pack_into_offsets() {
    let (mut tokens, mut cu) = (vec![9; 3], vec![7]);
    pack_history(&[&[1, 2, 3], &[], &[4]], &mut tokens, &mut cu).unwrap();
    assert_eq!(tokens, vec![1, 2, 3, 4]);
    assert_eq!(cu, vec![0, 3, 3, 4]);
    pack_history(&[], &mut tokens, &mut cu).unwrap();
    assert!(tokens.is_empty());
    assert_eq!(cu, vec![0]);
}

#[test]
fn workspace_is_a_hash_table_of_two_slots_per_history_token() {
    assert_eq!(workspace_bytes(0), 0);
    assert_eq!(workspace_bytes(1000), 16 * 1000);
}

#[test]
fn reference_allowed_set_keeps_ties_and_turns_off_cleanly() {
    let z = [3.0, 1.0, 3.0, 2.0, f64::NEG_INFINITY, 2.0];
    // top_k = 1 keeps both maxima (ties at the boundary are kept).
    assert_eq!(rs::allowed(&z, 1, 1.0), vec![true, false, true, false, false, false]);
    // top_k = 3: the two 3.0s and then the tie group of 2.0s has 2 tokens above it, < 3.
    assert_eq!(rs::allowed(&z, 3, 1.0), vec![true, false, true, true, false, true]);
    // Off: every finite token.
    assert_eq!(rs::allowed(&z, 0, 1.0), vec![true, true, true, true, false, true]);
    assert_eq!(rs::allowed(&z, 6, 1.0), rs::allowed(&z, 0, 1.0));
    // top_p: the maxima hold about 0.70 of the mass, so 0.5 keeps them only.
    assert_eq!(rs::allowed(&z, 0, 0.5), vec![true, false, true, false, false, false]);
    assert_eq!(rs::order_desc(&z), vec![0, 2, 3, 5, 1]);
    let t = rs::truncated(&z, 1, 1.0);
    assert!((t[0] - 0.5).abs() < 1e-12 && (t[2] - 0.5).abs() < 1e-12);
    let (p, margin) = rs::safe_top_p(&z, 0.7);
    assert!(margin > 0.0 && p > 0.6 && p < 0.99, "{p} {margin}");
}
