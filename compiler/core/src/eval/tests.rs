//! Hand-computable cases for the reference interpreter. PyTorch agreement over every operator
//! and option is checked by `compiler/tests/reference_ops.rs` against the golden files.

use ndarray::{Array3, ArrayD, IxDyn, arr3};

use super::conv::conv_out_len;
use super::pool::pool_out_len;
use super::*;
use crate::ops::{Conv2d, Hw, Pool2d};

type TestResult = Result<(), Box<dyn std::error::Error>>;

fn tensor(shape: &[usize], values: Vec<f32>) -> ArrayD<f32> {
    ArrayD::from_shape_vec(IxDyn(shape), values).expect("test tensor shape matches its values")
}

/// `[c, h, w]` filled with 0, 1, 2, … in row-major order.
fn iota(c: usize, h: usize, w: usize) -> Array3<f32> {
    Array3::from_shape_fn((c, h, w), |(k, i, j)| ((k * h + i) * w + j) as f32)
}

fn conv(out: usize, k: usize) -> Conv2d {
    Conv2d {
        out_channels: out,
        kernel: Hw::square(k),
        stride: Hw::square(1),
        padding: Pad2::default(),
        dilation: Hw::square(1),
        groups: 1,
        bias: false,
    }
}

fn pool(k: usize, s: usize) -> Pool2d {
    Pool2d {
        kernel: Hw::square(k),
        stride: Hw::square(s),
        padding: Pad2::default(),
        ceil_mode: false,
        count_include_pad: true,
    }
}

fn one(op: &Op, x: &Array3<f32>, w: &Weights) -> Result<Array3<f32>, EvalError> {
    eval_op(op, "l", &[x], w)
}

fn assert_close(a: &Array3<f32>, b: &Array3<f32>) {
    assert_eq!(a.dim(), b.dim(), "shapes differ: {a:?} vs {b:?}");
    for (x, y) in a.iter().zip(b) {
        assert!((x - y).abs() <= 1e-5 * (1.0 + y.abs()), "{a:?}\n!=\n{b:?}");
    }
}

#[test]
fn conv_3x3_single_window_is_a_dot_product() -> TestResult {
    let x = iota(1, 3, 3);
    let mut w = Weights::new();
    w.insert(
        "l.weight",
        tensor(&[1, 1, 3, 3], vec![1., 0., -1., 2., 0., -2., 1., 0., -1.]),
    );
    w.insert("l.bias", tensor(&[1], vec![0.5]));
    let y = one(
        &Op::Conv2d(Conv2d {
            bias: true,
            ..conv(1, 3)
        }),
        &x,
        &w,
    )?;
    // Sobel-x over 0..9: (0-2) + 2(3-5) + (6-8) = -8, plus bias.
    assert_close(&y, &arr3(&[[[-7.5]]]));
    Ok(())
}

#[test]
fn conv_zero_padding_sums_neighbourhoods() -> TestResult {
    let x = Array3::from_elem((1, 3, 3), 1.0);
    let mut w = Weights::new();
    w.insert("l.weight", ArrayD::from_elem(IxDyn(&[1, 1, 3, 3]), 1.0));
    let y = one(
        &Op::Conv2d(Conv2d {
            padding: Pad2::uniform(1),
            ..conv(1, 3)
        }),
        &x,
        &w,
    )?;
    assert_close(&y, &arr3(&[[[4., 6., 4.], [6., 9., 6.], [4., 6., 4.]]]));
    Ok(())
}

#[test]
fn conv_stride_and_asymmetric_padding() -> TestResult {
    let x = iota(1, 4, 4);
    let mut w = Weights::new();
    w.insert("l.weight", ArrayD::from_elem(IxDyn(&[1, 1, 2, 2]), 1.0));
    // Stride 2, no padding: sums of the four 2x2 blocks.
    let y = one(
        &Op::Conv2d(Conv2d {
            stride: Hw::square(2),
            ..conv(1, 2)
        }),
        &x,
        &w,
    )?;
    assert_close(&y, &arr3(&[[[10., 18.], [42., 50.]]]));
    // Pad one row on top only: the first window row sees zeros then row 0.
    let c = Conv2d {
        stride: Hw::square(2),
        padding: Pad2 {
            top: 1,
            left: 0,
            bottom: 0,
            right: 0,
        },
        ..conv(1, 2)
    };
    let y = one(&Op::Conv2d(c), &x, &w)?;
    // Rows (pad, 0) and (1, 2); H out = (4 + 1 - 2) / 2 + 1 = 2.
    assert_close(&y, &arr3(&[[[1., 5.], [26., 34.]]]));
    Ok(())
}

