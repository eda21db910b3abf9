//! Regions from a one-channel probability map — what a DBNet-style text detector (or a
//! segmenter) outputs — as its usual post-processing finds them: pixels above a threshold,
//! grouped into 8-connected components; each component's bounding box kept when its mean
//! probability is high enough and its shorter side long enough, then grown ("unclipped") by
//! `area · ratio / perimeter` on every side, since the detector predicts shrunk regions.
//! And the boxes drawn into the input image.

use std::path::Path;

use ndarray::ArrayView2;

/// How a probability map becomes boxes (PP-OCR's defaults).
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct BoxOptions {
    /// A pixel belongs to a region above this probability.
    pub threshold: f32,
    /// A region is kept when its pixels' mean probability reaches this.
    pub min_score: f32,
    /// How much the box grows: `area · unclip / perimeter` on each side.
    pub unclip: f32,
    /// Regions whose box is shorter than this (map pixels) on a side are dropped.
    pub min_side: usize,
}

impl Default for BoxOptions {
    fn default() -> Self {
        BoxOptions {
            threshold: 0.3,
            min_score: 0.5,
            unclip: 1.6,
            min_side: 3,
        }
    }
}

/// A box in map pixels: columns `x0..x1`, rows `y0..y1` (not rounded), and its region's
/// mean probability.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Box2 {
    pub x0: f32,
    pub y0: f32,
    pub x1: f32,
    pub y1: f32,
    pub score: f32,
}

impl Box2 {
    fn area(&self) -> f32 {
        (self.x1 - self.x0).max(0.0) * (self.y1 - self.y0).max(0.0)
    }

    /// Intersection over union.
    pub fn iou(&self, o: &Box2) -> f32 {
        let inter = Box2 {
            x0: self.x0.max(o.x0),
            y0: self.y0.max(o.y0),
            x1: self.x1.min(o.x1),
            y1: self.y1.min(o.y1),
            score: 0.0,
        }
        .area();
        let union = self.area() + o.area() - inter;
        if union > 0.0 { inter / union } else { 0.0 }
    }
}

/// The boxes of `map` (rows × columns), top to bottom, then left to right.
pub fn find_boxes(map: ArrayView2<f32>, o: &BoxOptions) -> Vec<Box2> {
    let (h, w) = map.dim();
    let mut seen = vec![false; h * w];
    let mut stack = Vec::new();
    let mut out = Vec::new();
    // NaN is below every threshold.
    let above = |v: f32| v > o.threshold;
    for start in 0..h * w {
        if seen[start] || !above(map[[start / w, start % w]]) {
            continue;
        }
        seen[start] = true;
        stack.push(start);
        let (mut r0, mut r1, mut c0, mut c1) = (h, 0, w, 0);
        let (mut sum, mut count) = (0.0f64, 0usize);
        while let Some(p) = stack.pop() {
            let (r, c) = (p / w, p % w);
            (r0, r1, c0, c1) = (r0.min(r), r1.max(r + 1), c0.min(c), c1.max(c + 1));
            sum += f64::from(map[[r, c]]);
            count += 1;
            for dr in -1isize..=1 {
                for dc in -1isize..=1 {
                    let (Some(nr), Some(nc)) = (r.checked_add_signed(dr), c.checked_add_signed(dc))
                    else {
                        continue;
                    };
                    if nr < h && nc < w && !seen[nr * w + nc] && above(map[[nr, nc]]) {
                        seen[nr * w + nc] = true;
                        stack.push(nr * w + nc);
                    }
                }
            }
        }
        let score = (sum / count as f64) as f32;
        if score < o.min_score || (r1 - r0).min(c1 - c0) < o.min_side {
            continue;
        }
        let (bh, bw) = ((r1 - r0) as f32, (c1 - c0) as f32);
        let grow = bh * bw * o.unclip / (2.0 * (bh + bw));
        out.push(Box2 {
            x0: (c0 as f32 - grow).max(0.0),
            y0: (r0 as f32 - grow).max(0.0),
            x1: (c1 as f32 + grow).min(w as f32),
            y1: (r1 as f32 + grow).min(h as f32),
            score,
        });
    }
    out
}

/// How two sets of boxes differ: how many of `got` match one of `want` (IoU ≥ 0.5, each
/// matched once), and how many of each are left over.
pub fn compare(got: &[Box2], want: &[Box2]) -> (usize, usize, usize) {
    let mut used = vec![false; want.len()];
    let mut matched = 0;
    for g in got {
        let best = want
            .iter()
            .enumerate()
            .filter(|(j, _)| !used[*j])
            .map(|(j, w)| (j, g.iou(w)))
            .max_by(|a, b| a.1.total_cmp(&b.1));
        if let Some((j, iou)) = best
            && iou >= 0.5
        {
            used[j] = true;
            matched += 1;
        }
    }
    (matched, got.len() - matched, want.len() - matched)
}

