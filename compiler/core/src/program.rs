//! Programs: a run of consecutive layers with their weights — one segment's, or the tail's —
//! self-contained, so a node can run it knowing nothing else of the network. And the plain
//! way to run one: a tile of a segment, or the whole program, on [`crate::eval`] — the
//! oracle that compiled kernels are checked against, and what `--kernels reference` runs.

use ndarray::Array3;

use crate::eval::{EvalError, check_input, eval_op};
use crate::geometry::{input_region, tile_op};
use crate::net::{Layer, LayerId, Source};
use crate::ops::Shape;
use crate::plan::{Mode, Plan, Region, Segment, Tile};
use crate::tensor::{crop, empty, region_mut};
use crate::weights::Weights;

/// Layers `first..first + layers.len()` of a network with their weights.
///
/// A source outside the program — an earlier layer or the network input — is the program's
/// input: plans cut only where one tensor is live, so there is exactly one.
#[derive(Clone, Debug, PartialEq)]
pub struct Program {
    first: LayerId,
    layers: Vec<Layer>,
    input: Shape,
    weights: Weights,
    /// Per layer: the layers of this program that read it.
    consumers: Vec<Vec<LayerId>>,
    /// What identifies its content (the hash of its plan section), when it came from one.
    id: Option<u64>,
}

/// A program whose layers do not fit together.
#[derive(Clone, Debug, PartialEq, thiserror::Error)]
#[error("layer `{layer}`: {reason}")]
pub struct ProgramError {
    pub layer: String,
    pub reason: String,
}

impl Program {
    /// Checks that every layer reads earlier layers or the input, that its shape is what its
    /// operator makes of its inputs, and that its weights are there with the right shapes.
    pub fn new(
        first: LayerId,
        layers: Vec<Layer>,
        input: Shape,
        weights: Weights,
    ) -> Result<Program, ProgramError> {
        let end = u32::try_from(layers.len())
            .ok()
            .and_then(|n| first.0.checked_add(n))
            .ok_or_else(|| ProgramError {
                layer: "-".into(),
                reason: "too many layers".into(),
            })?;
        if input
            .checked_numel()
            .is_none_or(|n| n > crate::ops::MAX_TENSOR_VALUES)
        {
            return Err(ProgramError {
                layer: "-".into(),
                reason: format!(
                    "input {input} has more than {} values",
                    crate::ops::MAX_TENSOR_VALUES
                ),
            });
        }
        let mut consumers = vec![Vec::new(); layers.len()];
        for (n, layer) in layers.iter().enumerate() {
            let fail = |reason: String| ProgramError {
                layer: layer.name.clone(),
                reason,
            };
            let me = first.0 + n as u32;
            let mut shapes = Vec::with_capacity(layer.inputs.len());
            for src in &layer.inputs {
                match src {
                    Source::Layer(id) if id.0 >= me => {
                        return Err(fail(format!("reads layer {} at or after itself", id.0)));
                    }
                    Source::Layer(id) if id.0 >= first.0 => {
                        let j = (id.0 - first.0) as usize;
                        consumers[j].push(LayerId(me));
                        shapes.push(layers[j].shape);
                    }
                    _ => shapes.push(input),
                }
            }
            let shape = layer
                .op
                .output_shape(&shapes)
                .map_err(|e| fail(e.to_string()))?;
            if shape != layer.shape {
                return Err(fail(format!(
                    "its operator makes {shape} of its inputs, the plan says {}",
                    layer.shape
                )));
            }
            for (role, dims) in layer.op.weight_shapes(shapes[0]) {
                let name = Weights::tensor_name(&layer.name, role);
                match weights.get_by_name(&name) {
                    Some(t) if t.shape() == dims.as_slice() => {}
                    Some(t) => {
                        return Err(fail(format!(
                            "weight `{name}` has shape {:?}, needs {dims:?}",
                            t.shape()
                        )));
                    }
                    None => return Err(fail(format!("weight `{name}` is missing"))),
                }
            }
        }
        debug_assert!(end >= first.0);
        Ok(Program {
            first,
            layers,
            input,
            weights,
            consumers,
            id: None,
        })
    }

