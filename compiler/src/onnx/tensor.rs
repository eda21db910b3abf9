//! Tensor data: ONNX `TensorProto` → checked dims and values; weights → safetensors.

use super::error::ImportError;
use super::proto::TensorProto;
use super::types::Tensor;

/// Largest tensor accepted, in elements.
pub const MAX_TENSOR_ELEMENTS: usize = 1 << 31;

/// ONNX element types (`TensorProto.DataType`).
pub const FLOAT: i32 = 1;
pub const INT32: i32 = 6;
pub const INT64: i32 = 7;

/// The name of an ONNX element type, for messages.
pub fn type_name(t: i32) -> String {
    let name = match t {
        0 => "undefined",
        1 => "float32",
        2 => "uint8",
        3 => "int8",
        4 => "uint16",
        5 => "int16",
        6 => "int32",
        7 => "int64",
        8 => "string",
        9 => "bool",
        10 => "float16",
        11 => "float64",
        12 => "uint32",
        13 => "uint64",
        16 => "bfloat16",
        _ => return format!("element type {t}"),
    };
    name.to_string()
}

/// A constant's values.
#[derive(Clone, Debug, PartialEq)]
pub enum Data {
    F32(Vec<f32>),
    I64(Vec<i64>),
}

/// A constant tensor (an initializer or a `Constant` node's value).
#[derive(Clone, Debug, PartialEq)]
pub struct Const {
    pub name: String,
    pub dims: Vec<usize>,
    pub data: Data,
}

impl Const {
    /// Number of values.
    pub fn len(&self) -> usize {
        match &self.data {
            Data::F32(v) => v.len(),
            Data::I64(v) => v.len(),
        }
    }

    /// The values as float32, or a type error.
    pub fn floats(&self) -> Result<&[f32], ImportError> {
        match &self.data {
            Data::F32(v) => Ok(v),
            Data::I64(_) => Err(ImportError::TensorType {
                tensor: self.name.clone(),
                expected: "float32",
                found: "int64".into(),
            }),
        }
    }

    /// The values as integers, or a type error.
    pub fn ints(&self) -> Result<&[i64], ImportError> {
        match &self.data {
            Data::I64(v) => Ok(v),
            Data::F32(_) => Err(ImportError::TensorType {
                tensor: self.name.clone(),
                expected: "int64",
                found: "float32".into(),
            }),
        }
    }
}

fn tensor_err(name: &str, reason: impl Into<String>) -> ImportError {
    ImportError::Tensor {
        tensor: name.to_string(),
        reason: reason.into(),
    }
}

/// Checked dims and element count of a tensor.
fn dims(t: &TensorProto, name: &str) -> Result<(Vec<usize>, usize), ImportError> {
    let mut n: usize = 1;
    let mut out = Vec::with_capacity(t.dims.len().min(8));
    if t.dims.len() > 8 {
        return Err(tensor_err(
            name,
            format!("{} dimensions (at most 8)", t.dims.len()),
        ));
    }
    for &d in &t.dims {
        let d =
            usize::try_from(d).map_err(|_| tensor_err(name, format!("negative dimension {d}")))?;
        n = n
            .checked_mul(d)
            .filter(|&n| n <= MAX_TENSOR_ELEMENTS)
            .ok_or_else(|| {
                tensor_err(
                    name,
                    format!("dims {:?} exceed {MAX_TENSOR_ELEMENTS} elements", t.dims),
                )
            })?;
        out.push(d);
    }
    Ok((out, n))
}

/// Decodes a tensor of float32, int32 or int64 values (int32 widens to int64).
pub fn decode(t: &TensorProto) -> Result<Const, ImportError> {
    let name = t.name().to_string();
    if t.data_location() == super::proto::tensor_proto::DataLocation::External
        || !t.external_data.is_empty()
    {
        return Err(ImportError::ExternalData { tensor: name });
    }
    if t.segment.is_some() {
        return Err(tensor_err(&name, "segmented tensors are not supported"));
    }
    let (dims, n) = dims(t, &name)?;
    let raw = t.raw_data();
    let length_err = |have: usize, unit: &str| {
        tensor_err(
            &name,
            format!("dims {dims:?} need {n} values, the data holds {have} {unit}"),
        )
    };
    let data = match t.data_type() {
        FLOAT => {
            if t.raw_data.is_some() {
                if raw.len() != n * 4 {
                    return Err(length_err(raw.len(), "bytes (4 per value)"));
                }
                Data::F32(
                    raw.chunks_exact(4)
                        .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
                        .collect(),
                )
            } else {
                if t.float_data.len() != n {
                    return Err(length_err(t.float_data.len(), "floats"));
                }
                Data::F32(t.float_data.clone())
            }
        }
        INT64 => {
            if t.raw_data.is_some() {
                if raw.len() != n * 8 {
                    return Err(length_err(raw.len(), "bytes (8 per value)"));
                }
                Data::I64(
                    raw.chunks_exact(8)
                        .map(|c| {
                            i64::from_le_bytes([c[0], c[1], c[2], c[3], c[4], c[5], c[6], c[7]])
                        })
                        .collect(),
                )
            } else {
                if t.int64_data.len() != n {
                    return Err(length_err(t.int64_data.len(), "int64 values"));
                }
                Data::I64(t.int64_data.clone())
            }
        }
        INT32 => {
            if t.raw_data.is_some() {
                if raw.len() != n * 4 {
                    return Err(length_err(raw.len(), "bytes (4 per value)"));
                }
                Data::I64(
                    raw.chunks_exact(4)
                        .map(|c| i64::from(i32::from_le_bytes([c[0], c[1], c[2], c[3]])))
                        .collect(),
                )
            } else {
                if t.int32_data.len() != n {
                    return Err(length_err(t.int32_data.len(), "int32 values"));
                }
                Data::I64(t.int32_data.iter().map(|&v| i64::from(v)).collect())
            }
        }
        other => {
            return Err(ImportError::TensorType {
                tensor: name,
                expected: "float32 or int64",
                found: type_name(other),
            });
        }
    };
    Ok(Const { name, dims, data })
}

/// Serialises the weights as a safetensors file.
pub fn safetensors(weights: &[Tensor]) -> Result<Vec<u8>, ImportError> {
    let bytes: Vec<Vec<u8>> = weights
        .iter()
        .map(|t| t.data.iter().flat_map(|v| v.to_le_bytes()).collect())
        .collect();
    let views = weights
        .iter()
        .zip(&bytes)
        .map(|(t, b)| {
            safetensors::tensor::TensorView::new(safetensors::Dtype::F32, t.dims.clone(), b)
                .map(|v| (t.name.clone(), v))
        })
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| ImportError::Write {
            reason: e.to_string(),
        })?;
    safetensors::serialize(views, None).map_err(|e| ImportError::Write {
        reason: e.to_string(),
    })
}
