//! One convolution (with what is fused into it) on a tile, on the path chosen for its shape:
//! Winograd, the host or generated depthwise kernels, the direct kernel, or the host GEMM
//! over an implicit im2col; then the epilogue (generated, quantising, or on the host).

use adcnn_core::eval::{self, EvalError};
use adcnn_core::net::LayerId;
use adcnn_core::ops::{Conv2d, Hw, Pad2, Pool2d};
use adcnn_core::plan::Compression;
use ndarray::Array3;

use super::buffers::{overwritten, recycle, recycle_vec, tensor, zeroed};
use super::choice::Kernel;
use super::compiled::CompiledKernels;
use super::prepare::ConvKernel;
use super::wired::{Wired, quantised};
use crate::act::Act;
use crate::depthwise::{self as host_dw, bias_act};
use crate::direct;
use crate::gemm::{Dense, NR, PackB, gemm_packed_par};
use crate::par;
use crate::winograd;

impl CompiledKernels {
    /// Convolution `i` (prepared as `k`, its operator on the tile `c`) on `x` with the kernel
    /// [`Self::choose`] picked, the epilogue (quantising with `quant`) and what else is fused.
    #[allow(
        clippy::too_many_arguments,
        reason = "the layer, its choice, and its operands"
    )]
    pub(super) fn conv(
        &self,
        i: LayerId,
        kernel: Kernel,
        k: &ConvKernel,
        c: &Conv2d,
        x: &Array3<f32>,
        residual: Option<&Array3<f32>>,
        quant: Option<Compression>,
    ) -> Result<(Array3<f32>, Option<Wired>), EvalError> {
        let bad = |reason: &str| EvalError::Parameter {
            op: "conv",
            reason: reason.into(),
        };
        let (cin, h, w) = x.dim();
        if cin != k.cin_g * k.groups {
            return Err(bad("input channels differ from the compiled kernel's"));
        }
        let span = |len: usize, pb: usize, pe: usize, kk: usize, s: usize, d: usize| {
            let padded = len + pb + pe;
            let sp = d * (kk - 1) + 1;
            (padded >= sp && s > 0).then(|| (padded - sp) / s + 1)
        };
        let p = c.padding;
        let (Some(oh), Some(ow)) = (
            span(h, p.top, p.bottom, c.kernel.h, c.stride.h, c.dilation.h),
            span(w, p.left, p.right, c.kernel.w, c.stride.w, c.dilation.w),
        ) else {
            return Err(bad("the padded input is smaller than the kernel"));
        };
        let x = x.as_standard_layout();
        let xs = x.as_slice().ok_or_else(|| bad("layout"))?;
        let cout = k.cout_g * k.groups;
        let n = oh * ow;
        // The output's size: pooled 2×2 when a pool is fused.
        let (yh, yw) = if k.pool2 { (oh / 2, ow / 2) } else { (oh, ow) };
        let len = cout * yh * yw;
        // Every path but the host depthwise loop (which accumulates into y) writes all of y.
        let mut buf = if kernel == Kernel::DepthwiseLoop {
            zeroed(len)
        } else {
            overwritten(len)
        };
        let y = &mut buf[..len];
        let geo = Geo {
            h,
            w,
            oh,
            ow,
            c: c.clone(),
        };
        let res = match residual {
            Some(r) => {
                if r.dim() != (cout, oh, ow) {
                    return Err(bad("residual operand has the wrong shape"));
                }
                Some(r.as_standard_layout())
            }
            None => None,
        };
        let rs = res.as_ref().and_then(|r| r.as_slice());
        match kernel {
            Kernel::Winograd => {
                let wg = k
                    .winograd
                    .as_ref()
                    .ok_or_else(|| bad("no Winograd weights"))?;
                let shape = winograd::Shape {
                    h,
                    w,
                    oh,
                    ow,
                    pad_top: p.top,
                    pad_left: p.left,
                };
                let fused = k.residual.is_none().then_some(winograd::Epilogue {
                    bias: &k.bias,
                    act: k.act,
                });
                wg.conv(&shape, xs, y, k.pool2, fused);
                if fused.is_some() {
                    let t = tensor(buf, (cout, yh, yw)).map_err(|e| bad(&e.to_string()))?;
                    return Ok((t, None));
                }
            }
            Kernel::DepthwiseHost(spec) => {
                // The kernel zeroes its scratch itself.
                let mut scratch = overwritten(host_dw::scratch_len(&spec));
                let plane = spec.h * spec.w;
                host_dw::run(
                    &spec,
                    xs,
                    plane,
                    None,
                    &k.depthwise,
                    &k.bias,
                    rs,
                    y,
                    &mut scratch,
                );
                recycle_vec(scratch);
                let t = tensor(buf, (cout, oh, ow)).map_err(|e| bad(&e.to_string()))?;
                return Ok((t, None));
            }
            Kernel::DepthwiseGenerated(f, spec) => {
                // The kernel zeroes its scratch itself.
                let mut scratch = overwritten(spec.scratch_len());
                self.code
                    .run_depthwise(f, &spec, xs, &k.depthwise, &k.bias, rs, y, &mut scratch);
                recycle_vec(scratch);
                let t = tensor(buf, (cout, oh, ow)).map_err(|e| bad(&e.to_string()))?;
                return Ok((t, None));
            }
            Kernel::DepthwiseLoop => depthwise(&geo, xs, &k.depthwise, y, cout),
            Kernel::Direct => {
                let wd = k.direct.as_ref().ok_or_else(|| bad("no direct weights"))?;
                let shape = direct::Shape {
                    cin,
                    h,
                    w,
                    oh,
                    ow,
                    pad: [p.top, p.left, p.bottom, p.right],
                    pool: k.pool2,
                };
                // Split over the caller's pool by blocks of 8 output channels (the kernel's
                // unit); each thread pads the input into a scratch of its own.
                let taps = cin * c.kernel.h * c.kernel.w;
                let flops = 2.0 * (cout * taps * oh * ow) as f64;
                let parts = par::ranges(cout, 8, flops);
                par::for_each(y, yh * yw, &parts, |r, y| {
                    let part = Conv2d {
                        out_channels: r.len(),
                        ..c.clone()
                    };
                    let mut scratch = overwritten(direct::scratch_len(&part, &shape));
                    let w = &wd[r.start * taps..];
                    direct::run(
                        &part,
                        &shape,
                        xs,
                        w,
                        &k.bias[r.start..],
                        k.act,
                        y,
                        &mut scratch,
                    );
                    recycle_vec(scratch);
                });
                let t = tensor(buf, (cout, yh, yw)).map_err(|e| bad(&e.to_string()))?;
                return Ok((t, None));
            }
            Kernel::GemmThenPool => {
                // A direct conv's tile too narrow for the kernel: the GEMM at full resolution,
                // bias and activation, then the fused pool.
                let mut full = overwritten(cout * n);
                let pa = k.packed.first().ok_or_else(|| bad("no packed weights"))?;
                let im2col = Im2col { g: &geo, x: xs };
                gemm_packed_par(pa, &im2col, n, &mut full[..cout * n], n, false);
                epilogue_host(&mut full[..cout * n], n, &k.bias, None, k.act);
                let full = tensor(full, (cout, oh, ow)).map_err(|e| bad(&e.to_string()))?;
                let pool = Pool2d {
                    kernel: Hw { h: 2, w: 2 },
                    stride: Hw { h: 2, w: 2 },
                    padding: Pad2::uniform(0),
                    ceil_mode: false,
                    count_include_pad: false,
                };
                let pooled = eval::max_pool(&pool, &full)?;
                recycle(full);
                recycle_vec(buf);
                return Ok((pooled, None));
            }
            Kernel::Gemm => {
                let kdim = k.cin_g * c.kernel.h * c.kernel.w;
                let direct = c.kernel.h == 1
                    && c.kernel.w == 1
                    && c.stride.h == 1
                    && c.stride.w == 1
                    && p.is_zero();
                debug_assert_eq!(kdim, k.packed.first().map_or(0, |p| p.k));
                for (gi, pa) in k.packed.iter().enumerate() {
                    let xg = &xs[gi * k.cin_g * h * w..(gi + 1) * k.cin_g * h * w];
                    let yg = &mut y[gi * k.cout_g * n..(gi + 1) * k.cout_g * n];
                    if direct {
                        gemm_packed_par(pa, &Dense { b: xg, ldb: n }, n, yg, n, false);
                    } else {
                        gemm_packed_par(pa, &Im2col { g: &geo, x: xg }, n, yg, n, false);
                    }
                }
            }
            Kernel::MaxPoolGenerated(..) | Kernel::Gemv | Kernel::Plain => {
                return Err(bad("not a convolution's kernel"));
            }
        }
        let pixels = yh * yw;
        let mut quantised = None;
        match quant.and_then(|how| self.epilogues.get(&(i, pixels, how))) {
            Some((h, spec)) => {
                let dim = (cout, yh, yw);
                quantised = Some(self::quantised(&self.code, *h, spec, dim, y, &k.bias, rs));
            }
            None => match self.epilogues.get(&(i, pixels, Compression::None)) {
                Some((h, spec)) => self.code.run_epilogue(*h, spec, y, &k.bias, rs),
                None => epilogue_host(y, pixels, &k.bias, rs, k.act),
            },
        }
        let t = tensor(buf, (cout, yh, yw)).map_err(|e| bad(&e.to_string()))?;
        Ok((t, quantised))
    }
}