    /// The program, identified by `id`: a hash of its content (the plan decoder uses its
    /// section's), under which nodes may share what they prepare from it.
    pub fn with_id(self, id: u64) -> Program {
        Program {
            id: Some(id),
            ..self
        }
    }

    /// What identifies its content, if anything does.
    pub fn id(&self) -> Option<u64> {
        self.id
    }

    /// The first layer's id.
    pub fn first(&self) -> LayerId {
        self.first
    }

    /// One past the last layer's id.
    pub fn end(&self) -> LayerId {
        LayerId(self.first.0 + self.layers.len() as u32)
    }

    pub fn layers(&self) -> &[Layer] {
        &self.layers
    }

    /// Layer `id`, which must be one of the program's.
    pub fn layer(&self, id: LayerId) -> &Layer {
        &self.layers[id.index() - self.first.index()]
    }

    /// The layer with network index `i`, if it is one of the program's.
    pub fn get(&self, i: usize) -> Option<&Layer> {
        self.layers.get(i.checked_sub(self.first.index())?)
    }

    /// The program's layers that read layer `id` (none for the last: its readers are outside).
    pub fn consumers(&self, id: LayerId) -> &[LayerId] {
        id.index()
            .checked_sub(self.first.index())
            .and_then(|j| self.consumers.get(j))
            .map_or(&[], Vec::as_slice)
    }

    /// Whether `src` is one of the program's layers; its position then.
    pub fn position(&self, src: &Source) -> Option<usize> {
        match src {
            Source::Layer(id) => id
                .index()
                .checked_sub(self.first.index())
                .filter(|&j| j < self.layers.len()),
            Source::Input => None,
        }
    }

    /// The shape of what `src` holds: a layer's output, or the program's input.
    pub fn shape_of(&self, src: &Source) -> Shape {
        match self.position(src) {
            Some(j) => self.layers[j].shape,
            None => self.input,
        }
    }

    pub fn input_shape(&self) -> Shape {
        self.input
    }

    /// The last layer's shape (the input's when there are no layers).
    pub fn output_shape(&self) -> Shape {
        self.layers.last().map_or(self.input, |l| l.shape)
    }

    pub fn weights(&self) -> &Weights {
        &self.weights
    }

    /// Runs every layer on whole tensors, dropping each value after its last reader.
    pub fn run(&self, input: &Array3<f32>) -> Result<Array3<f32>, EvalError> {
        self.run_with(input, |layer, inputs| {
            eval_op(&layer.op, &layer.name, inputs, &self.weights)
        })
    }

    /// [`Self::run`] with each layer evaluated by `eval` (compiled kernels take the layers
    /// they have faster code for and hand the rest to [`eval_op`]).
    pub fn run_with(
        &self,
        input: &Array3<f32>,
        mut eval: impl FnMut(&Layer, &[&Array3<f32>]) -> Result<Array3<f32>, EvalError>,
    ) -> Result<Array3<f32>, EvalError> {
        check_input("program", self.input, input)?;
        let mut remaining: Vec<usize> = self.consumers.iter().map(Vec::len).collect();
        let mut values: Vec<Option<Array3<f32>>> = Vec::with_capacity(self.layers.len());
        for layer in &self.layers {
            let mut inputs = Vec::with_capacity(layer.inputs.len());
            for src in &layer.inputs {
                inputs.push(match self.position(src) {
                    Some(j) => values[j].as_ref().ok_or_else(|| missing(&layer.name))?,
                    None => input,
                });
            }
            let out = eval(layer, &inputs)?;
            for src in &layer.inputs {
                if let Some(j) = self.position(src) {
                    remaining[j] -= 1;
                    if remaining[j] == 0 && j + 1 < self.layers.len() {
                        values[j] = None;
                    }
                }
            }
            values.push(Some(out));
        }
        match values.pop() {
            Some(v) => v.ok_or_else(|| missing("the program's output")),
            None => Ok(input.clone()),
        }
    }