#[test]
fn conv_dilation_skips_taps() -> TestResult {
    let x = iota(1, 5, 5);
    let mut w = Weights::new();
    w.insert("l.weight", tensor(&[1, 1, 2, 2], vec![1., 0., 0., 1.]));
    let y = one(
        &Op::Conv2d(Conv2d {
            dilation: Hw::square(2),
            ..conv(1, 2)
        }),
        &x,
        &w,
    )?;
    // out[i][j] = x[i][j] + x[i+2][j+2] = 2 * (5i + j) + 12, a 3x3 output.
    let expected = Array3::from_shape_fn((1, 3, 3), |(_, i, j)| (2 * (5 * i + j) + 12) as f32);
    assert_close(&y, &expected);
    Ok(())
}

#[test]
fn conv_groups_keep_channels_apart() -> TestResult {
    // 4 input channels, 2 groups, 1x1 kernel: output 0 = 1*x0 + 2*x1, output 1 = 3*x2 + 4*x3.
    let x = iota(4, 1, 2);
    let mut w = Weights::new();
    w.insert("l.weight", tensor(&[2, 2, 1, 1], vec![1., 2., 3., 4.]));
    let y = one(
        &Op::Conv2d(Conv2d {
            groups: 2,
            ..conv(2, 1)
        }),
        &x,
        &w,
    )?;
    assert_close(
        &y,
        &arr3(&[[[4., 7.]], [[3. * 4. + 4. * 6., 3. * 5. + 4. * 7.]]]),
    );
    Ok(())
}

#[test]
fn depthwise_conv_scales_each_channel() -> TestResult {
    let x = iota(3, 2, 2);
    let mut w = Weights::new();
    w.insert("l.weight", tensor(&[3, 1, 1, 1], vec![1., -1., 2.]));
    w.insert("l.bias", tensor(&[3], vec![0., 1., 0.]));
    let y = one(
        &Op::Conv2d(Conv2d {
            groups: 3,
            bias: true,
            ..conv(3, 1)
        }),
        &x,
        &w,
    )?;
    let expected = Array3::from_shape_fn((3, 2, 2), |(c, i, j)| {
        let v = x[[c, i, j]];
        [v, 1.0 - v, 2.0 * v][c]
    });
    assert_close(&y, &expected);
    Ok(())
}

#[test]
fn conv_output_lengths() {
    assert_eq!(conv_out_len(224, 1, 1, 3, 1, 1), Some(224));
    assert_eq!(conv_out_len(224, 3, 3, 7, 2, 1), Some(112));
    assert_eq!(conv_out_len(9, 0, 0, 3, 2, 2), Some(3));
    assert_eq!(conv_out_len(2, 0, 0, 3, 1, 1), None);
}

#[test]
fn conv_weight_errors() {
    let x = iota(2, 3, 3);
    let op = Op::Conv2d(Conv2d {
        bias: true,
        ..conv(1, 3)
    });
    let mut w = Weights::new();
    assert!(
        matches!(one(&op, &x, &w), Err(EvalError::MissingWeight { tensor }) if tensor == "l.weight")
    );
    w.insert("l.weight", ArrayD::zeros(IxDyn(&[1, 1, 3, 3])));
    assert!(
        matches!(one(&op, &x, &w), Err(EvalError::WeightShape { expected, .. }) if expected == [1, 2, 3, 3])
    );
    w.insert("l.weight", ArrayD::zeros(IxDyn(&[1, 2, 3, 3])));
    assert!(
        matches!(one(&op, &x, &w), Err(EvalError::MissingWeight { tensor }) if tensor == "l.bias")
    );
    let op = Op::Conv2d(Conv2d {
        groups: 3,
        ..conv(1, 3)
    });
    assert!(matches!(one(&op, &x, &w), Err(EvalError::Parameter { .. })));
    let op = Op::Conv2d(conv(1, 5));
    assert!(matches!(
        one(&op, &x, &w),
        Err(EvalError::InputShape { .. })
    ));
}

