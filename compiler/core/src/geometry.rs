//! Tile geometry: regions, how an output region maps back to the input region a layer needs,
//! the per-tile operator with its padding adjusted, and FDSP's independent-tile sizes.
//!
//! Pure arithmetic over shapes and operators: no tensors.

use serde::{Deserialize, Serialize};

use crate::net::{Layer, Source};
use crate::ops::{Hw, Op, Pad2, Shape, window_out};

/// A rectangle of a feature map: rows `r0..r1`, columns `c0..c1` (half-open).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct Region {
    pub r0: usize,
    pub r1: usize,
    pub c0: usize,
    pub c1: usize,
}

impl Region {
    pub fn full(s: Shape) -> Self {
        Region {
            r0: 0,
            r1: s.h,
            c0: 0,
            c1: s.w,
        }
    }

    pub fn rows(&self) -> usize {
        self.r1 - self.r0
    }

    pub fn cols(&self) -> usize {
        self.c1 - self.c0
    }

    pub fn area(&self) -> usize {
        self.rows() * self.cols()
    }

    pub fn is_empty(&self) -> bool {
        self.r1 <= self.r0 || self.c1 <= self.c0
    }

    /// The bounding box of both.
    pub fn union(&self, o: &Region) -> Region {
        if self.is_empty() {
            return *o;
        }
        if o.is_empty() {
            return *self;
        }
        Region {
            r0: self.r0.min(o.r0),
            r1: self.r1.max(o.r1),
            c0: self.c0.min(o.c0),
            c1: self.c1.max(o.c1),
        }
    }

    pub const EMPTY: Region = Region {
        r0: 0,
        r1: 0,
        c0: 0,
        c1: 0,
    };
}

/// One axis of a sliding window.
#[derive(Clone, Copy, Debug)]
struct Window {
    k: usize,
    s: usize,
    d: usize,
    pad_begin: usize,
    pad_end: usize,
}

fn windows(op: &Op) -> Option<(Window, Window, bool)> {
    let w = |k: Hw, s: Hw, d: Hw, p: Pad2| {
        (
            Window {
                k: k.h,
                s: s.h,
                d: d.h,
                pad_begin: p.top,
                pad_end: p.bottom,
            },
            Window {
                k: k.w,
                s: s.w,
                d: d.w,
                pad_begin: p.left,
                pad_end: p.right,
            },
        )
    };
    match op {
        Op::Conv2d(c) => {
            let (a, b) = w(c.kernel, c.stride, c.dilation, c.padding);
            Some((a, b, false))
        }
        Op::MaxPool(p) | Op::AvgPool(p) => {
            let (a, b) = w(p.kernel, p.stride, Hw::square(1), p.padding);
            Some((a, b, p.ceil_mode))
        }
        _ => None,
    }
}

/// Input interval needed for output interval `o0..o1` on one axis of length `len`, and the
/// padding the tile's operator needs before and after it.
fn back(win: Window, o0: usize, o1: usize, len: usize) -> (usize, usize, usize, usize) {
    let start = (o0 * win.s) as isize - win.pad_begin as isize;
    let end =
        ((o1 - 1) * win.s) as isize - win.pad_begin as isize + (win.d * (win.k - 1)) as isize + 1;
    // The windows span `start..end` of the padded axis; the part inside the input, clamped to
    // it (empty, at the nearer edge, when the windows lie wholly in the padding).
    let len = len as isize;
    let i0 = start.clamp(0, len);
    let i1 = end.clamp(i0, len);
    // Padding around it so the operator sees exactly `end − start` positions: what lies
    // before the input region, then the rest (an empty region takes it all on one side).
    let (extent, inside) = (end - start, i1 - i0);
    let pad_before = (i0 - start).clamp(0, extent - inside);
    let pad_after = extent - inside - pad_before;
    (
        i0 as usize,
        i1 as usize,
        pad_before as usize,
        pad_after as usize,
    )
}

