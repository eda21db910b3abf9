//! Running one tile: the segment's layers in order, each on the kernel chosen for it, fused
//! chains and blocks carried to their last layer, intermediate values recycled as soon as
//! their last reader has run, and the output quantised for the wire.

use std::borrow::Cow;
use std::time::Instant;

use adcnn_core::eval::{EvalError, eval_op};
use adcnn_core::geometry::{input_region, tile_op};
use adcnn_core::net::{LayerId, Source};
use adcnn_core::ops::{Op, Pad2, WeightRole};
use adcnn_core::plan::{Compression, Mode, Region, Segment, Tile};
use adcnn_core::program::Program;
use adcnn_core::tensor::{crop, empty};
use adcnn_core::weights::Weights;
use ndarray::Array3;

use super::buffers::{overwritten, padded, recycle, recycle_vec, tensor};
use super::choice::{Kernel, KernelKind};
use super::compiled::{CompiledKernels, Profile};
use super::geometry::{depthwise_spec, tile_geometry};
use super::prepare::{BlockConvs, ConvKernel, Interleaved, vector};
use super::wired::{Wired, quantised};
use crate::block::{self, Block};
use crate::gemm::gemv_par;
use crate::wire::{self, QuantError, WireTile};

impl CompiledKernels {
    /// Computes `tile` of `seg` (whose program is `prog`) from `input`, like
    /// [`Program::run_tile`].
    pub fn run_tile(
        &self,
        prog: &Program,
        seg: &Segment,
        tile: &Tile,
        input: &Array3<f32>,
    ) -> Result<Array3<f32>, EvalError> {
        self.run_tile_profiled(prog, seg, tile, input, None)
    }

    /// [`Self::run_tile`], adding each layer's wall time to `profile` by how it ran.
    pub fn run_tile_profiled(
        &self,
        prog: &Program,
        seg: &Segment,
        tile: &Tile,
        input: &Array3<f32>,
        profile: Option<&mut Profile>,
    ) -> Result<Array3<f32>, EvalError> {
        let wire = Compression::None;
        match self.run_tile_inner(prog, seg, tile, input, profile, wire)? {
            (WireTile::Exact(t), _) => Ok(t),
            (WireTile::Quantised(_), _) => Err(missing("the exact output")),
        }
    }

    /// `tile`'s output as it goes on the wire with `how`, and the error quantisation made.
    /// With kernels compiled for `how` ([`CompileOptions::wire`](super::CompileOptions::wire)), the epilogue of a segment's
    /// last convolution quantises each channel right after computing it (while it is in L1);
    /// other outputs take a generated quantising pass (the host [`wire::quantise`] for shapes
    /// that were not compiled). The codes equal [`wire::encode`] of [`Self::run_tile`]'s
    /// output.
    pub fn run_tile_wire(
        &self,
        prog: &Program,
        seg: &Segment,
        tile: &Tile,
        input: &Array3<f32>,
        how: Compression,
    ) -> Result<(WireTile, QuantError), EvalError> {
        self.run_tile_inner(prog, seg, tile, input, None, how)
    }