pub(super) struct Geo {
    h: usize,
    w: usize,
    oh: usize,
    ow: usize,
    c: Conv2d,
}

/// The im2col matrix of a convolution's input, never materialised: B`[(ci, ky, kx), (oy, ox)]`
/// = the padded input at `(oy·s + ky·d, ox·s + kx·d)`, packed block by block for the GEMM.
pub(super) struct Im2col<'a> {
    g: &'a Geo,
    x: &'a [f32],
}

impl PackB for Im2col<'_> {
    fn pack(&self, k0: usize, kc: usize, n0: usize, nc: usize, out: &mut [f32]) {
        let (g, c) = (self.g, &self.g.c);
        let (kh, kw) = (c.kernel.h, c.kernel.w);
        let (sh, sw) = (c.stride.h, c.stride.w);
        let (h, w) = (g.h as isize, g.w as isize);
        // Per B row (tap): its input plane and the offsets of its window position.
        let taps: Vec<(usize, isize, isize)> = (k0..k0 + kc)
            .map(|row| {
                let (ci, ky, kx) = (row / (kh * kw), row / kw % kh, row % kw);
                let dy = (ky * c.dilation.h) as isize - c.padding.top as isize;
                let dx = (kx * c.dilation.w) as isize - c.padding.left as isize;
                (ci * g.h * g.w, dy, dx)
            })
            .collect();
        for s in 0..nc.div_ceil(NR) {
            let c0 = n0 + s * NR;
            let width = NR.min(n0 + nc - c0);
            // The strip's columns as runs along output rows: (first lane, oy, ox, length).
            let mut runs = [(0usize, 0usize, 0usize, 0usize); NR];
            let mut count = 0;
            let mut col = c0;
            while col < c0 + width {
                let (oy, ox) = (col / g.ow, col % g.ow);
                let len = (g.ow - ox).min(c0 + width - col);
                runs[count] = (col - c0, oy, ox, len);
                count += 1;
                col += len;
            }
            let strip = &mut out[s * NR * kc..(s + 1) * NR * kc];
            for (dst, &(plane, dy, dx)) in strip.chunks_exact_mut(NR).zip(&taps) {
                for &(j0, oy, ox, len) in &runs[..count] {
                    let iy = (oy * sh) as isize + dy;
                    if iy < 0 || iy >= h {
                        continue;
                    }
                    let row = &self.x[plane + iy as usize * g.w..][..g.w];
                    let ix0 = (ox * sw) as isize + dx;
                    if sw == 1 {
                        let lo = (-ix0).clamp(0, len as isize);
                        let hi = (w - ix0).clamp(lo, len as isize);
                        let (lo, hi) = (lo as usize, hi as usize);
                        if hi > lo {
                            let from = (ix0 + lo as isize) as usize;
                            dst[j0 + lo..j0 + hi].copy_from_slice(&row[from..from + hi - lo]);
                        }
                    } else {
                        for t in 0..len {
                            let ix = ix0 + (t * sw) as isize;
                            if ix >= 0 && ix < w {
                                dst[j0 + t] = row[ix as usize];
                            }
                        }
                    }
                }
            }
        }
    }
}

