//! Imports the full torchvision models that `tests/onnx/make_onnx.py --full DIR` exported,
//! checks them, runs them on the reference interpreter and compares with onnxruntime:
//!
//! ```sh
//! cargo run --release -p adcnn-compiler --example onnx_full_check -- DIR
//! ```

use std::path::PathBuf;
use std::process::ExitCode;

use adcnn_compiler::{check::check, onnx, reference};

const TOLERANCE: f64 = 1e-4;

fn main() -> ExitCode {
    let Some(dir) = std::env::args_os().nth(1).map(PathBuf::from) else {
        eprintln!("usage: onnx_full_check DIR   (DIR written by tests/onnx/make_onnx.py --full)");
        return ExitCode::FAILURE;
    };
    let out = std::env::temp_dir().join(format!("adcnn-onnx-full-{}", std::process::id()));
    if let Err(e) = std::fs::create_dir_all(&out) {
        eprintln!("error: {}: {e}", out.display());
        return ExitCode::FAILURE;
    }
    let mut failed = false;
    for name in ["alexnet", "vgg16", "resnet18", "resnet50", "mobilenet_v2"] {
        let model = dir.join(format!("{name}.onnx"));
        if !model.exists() {
            println!("skip {name}: {} not found", model.display());
            continue;
        }
        match check_one(&dir, &out, name) {
            Ok(line) => println!("ok   {line}"),
            Err(e) => {
                failed = true;
                println!("FAIL {name}: {e}");
            }
        }
    }
    let _ = std::fs::remove_dir_all(&out);
    if failed {
        ExitCode::FAILURE
    } else {
        ExitCode::SUCCESS
    }
}

fn check_one(dir: &std::path::Path, out: &std::path::Path, name: &str) -> Result<String, String> {
    let yaml = out.join(format!("{name}.yaml"));
    let written =
        onnx::import_file(&dir.join(format!("{name}.onnx")), &yaml).map_err(|e| e.to_string())?;
    let checked = check(&yaml, None);
    let (graph, weights) = checked
        .network
        .as_ref()
        .filter(|_| checked.is_ok())
        .ok_or_else(|| checked.render())?;
    let bytes =
        std::fs::read(dir.join(format!("{name}.io.safetensors"))).map_err(|e| e.to_string())?;
    let st = safetensors::SafeTensors::deserialize(&bytes).map_err(|e| e.to_string())?;
    let floats = |t: &str| -> Result<Vec<f32>, String> {
        let v = st.tensor(t).map_err(|e| e.to_string())?;
        Ok(v.data()
            .chunks_exact(4)
            .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
            .collect())
    };
    let s = graph.input.shape;
    let x = ndarray::Array3::from_shape_vec((s.c, s.h, s.w), floats("input")?)
        .map_err(|e| e.to_string())?;
    let want = floats("output")?;
    let got = reference::run(graph, weights, &x).map_err(|e| e.to_string())?;
    let num: f64 = got
        .iter()
        .zip(&want)
        .map(|(a, b)| f64::from(a - b).powi(2))
        .sum();
    let den: f64 = want.iter().map(|b| f64::from(*b).powi(2)).sum();
    let err = (num / den.max(1e-30)).sqrt();
    if got.len() != want.len() || err.is_nan() || err > TOLERANCE {
        return Err(format!(
            "relative L2 {err:.2e} over {} values (onnxruntime: {})",
            got.len(),
            want.len()
        ));
    }
    Ok(format!(
        "{} — relative L2 {err:.1e} against onnxruntime",
        written.summary()
    ))
}