    fn run_tile_inner(
        &self,
        prog: &Program,
        seg: &Segment,
        tile: &Tile,
        input: &Array3<f32>,
        mut profile: Option<&mut Profile>,
        how: Compression,
    ) -> Result<(WireTile, QuantError), EvalError> {
        if (prog.first(), prog.end()) != (seg.first, seg.end)
            || tile.regions.len() != prog.layers().len()
        {
            return Err(missing("a program for this segment"));
        }
        let weights = prog.weights();
        let first = seg.first.index();
        let seg_last = LayerId(seg.end.0 - 1);
        // The output, quantised by the last convolution's epilogue.
        let mut wired: Option<Wired> = None;
        let mut values: Vec<Option<Array3<f32>>> = Vec::with_capacity(seg.end.index() - first);
        // The fused chain's result waiting for its last layer.
        // (its last layer, the region the value holds, the value).
        let mut carry: Option<(LayerId, Region, Array3<f32>)> = None;
        // Values still to be read, by position: recycled as soon as their last consumer in the
        // segment has run, so the next layers reuse buffers that are still in cache (and
        // need no zeroing) instead of allocating while every value of a long segment lives.
        let mut live: Vec<usize> = Vec::new();
        // Inside a block computed over row bands: its last layer, whose value is `carry`.
        let mut block_until: Option<LayerId> = None;
        // The region of a layer of the segment that this tile computes.
        let region_of = |l: LayerId| tile.regions[l.index() - first];
        for (n, id) in seg.layers().enumerate() {
            let layer = prog.layer(id);
            live.retain(|&j| {
                let last_use = prog.consumers(LayerId((first + j) as u32)).iter().max();
                if last_use.is_some_and(|c| *c < id)
                    && let Some(v) = values[j].take()
                {
                    recycle(v);
                    return false;
                }
                true
            });
            live.push(n);
            let region = tile.regions[n];
            if let Some(until) = block_until.filter(|&u| id <= u) {
                let value = if id == until {
                    block_until = None;
                    let (_, have, t) = carry.take().ok_or_else(|| missing(&layer.name))?;
                    Some(match seg.mode {
                        Mode::Halo if have != region => crop(&t, &have, &region),
                        _ => t,
                    })
                } else {
                    None
                };
                values.push(value);
                continue;
            }
            if self.is_fused(id) {
                let value = match carry.take() {
                    Some((last, have, t)) if last == id => Some(match seg.mode {
                        Mode::Halo if have != region => crop(&t, &have, &region),
                        _ => t,
                    }),
                    other => {
                        carry = other;
                        None
                    }
                };
                values.push(value);
                continue;
            }
            if region.is_empty() {
                // Read (zero-sized) by a consumer whose windows lie wholly in its padding.
                values.push(Some(empty(layer.shape.c, &region)));
                continue;
            }
            // The layer's inputs: cropped to what it needs (halo) or whole (FDSP).
            let operand =
                |src: &Source, need: Option<Region>| -> Result<Cow<'_, Array3<f32>>, EvalError> {
                    let (t, have) = match prog.position(src) {
                        Some(j) => {
                            let t = values[j].as_ref().ok_or_else(|| missing(&layer.name))?;
                            (t, tile.regions[j])
                        }
                        None => (input, tile.input),
                    };
                    Ok(match need {
                        Some(need) if need != have => Cow::Owned(crop(t, &have, &need)),
                        _ => Cow::Borrowed(t),
                    })
                };
            let op = match seg.mode {
                Mode::Halo => tile_op(&layer.op, &region, prog.shape_of(&layer.inputs[0]))
                    .map_err(|e| EvalError::Parameter {
                        op: "tile",
                        reason: e.0,
                    })?,
                Mode::Fdsp => layer.op.clone(),
            };
            let need_of = |src: &Source| match seg.mode {
                Mode::Halo => Some(input_region(&layer.op, &region, prog.shape_of(src))),
                Mode::Fdsp => None,
            };
            // A fused residual add's other operand, where this tile's add needs it.
            let residual_of = |k: &ConvKernel| match k.residual {
                Some((add, other)) => {
                    let src = &prog.layer(add).inputs[other];
                    let need = match seg.mode {
                        Mode::Halo => Some(region_of(add)),
                        Mode::Fdsp => None,
                    };
                    operand(src, need).map(Some)
                }
                None => Ok(None),
            };
            let t0 = Instant::now();
            let x = operand(&layer.inputs[0], need_of(&layer.inputs[0]))?;
            if let Some(b) = self.block(id)
                && let Some(block) = self.block_at(prog, seg, tile, b, x.dim())
            {
                let kp = self
                    .conv_kernel(b.project)
                    .ok_or_else(|| missing("a block's projection"))?;
                let residual = residual_of(kp)?;
                let y = run_block(&block, &x, residual.as_deref())?;
                if let Some(p) = profile.as_deref_mut() {
                    let kind = if block::interleaves(&block) {
                        KernelKind::BlockInterleaved
                    } else {
                        KernelKind::Block
                    };
                    *p.entry(kind.name()).or_default() += t0.elapsed().as_secs_f64() * 1e3;
                }
                carry = Some((kp.last, region_of(b.project), y));
                block_until = Some(kp.last);
                values.push(None);
                continue;
            }
            let kernel = self.choose(id, &op, x.dim());
            let out = match kernel {
                Kernel::MaxPoolGenerated(h, spec) => {
                    let (c, xh, xw) = x.dim();
                    let x = x.as_standard_layout();
                    let xs = x.as_slice().ok_or_else(|| missing(&layer.name))?;
                    let pad = match &op {
                        Op::MaxPool(p) => p.padding,
                        _ => Pad2::uniform(0),
                    };
                    let mut y = overwritten(spec.c * spec.oh * spec.ow);
                    if pad.is_zero() {
                        self.code.run_max_pool(h, &spec, xs, &mut y);
                    } else {
                        let xp = padded(xs, c, xh, xw, pad, f32::NEG_INFINITY);
                        self.code.run_max_pool(h, &spec, &xp, &mut y);
                        recycle_vec(xp);
                    }
                    tensor(y, (spec.c, spec.oh, spec.ow)).map_err(|e| EvalError::Parameter {
                        op: "maxpool",
                        reason: e.to_string(),
                    })?
                }
                Kernel::Gemv => {
                    let Op::Linear { out_features, bias } = &op else {
                        return Err(missing("a fully connected layer"));
                    };
                    linear(&layer.name, *out_features, *bias, &x, weights)?
                }
                Kernel::Plain => {
                    let mut rest = Vec::with_capacity(layer.inputs.len());
                    for src in &layer.inputs[1..] {
                        rest.push(operand(src, need_of(src))?);
                    }
                    let mut refs: Vec<&Array3<f32>> = vec![&x];
                    refs.extend(rest.iter().map(|r| &**r));
                    eval_op(&op, &layer.name, &refs, weights)?
                }
                _ => {
                    let (Some(k), Op::Conv2d(c)) = (self.conv_kernel(id), &op) else {
                        return Err(missing("a prepared convolution"));
                    };
                    let residual = residual_of(k)?;
                    // A fused pool's output holds the pool's region; otherwise the conv's.
                    let have = if k.pool2 { region_of(k.last) } else { region };
                    let quant = (how != Compression::None
                        && k.last == seg_last
                        && have == region_of(seg_last))
                    .then_some(how);
                    let (y, q) = self.conv(id, kernel, k, c, &x, residual.as_deref(), quant)?;
                    if q.is_some() {
                        wired = q;
                    }
                    if k.last > id {
                        if let Some(p) = profile.as_deref_mut() {
                            let kind = kernel.kind(&op).name();
                            *p.entry(kind).or_default() += t0.elapsed().as_secs_f64() * 1e3;
                        }
                        carry = Some((k.last, have, y));
                        values.push(None);
                        continue;
                    }
                    y
                }
            };
            if let Some(p) = profile.as_deref_mut() {
                *p.entry(kernel.kind(&op).name()).or_default() += t0.elapsed().as_secs_f64() * 1e3;
            }
            values.push(Some(out));
        }
        let out = values.pop().flatten();
        for v in values.into_iter().flatten() {
            recycle(v);
        }
        let out = out.ok_or_else(|| missing("the segment's output"))?;
        if let Some((q, e)) = wired {
            recycle(out);
            return Ok((WireTile::Quantised(q), e));
        }
        Ok(self.quantise(out, how))
    }

    /// Block `b` as this tile runs it on an input of `dim` (the expansion's, or the depthwise
    /// conv's, cropped to what it reads), if the host kernels compute it: in halo tiles, the
    /// expansion's region must be exactly what the depthwise conv reads, and the
    /// projection's output the depthwise region.
    fn block_at(
        &self,
        prog: &Program,
        seg: &Segment,
        tile: &Tile,
        b: BlockConvs,
        (cin, h, w): (usize, usize, usize),
    ) -> Option<Block<'_>> {
        let first = seg.first.index();
        let region_of = |l: LayerId| tile.regions[l.index() - first];
        let (kd, kp) = (self.conv_kernel(b.dw)?, self.conv_kernel(b.project)?);
        let ke = match b.expand {
            Some(e) => Some((e, self.conv_kernel(e)?)),
            None => None,
        };
        let hidden = kd.groups;
        if cin != ke.map_or(hidden, |(_, k)| k.cin_g) || !self.host_depthwise {
            return None;
        }
        if let Some((e, ke)) = ke
            && seg.mode == Mode::Halo
        {
            let dl = prog.get(b.dw.index())?;
            let need = input_region(&dl.op, &region_of(b.dw), prog.shape_of(&dl.inputs[0]));
            let expanded = region_of(e);
            if need != expanded || region_of(ke.last) != expanded {
                return None;
            }
        }
        let (op, dh, dw) = tile_geometry(prog, seg, tile, b.dw).ok()?;
        let Op::Conv2d(c) = &op else { return None };
        let spec = depthwise_spec(c, hidden, h, w, kd)?;
        let out = region_of(b.project);
        if (dh, dw) != (h, w) || (out.rows(), out.cols()) != (spec.oh, spec.ow) {
            return None;
        }
        let expand = match ke {
            Some((_, k)) => Some(k.as_pointwise()?),
            None => None,
        };
        let b = Block {
            expand,
            dw: spec,
            dw_weights: &kd.depthwise,
            dw_taps: match &kd.interleaved {
                Interleaved::Taps(t) => Some(t),
                _ => None,
            },
            dw_bias: &kd.bias,
            project: kp.as_pointwise()?,
            rows: block::band_rows(&spec, self.band_bytes),
        };
        block::applies(&b).then_some(b)
    }

    /// `t` for the wire: on the generated quantising pass when one was compiled for its
    /// shape, else on the host.
    fn quantise(&self, t: Array3<f32>, how: Compression) -> (WireTile, QuantError) {
        let (c, h, w) = t.dim();
        let Some((f, spec)) = self
            .quantisers
            .get(&(c, h * w))
            .filter(|(_, spec)| spec.wire == how)
        else {
            return wire::encode(t, how);
        };
        let mut t = t;
        if !t.is_standard_layout() {
            t = t.as_standard_layout().into_owned();
        }
        let y = t.as_slice_mut().expect("standard layout");
        let (q, e) = quantised(&self.code, *f, spec, (c, h, w), y, &[], None);
        recycle(t);
        (WireTile::Quantised(q), e)
    }
}

