//! Element types the engine stores on the device.

use std::fmt;

/// Element type of a tensor. The discriminants match `OcrvlDType` in
/// `kernels/include/common.h`, so a `DType` converts to the C enum by value.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum DType {
    BF16 = 0,
    F16 = 1,
    F32 = 2,
    I32 = 3,
    /// Signed 8-bit integers: weight-only quantised expert weights (`--quantization wint8`).
    I8 = 4,
}

impl DType {
    pub const fn size_bytes(self) -> usize {
        match self {
            DType::I8 => 1,
            DType::BF16 | DType::F16 => 2,
            DType::F32 | DType::I32 => 4,
        }
    }

    /// The name safetensors uses in its header ("BF16", "F16", "F32", "I32", "I8").
    pub const fn safetensors_name(self) -> &'static str {
        match self {
            DType::BF16 => "BF16",
            DType::F16 => "F16",
            DType::F32 => "F32",
            DType::I32 => "I32",
            DType::I8 => "I8",
        }
    }

    pub fn from_safetensors(dtype: safetensors::Dtype) -> Option<DType> {
        match dtype {
            safetensors::Dtype::BF16 => Some(DType::BF16),
            safetensors::Dtype::F16 => Some(DType::F16),
            safetensors::Dtype::F32 => Some(DType::F32),
            safetensors::Dtype::I32 => Some(DType::I32),
            safetensors::Dtype::I8 => Some(DType::I8),
            _ => None,
        }
    }

    pub fn to_safetensors(self) -> safetensors::Dtype {
        match self {
            DType::BF16 => safetensors::Dtype::BF16,
            DType::F16 => safetensors::Dtype::F16,
            DType::F32 => safetensors::Dtype::F32,
            DType::I32 => safetensors::Dtype::I32,
            DType::I8 => safetensors::Dtype::I8,
        }
    }
}

impl fmt::Display for DType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            DType::BF16 => "bf16",
            DType::F16 => "f16",
            DType::F32 => "f32",
            DType::I32 => "i32",
            DType::I8 => "i8",
        })
    }
}