    /// Computes `tile` of `seg` (whose layers this program holds) from `input`, the tile's
    /// input region of the segment's input. Returns the tile's output region of the
    /// segment's output. Halo tiles run each layer on its region with padding only at the
    /// feature map's border; FDSP tiles run each layer on the independent tile.
    pub fn run_tile(
        &self,
        seg: &Segment,
        tile: &Tile,
        input: &Array3<f32>,
    ) -> Result<Array3<f32>, EvalError> {
        let mut values: Vec<Option<Array3<f32>>> = Vec::with_capacity(self.layers.len());
        for (n, layer) in self.layers.iter().enumerate() {
            let region = tile.regions[n];
            if region.is_empty() {
                // Nothing to compute, but a consumer whose windows lie wholly in its padding
                // still reads this (zero-sized) region.
                values.push(Some(empty(layer.shape.c, &region)));
                continue;
            }
            let out = match seg.mode {
                Mode::Halo => {
                    let mut crops = Vec::with_capacity(layer.inputs.len());
                    for src in &layer.inputs {
                        let need = input_region(&layer.op, &region, self.shape_of(src));
                        let crop_of = match self.position(src) {
                            Some(j) => values[j].as_ref().map(|t| crop(t, &tile.regions[j], &need)),
                            None => Some(crop(input, &tile.input, &need)),
                        };
                        crops.push(crop_of.ok_or_else(|| missing(&layer.name))?);
                    }
                    let op = tile_op(&layer.op, &region, self.shape_of(&layer.inputs[0])).map_err(
                        |e| EvalError::Parameter {
                            op: "tile",
                            reason: e.0,
                        },
                    )?;
                    let refs: Vec<&Array3<f32>> = crops.iter().collect();
                    eval_op(&op, &layer.name, &refs, &self.weights)?
                }
                Mode::Fdsp => {
                    let mut refs: Vec<&Array3<f32>> = Vec::with_capacity(layer.inputs.len());
                    for src in &layer.inputs {
                        let t = match self.position(src) {
                            Some(j) => values[j].as_ref(),
                            None => Some(input),
                        };
                        refs.push(t.ok_or_else(|| missing(&layer.name))?);
                    }
                    eval_op(&layer.op, &layer.name, &refs, &self.weights)?
                }
            };
            values.push(Some(out));
        }
        values
            .pop()
            .flatten()
            .ok_or_else(|| missing("the segment's output"))
    }