/// Draws `boxes` (in the coordinates of a `map_w × map_h` map covering the whole image) into
/// the image at `image`, and writes it as PNG to `out` (atomically).
pub fn draw_into(
    image: &Path,
    map_w: usize,
    map_h: usize,
    boxes: &[Box2],
    out: &Path,
) -> Result<(), String> {
    let bytes =
        std::fs::read(image).map_err(|e| format!("cannot read {}: {e}", image.display()))?;
    let img = crate::input::decode_image(&bytes)
        .map_err(|e| format!("cannot decode {}: {e}", image.display()))?;
    let mut img = img.to_rgb8();
    let (iw, ih) = img.dimensions();
    let (sx, sy) = (iw as f32 / map_w as f32, ih as f32 / map_h as f32);
    let red = image::Rgb([230u8, 20, 20]);
    let thick = (iw.max(ih) / 400).max(1);
    for b in boxes {
        let x0 = ((b.x0 * sx) as u32).min(iw - 1);
        let x1 = ((b.x1 * sx) as u32).clamp(x0, iw - 1);
        let y0 = ((b.y0 * sy) as u32).min(ih - 1);
        let y1 = ((b.y1 * sy) as u32).clamp(y0, ih - 1);
        for t in 0..thick {
            for x in x0..=x1 {
                img.put_pixel(x, (y0 + t).min(y1), red);
                img.put_pixel(x, y1.saturating_sub(t).max(y0), red);
            }
            for y in y0..=y1 {
                img.put_pixel((x0 + t).min(x1), y, red);
                img.put_pixel(x1.saturating_sub(t).max(x0), y, red);
            }
        }
    }
    let mut png = Vec::new();
    img.write_to(&mut std::io::Cursor::new(&mut png), image::ImageFormat::Png)
        .map_err(|e| format!("cannot encode the boxes' image: {e}"))?;
    crate::npy::write_atomically(out, &png)
        .map_err(|e| format!("cannot write {}: {e}", out.display()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use ndarray::Array2;

    #[test]
    fn two_blobs_make_two_boxes_grown_by_the_unclip_ratio() {
        let mut map = Array2::<f32>::zeros((20, 40));
        // A 4×10 bar and a 3×3 square; a lone pixel below the side limit.
        map.slice_mut(ndarray::s![2..6, 5..15]).fill(0.9);
        map.slice_mut(ndarray::s![10..13, 30..33]).fill(0.8);
        map[[18, 1]] = 1.0;
        let boxes = find_boxes(map.view(), &BoxOptions::default());
        assert_eq!(boxes.len(), 2, "{boxes:?}");
        let grow = 4.0 * 10.0 * 1.6 / (2.0 * 14.0);
        let b = boxes[0];
        assert!((b.x0 - (5.0 - grow)).abs() < 1e-5 && (b.y1 - (6.0 + grow)).abs() < 1e-5);
        assert!((b.score - 0.9).abs() < 1e-6);
        assert!(boxes[1].x0 < 30.0 && boxes[1].x1 > 33.0);
    }

    #[test]
    fn a_faint_region_is_dropped_and_diagonal_pixels_join() {
        let mut map = Array2::<f32>::zeros((10, 10));
        map.slice_mut(ndarray::s![0..4, 0..4]).fill(0.4); // above 0.3, mean below 0.5
        for i in 5..10 {
            map[[i, i]] = 0.9; // a diagonal line: one 8-connected region
        }
        let boxes = find_boxes(map.view(), &BoxOptions::default());
        assert_eq!(boxes.len(), 1, "{boxes:?}");
        assert!(boxes[0].x0 < 5.0 && boxes[0].x1 > 9.0);
    }

    #[test]
    fn comparing_counts_matches_and_leftovers() {
        let a = Box2 {
            x0: 0.0,
            y0: 0.0,
            x1: 10.0,
            y1: 10.0,
            score: 1.0,
        };
        let shifted = Box2 {
            x0: 1.0,
            x1: 11.0,
            ..a
        };
        let far = Box2 {
            x0: 50.0,
            x1: 60.0,
            ..a
        };
        assert_eq!(compare(&[a, far], &[shifted]), (1, 1, 0));
        assert_eq!(compare(&[], &[a]), (0, 0, 1));
    }
}
