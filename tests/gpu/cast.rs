//! The proof kernel, `cast_scale`, through all three layers (launcher, wrapper, runtime).

use half::{bf16, f16};
use ocrvl::kernels::elementwise::cast_scale;
use ocrvl::runtime::{DType, DeviceTensor};

use crate::common::{gpu, rand_f32, rng};

/// Host model of the kernel: f32 multiply, then one round-to-nearest-even to the out type.
fn round_to(dtype: DType, v: f32) -> f64 {
    match dtype {
        DType::BF16 => bf16::from_f32(v).to_f64(),
        DType::F16 => f16::from_f32(v).to_f64(),
        _ => v as f64,
    }
}

fn upload(g: &ocrvl::runtime::Gpu, dtype: DType, vals: &[f32]) -> (DeviceTensor, Vec<f32>) {
    // Returns the values as the device holds them (rounded to dtype).
    match dtype {
        DType::BF16 => {
            let v: Vec<bf16> = vals.iter().map(|&x| bf16::from_f32(x)).collect();
            (
                DeviceTensor::from_host(g, &[v.len()], &v).unwrap(),
                v.iter().map(|x| x.to_f32()).collect(),
            )
        }
        DType::F16 => {
            let v: Vec<f16> = vals.iter().map(|&x| f16::from_f32(x)).collect();
            (
                DeviceTensor::from_host(g, &[v.len()], &v).unwrap(),
                v.iter().map(|x| x.to_f32()).collect(),
            )
        }
        _ => (DeviceTensor::from_host(g, &[vals.len()], vals).unwrap(), vals.to_vec()),
    }
}

fn download(g: &ocrvl::runtime::Gpu, t: &DeviceTensor) -> Vec<f64> {
    match t.dtype() {
        DType::BF16 => t.to_host::<bf16>(g).unwrap().iter().map(|x| x.to_f64()).collect(),
        DType::F16 => t.to_host::<f16>(g).unwrap().iter().map(|x| x.to_f64()).collect(),
        _ => t.to_host::<f32>(g).unwrap().iter().map(|&x| x as f64).collect(),
    }
}

#[test]
#[ignore = "needs GPU"]
fn cast_scale_matches_f64_reference_every_dtype_pair() {
    let g = gpu();
    let mut r = rng(0xCA57);
    let dtypes = [DType::BF16, DType::F16, DType::F32];
    // 1 and 7: tails; 83: odd; 5040*1152: a vision activation; 3 * 2^20 + 1: past one wave of
    // blocks with a remainder.
    for &n in &[1usize, 7, 83, 1024, 5040 * 1152, 3 * (1 << 20) + 1] {
        let vals = rand_f32(&mut r, n, 8.0);
        for &din in &dtypes {
            for &dout in &dtypes {
                let scale = 0.37f32;
                let (x, held) = upload(&g, din, &vals);
                let mut out = DeviceTensor::alloc(&g, dout, &[n]).unwrap();
                out.view_mut().fill_bytes(&g, 0xFF).unwrap(); // NaN in every float type
                cast_scale(&g, &mut out.view_mut(), &x.view(), scale).unwrap();
                let got = download(&g, &out);
                for i in 0..n {
                    let exact = held[i] as f64 * scale as f64;
                    let model = round_to(dout, held[i] * scale);
                    assert!(!got[i].is_nan(), "{din}->{dout} n={n}: element {i} unwritten");
                    assert_eq!(got[i], model, "{din}->{dout} n={n}: element {i} (exact {exact})");
                    // The model itself is within one rounding of the f64 value; f16 results
                    // under 2^-14 are subnormal, with a fixed spacing of 2^-24.
                    let floor = if dout == DType::F16 { 2f64.powi(-24) } else { 1e-30 };
                    let ulp = match dout {
                        DType::BF16 => 1.0 / 128.0,
                        DType::F16 => 1.0 / 1024.0,
                        _ => 1e-6,
                    };
                    assert!(
                        (got[i] - exact).abs() <= ulp * exact.abs() + floor,
                        "{din}->{dout}: {i}"
                    );
                }
            }
        }
    }
}

#[test]
#[ignore = "needs GPU"]
fn cast_scale_rejects_bad_arguments() {
    let g = gpu();
    let x = DeviceTensor::zeros(&g, DType::F32, &[8]).unwrap();
    let mut short = DeviceTensor::zeros(&g, DType::BF16, &[7]).unwrap();
    let err = cast_scale(&g, &mut short.view_mut(), &x.view(), 1.0).unwrap_err();
    assert!(err.to_string().contains("differ in size"), "{err}");
    let mut ints = DeviceTensor::zeros(&g, DType::I32, &[8]).unwrap();
    let err = cast_scale(&g, &mut ints.view_mut(), &x.view(), 1.0).unwrap_err();
    assert!(err.to_string().contains("i32"), "{err}");
    // n = 0 is a no-op, not an error.
    let empty = DeviceTensor::zeros(&g, DType::F32, &[0]).unwrap();
    let mut empty_out = DeviceTensor::zeros(&g, DType::BF16, &[0]).unwrap();
    cast_scale(&g, &mut empty_out.view_mut(), &empty.view(), 1.0).unwrap();
}