/// The region of its input that `op` needs to compute `out`, its input being `input`.
pub fn input_region(op: &Op, out: &Region, input: Shape) -> Region {
    if out.is_empty() {
        return Region::EMPTY;
    }
    if let Some((wh, ww, _)) = windows(op) {
        let (r0, r1, _, _) = back(wh, out.r0, out.r1, input.h);
        let (c0, c1, _, _) = back(ww, out.c0, out.c1, input.w);
        return Region { r0, r1, c0, c1 };
    }
    if let Some((ah, aw)) = scatter(op) {
        let (r0, r1) = ah.back(out.r0, out.r1, input.h);
        let (c0, c1) = aw.back(out.c0, out.c1, input.w);
        return Region { r0, r1, c0, c1 };
    }
    if let Op::Pad { padding, .. } = op {
        let shift = |a: usize, p: usize, len: usize| a.saturating_sub(p).min(len);
        return Region {
            r0: shift(out.r0, padding.top, input.h),
            r1: shift(out.r1, padding.top, input.h),
            c0: shift(out.c0, padding.left, input.w),
            c1: shift(out.c1, padding.left, input.w),
        };
    }
    // Reductions over the whole map and flat layers read all of their input.
    if matches!(op, Op::GlobalAvgPool | Op::Flatten | Op::Linear { .. }) {
        return Region::full(input);
    }
    // Element-wise: the same place, except along an axis the input is broadcast over.
    Region {
        r0: if input.h == 1 { 0 } else { out.r0 },
        r1: if input.h == 1 { 1 } else { out.r1 },
        c0: if input.w == 1 { 0 } else { out.c0 },
        c1: if input.w == 1 { 1 } else { out.c1 },
    }
}

/// One axis of an upsampling layer (transposed convolution or nearest upsampling): input
/// position `i` reaches output positions `i·s + t·d − crop` for taps `t < k` (nearest
/// upsampling: `k = s`, `d = 1`).
#[derive(Clone, Copy, Debug)]
struct Scatter {
    k: usize,
    s: usize,
    d: usize,
    /// Output positions cropped before the first (the padding of a transposed convolution).
    crop: usize,
}

impl Scatter {
    /// The input interval that reaches outputs `o0..o1` (in an input of length `len`), and
    /// starts at or before them: where the taps leave gaps (`k < s`) or only output padding
    /// lies ahead, the input position just before the tile anchors it.
    fn back(self, o0: usize, o1: usize, len: usize) -> (usize, usize) {
        let (u0, u1) = (o0 + self.crop, o1 + self.crop);
        let i1 = ((u1 - 1) / self.s + 1).min(len);
        let reaching = (u0.saturating_sub(self.d * (self.k - 1))).div_ceil(self.s);
        let i0 = reaching.min(u0 / self.s).min(i1.saturating_sub(1));
        (i0, i1)
    }

    /// The tile's operator on this axis: what it crops before its first output, and after its
    /// last output (or, when the input's taps end before it, how many bias-only positions it
    /// adds: the output padding).
    fn tile(self, o0: usize, o1: usize, len: usize) -> (usize, usize, usize) {
        let (i0, i1) = self.back(o0, o1, len);
        let start = o0 + self.crop - i0 * self.s;
        let reach = (i1 - i0 - 1) * self.s + self.d * (self.k - 1) + 1;
        let end = o1 + self.crop - i0 * self.s;
        (start, reach.saturating_sub(end), end.saturating_sub(reach))
    }
}

fn scatter(op: &Op) -> Option<(Scatter, Scatter)> {
    match op {
        Op::ConvTranspose(c) => Some((
            Scatter {
                k: c.kernel.h,
                s: c.stride.h,
                d: c.dilation.h,
                crop: c.padding.top,
            },
            Scatter {
                k: c.kernel.w,
                s: c.stride.w,
                d: c.dilation.w,
                crop: c.padding.left,
            },
        )),
        Op::Upsample(u) => Some((
            Scatter {
                k: u.scale.h,
                s: u.scale.h,
                d: 1,
                crop: u.crop.top,
            },
            Scatter {
                k: u.scale.w,
                s: u.scale.w,
                d: 1,
                crop: u.crop.left,
            },
        )),
        _ => None,
    }
}

/// Why a layer cannot be cut at a given place.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NotTileable(pub String);

