//! plan.bin from any bytes: the whole-file decoder, and the header and program decoders on
//! their own. Whatever decodes must run: every tile of every segment, and the tail.

use adcnn_core::format::{self, DecodedPlan, PlanFile, SectionKind};
use ndarray::Array3;

pub fn run(data: &[u8]) {
    if let Ok(p) = format::decode(data) {
        run_decoded(&p);
    }
    if let Ok(file) = PlanFile::parse(data)
        && let Ok(header) = file.header()
    {
        for node in 0..header.plan.cluster.nodes.len().min(16) {
            let _ = file.node_programs(&header, node);
        }
        let _ = file.tail(&header);
    }
    let _ = format::decode_header(data);
    let _ = format::decode_program(data, SectionKind::Segment(0));
}

/// Runs every tile of every segment on a zero input of the tile's input shape, then the
/// tail on a zero input of its own.
pub fn run_decoded(p: &DecodedPlan) {
    for (seg, prog) in p.header.plan.segments.iter().zip(&p.segments) {
        for tile in &seg.tiles {
            let s = prog.input_shape();
            let x = Array3::zeros((s.c, tile.input.rows(), tile.input.cols()));
            let _ = prog.run_tile(seg, tile, &x);
        }
    }
    let s = p.tail.input_shape();
    let _ = p.tail.run(&Array3::zeros((s.c, s.h, s.w)));
}
