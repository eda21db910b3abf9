//! Weight tensors, by layer name and role (`{layer}.weight`, `{layer}.bias`, … as PyTorch
//! names them), from a `.safetensors` file or generated from a seed.

use std::collections::BTreeMap;

use ndarray::{ArrayD, IxDyn};

use crate::ops::WeightRole;

/// All weight tensors of a network, keyed by full tensor name (`layer.suffix`).
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Weights {
    tensors: BTreeMap<String, ArrayD<f32>>,
}

impl Weights {
    pub fn new() -> Self {
        Self::default()
    }

    /// The tensor name of `role` for `layer`: `layer.weight`, `layer.running_mean`, …
    pub fn tensor_name(layer: &str, role: WeightRole) -> String {
        format!("{layer}.{}", role.suffix())
    }

    pub fn get(&self, layer: &str, role: WeightRole) -> Option<&ArrayD<f32>> {
        self.tensors.get(&Self::tensor_name(layer, role))
    }

    pub fn get_by_name(&self, name: &str) -> Option<&ArrayD<f32>> {
        self.tensors.get(name)
    }

    pub fn insert(&mut self, name: impl Into<String>, tensor: ArrayD<f32>) {
        self.tensors.insert(name.into(), tensor);
    }

    pub fn names(&self) -> impl Iterator<Item = &str> {
        self.tensors.keys().map(String::as_str)
    }

    pub fn len(&self) -> usize {
        self.tensors.len()
    }

    pub fn is_empty(&self) -> bool {
        self.tensors.is_empty()
    }
}

/// Deterministic pseudo-random numbers (SplitMix64): the same seed gives the same weights on
/// every machine, so seeded weights can travel as their seed.
#[derive(Clone, Debug)]
pub struct SplitMix64(u64);

impl SplitMix64 {
    pub fn new(seed: u64) -> Self {
        SplitMix64(seed)
    }

    /// A generator for one tensor: mixes the network seed with the tensor's name, so a tensor's
    /// values do not depend on the order in which tensors are generated.
    pub fn for_tensor(seed: u64, name: &str) -> Self {
        // FNV-1a over the name, then mixed with the seed.
        let mut h: u64 = 0xcbf2_9ce4_8422_2325;
        for b in name.bytes() {
            h ^= u64::from(b);
            h = h.wrapping_mul(0x0000_0100_0000_01b3);
        }
        SplitMix64(seed ^ h.rotate_left(17))
    }

    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    /// Uniform in `[0, 1)` with 24 bits of precision.
    pub fn next_f32(&mut self) -> f32 {
        (self.next_u64() >> 40) as f32 / (1u64 << 24) as f32
    }

    /// Uniform in `[lo, hi)`.
    pub fn uniform(&mut self, lo: f32, hi: f32) -> f32 {
        lo + (hi - lo) * self.next_f32()
    }

    /// A tensor of `shape` with values uniform in `[lo, hi)`.
    pub fn tensor(&mut self, shape: &[usize], lo: f32, hi: f32) -> ArrayD<f32> {
        ArrayD::from_shape_simple_fn(IxDyn(shape), || self.uniform(lo, hi))
    }
}
