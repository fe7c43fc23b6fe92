//! Validated checkpoint tensors copied to the GPU.

use std::collections::HashMap;

use super::names::{EMBED_TOKENS, LM_HEAD};
use super::weights::ValidatedWeights;
use crate::error::{Error, Result};
use crate::runtime::{DeviceTensor, Gpu, TensorView};

/// Every used tensor of the model on the device, by hub name.
pub struct DeviceWeights {
    tensors: HashMap<String, DeviceTensor>,
    lm_head_tied: bool,
    total_bytes: usize,
}

impl DeviceWeights {
    /// Copies each tensor from the memory-mapped file straight to its own device allocation
    /// (no host staging copy). A tied lm_head is stored once.
    pub fn upload(gpu: &Gpu, weights: &ValidatedWeights<'_>) -> Result<DeviceWeights> {
        let mut tensors = HashMap::with_capacity(weights.len());
        let mut total_bytes = 0;
        for t in weights.iter() {
            let dev = DeviceTensor::from_bytes(gpu, t.dtype, t.shape, t.data)?;
            total_bytes += dev.nbytes();
            tensors.insert(t.name.to_string(), dev);
        }
        Ok(DeviceWeights {
            tensors,
            lm_head_tied: weights.lm_head_tied(),
            total_bytes,
        })
    }

    /// The tensor named `name` (hub layout); `lm_head.weight` is the embedding when tied.
    pub fn get(&self, name: &str) -> Result<TensorView<'_>> {
        let key = if name == LM_HEAD && self.lm_head_tied {
            EMBED_TOKENS
        } else {
            name
        };
        self.tensors
            .get(key)
            .map(DeviceTensor::view)
            .ok_or_else(|| Error::invalid("weights", format!("no tensor `{name}` on the device")))
    }

    pub fn len(&self) -> usize {
        self.tensors.len()
    }

    pub fn is_empty(&self) -> bool {
        self.tensors.is_empty()
    }

    pub fn total_bytes(&self) -> usize {
        self.total_bytes
    }

    pub fn lm_head_tied(&self) -> bool {
        self.lm_head_tied
    }
}
