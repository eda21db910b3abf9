//! The fuzz targets' regressions, run as ordinary tests: every file under
//! `tests/fuzz/regressions/<target>/` (inputs that once crashed, panicked or allocated
//! beyond the limits, and a few interesting seeds) goes through the very code the fuzz
//! target runs — its body in `tests/fuzz/targets/`, included here — and must not panic.
//! A decoder returning an error is fine.
//!
//! `cargo test --test fuzz_regressions -- --ignored write_seeds` writes the fuzzers' seed
//! corpus (`tests/fuzz/corpus/<target>/`, or `$FUZZ_CORPUS/<target>/`): the repository's
//! own files and freshly encoded messages, built plans, arrays and images.

#[path = "fuzz/targets/dsl.rs"]
mod dsl;
#[path = "fuzz/targets/grpc.rs"]
mod grpc;
#[path = "fuzz/targets/image.rs"]
mod image;
#[path = "fuzz/targets/npy.rs"]
mod npy;
#[path = "fuzz/targets/onnx.rs"]
mod onnx;
#[path = "fuzz/targets/plan.rs"]
mod plan;
#[path = "fuzz/targets/plan_edit.rs"]
mod plan_edit;
#[path = "fuzz/targets/wire.rs"]
mod wire;

use std::panic::{AssertUnwindSafe, catch_unwind};
use std::path::{Path, PathBuf};

use adcnn_tests::repo_root;

/// The files of `dir`, sorted by name (none if it does not exist).
fn files(dir: &Path) -> Vec<PathBuf> {
    let mut out: Vec<PathBuf> = std::fs::read_dir(dir)
        .map(|d| d.filter_map(|e| e.ok().map(|e| e.path())).collect())
        .unwrap_or_default();
    out.retain(|p| p.is_file());
    out.sort();
    out
}

/// Runs every regression input of `target` through `run`, naming those that panic.
fn replay(target: &str, run: fn(&[u8])) {
    let dir = repo_root().join("tests/fuzz/regressions").join(target);
    let inputs = files(&dir);
    assert!(!inputs.is_empty(), "{}: no inputs", dir.display());
    let failed: Vec<String> = inputs
        .iter()
        .filter(|path| {
            let bytes = std::fs::read(path).expect("readable");
            catch_unwind(AssertUnwindSafe(|| run(&bytes))).is_err()
        })
        .map(|p| p.display().to_string())
        .collect();
    assert!(
        failed.is_empty(),
        "{target}: these inputs panic: {failed:#?}"
    );
}

#[test]
fn dsl_regressions() {
    replay("dsl", dsl::run);
}

#[test]
fn onnx_regressions() {
    replay("onnx", onnx::run);
}

#[test]
fn plan_regressions() {
    replay("plan", plan::run);
}

#[test]
fn plan_edit_regressions() {
    replay("plan_edit", plan_edit::run);
}

#[test]
fn wire_regressions() {
    replay("wire", wire::run);
}

#[test]
fn grpc_regressions() {
    replay("grpc", grpc::run);
}

#[test]
fn npy_regressions() {
    replay("npy", npy::run);
}

#[test]
fn image_regressions() {
    replay("image", image::run);
}

/// The plan-edit target's bases are valid and reassemble to plans that decode: the target
/// really reaches the checks behind the checksums.
#[test]
fn plan_edit_bases_decode_when_unedited() {
    for (b, sections) in plan_edit::bases().iter().enumerate() {
        for k in 0..sections.len() {
            let bytes = plan_edit::edited(&[b as u8, k as u8, 0]).expect("an edit");
            let p = adcnn_core::format::decode(&bytes).expect("an unedited plan decodes");
            plan::run_decoded(&p);
        }
    }
}

mod seeds {
    use std::path::PathBuf;

    use adcnn_compiler::build::build;
    use adcnn_compiler::plan::{Options, Strategy};
    use adcnn_core::npy::write_f32;
    use adcnn_core::plan::Compression;
    use adcnn_kernels::wire::{self, WireTile};
    use adcnn_runtime::net::codec::{Coder, encode_f32, encode_input, encode_tile};
    use adcnn_runtime::net::proto;
    use adcnn_runtime::transport::TileInput;
    use adcnn_tests::repo_root;
    use ndarray::{Array3, ArrayD, IxDyn};
    use prost::Message;

    use super::{files, plan_edit};

    struct Corpus(PathBuf);

    impl Corpus {
        fn put(&self, target: &str, name: &str, bytes: &[u8]) {
            let dir = self.0.join(target);
            std::fs::create_dir_all(&dir).expect("corpus folder");
            std::fs::write(dir.join(name), bytes).expect("seed written");
        }

