//! Weight tensors, by layer name and role (`{layer}.weight`, `{layer}.bias`, … as PyTorch
//! names them), and the seeded generator that benchmarks' weights come from.

use std::collections::BTreeMap;

use ndarray::{ArrayD, IxDyn};
use serde::{Deserialize, Serialize};

use crate::ops::WeightRole;

/// Weight tensors keyed by full tensor name (`layer.suffix`). Each tensor remembers whether
/// it is exactly what a [`Seeded`] generator makes, so a plan can carry it as its seed.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Weights {
    tensors: BTreeMap<String, ArrayD<f32>>,
    seeded: BTreeMap<String, Seeded>,
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

    /// Inserts (or replaces) a tensor of arbitrary values.
    pub fn insert(&mut self, name: impl Into<String>, tensor: ArrayD<f32>) {
        let name = name.into();
        self.seeded.remove(&name);
        self.tensors.insert(name, tensor);
    }

    /// Inserts the tensor `init` generates for `name` and `shape`, remembering how.
    pub fn insert_seeded(&mut self, name: impl Into<String>, shape: &[usize], init: Seeded) {
        let name = name.into();
        let t = init.generate(&name, shape);
        self.tensors.insert(name.clone(), t);
        self.seeded.insert(name, init);
    }

    /// How the tensor `name` was generated, if it is exactly a seeded generator's output.
    pub fn seeded(&self, name: &str) -> Option<Seeded> {
        self.seeded.get(name).copied()
    }

    /// Removes and returns a tensor.
    pub fn remove(&mut self, name: &str) -> Option<ArrayD<f32>> {
        self.seeded.remove(name);
        self.tensors.remove(name)
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

    /// Bytes of tensor data held.
    pub fn bytes(&self) -> usize {
        self.tensors
            .values()
            .map(|t| t.len() * size_of::<f32>())
            .sum()
    }
}

/// Uniform pseudo-random values in `[lo, hi)` from a network seed, mixed with the tensor's
/// name ([`SplitMix64::for_tensor`]): the same on every machine, so such a tensor travels as
/// these three numbers.
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
pub struct Seeded {
    pub seed: u64,
    pub lo: f32,
    pub hi: f32,
}

impl Seeded {
    /// The tensor `name` of `shape`.
    pub fn generate(&self, name: &str, shape: &[usize]) -> ArrayD<f32> {
        SplitMix64::for_tensor(self.seed, name).tensor(shape, self.lo, self.hi)
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
