//! What a run prints: the top-k classes of a classifier.

use ndarray::Array3;

/// For a flat output (a classifier's logits or probabilities): the `k` largest entries as
/// `(index, probability)`, probabilities by softmax unless the values already sum to 1.
pub fn top_k(output: &Array3<f32>, k: usize) -> Option<Vec<(usize, f32)>> {
    let (_, h, w) = output.dim();
    if h != 1 || w != 1 || output.is_empty() {
        return None;
    }
    let v: Vec<f32> = output.iter().copied().collect();
    let is_probability =
        v.iter().all(|x| (0.0..=1.0).contains(x)) && (v.iter().sum::<f32>() - 1.0).abs() < 1e-3;
    let p = if is_probability {
        v
    } else {
        let max = v.iter().copied().fold(f32::NEG_INFINITY, f32::max);
        let e: Vec<f32> = v.iter().map(|x| (x - max).exp()).collect();
        let sum: f32 = e.iter().sum();
        e.into_iter().map(|x| x / sum).collect()
    };
    let mut idx: Vec<usize> = (0..p.len()).collect();
    idx.sort_by(|&a, &b| p[b].total_cmp(&p[a]).then(a.cmp(&b)));
    Some(idx.into_iter().take(k).map(|i| (i, p[i])).collect())
}

/// Prints the top `k` classes of a classifier's output, or the output's shape.
pub fn print_top_k(out: &Array3<f32>, k: usize) {
    match top_k(out, k) {
        Some(top) => {
            crate::outln!("top-{}:", top.len());
            for (rank, (class, p)) in top.iter().enumerate() {
                crate::outln!("  {:>2}. class {class:>4}  p = {p:.4}", rank + 1);
            }
        }
        None => {
            let (c, h, w) = out.dim();
            crate::outln!("output {}", crate::ops::Shape::new(c, h, w));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn top_k_of_logits_is_softmaxed_and_sorted() {
        let out = Array3::from_shape_vec((4, 1, 1), vec![0.0, 2.0, 1.0, 2.0]).expect("shape");
        let top = top_k(&out, 3).expect("flat");
        assert_eq!(top.iter().map(|t| t.0).collect::<Vec<_>>(), [1, 3, 2]);
        let total: f32 = top_k(&out, 4).expect("flat").iter().map(|t| t.1).sum();
        assert!((total - 1.0).abs() < 1e-6);
    }

    #[test]
    fn spatial_outputs_have_no_top_k() {
        assert!(top_k(&Array3::zeros((2, 3, 3)), 5).is_none());
    }
}
