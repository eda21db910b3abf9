//! Constant folding of the shape arithmetic exporters leave behind. PyTorch's TorchScript
//! exporter does not fold constants in `TrainingMode.PRESERVE` (the mode that keeps batch
//! norm as batch norm), so `F.pad` arrives as ConstantOfShape → Concat → Reshape → Slice →
//! Transpose → Reshape → Cast over int64 constants. These operators are evaluated here when
//! all their inputs are constants, and are errors otherwise.

use super::error::ImportError;
use super::tensor::{Const, Data, FLOAT, INT32, INT64, MAX_TENSOR_ELEMENTS, type_name};

/// Operators supported only on constant inputs.
pub const CONSTANT_ONLY_OPS: &[&str] = &["Cast", "ConstantOfShape", "Gather", "Slice", "Transpose"];

/// Operators folded when all their inputs are constants (besides [`CONSTANT_ONLY_OPS`]).
pub const FOLDABLE_OPS: &[&str] = &["Concat", "Reshape", "Squeeze", "Unsqueeze", "Flatten"];

/// Most values constant folding may make in one import, all folded nodes together. Folding
/// evaluates the shape arithmetic exporters leave behind (a few dozen integers per `F.pad`);
/// without a bound, `ConstantOfShape` makes billions of values from a few bytes of model,
/// and every node that reshapes or slices a large constant copies it again.
pub const MAX_FOLDED_ELEMENTS: usize = 1 << 24;

fn numel(dims: &[usize]) -> Option<usize> {
    dims.iter()
        .try_fold(1usize, |a, &d| a.checked_mul(d))
        .filter(|&n| n <= MAX_TENSOR_ELEMENTS)
}

/// Row-major strides. An empty tensor's other dims may multiply past `usize` (its values are
/// never indexed then): saturated.
fn strides(dims: &[usize]) -> Vec<usize> {
    let mut s = vec![1usize; dims.len()];
    for i in (0..dims.len().saturating_sub(1)).rev() {
        s[i] = s[i + 1].saturating_mul(dims[i + 1]);
    }
    s
}

/// Builds a tensor of `out_dims` whose element at each index is `src[index_of(index)]`.
fn gather(c: &Const, out_dims: Vec<usize>, index_of: impl Fn(&[usize]) -> usize) -> Const {
    let n = numel(&out_dims).unwrap_or(0);
    let mut idx = vec![0usize; out_dims.len()];
    let mut order = Vec::with_capacity(n);
    for _ in 0..n {
        order.push(index_of(&idx));
        for a in (0..idx.len()).rev() {
            idx[a] += 1;
            if idx[a] < out_dims[a] {
                break;
            }
            idx[a] = 0;
        }
    }
    let data = match &c.data {
        Data::F32(v) => Data::F32(order.iter().map(|&i| v[i]).collect()),
        Data::I64(v) => Data::I64(order.iter().map(|&i| v[i]).collect()),
    };
    Const {
        name: c.name.clone(),
        dims: out_dims,
        data,
    }
}

fn err(reason: String) -> String {
    reason
}