    /// Checks that `seg`'s tiles fit this program: one region per layer, each inside its
    /// layer's output (halo) or no larger than it (FDSP); input and output regions inside
    /// the segment's input and output; and for halo tiles, that every layer's region only
    /// needs what its inputs' regions hold. After this, running any tile of `seg` cannot
    /// index outside a tensor.
    pub fn check_tiles(&self, seg: &Segment) -> Result<(), String> {
        if (seg.first, seg.end) != (self.first, self.end()) {
            return Err(format!(
                "the segment covers layers {}..{}, its program {}..{}",
                seg.first.0,
                seg.end.0,
                self.first.0,
                self.end().0
            ));
        }
        let within =
            |r: &Region, s: Shape| r.r0 <= r.r1 && r.c0 <= r.c1 && r.r1 <= s.h && r.c1 <= s.w;
        for (t, tile) in seg.tiles.iter().enumerate() {
            let fail = |what: String| Err(format!("tile {t}: {what}"));
            if tile.regions.len() != self.layers.len() {
                return fail(format!(
                    "{} regions for {} layers",
                    tile.regions.len(),
                    self.layers.len()
                ));
            }
            if !within(&tile.input, self.input) {
                return fail(format!(
                    "input region {:?} outside {}",
                    tile.input, self.input
                ));
            }
            let out = self.output_shape();
            if !within(&tile.output, out) {
                return fail(format!("output region {:?} outside {out}", tile.output));
            }
            for (n, layer) in self.layers.iter().enumerate() {
                let r = tile.regions[n];
                if !within(&r, layer.shape) {
                    return fail(format!(
                        "region {r:?} of layer `{}` outside {}",
                        layer.name, layer.shape
                    ));
                }
                if seg.mode == Mode::Fdsp {
                    // An independent image: each layer's size is what its operator makes of
                    // its inputs' sizes.
                    let sizes: Vec<Shape> = layer
                        .inputs
                        .iter()
                        .map(|src| match self.position(src) {
                            Some(j) => Shape::new(
                                self.layers[j].shape.c,
                                tile.regions[j].rows(),
                                tile.regions[j].cols(),
                            ),
                            None => Shape::new(self.input.c, tile.input.rows(), tile.input.cols()),
                        })
                        .collect();
                    let made = layer.op.output_shape(&sizes).ok();
                    if made != Some(Shape::new(layer.shape.c, r.rows(), r.cols())) {
                        return fail(format!(
                            "layer `{}` computes {made:?} on its tile, the plan says {r:?}",
                            layer.name
                        ));
                    }
                }
                if seg.mode == Mode::Halo && !r.is_empty() {
                    tile_op(&layer.op, &r, self.shape_of(&layer.inputs[0]))
                        .map_err(|e| format!("tile {t}, layer `{}`: {}", layer.name, e.0))?;
                    for src in &layer.inputs {
                        let need = input_region(&layer.op, &r, self.shape_of(src));
                        let have = match self.position(src) {
                            Some(j) => tile.regions[j],
                            None => tile.input,
                        };
                        let inside = need.is_empty()
                            || (have.r0 <= need.r0
                                && need.r1 <= have.r1
                                && have.c0 <= need.c0
                                && need.c1 <= have.c1);
                        if !inside {
                            return fail(format!(
                                "layer `{}` needs {need:?} of an input that holds {have:?}",
                                layer.name
                            ));
                        }
                    }
                }
            }
            let last = tile.regions.last().copied().unwrap_or(tile.input);
            let same = match seg.mode {
                Mode::Halo => last == tile.output,
                Mode::Fdsp => {
                    (last.rows(), last.cols()) == (tile.output.rows(), tile.output.cols())
                }
            };
            if !same {
                return fail(format!(
                    "the last layer computes {last:?}, the tile's output is {:?}",
                    tile.output
                ));
            }
        }
        Ok(())
    }
}

fn missing(what: &str) -> EvalError {
    EvalError::Parameter {
        op: "tile",
        reason: format!("{what}: an input region was not computed"),
    }
}

/// Runs `plan`'s segments one after another on the calling thread, each tile with
/// `tile_fn(program, segment, tile, tile input)`, stitching each segment's output; returns
/// the last segment's output (the input when there are no segments).
pub fn run_segments(
    plan: &Plan,
    segments: &[Program],
    input: &Array3<f32>,
    mut tile_fn: impl FnMut(&Program, &Segment, &Tile, &Array3<f32>) -> Result<Array3<f32>, EvalError>,
) -> Result<Array3<f32>, EvalError> {
    let mut current = input.clone();
    for (seg, prog) in plan.segments.iter().zip(segments) {
        let s = prog.output_shape();
        let mut out = Array3::<f32>::zeros((s.c, s.h, s.w));
        let (_, h, w) = current.dim();
        let full = Region {
            r0: 0,
            r1: h,
            c0: 0,
            c1: w,
        };
        for tile in &seg.tiles {
            let t = if tile.input == full {
                tile_fn(prog, seg, tile, &current)?
            } else {
                tile_fn(prog, seg, tile, &crop(&current, &full, &tile.input))?
            };
            region_mut(&mut out, &tile.output).assign(&t);
        }
        current = out;
    }
    Ok(current)
}

/// [`run_segments`], then the tail on the plain operators.
pub fn run_plan(
    plan: &Plan,
    segments: &[Program],
    tail: &Program,
    input: &Array3<f32>,
    tile_fn: impl FnMut(&Program, &Segment, &Tile, &Array3<f32>) -> Result<Array3<f32>, EvalError>,
) -> Result<Array3<f32>, EvalError> {
    let head = run_segments(plan, segments, input, tile_fn)?;
    tail.run(&head)
}