/// Runs block `b` on `x` (`[cin, h, w]`) with an optional residual for the projection.
pub(super) fn run_block(
    b: &Block,
    x: &Array3<f32>,
    residual: Option<&Array3<f32>>,
) -> Result<Array3<f32>, EvalError> {
    let bad = |reason: &str| EvalError::Parameter {
        op: "block",
        reason: reason.into(),
    };
    let x = x.as_standard_layout();
    let xs = x.as_slice().ok_or_else(|| bad("layout"))?;
    let dim = (b.project.weights.m, b.dw.oh, b.dw.ow);
    let res = match residual {
        Some(r) if r.dim() != dim => return Err(bad("residual operand has the wrong shape")),
        Some(r) => Some(r.as_standard_layout()),
        None => None,
    };
    let rs = res.as_ref().and_then(|r| r.as_slice());
    let len = dim.0 * dim.1 * dim.2;
    let mut y = overwritten(len);
    // Split over the caller's pool by groups of output rows: each group is a block of its
    // own (its input rows, halo included, expanded again; its own bands), written to a
    // buffer of its own and then copied into its rows of every plane. The bits are the
    // whole block's: no value depends on how the rows are banded.
    let s = &b.dw;
    let hidden = s.channels;
    let cin = b.expand.map_or(hidden, |e| e.weights.k);
    let flops = 2.0 * (s.oh * s.ow) as f64 * (hidden * (cin + 9 + dim.0)) as f64;
    let groups = crate::par::ranges(s.oh, 1, flops);
    let specs = block::bands(s, groups[0].len());
    // Each group must be a block the kernel computes (e.g. rows enough for its window).
    let whole = specs.len() == 1
        || !specs
            .iter()
            .all(|g| block::applies(&Block { dw: g.spec, ..*b }));
    let (plane_in, ow, n) = (s.h * s.w, s.ow, s.oh * s.ow);
    if whole {
        run_block_part(b, xs, plane_in, rs, &mut y[..len]);
        return tensor(y, dim).map_err(|e| bad(&e.to_string()));
    }
    let outs = crate::par::map(&specs, |g| {
        let part = Block { dw: g.spec, ..*b };
        let gn = (g.o1 - g.o0) * ow;
        // The group's residual rows, as its own planes.
        let r = rs.map(|r| {
            let mut own = overwritten(dim.0 * gn);
            for (co, dst) in own[..dim.0 * gn].chunks_exact_mut(gn).enumerate() {
                dst.copy_from_slice(&r[co * n + g.o0 * ow..][..gn]);
            }
            own
        });
        let mut yg = overwritten(dim.0 * gn);
        let xg = &xs[g.lo * s.w..];
        let r_part = r.as_ref().map(|r| &r[..dim.0 * gn]);
        run_block_part(&part, xg, plane_in, r_part, &mut yg[..dim.0 * gn]);
        if let Some(r) = r {
            recycle_vec(r);
        }
        yg
    });
    // Each group's planes into its rows of the output's, by blocks of output channels.
    let channels = crate::par::ranges(dim.0, 1, len as f64);
    crate::par::for_each(&mut y[..len], n, &channels, |chs, y| {
        for (co, dst) in chs.clone().zip(y.chunks_exact_mut(n)) {
            for (g, yg) in specs.iter().zip(&outs) {
                let gn = (g.o1 - g.o0) * ow;
                dst[g.o0 * ow..][..gn].copy_from_slice(&yg[co * gn..][..gn]);
            }
        }
    });
    outs.into_iter().for_each(recycle_vec);
    tensor(y, dim).map_err(|e| bad(&e.to_string()))
}