/// Evaluates `op` on constant inputs. `attr_*` read the node's attributes. `Err` is a reason.
pub fn fold(
    op: &str,
    inputs: &[Option<&Const>],
    attr_int: &dyn Fn(&str) -> Option<i64>,
    attr_ints: &dyn Fn(&str) -> Option<Vec<i64>>,
    attr_tensor: &dyn Fn(&str) -> Option<Result<Const, ImportError>>,
    opset: i64,
) -> Result<Result<Const, String>, ImportError> {
    let get = |i: usize| inputs.get(i).copied().flatten();
    let Some(x) = get(0) else {
        return Ok(Err(err("input 0 is missing".into())));
    };
    Ok(match op {
        "Cast" => {
            let to = attr_int("to").unwrap_or(0) as i32;
            let data = match (&x.data, to) {
                (Data::F32(v), FLOAT) => Data::F32(v.clone()),
                (Data::I64(v), INT64 | INT32) => Data::I64(v.clone()),
                (Data::I64(v), FLOAT) => Data::F32(v.iter().map(|&i| i as f32).collect()),
                (Data::F32(v), INT64 | INT32) => Data::I64(v.iter().map(|&f| f as i64).collect()),
                _ => return Ok(Err(format!("cast to {}", type_name(to)))),
            };
            Ok(Const {
                name: x.name.clone(),
                dims: x.dims.clone(),
                data,
            })
        }
        "ConstantOfShape" => {
            let shape = x.ints()?;
            let dims: Option<Vec<usize>> = shape.iter().map(|&d| usize::try_from(d).ok()).collect();
            let Some(n) = dims.as_deref().and_then(numel) else {
                return Ok(Err(format!("shape {shape:?}")));
            };
            let value = match attr_tensor("value").transpose()? {
                None => Data::F32(vec![0.0; n]),
                Some(v) => match &v.data {
                    Data::F32(f) if f.len() == 1 => Data::F32(vec![f[0]; n]),
                    Data::I64(i) if i.len() == 1 => Data::I64(vec![i[0]; n]),
                    _ => return Ok(Err("value must hold one element".into())),
                },
            };
            Ok(Const {
                name: x.name.clone(),
                dims: dims.unwrap_or_default(),
                data: value,
            })
        }
        "Transpose" => {
            let r = x.dims.len();
            let perm: Vec<usize> = match attr_ints("perm") {
                None => (0..r).rev().collect(),
                Some(p) => p.iter().map(|&v| v as usize).collect(),
            };
            let mut sorted = perm.clone();
            sorted.sort_unstable();
            if sorted != (0..r).collect::<Vec<_>>() {
                return Ok(Err(format!("perm {perm:?}")));
            }
            let s = strides(&x.dims);
            let out: Vec<usize> = perm.iter().map(|&p| x.dims[p]).collect();
            Ok(gather(x, out, |idx| {
                idx.iter().zip(&perm).map(|(&i, &p)| i * s[p]).sum()
            }))
        }
        "Slice" => {
            if opset < 10 {
                return Ok(Err("Slice before opset 10".into()));
            }
            let r = x.dims.len() as i64;
            let (Some(starts), Some(ends)) = (get(1), get(2)) else {
                return Ok(Err("starts and ends are required".into()));
            };
            let (starts, ends) = (starts.ints()?, ends.ints()?);
            let axes: Vec<i64> = match get(3) {
                Some(a) => a.ints()?.to_vec(),
                None => (0..starts.len() as i64).collect(),
            };
            let steps: Vec<i64> = match get(4) {
                Some(s) => s.ints()?.to_vec(),
                None => vec![1; starts.len()],
            };
            if ends.len() != starts.len()
                || axes.len() != starts.len()
                || steps.len() != starts.len()
            {
                return Ok(Err("starts, ends, axes and steps differ in length".into()));
            }
            let mut start: Vec<i64> = vec![0; x.dims.len()];
            let mut step: Vec<i64> = vec![1; x.dims.len()];
            let mut out = x.dims.clone();
            for k in 0..starts.len() {
                let a = if axes[k] < 0 { axes[k] + r } else { axes[k] };
                if !(0..r).contains(&a) || steps[k] == 0 {
                    return Ok(Err(format!("axis {} or step {}", axes[k], steps[k])));
                }
                let a = a as usize;
                let d = x.dims[a] as i64;
                if d == 0 {
                    out[a] = 0;
                    continue;
                }
                let fix = |v: i64| if v < 0 { v.saturating_add(d) } else { v };
                let (s, e) = if steps[k] > 0 {
                    (fix(starts[k]).clamp(0, d), fix(ends[k]).clamp(0, d))
                } else {
                    (
                        fix(starts[k]).clamp(0, d - 1),
                        fix(ends[k]).clamp(-1, d - 1),
                    )
                };
                let st = steps[k];
                let len = if st > 0 {
                    (e - s).max(0).div_euclid(st) + i64::from((e - s).max(0) % st != 0)
                } else {
                    (s - e).max(0).div_euclid(-st) + i64::from((s - e).max(0) % (-st) != 0)
                };
                start[a] = s;
                step[a] = st;
                out[a] = len as usize;
            }
            let s = strides(&x.dims);
            Ok(gather(x, out, |idx| {
                idx.iter()
                    .enumerate()
                    .map(|(a, &i)| (start[a] + i as i64 * step[a]) as usize * s[a])
                    .sum()
            }))
        }
        "Gather" => {
            // Shape arithmetic: picking dimensions out of a `Shape`'s output (axis 0).
            let Some(idx) = get(1) else {
                return Ok(Err("indices are required".into()));
            };
            let axis = attr_int("axis").unwrap_or(0);
            let Some(&len) = x.dims.first() else {
                return Ok(Err("a scalar input".into()));
            };
            if axis != 0 && axis != -(x.dims.len() as i64) {
                return Ok(Err(format!("axis {axis}; folded only on axis 0")));
            }
            let picked: Option<Vec<usize>> = idx
                .ints()?
                .iter()
                .map(|&i| {
                    let i = if i < 0 { i + len as i64 } else { i };
                    usize::try_from(i).ok().filter(|&i| i < len)
                })
                .collect();
            let Some(picked) = picked else {
                return Ok(Err("an index out of range".into()));
            };
            let inner: usize = x.dims[1..].iter().product();
            let mut dims = idx.dims.clone();
            dims.extend_from_slice(&x.dims[1..]);
            let data = match &x.data {
                Data::F32(v) => Data::F32(
                    picked
                        .iter()
                        .flat_map(|&i| v[i * inner..(i + 1) * inner].iter().copied())
                        .collect(),
                ),
                Data::I64(v) => Data::I64(
                    picked
                        .iter()
                        .flat_map(|&i| v[i * inner..(i + 1) * inner].iter().copied())
                        .collect(),
                ),
            };
            Ok(Const {
                name: x.name.clone(),
                dims,
                data,
            })
        }
        _ => Err(format!("{op} is not folded")),
    })
}

