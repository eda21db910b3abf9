//! Activations fused into kernels' epilogues, as host code and as the generated code's
//! reference.

/// An activation fused into an epilogue.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Act {
    None,
    Relu,
    Clip { min: f32, max: f32 },
    Leaky { slope: f32 },
}

impl Act {
    /// The constants a vector epilogue needs: the clip bounds, or the leaky slope (then
    /// 0.0), or zeros (relu compares with 0.0 itself).
    pub fn bounds(self) -> (f32, f32) {
        match self {
            Act::Clip { min, max } => (min, max),
            Act::Leaky { slope } => (slope, 0.0),
            Act::None | Act::Relu => (0.0, 0.0),
        }
    }

    /// The activation of one value, in host code (the generated code's `fcmp` + `bitselect`
    /// give the same results).
    #[inline(always)]
    pub fn apply(self, t: f32) -> f32 {
        match self {
            Act::None => t,
            Act::Relu => t.max(0.0),
            Act::Clip { min, max } => t.max(min).min(max),
            Act::Leaky { slope } => {
                if t > 0.0 {
                    t
                } else {
                    t * slope
                }
            }
        }
    }
}