#[test]
fn pool_output_lengths_follow_pytorch() {
    // Floor and ceil.
    assert_eq!(pool_out_len(5, 0, 0, 2, 2, false), Some(2));
    assert_eq!(pool_out_len(5, 0, 0, 2, 2, true), Some(3));
    // ceil(5/2) + 1 = 4, but window 3 would start at 6 >= 5 + 1: dropped.
    assert_eq!(pool_out_len(5, 1, 1, 2, 2, true), Some(3));
    assert_eq!(pool_out_len(6, 1, 1, 2, 2, true), Some(4));
    // ResNet stem pool: 112 → 56.
    assert_eq!(pool_out_len(112, 1, 1, 3, 2, false), Some(56));
    // Darknet's 2x2 stride-1 pool with one row of end padding keeps the size.
    assert_eq!(pool_out_len(13, 0, 1, 2, 1, false), Some(13));
    assert_eq!(pool_out_len(1, 0, 0, 2, 1, false), None);
}

#[test]
fn maxpool_ceil_mode_partial_window() -> TestResult {
    let x = iota(1, 3, 3);
    let p = Pool2d {
        ceil_mode: true,
        ..pool(2, 2)
    };
    let y = one(&Op::MaxPool(p), &x, &Weights::new())?;
    assert_close(&y, &arr3(&[[[4., 5.], [7., 8.]]]));
    Ok(())
}

#[test]
fn maxpool_pads_with_negative_infinity() -> TestResult {
    let x = Array3::from_elem((1, 2, 2), -5.0);
    let p = Pool2d {
        padding: Pad2 {
            top: 0,
            left: 0,
            bottom: 1,
            right: 1,
        },
        ..pool(2, 1)
    };
    let y = one(&Op::MaxPool(p), &x, &Weights::new())?;
    assert_close(&y, &Array3::from_elem((1, 2, 2), -5.0));
    Ok(())
}

#[test]
fn avgpool_divisors() -> TestResult {
    // 1x4 row [0, 1, 2, 3], window 1x3, stride 2, ceil: windows [0,1,2] and [2,3] (the last
    // hangs past the end, so PyTorch divides it by 2 even with count_include_pad).
    let x = iota(1, 1, 4);
    let p = Pool2d {
        kernel: Hw { h: 1, w: 3 },
        stride: Hw { h: 1, w: 2 },
        ceil_mode: true,
        ..pool(1, 1)
    };
    let y = one(&Op::AvgPool(p.clone()), &x, &Weights::new())?;
    assert_close(&y, &arr3(&[[[1.0, 2.5]]]));
    // Padding 1 left/right, window 3 stride 1: edge windows hold one zero.
    let p = Pool2d {
        padding: Pad2 {
            top: 0,
            left: 1,
            bottom: 0,
            right: 1,
        },
        stride: Hw::square(1),
        ceil_mode: false,
        ..p
    };
    let y = one(&Op::AvgPool(p.clone()), &x, &Weights::new())?;
    assert_close(&y, &arr3(&[[[1.0 / 3.0, 1.0, 2.0, 5.0 / 3.0]]]));
    let p = Pool2d {
        count_include_pad: false,
        ..p
    };
    let y = one(&Op::AvgPool(p), &x, &Weights::new())?;
    assert_close(&y, &arr3(&[[[0.5, 1.0, 2.0, 2.5]]]));
    Ok(())
}

#[test]
fn global_avgpool_and_flatten() -> TestResult {
    let x = iota(2, 2, 3);
    let g = one(&Op::GlobalAvgPool, &x, &Weights::new())?;
    assert_close(&g, &arr3(&[[[2.5]], [[8.5]]]));
    let f = one(&Op::Flatten, &x, &Weights::new())?;
    assert_eq!(f.dim(), (12, 1, 1));
    assert!(f.iter().copied().eq((0..12).map(|v| v as f32)));
    Ok(())
}

#[test]
fn softmax_sums_to_one_and_is_stable() -> TestResult {
    let x = arr3(&[[[1000.0, 0.0]], [[1001.0, 0.0]], [[999.0, 0.0]]]);
    let y = one(&Op::Softmax, &x, &Weights::new())?;
    for j in 0..2 {
        let s: f32 = (0..3).map(|c| y[[c, 0, j]]).sum();
        assert!((s - 1.0).abs() < 1e-6);
    }
    let e = [1.0f32, std::f32::consts::E, 1.0 / std::f32::consts::E];
    let total: f32 = e.iter().sum();
    for c in 0..3 {
        assert!((y[[c, 0, 0]] - e[c] / total).abs() < 1e-6);
        assert!((y[[c, 0, 1]] - 1.0 / 3.0).abs() < 1e-6);
    }
    Ok(())
}