/// N-D concatenation of constants on `axis`.
pub fn concat(xs: &[&Const], axis: i64) -> Result<Result<Const, String>, ImportError> {
    let Some(first) = xs.first() else {
        return Ok(Err("no inputs".into()));
    };
    let r = first.dims.len() as i64;
    let a = if axis < 0 { axis + r } else { axis };
    if !(0..r).contains(&a) {
        return Ok(Err(format!("axis {axis}")));
    }
    let a = a as usize;
    let mut dims = first.dims.clone();
    dims[a] = 0;
    for x in xs {
        if x.dims.len() != first.dims.len()
            || x.dims
                .iter()
                .enumerate()
                .any(|(i, &d)| i != a && d != first.dims[i])
        {
            return Ok(Err("inputs differ outside the axis".into()));
        }
        dims[a] = match dims[a].checked_add(x.dims[a]) {
            Some(d) => d,
            None => return Ok(Err("the concatenation is too large".into())),
        };
    }
    // An empty result has nothing to copy, however large its other dims (whose product may
    // not even fit a `usize`); otherwise its dims multiply to no more than the inputs' values.
    let outer: usize = if dims.contains(&0) {
        0
    } else {
        first.dims[..a].iter().product()
    };
    let data = match &first.data {
        Data::F32(_) => {
            let mut v = Vec::new();
            for o in 0..outer {
                for x in xs {
                    let chunk: usize = x.dims[a..].iter().product();
                    v.extend_from_slice(&x.floats()?[o * chunk..(o + 1) * chunk]);
                }
            }
            Data::F32(v)
        }
        Data::I64(_) => {
            let mut v = Vec::new();
            for o in 0..outer {
                for x in xs {
                    let chunk: usize = x.dims[a..].iter().product();
                    v.extend_from_slice(&x.ints()?[o * chunk..(o + 1) * chunk]);
                }
            }
            Data::I64(v)
        }
    };
    Ok(Ok(Const {
        name: first.name.clone(),
        dims,
        data,
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ints(dims: &[usize], values: Vec<i64>) -> Const {
        Const {
            name: "c".into(),
            dims: dims.to_vec(),
            data: Data::I64(values),
        }
    }

    fn fold_one(op: &str, x: &Const, perm: Option<Vec<i64>>) -> Result<Const, String> {
        fold(
            op,
            &[Some(x)],
            &|_| None,
            &|name| (name == "perm").then(|| perm.clone()).flatten(),
            &|_| None,
            13,
        )
        .expect("no import error")
    }

    /// Empty tensors may have other dims whose product overflows: transposing and
    /// concatenating them must not (found by the `onnx` fuzz target).
    #[test]
    fn empty_tensors_with_huge_dims_fold() {
        let huge = 1usize << 40;
        let x = ints(&[0, huge, huge], vec![]);
        let t = fold_one("Transpose", &x, None).expect("transposes");
        assert_eq!(t.dims, [huge, huge, 0]);
        assert_eq!(t.len(), 0);
        let y = ints(&[huge, huge, 0], vec![]);
        let c = concat(&[&y, &y], 2)
            .expect("no import error")
            .expect("concats");
        assert_eq!(c.dims, [huge, huge, 0]);
        let c = concat(&[&x, &x], 0)
            .expect("no import error")
            .expect("concats");
        assert_eq!(c.dims, [0, huge, huge]);
        // Along an axis whose sizes add past usize::MAX: an error.
        let z = ints(&[usize::MAX, 0], vec![]);
        assert!(concat(&[&z, &z], 0).expect("no import error").is_err());
    }

    #[test]
    fn concatenation_still_interleaves_rows() {
        let a = ints(&[2, 1], vec![1, 2]);
        let b = ints(&[2, 2], vec![3, 4, 5, 6]);
        let c = concat(&[&a, &b], 1)
            .expect("no import error")
            .expect("concats");
        assert_eq!(c.dims, [2, 3]);
        assert_eq!(c.data, Data::I64(vec![1, 3, 4, 2, 5, 6]));
    }
}