/// The operator that computes exactly `out` from the crop `input_region(op, out)` of its
/// input: the same operator with padding only where the tile meets the feature map's border.
/// A tile that reaches the far (bottom or right) border keeps the operator's own padding
/// there and its ceil mode, so windows hanging past the padding (ceil-mode pools) and their
/// average-pool divisors come out exactly as on the whole map.
pub fn tile_op(op: &Op, out: &Region, input: Shape) -> Result<Op, NotTileable> {
    if let Some((wh, ww, ceil)) = windows(op) {
        let counts_pad = matches!(op, Op::AvgPool(p) if p.count_include_pad);
        let axis = |win: Window, o0: usize, o1: usize, len: usize| {
            let full = window_out(len, win.k, win.s, win.d, win.pad_begin, win.pad_end, ceil);
            let (i0, i1, before, after) = back(win, o0, o1, len);
            match full {
                // The whole axis: the operator as it is.
                Some(n) if o0 == 0 && o1 == n => Ok((win.pad_begin, win.pad_end)),
                // Up to the far border: its own padding, unless a ceil-mode window hangs past it
                // (or the windows lie wholly in that padding: then exactly their extent).
                Some(n) if o1 == n && after <= win.pad_end && i1 > i0 => {
                    Ok((before, win.pad_end))
                }
                Some(n) if o1 == n && counts_pad => Err(NotTileable(
                    "the last window of this ceil-mode average pool hangs past its padding, and its \
                     divisor counts padding only the whole map can see; cut the other axis"
                        .into(),
                )),
                Some(n) if o1 <= n => Ok((before, after)),
                _ => Err(NotTileable(format!("rows or columns {o0}..{o1} are outside the layer's output"))),
            }
        };
        let (top, bottom) = axis(wh, out.r0, out.r1, input.h)?;
        let (left, right) = axis(ww, out.c0, out.c1, input.w)?;
        let padding = Pad2 {
            top,
            left,
            bottom,
            right,
        };
        return Ok(match op {
            Op::Conv2d(c) => Op::Conv2d(crate::ops::Conv2d {
                padding,
                ..c.clone()
            }),
            Op::MaxPool(p) => Op::MaxPool(crate::ops::Pool2d {
                padding,
                ..p.clone()
            }),
            Op::AvgPool(p) => Op::AvgPool(crate::ops::Pool2d {
                padding,
                ..p.clone()
            }),
            other => other.clone(),
        });
    }
    if let Some((ah, aw)) = scatter(op) {
        let (r0, r1) = ah.back(out.r0, out.r1, input.h);
        let (c0, c1) = aw.back(out.c0, out.c1, input.w);
        if r0 >= r1 || c0 >= c1 {
            return Err(NotTileable(format!(
                "rows {}..{} and columns {}..{} of its output get no input pixel (only the bias \
                 of its output padding); cut a coarser grid",
                out.r0, out.r1, out.c0, out.c1
            )));
        }
        let (top, bottom, pad_h) = ah.tile(out.r0, out.r1, input.h);
        let (left, right, pad_w) = aw.tile(out.c0, out.c1, input.w);
        let crop = Pad2 {
            top,
            left,
            bottom,
            right,
        };
        return match op {
            Op::ConvTranspose(c) => Ok(Op::ConvTranspose(crate::ops::ConvTranspose2d {
                padding: crop,
                output_padding: crate::ops::Hw { h: pad_h, w: pad_w },
                ..c.clone()
            })),
            Op::Upsample(u) => Ok(Op::Upsample(crate::ops::Upsample { crop, ..u.clone() })),
            other => Ok(other.clone()),
        };
    }
    if let Op::Pad { padding, value } = op {
        let before = |o: usize, p: usize| p.saturating_sub(o);
        let after = |o1: usize, p: usize, len: usize| (o1.saturating_sub(p)).saturating_sub(len);
        let pad = Pad2 {
            top: before(out.r0, padding.top),
            left: before(out.c0, padding.left),
            bottom: after(out.r1, padding.top, input.h),
            right: after(out.c1, padding.left, input.w),
        };
        return Ok(Op::Pad {
            padding: pad,
            value: *value,
        });
    }
    Ok(op.clone())
}

/// A layer as halo tracing sees it: its operator and where its inputs come from. The
/// compiler's layers (with statistics and spans) and the runtime's ([`Layer`]) both are.
pub trait TileLayer {
    fn op(&self) -> &Op;
    fn inputs(&self) -> &[Source];
}

impl TileLayer for Layer {
    fn op(&self) -> &Op {
        &self.op
    }

    fn inputs(&self) -> &[Source] {
        &self.inputs
    }
}

