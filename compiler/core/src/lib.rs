//! adcnn's shared vocabulary: what the compiler writes and the runtime reads.
//!
//! - [`ops`] — every layer kind with resolved parameters, shapes and shape inference;
//! - [`net`] — layers as the runtime sees them ([`net::Layer`], [`net::LayerId`],
//!   [`net::Source`]) and the network input;
//! - [`weights`] — weight tensors by name, and the seeded generator;
//! - [`eval`] — the plain implementation of every operator (the oracle's arithmetic);
//! - [`geometry`], [`plan`] — regions and tile geometry; plans, segments, tiles;
//! - [`rebalance`] — a plan's segments re-tiled for measured node speeds (the runtime's
//!   re-planning), on the planner's halo tracing and cost model;
//! - [`program`] — a segment's or the tail's layers with their weights, self-contained,
//!   and the plain tile runner;
//! - [`format`](mod@format) — `plan.bin`, sectioned so a node reads only its segments;
//! - [`input`] — input tensors from `.npy` files and images; [`report`] — top-k classes;
//!   [`boxes`] — regions of a one-channel probability map (text detectors), drawn into images;
//! - [`tensor`], [`npy`], [`cluster`], [`stdout`] — small shared parts.
//!
//! Architecture invariant: nothing here parses the DSL, plans, compiles or does network
//! I/O; the only file I/O is reading and writing `plan.bin` and `.npy` files and reading
//! input images.

pub mod boxes;
pub mod cluster;
pub mod eval;
pub mod format;
pub mod geometry;
pub mod input;
pub mod net;
pub mod npy;
pub mod ops;
pub mod plan;
pub mod program;
pub mod rebalance;
pub mod report;
pub mod stdout;
pub mod tensor;
pub mod weights;