/// [`block::run_rows`] with scratch from this thread's buffers.
fn run_block_part(b: &Block, xs: &[f32], plane: usize, rs: Option<&[f32]>, y: &mut [f32]) {
    let mut scratch = block::scratch_lens(b).map(overwritten);
    let [s0, s1, s2, s3] = &mut scratch;
    block::run_rows(b, xs, plane, rs, y, [s0, s1, s2, s3]);
    scratch.into_iter().for_each(recycle_vec);
}

pub(super) fn missing(what: &str) -> EvalError {
    EvalError::Parameter {
        op: "tile",
        reason: format!("{what}: an input region was not computed"),
    }
}

/// A fully connected layer at batch 1 on the host GEMV, straight from the plan's weights
/// (row-major `[out, in]`: nothing to prepare). Weights it cannot use as they are
/// (non-contiguous, wrong shape) go to the reference interpreter, which reports the errors.
fn linear(
    name: &str,
    out: usize,
    bias: bool,
    x: &Array3<f32>,
    weights: &Weights,
) -> Result<Array3<f32>, EvalError> {
    let op = Op::Linear {
        out_features: out,
        bias,
    };
    let xc = x.as_standard_layout();
    let xs = xc.as_slice().ok_or_else(|| missing(name))?;
    let w = weights.get(name, WeightRole::Weight);
    let b = if bias {
        vector(weights, name, WeightRole::Bias, out)
    } else {
        Some(vec![0.0; out])
    };
    match (
        w.filter(|w| w.shape() == [out, xs.len()])
            .and_then(|w| w.as_slice()),
        b,
    ) {
        (Some(w), Some(b)) => {
            let mut y = vec![0.0; out];
            gemv_par(w, xs.len(), xs, &mut y);
            y.iter_mut().zip(&b).for_each(|(v, b)| *v += b);
            Ok(
                Array3::from_shape_vec((out, 1, 1), y).map_err(|e| EvalError::Parameter {
                    op: "linear",
                    reason: e.to_string(),
                })?,
            )
        }
        _ => eval_op(&op, name, &[x], weights),
    }
}
