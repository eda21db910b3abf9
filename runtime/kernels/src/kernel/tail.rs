//! A program run whole on compiled kernels — the coordinator's tail: one tile covering
//! every layer's whole output, so its convolutions run on the kernels a segment's would
//! (prepared once), fully connected layers on the host GEMV straight from the plan's
//! weights, and everything else on the plain operators.

use adcnn_core::eval::EvalError;
use adcnn_core::geometry::Region;
use adcnn_core::net::Source;
use adcnn_core::plan::{Mode, Segment, Tile};
use adcnn_core::program::Program;
use ndarray::Array3;

use super::compiled::{CompileError, CompileOptions, CompiledKernels, Profile};
use super::run::missing;

/// A program compiled to run whole (the coordinator's tail).
#[derive(Debug)]
pub struct CompiledProgram {
    /// One segment of the program's layers with one tile covering everything.
    whole: Segment,
    /// `None` for a program without layers (a plan whose network ends in its last segment).
    kernels: Option<CompiledKernels>,
}

impl CompiledProgram {
    /// Prepares `prog`'s convolutions and compiles the functions its whole-map shapes need.
    pub fn compile(prog: &Program, opts: &CompileOptions) -> Result<CompiledProgram, CompileError> {
        let tile = Tile {
            row: 0,
            col: 0,
            node: 0,
            output: Region::full(prog.output_shape()),
            input: Region::full(prog.input_shape()),
            regions: prog
                .layers()
                .iter()
                .map(|l| Region::full(l.shape))
                .collect(),
            flops: 0,
            input_bytes: 0,
            output_bytes: 0,
            predicted_ms: 0.0,
        };
        let whole = Segment {
            first: prog.first(),
            end: prog.end(),
            input: Source::Input,
            mode: Mode::Halo,
            grid: (1, 1),
            tiles: vec![tile],
            flops: 0,
            tile_flops: 0,
            affected_fraction: 0.0,
            predicted_ms: 0.0,
        };
        let kernels = match prog.layers().is_empty() {
            true => None,
            false => Some(CompiledKernels::compile(&[(&whole, prog)], |_| true, opts)?),
        };
        Ok(CompiledProgram { whole, kernels })
    }

    /// Runs `prog` (the program this was compiled from) on `x`, like [`Program::run`].
    pub fn run(&self, prog: &Program, x: &Array3<f32>) -> Result<Array3<f32>, EvalError> {
        self.run_profiled(prog, x, None)
    }

    /// [`Self::run`], adding each layer's wall time to `profile` by how it ran.
    pub fn run_profiled(
        &self,
        prog: &Program,
        x: &Array3<f32>,
        profile: Option<&mut Profile>,
    ) -> Result<Array3<f32>, EvalError> {
        let Some(kernels) = self.kernels.as_ref().filter(|_| !prog.layers().is_empty()) else {
            return prog.run(x);
        };
        let tile = self
            .whole
            .tiles
            .first()
            .ok_or_else(|| missing("the tile"))?;
        kernels.run_tile_profiled(prog, &self.whole, tile, x, profile)
    }

    /// Bytes of weights prepared for the kernels (packed, transformed).
    pub fn weight_bytes(&self) -> usize {
        self.kernels
            .as_ref()
            .map_or(0, CompiledKernels::weight_bytes)
    }
}