/// Depthwise convolution (one input and one output channel per group) for tile shapes with
/// no generated kernel (see `CompiledKernels::compile`), with fused multiply-adds in tap
/// order like the generated kernel and the reference's GEMM, direct: each
/// channel's plane is copied once into a zero-padded buffer, then every output row
/// accumulates its taps while it stays in L1.
pub(super) fn depthwise(g: &Geo, x: &[f32], wts: &[f32], y: &mut [f32], channels: usize) {
    let c = &g.c;
    let (kh, kw) = (c.kernel.h, c.kernel.w);
    let (sh, sw, dh, dw) = (c.stride.h, c.stride.w, c.dilation.h, c.dilation.w);
    let p = c.padding;
    let (ph, pw) = (g.h + p.top + p.bottom, g.w + p.left + p.right);
    let n = g.oh * g.ow;
    let mut padded = vec![0.0f32; ph * pw];
    let mut wide = Vec::new();
    for ch in 0..channels {
        let plane = &x[ch * g.h * g.w..(ch + 1) * g.h * g.w];
        // A tile may read no input columns at all (its window lies wholly in the padding).
        if g.w > 0 {
            for (r, src) in plane.chunks_exact(g.w).enumerate() {
                let row = (r + p.top) * pw + p.left;
                padded[row..row + g.w].copy_from_slice(src);
            }
        }
        let taps = &wts[ch * kh * kw..(ch + 1) * kh * kw];
        let out = &mut y[ch * n..(ch + 1) * n];
        if sw == 1 && sh == 1 {
            // Stride 1: compute on the padded width, so each tap is one long axpy over the
            // whole plane (rows of 7–14 pixels are too short to vectorise one by one), then
            // keep the `ow` valid columns of each row.
            let len = (g.oh - 1) * pw + g.ow;
            wide.clear();
            wide.resize(len, 0.0);
            for ky in 0..kh {
                for kx in 0..kw {
                    let wv = taps[ky * kw + kx];
                    let src = &padded[ky * dh * pw + kx * dw..][..len];
                    for (d, s) in wide.iter_mut().zip(src) {
                        *d = s.mul_add(wv, *d);
                    }
                }
            }
            for (oy, dst) in out.chunks_exact_mut(g.ow).enumerate() {
                dst.copy_from_slice(&wide[oy * pw..oy * pw + g.ow]);
            }
            continue;
        }
        for (oy, dst) in out.chunks_exact_mut(g.ow).enumerate() {
            for ky in 0..kh {
                let row = &padded[(oy * sh + ky * dh) * pw..][..pw];
                for kx in 0..kw {
                    let wv = taps[ky * kw + kx];
                    let src = &row[kx * dw..];
                    for (d, s) in dst.iter_mut().zip(src.iter().step_by(sw)) {
                        *d = s.mul_add(wv, *d);
                    }
                }
            }
        }
    }
}

/// The epilogue in plain Rust, for shapes no JIT function was compiled for.
pub(super) fn epilogue_host(
    y: &mut [f32],
    n: usize,
    bias: &[f32],
    residual: Option<&[f32]>,
    act: Act,
) {
    for (ch, row) in y.chunks_mut(n).enumerate() {
        bias_act(
            row,
            bias[ch],
            residual.map(|r| &r[ch * n..(ch + 1) * n]),
            act,
        );
    }
}