/// Halo mode: the region of every layer's output a tile computes, and the region of the
/// segment's input it needs, for the tile that produces `out` of the segment's last layer.
/// `layers` are the segment's, the first being layer `first` of the network; `shape_of`
/// gives the shape of any source they read. Traced back from the output, layer by layer.
/// An error names the layer (index into `layers`) that cannot compute its region on a tile.
pub fn halo_regions<L: TileLayer>(
    layers: &[L],
    first: usize,
    shape_of: impl Fn(&Source) -> Shape,
    out: Region,
) -> Result<(Vec<Region>, Region), (usize, NotTileable)> {
    let n = layers.len();
    let mut regions = vec![Region::EMPTY; n];
    let mut need = Region::EMPTY;
    if n == 0 {
        return Ok((regions, need));
    }
    regions[n - 1] = out;
    for l in (0..n).rev() {
        let r = regions[l];
        if r.is_empty() {
            continue;
        }
        let layer = &layers[l];
        for s in layer.inputs() {
            let shape = shape_of(s);
            tile_op(layer.op(), &r, shape).map_err(|e| (l, e))?;
            let want = input_region(layer.op(), &r, shape);
            match s {
                Source::Layer(id) if id.index() >= first && id.index() - first < n => {
                    let j = id.index() - first;
                    regions[j] = regions[j].union(&want);
                }
                _ => need = need.union(&want),
            }
        }
    }
    Ok((regions, need))
}

/// FDSP: the output size of `op` when its `rows × cols` input is processed as an image of its
/// own (with the operator's own padding on every side).
pub fn independent_out(op: &Op, rows: usize, cols: usize) -> Option<(usize, usize)> {
    if let Some((wh, ww, ceil)) = windows(op) {
        let h = window_out(rows, wh.k, wh.s, wh.d, wh.pad_begin, wh.pad_end, ceil)?;
        let w = window_out(cols, ww.k, ww.s, ww.d, ww.pad_begin, ww.pad_end, ceil)?;
        return Some((h, w));
    }
    if let Op::Upsample(_) = op {
        let out = op.output_shape(&[Shape::new(1, rows, cols)]).ok()?;
        return Some((out.h, out.w));
    }
    if let Op::ConvTranspose(c) = op {
        // On a one-channel stand-in: only the spatial extent matters here.
        let one = Op::ConvTranspose(crate::ops::ConvTranspose2d {
            out_channels: 1,
            groups: 1,
            ..c.clone()
        });
        let out = one.output_shape(&[Shape::new(1, rows, cols)]).ok()?;
        return Some((out.h, out.w));
    }
    if let Op::Pad { padding, .. } = op {
        return Some((
            rows + padding.top + padding.bottom,
            cols + padding.left + padding.right,
        ));
    }
    Some((rows, cols))
}

