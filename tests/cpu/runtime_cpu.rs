//! Runtime behaviour that needs no GPU.

use ocrvl::runtime::{DType, Gpu, Shape};
use ocrvl::Error;

#[test]
fn missing_device_is_a_clear_error_not_a_panic() {
    // No machine has 1000 GPUs: without a driver this reports the missing libcuda, with one it
    // reports the device count. Either way, an Error::NoDevice, not a panic.
    match Gpu::new(1000) {
        Err(Error::NoDevice(msg)) => {
            assert!(msg.contains("libcuda") || msg.contains("device 1000"), "{msg}");
            assert!(Error::NoDevice(msg).to_string().starts_with("no CUDA device"));
        }
        other => panic!("expected NoDevice, got {other:?}"),
    }
}

#[test]
fn shapes_and_dtypes() {
    let s = Shape::new(&[3, 4, 5]).unwrap();
    assert_eq!(s.numel(), 60);
    assert_eq!(s.inner(), 20);
    assert_eq!(s.dims(), &[3, 4, 5]);
    assert!(Shape::new(&[1, 2, 3, 4, 5]).is_err());
    assert_eq!(DType::BF16.size_bytes(), 2);
    assert_eq!(DType::I32.size_bytes(), 4);
    assert_eq!(DType::BF16 as u32, ocrvl::sys::OcrvlDType::OCRVL_DTYPE_BF16 as u32);
    assert_eq!(DType::F16 as u32, ocrvl::sys::OcrvlDType::OCRVL_DTYPE_F16 as u32);
    assert_eq!(DType::F32 as u32, ocrvl::sys::OcrvlDType::OCRVL_DTYPE_F32 as u32);
    assert_eq!(DType::I32 as u32, ocrvl::sys::OcrvlDType::OCRVL_DTYPE_I32 as u32);
}