#[test]
fn elementwise_activations() -> TestResult {
    let x = arr3(&[[[-2.0, -0.5, 0.0, 0.5, 7.0]]]);
    let w = Weights::new();
    assert_close(
        &one(&Op::Relu, &x, &w)?,
        &arr3(&[[[0.0, 0.0, 0.0, 0.5, 7.0]]]),
    );
    assert_close(
        &one(&Op::Clip { min: 0.0, max: 6.0 }, &x, &w)?,
        &arr3(&[[[0.0, 0.0, 0.0, 0.5, 6.0]]]),
    );
    assert_close(
        &one(&Op::LeakyRelu { slope: 0.1 }, &x, &w)?,
        &arr3(&[[[-0.2, -0.05, 0.0, 0.5, 7.0]]]),
    );
    let s = one(&Op::Sigmoid, &x, &w)?;
    assert!((s[[0, 0, 2]] - 0.5).abs() < 1e-7);
    assert!((s[[0, 0, 0]] - 1.0 / (1.0 + 2f32.exp())).abs() < 1e-7);
    assert_close(&one(&Op::Dropout, &x, &w)?, &x);
    Ok(())
}

#[test]
fn prelu_and_batch_norm_are_per_channel() -> TestResult {
    let x = arr3(&[[[-1.0, 2.0]], [[-3.0, 4.0]]]);
    let mut w = Weights::new();
    w.insert("l.weight", tensor(&[2], vec![0.5, 0.25]));
    assert_close(
        &one(&Op::PRelu, &x, &w)?,
        &arr3(&[[[-0.5, 2.0]], [[-0.75, 4.0]]]),
    );
    w.insert("l.weight", tensor(&[2], vec![2.0, 1.0]));
    w.insert("l.bias", tensor(&[2], vec![1.0, 0.0]));
    w.insert("l.running_mean", tensor(&[2], vec![1.0, -1.0]));
    w.insert("l.running_var", tensor(&[2], vec![4.0, 0.25]));
    let y = one(&Op::BatchNorm { eps: 0.0 }, &x, &w)?;
    // c0: (x - 1) / 2 * 2 + 1 = x; c1: (x + 1) / 0.5.
    assert_close(&y, &arr3(&[[[-1.0, 2.0]], [[-4.0, 10.0]]]));
    Ok(())
}

#[test]
fn linear_with_bias() -> TestResult {
    let x = arr3(&[[[1.0]], [[2.0]], [[3.0]]]);
    let mut w = Weights::new();
    w.insert("l.weight", tensor(&[2, 3], vec![1., 1., 1., 1., 0., -1.]));
    w.insert("l.bias", tensor(&[2], vec![0.5, -0.5]));
    let y = one(
        &Op::Linear {
            out_features: 2,
            bias: true,
        },
        &x,
        &w,
    )?;
    assert_close(&y, &arr3(&[[[6.5]], [[-2.5]]]));
    Ok(())
}

#[test]
fn add_concat_pad() -> TestResult {
    let a = iota(1, 2, 2);
    let b = Array3::from_elem((1, 2, 2), 1.0);
    let w = Weights::new();
    let sum = eval_op(&Op::Add, "l", &[&a, &b, &b], &w)?;
    assert_close(&sum, &arr3(&[[[2., 3.], [4., 5.]]]));
    let cat = eval_op(&Op::Concat, "l", &[&a, &b], &w)?;
    assert_close(&cat, &arr3(&[[[0., 1.], [2., 3.]], [[1., 1.], [1., 1.]]]));
    let p = Pad2 {
        top: 1,
        left: 0,
        bottom: 0,
        right: 1,
    };
    let padded = one(
        &Op::Pad {
            padding: p,
            value: -1.0,
        },
        &a,
        &w,
    )?;
    assert_close(
        &padded,
        &arr3(&[[[-1., -1., -1.], [0., 1., -1.], [2., 3., -1.]]]),
    );
    Ok(())
}

#[test]
fn arity_and_shape_errors() {
    let a = iota(1, 2, 2);
    let b = iota(1, 3, 3);
    let w = Weights::new();
    assert!(matches!(
        eval_op(&Op::Add, "l", &[&a], &w),
        Err(EvalError::Arity { op: "add", .. })
    ));
    assert!(matches!(
        eval_op(&Op::Relu, "l", &[&a, &a], &w),
        Err(EvalError::Arity { .. })
    ));
    assert!(matches!(
        eval_op(&Op::Relu, "l", &[], &w),
        Err(EvalError::Arity { .. })
    ));
    assert!(matches!(
        eval_op(&Op::Add, "l", &[&a, &b], &w),
        Err(EvalError::InputShape { .. })
    ));
    assert!(matches!(
        eval_op(&Op::Concat, "l", &[&a, &b], &w),
        Err(EvalError::InputShape { .. })
    ));
}