        fn copy(&self, target: &str, from: &str, ext: &str) {
            for path in files(&repo_root().join(from)) {
                if path.extension().is_some_and(|e| e == ext) {
                    let name = path.file_name().expect("a name").to_string_lossy();
                    self.put(target, &name, &std::fs::read(&path).expect("readable"));
                }
            }
        }
    }

    fn sample(c: usize, h: usize, w: usize) -> Array3<f32> {
        Array3::from_shape_fn((c, h, w), |(c, y, x)| ((c * 31 + y * 7 + x) as f32).sin())
    }

    fn plan(name: &str, strategy: Strategy, compression: Compression) -> Vec<u8> {
        let opts = Options {
            strategy,
            compression,
            ..Options::default()
        };
        let net = repo_root().join(format!("tests/golden/cases/{name}.yaml"));
        build(&net, None, &opts, 3).expect("builds").bytes
    }

    fn image(img: ::image::DynamicImage, format: ::image::ImageFormat) -> Vec<u8> {
        let mut out = std::io::Cursor::new(Vec::new());
        img.write_to(&mut out, format).expect("encodes");
        out.into_inner()
    }

    #[test]
    #[ignore = "writes the fuzz corpus; run by tests/fuzz/run.sh"]
    fn write_seeds() {
        let root = std::env::var_os("FUZZ_CORPUS")
            .map_or_else(|| repo_root().join("tests/fuzz/corpus"), PathBuf::from);
        let c = Corpus(root);

        // The DSL: examples (on 32×32 inputs: full-size ones take seconds to check, most
        // of it generating their random weights), invalid fixtures and golden cases.
        for path in files(&repo_root().join("dsl-examples")) {
            let name = path.file_name().expect("a name").to_string_lossy();
            let text = std::fs::read_to_string(&path).expect("readable");
            let small = text
                .replace("[3, 224, 224]", "[3, 32, 32]")
                .replace("[3, 416, 416]", "[3, 32, 32]");
            c.put("dsl", &name, small.as_bytes());
        }
        c.copy("dsl", "tests/fixtures/invalid", "yaml");
        c.copy("dsl", "tests/golden/cases", "yaml");

        c.copy("onnx", "tests/onnx/cases", "onnx");

        // Plans: small golden networks under every strategy and compression.
        for name in [
            "conv_k3_p1",
            "resnet_block",
            "concat2",
            "bn",
            "avgpool_ceil_pad",
        ] {
            for (s, strategy) in [
                ("halo", Strategy::Halo),
                ("fdsp", Strategy::Fdsp),
                ("layerwise", Strategy::Layerwise),
                ("single", Strategy::Single),
            ] {
                for (q, compression) in [("none", Compression::None), ("q4", Compression::Q4)] {
                    c.put(
                        "plan",
                        &format!("{name}.{s}.{q}.plan"),
                        &plan(name, strategy, compression),
                    );
                }
            }
        }
        // Plan edits: every section of every base, whole (to be mutated) and unedited.
        for (b, sections) in plan_edit::bases().iter().enumerate() {
            for (k, (_, _, bytes)) in sections.iter().enumerate() {
                let mut whole = vec![b as u8, k as u8, 1];
                whole.extend_from_slice(bytes);
                c.put("plan_edit", &format!("base{b}.section{k}.whole"), &whole);
                c.put(
                    "plan_edit",
                    &format!("base{b}.section{k}.xor"),
                    &[b as u8, k as u8, 0],
                );
            }
        }

        // Tiles on the wire, and the gRPC messages around them.
        let shapes = [(1, 1, 1), (3, 5, 7), (2, 3, 3), (4, 8, 8)];
        for (c_, h, w) in shapes {
            let a = sample(c_, h, w);
            for how in [Compression::Q8, Compression::Q4] {
                let (t, _) = wire::encode(a.clone(), how);
                if let WireTile::Quantised(q) = &t {
                    c.put("wire", &format!("{c_}x{h}x{w}.{how:?}"), &q.to_bytes());
                }
                for coder in [Coder::None, Coder::Zstd, Coder::Lz4] {
                    let tensor = encode_tile(&t, coder);
                    let name = format!("{c_}x{h}x{w}.{how:?}.{}", coder.name());
                    let mut msg = vec![0u8];
                    msg.extend(tensor.encode_to_vec());
                    c.put("grpc", &format!("tensor.{name}"), &msg);
                    let result = proto::FromWorker {
                        message: Some(proto::from_worker::Message::Result(proto::TileResult {
                            frame: 7,
                            segment: 1,
                            tile: 2,
                            output: Some(tensor),
                            ..Default::default()
                        })),
                    };
                    let mut msg = vec![2u8];
                    msg.extend(result.encode_to_vec());
                    c.put("grpc", &format!("from_worker.{name}"), &msg);
                }
            }
            for coder in [Coder::None, Coder::Zstd, Coder::Lz4] {
                let pixels = a.mapv(|v| (v * 100.0 + 128.0) as u8);
                for (kind, input) in [
                    ("values", TileInput::Values(a.clone())),
                    ("pixels", TileInput::Pixels(pixels)),
                ] {
                    let job = proto::ToWorker {
                        message: Some(proto::to_worker::Message::Job(proto::TileJob {
                            layout: 0,
                            frame: 1,
                            segment: 0,
                            tile: 3,
                            input: Some(encode_input(&input, coder)),
                        })),
                    };
                    let mut msg = vec![1u8];
                    msg.extend(job.encode_to_vec());
                    let name = format!("{c_}x{h}x{w}.{kind}.{}", coder.name());
                    c.put("grpc", &format!("to_worker.{name}"), &msg);
                }
                let mut msg = vec![0u8];
                msg.extend(encode_f32(&a, coder).encode_to_vec());
                c.put(
                    "grpc",
                    &format!("tensor.{c_}x{h}x{w}.f32.{}", coder.name()),
                    &msg,
                );
            }
        }
        let section = proto::SectionRef {
            kind: 1,
            id: 0,
            hash: 0x1234_5678_9abc_def0,
            length: 100,
        };
        let chunk = proto::SectionChunk {
            section: Some(section),
            offset: 40,
            data: vec![1u8; 60].into(),
        };
        c.put(
            "grpc",
            "section_chunk",
            &[&[3u8][..], &chunk.encode_to_vec()].concat(),
        );
        let hello = proto::HelloRequest {
            protocol: 1,
            coordinator_nonce: vec![9u8; 32].into(),
        };
        c.put(
            "grpc",
            "hello",
            &[&[4u8][..], &hello.encode_to_vec()].concat(),
        );
        let open = proto::OpenRequest {
            coordinator_proof: vec![5u8; 32].into(),
            plan_hash: 42,
            node: 1,
            node_name: "b".into(),
            sections: vec![section, section],
        };
        c.put(
            "grpc",
            "open",
            &[&[5u8][..], &open.encode_to_vec()].concat(),
        );

        // .npy: arrays of every rank up to four, both dtypes' headers, a stream of two.
        let arrays: Vec<ArrayD<f32>> = vec![
            ArrayD::from_shape_fn(IxDyn(&[5]), |i| i[0] as f32),
            ArrayD::from_shape_fn(IxDyn(&[2, 3]), |i| (i[0] * 3 + i[1]) as f32),
            sample(3, 4, 5).into_dyn(),
            sample(3, 2, 2)
                .into_dyn()
                .into_shape_with_order(IxDyn(&[1, 3, 2, 2]))
                .expect("reshapes"),
            ArrayD::zeros(IxDyn(&[])),
        ];
        for (i, a) in arrays.iter().enumerate() {
            c.put("npy", &format!("array{i}.npy"), &write_f32(a));
        }
        let stream = [write_f32(&arrays[2]), write_f32(&arrays[3])].concat();
        c.put("npy", "stream2.npy", &stream);
        let f64_header = String::from_utf8_lossy(&write_f32(&arrays[1]))
            .replace("<f4", "<f8")
            .into_bytes();
        let mut f64_file = f64_header[..f64_header.len() - 24].to_vec();
        for v in 0..6 {
            f64_file.extend_from_slice(&f64::from(v).to_le_bytes());
        }
        c.put("npy", "f64.npy", &f64_file);

        // Images: small PNGs and JPEGs, grey, RGB and RGBA, of both lengths' parities.
        for (w, h) in [(8u32, 8u32), (40, 30), (5, 60), (33, 17)] {
            let rgb = ::image::RgbImage::from_fn(w, h, |x, y| {
                ::image::Rgb([(x * 7) as u8, (y * 5) as u8, ((x + y) * 3) as u8])
            });
            let grey = ::image::DynamicImage::ImageRgb8(rgb.clone()).to_luma8();
            let rgba = ::image::DynamicImage::ImageRgb8(rgb.clone()).to_rgba8();
            for (kind, img) in [
                ("rgb", ::image::DynamicImage::ImageRgb8(rgb)),
                ("grey", ::image::DynamicImage::ImageLuma8(grey)),
                ("rgba", ::image::DynamicImage::ImageRgba8(rgba)),
            ] {
                c.put(
                    "image",
                    &format!("{w}x{h}.{kind}.png"),
                    &image(img.clone(), ::image::ImageFormat::Png),
                );
                if kind != "rgba" {
                    c.put(
                        "image",
                        &format!("{w}x{h}.{kind}.jpg"),
                        &image(img, ::image::ImageFormat::Jpeg),
                    );
                }
            }
        }
    }
}
