//! The DSL front end: any text, as a network (and cluster) file, comes back as diagnostics or
//! a clean check, and the diagnostics render whatever their spans.

use std::path::Path;

pub fn run(data: &[u8]) {
    let text = String::from_utf8_lossy(data).into_owned();
    // A folder that does not exist: a `weights:` path in the text names no real file.
    let checked = adcnn_compiler::check::check_text(Path::new("/nonexistent/fuzz.yaml"), text);
    let _ = checked.render();
    let _ = checked.summary();
}
