//! The checked-in bindings (used where no libclang loads) must equal what bindgen makes now.

#[test]
#[cfg_attr(
    not(ocrvl_bindgen),
    ignore = "libclang did not load at build time, so nothing to compare with"
)]
fn checked_in_bindings_match_bindgen() {
    let generated = include_str!(concat!(env!("OUT_DIR"), "/sys.rs"));
    let checked_in = include_str!("../../kernels/include/bindings.rs");
    assert!(
        generated == checked_in,
        "kernels/include/bindings.rs is stale: run tools/refresh_bindings.sh after changing a header in kernels/include/"
    );
}
