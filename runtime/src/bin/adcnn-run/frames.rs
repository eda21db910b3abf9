//! Where `adcnn-run`'s frames come from and where their outputs go: one file (an image or a
//! `.npy`), a folder of them (in name order), or `-` for a stream of `.npy` arrays on stdin.

use std::path::{Path, PathBuf};

use adcnn_core::input::{self, MAX_INPUT_ELEMENTS};
use adcnn_core::net::Input;
use adcnn_core::npy;
use ndarray::{Array3, Ix3};

/// One frame: a name (the input file's stem, or its number in a stream) and its input.
pub type Frame = Result<(String, input::Frame), String>;

fn is_input_file(p: &Path) -> bool {
    p.extension().is_some_and(|x| {
        let x = x.to_ascii_lowercase();
        x == "npy" || x == "png" || x == "jpg" || x == "jpeg"
    })
}

/// The frames `path` names, for a network whose input is `spec`.
pub fn frames(path: &Path, spec: &Input) -> Result<Box<dyn Iterator<Item = Frame>>, String> {
    let spec = spec.clone();
    if path == Path::new("-") {
        let mut stdin = std::io::stdin().lock();
        let mut n = 0u64;
        let iter = std::iter::from_fn(move || {
            let next = npy::read_f32_from(&mut stdin, MAX_INPUT_ELEMENTS);
            let frame = match next {
                Ok(None) => return None,
                Ok(Some(a)) => to_input(a, &spec).map(|a| (format!("{n:06}"), a.into())),
                Err(e) => Err(format!("error: stdin, frame {n}: {e}")),
            };
            n += 1;
            Some(frame)
        });
        return Ok(Box::new(iter));
    }
    if path.is_dir() {
        let mut files: Vec<PathBuf> = std::fs::read_dir(path)
            .map_err(|e| format!("error: cannot read {}: {e}", path.display()))?
            .filter_map(|e| e.ok().map(|e| e.path()))
            .filter(|p| p.is_file() && is_input_file(p))
            .collect();
        files.sort();
        if files.is_empty() {
            return Err(format!(
                "error: {} holds no .npy, .png or .jpg files",
                path.display()
            ));
        }
        return Ok(Box::new(files.into_iter().map(move |f| load(&f, &spec))));
    }
    Ok(Box::new(std::iter::once(load(path, &spec))))
}

fn load(path: &Path, spec: &Input) -> Frame {
    let stem = path
        .file_stem()
        .map_or_else(|| "frame".to_string(), |s| s.to_string_lossy().into_owned());
    input::load_frame(path, spec)
        .map(|a| (stem, a))
        .map_err(|e| format!("error: {e}"))
}

/// A streamed array as the network's input (`[C, H, W]` or `[1, C, H, W]`).
fn to_input(a: ndarray::ArrayD<f32>, spec: &Input) -> Result<Array3<f32>, String> {
    let s = spec.shape;
    let ok = matches!(a.shape(), [c, h, w] | [1, c, h, w] if (*c, *h, *w) == (s.c, s.h, s.w));
    if !ok {
        return Err(format!(
            "error: a streamed tensor has shape {:?}; the network takes {s}",
            a.shape()
        ));
    }
    a.into_shape_with_order((s.c, s.h, s.w))
        .map_err(|e| format!("error: {e}"))
        .and_then(|a| {
            a.into_dimensionality::<Ix3>()
                .map_err(|e| format!("error: {e}"))
        })
}

/// Where a frame's output goes: `out` itself for a single input, `out/NAME.npy` for many.
pub fn output_path(out: &Path, name: &str, many: bool) -> PathBuf {
    if many {
        out.join(format!("{name}.npy"))
    } else {
        out.to_path_buf()
    }
}