/// Splits `len` into `parts` contiguous intervals with sizes proportional to `weights`
/// (equal when all weights are equal), each at least 1; `None` if `len < parts`.
pub fn split(len: usize, weights: &[f64]) -> Option<Vec<(usize, usize)>> {
    let parts = weights.len();
    if parts == 0 || len < parts {
        return None;
    }
    let total: f64 = weights.iter().sum();
    let mut cuts = vec![0usize];
    let mut acc = 0.0;
    for (i, w) in weights.iter().enumerate().take(parts - 1) {
        acc += w;
        let ideal = (acc / total * len as f64).round() as usize;
        let lo = cuts[i] + 1;
        let hi = len - (parts - 1 - i);
        cuts.push(ideal.clamp(lo, hi));
    }
    cuts.push(len);
    Some(cuts.windows(2).map(|w| (w[0], w[1])).collect())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ops::{Conv2d, Pool2d};

    fn conv(k: usize, s: usize, p: usize) -> Op {
        Op::Conv2d(Conv2d {
            out_channels: 1,
            kernel: Hw::square(k),
            stride: Hw::square(s),
            padding: Pad2::uniform(p),
            dilation: Hw::square(1),
            groups: 1,
            bias: false,
        })
    }

    #[test]
    fn a_3x3_same_conv_needs_one_pixel_of_halo() {
        let s = Shape::new(1, 8, 8);
        let out = Region {
            r0: 4,
            r1: 8,
            c0: 0,
            c1: 4,
        };
        assert_eq!(
            input_region(&conv(3, 1, 1), &out, s),
            Region {
                r0: 3,
                r1: 8,
                c0: 0,
                c1: 5
            }
        );
        let Op::Conv2d(t) = tile_op(&conv(3, 1, 1), &out, s).expect("tileable") else {
            panic!()
        };
        assert_eq!(
            t.padding,
            Pad2 {
                top: 0,
                left: 1,
                bottom: 1,
                right: 0
            }
        );
    }

    #[test]
    fn strided_windows_map_back_to_their_first_and_last_taps() {
        let s = Shape::new(1, 9, 9);
        let pool = Op::MaxPool(Pool2d {
            kernel: Hw::square(3),
            stride: Hw::square(2),
            padding: Pad2::uniform(1),
            ceil_mode: false,
            count_include_pad: true,
        });
        // Output rows 2..5 read input rows 2*2-1 = 3 to 4*2-1+2 = 9 (clipped to 9).
        let r = input_region(
            &pool,
            &Region {
                r0: 2,
                r1: 5,
                c0: 0,
                c1: 1,
            },
            s,
        );
        assert_eq!((r.r0, r.r1), (3, 9));
    }

    #[test]
    fn split_is_even_or_proportional() {
        assert_eq!(split(7, &[1.0, 1.0]), Some(vec![(0, 4), (4, 7)]));
        assert_eq!(
            split(12, &[2.0, 1.0, 1.0]),
            Some(vec![(0, 6), (6, 9), (9, 12)])
        );
        assert_eq!(split(2, &[1.0, 1.0, 1.0]), None);
    }

    #[test]
    fn independent_tiles_of_a_same_conv_keep_their_size() {
        assert_eq!(independent_out(&conv(3, 1, 1), 5, 7), Some((5, 7)));
        assert_eq!(independent_out(&conv(11, 4, 2), 112, 112), Some((27, 27)));
    }

    /// Every tile of an upsampling layer (transposed convolutions of every stride, padding,
    /// output padding, dilation and kernel tried here; nearest upsampling), computed from
    /// its input region by its tile operator, is exactly that part of the whole output.
    #[test]
    fn every_tile_of_an_upsampling_layer_is_the_crop_of_the_whole() {
        use crate::eval::eval_op;
        use crate::ops::{ConvTranspose2d, Upsample};
        use crate::tensor::crop;
        use crate::weights::Weights;
        use ndarray::{Array3, ArrayD, IxDyn};

        let input = Shape::new(2, 5, 4);
        let x = Array3::from_shape_fn((2, 5, 4), |(c, i, j)| {
            ((c * 31 + i * 7 + j * 3) % 11) as f32 - 5.0
        });
        let mut ops = vec![Op::Upsample(Upsample {
            scale: Hw { h: 2, w: 3 },
            crop: Pad2::default(),
        })];
        for (k, s, p, op, d) in [
            (2, 2, 0, 0, 1),
            (3, 2, 1, 1, 1),
            (3, 1, 1, 0, 1),
            (4, 3, 2, 2, 1),
            (3, 2, 2, 1, 2),
            (1, 2, 0, 1, 1),
        ] {
            ops.push(Op::ConvTranspose(ConvTranspose2d {
                out_channels: 3,
                kernel: Hw::square(k),
                stride: Hw {
                    h: s,
                    w: s.max(2) - 1,
                },
                padding: Pad2 {
                    top: p,
                    left: p.min(1),
                    bottom: p / 2,
                    right: 0,
                },
                output_padding: Hw { h: op, w: 0 },
                dilation: Hw::square(d),
                groups: 1,
                bias: true,
            }));
        }
        for op in ops {
            let mut w = Weights::new();
            if let Op::ConvTranspose(c) = &op {
                let shape = [2, 3, c.kernel.h, c.kernel.w];
                let n: usize = shape.iter().product();
                let v = (0..n)
                    .map(|i| ((i * 13) % 7) as f32 * 0.25 - 0.75)
                    .collect();
                w.insert(
                    "l.weight",
                    ArrayD::from_shape_vec(IxDyn(&shape), v).expect("shape"),
                );
                w.insert(
                    "l.bias",
                    ArrayD::from_shape_vec(IxDyn(&[3]), vec![0.5, -1.0, 2.0]).expect("shape"),
                );
            }
            let out = op.output_shape(&[input]).expect("fits");
            let whole = eval_op(&op, "l", &[&x], &w).expect("runs");
            let full = Region::full(out);
            for r0 in 0..out.h {
                for r1 in r0 + 1..=out.h {
                    for (c0, c1) in [(0, out.w), (1, out.w), (0, 1), (out.w / 2, out.w - 1)] {
                        let tile = Region { r0, r1, c0, c1 };
                        if tile.is_empty() {
                            continue;
                        }
                        let Ok(t) = tile_op(&op, &tile, input) else {
                            // Only tiles no input pixel reaches (output padding) are refused.
                            assert!(input_region(&op, &tile, input).is_empty(), "{op} {tile:?}");
                            continue;
                        };
                        let need = input_region(&op, &tile, input);
                        let part = crop(&x, &Region::full(input), &need);
                        let got = eval_op(&t, "l", &[&part], &w).expect("tile runs");
                        let want = crop(&whole, &full, &tile);
                        assert_eq!(got, want, "{op} tile {tile:?} (tile op {t})");
                    }
                }
            }
        }
    }
}
