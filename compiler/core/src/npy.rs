//! Reading and writing NumPy `.npy` files of `float32` (reading also accepts `float64`).
//!
//! Format (<https://numpy.org/doc/stable/reference/generated/numpy.lib.format.html>): the magic
//! `\x93NUMPY`, a major and minor version byte, the header length (`u16` for version 1, `u32`
//! for versions 2 and 3, little-endian), the header — a Python dict literal such as
//! `{'descr': '<f4', 'fortran_order': False, 'shape': (3, 4), }` padded with spaces and ending
//! in a newline — then the raw data. Only little-endian data in C order is supported.
//!
//! Every size is checked before anything is allocated: the header may be at most
//! [`MAX_HEADER_LEN`] bytes, the element count must not overflow, and the data must be exactly
//! as long as the shape says, so truncated or padded files are errors rather than panics.

use std::path::{Path, PathBuf};

use ndarray::{ArrayD, IxDyn};

/// The largest header accepted, in bytes.
pub const MAX_HEADER_LEN: usize = 64 * 1024;

const MAGIC: &[u8] = b"\x93NUMPY";

/// Why a `.npy` file could not be read or written.
#[derive(Debug, thiserror::Error)]
pub enum NpyError {
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("not a .npy file: missing the \\x93NUMPY magic")]
    BadMagic,
    #[error("unsupported .npy format version {major}.{minor} (supported: 1.0, 2.0, 3.0)")]
    UnsupportedVersion { major: u8, minor: u8 },
    #[error("truncated .npy file: {0}")]
    Truncated(String),
    #[error("malformed .npy header: {0}")]
    Header(String),
    #[error("unsupported dtype `{0}` (supported: little-endian float32 `<f4` and float64 `<f8`)")]
    UnsupportedDtype(String),
    #[error("Fortran-order .npy arrays are not supported (save with C order)")]
    FortranOrder,
    #[error("array shape {shape:?} is too large")]
    TooLarge { shape: Vec<usize> },
    #[error("array shape {shape:?} needs {expected} data bytes, the file has {found}")]
    DataLength {
        shape: Vec<usize>,
        expected: usize,
        found: usize,
    },
}

/// Element type of the stored data.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Dtype {
    F32,
    F64,
}

impl Dtype {
    fn size(self) -> usize {
        match self {
            Dtype::F32 => 4,
            Dtype::F64 => 8,
        }
    }
}

/// Parses a `.npy` file's bytes into an array of `f32` (`float64` data is converted).
pub fn read_f32(bytes: &[u8]) -> Result<ArrayD<f32>, NpyError> {
    if bytes.len() < MAGIC.len() || &bytes[..MAGIC.len()] != MAGIC {
        return Err(NpyError::BadMagic);
    }
    let rest = &bytes[MAGIC.len()..];
    let [major, minor, rest @ ..] = rest else {
        return Err(NpyError::Truncated("no version bytes".into()));
    };
    let (header_len, rest) = match (major, minor) {
        (1, 0) => match rest {
            [a, b, rest @ ..] => (usize::from(u16::from_le_bytes([*a, *b])), rest),
            _ => return Err(NpyError::Truncated("no header length".into())),
        },
        (2 | 3, 0) => match rest {
            [a, b, c, d, rest @ ..] => (u32::from_le_bytes([*a, *b, *c, *d]) as usize, rest),
            _ => return Err(NpyError::Truncated("no header length".into())),
        },
        _ => {
            return Err(NpyError::UnsupportedVersion {
                major: *major,
                minor: *minor,
            });
        }
    };
    if header_len > MAX_HEADER_LEN {
        return Err(NpyError::Header(format!(
            "header of {header_len} bytes exceeds the {MAX_HEADER_LEN}-byte limit"
        )));
    }
    if rest.len() < header_len {
        return Err(NpyError::Truncated(format!(
            "header needs {header_len} bytes, {} left",
            rest.len()
        )));
    }
    let (header, data) = rest.split_at(header_len);
    let header = match major {
        // Versions 1 and 2 are latin-1; everything this parser accepts is ASCII.
        3 => std::str::from_utf8(header)
            .map_err(|_| NpyError::Header("header is not UTF-8".into()))?,
        _ if header.is_ascii() => std::str::from_utf8(header)
            .map_err(|_| NpyError::Header("header is not ASCII".into()))?,
        _ => return Err(NpyError::Header("header is not ASCII".into())),
    };
    let Header { dtype, shape } = parse_header(header)?;
    let count = shape
        .iter()
        .try_fold(1usize, |n, &d| n.checked_mul(d))
        .ok_or_else(|| NpyError::TooLarge {
            shape: shape.clone(),
        })?;
    let expected = count
        .checked_mul(dtype.size())
        .ok_or_else(|| NpyError::TooLarge {
            shape: shape.clone(),
        })?;
    if data.len() != expected {
        return Err(NpyError::DataLength {
            shape,
            expected,
            found: data.len(),
        });
    }
    let values: Vec<f32> = match dtype {
        Dtype::F32 => data
            .chunks_exact(4)
            .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
            .collect(),
        Dtype::F64 => data
            .chunks_exact(8)
            .map(|c| f64::from_le_bytes([c[0], c[1], c[2], c[3], c[4], c[5], c[6], c[7]]) as f32)
            .collect(),
    };
    ArrayD::from_shape_vec(IxDyn(&shape), values)
        .map_err(|e| NpyError::Header(format!("shape {shape:?}: {e}")))
}

/// Reads the next `.npy` array of a stream of them (`… | adcnn-run plan.bin --input -`):
/// `None` at the end of the stream, an error for a truncated one or an array of more than
/// `max_elements` values (checked before its data is read).
pub fn read_f32_from(
    r: &mut impl std::io::Read,
    max_elements: usize,
) -> Result<Option<ArrayD<f32>>, NpyError> {
    let io = |e: std::io::Error| NpyError::Io {
        path: PathBuf::from("-"),
        source: e,
    };
    let mut head = vec![0u8; MAGIC.len() + 2];
    let mut got = 0;
    while got < head.len() {
        match r.read(&mut head[got..]) {
            Ok(0) if got == 0 => return Ok(None),
            Ok(0) => {
                return Err(NpyError::Truncated(
                    "the stream ends inside a header".into(),
                ));
            }
            Ok(n) => got += n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => return Err(io(e)),
        }
    }
    if &head[..MAGIC.len()] != MAGIC {
        return Err(NpyError::BadMagic);
    }
    let len_bytes = match head[MAGIC.len()] {
        1 => 2,
        2 | 3 => 4,
        major => {
            return Err(NpyError::UnsupportedVersion {
                major,
                minor: head[MAGIC.len() + 1],
            });
        }
    };
    let mut len = vec![0u8; len_bytes];
    r.read_exact(&mut len).map_err(io)?;
    let header_len = len
        .iter()
        .rev()
        .fold(0usize, |n, b| n << 8 | usize::from(*b));
    if header_len > MAX_HEADER_LEN {
        return Err(NpyError::Header(format!(
            "header of {header_len} bytes exceeds the {MAX_HEADER_LEN}-byte limit"
        )));
    }
    let mut header = vec![0u8; header_len];
    r.read_exact(&mut header).map_err(io)?;
    let text =
        std::str::from_utf8(&header).map_err(|_| NpyError::Header("header is not UTF-8".into()))?;
    let Header { dtype, shape } = parse_header(text)?;
    let count = shape
        .iter()
        .try_fold(1usize, |n, &d| n.checked_mul(d))
        .filter(|&n| n <= max_elements)
        .ok_or_else(|| NpyError::TooLarge {
            shape: shape.clone(),
        })?;
    let mut bytes = head;
    bytes.extend_from_slice(&len);
    bytes.extend_from_slice(&header);
    let start = bytes.len();
    bytes.resize(start + count * dtype.size(), 0);
    r.read_exact(&mut bytes[start..]).map_err(io)?;
    read_f32(&bytes).map(Some)
}

/// Serialises an array as a version 1.0 `.npy` file of little-endian `float32` in C order
/// (version 2.0 if the header is too long for version 1, which needs a very high rank).
pub fn write_f32(array: &ArrayD<f32>) -> Vec<u8> {
    let shape = match array.shape() {
        [d] => format!("({d},)"),
        dims => format!(
            "({})",
            dims.iter()
                .map(usize::to_string)
                .collect::<Vec<_>>()
                .join(", ")
        ),
    };
    let mut header = format!("{{'descr': '<f4', 'fortran_order': False, 'shape': {shape}, }}");
    // Pad with spaces so that the data starts at a multiple of 64 bytes; end with a newline.
    let (version, len_bytes) = if MAGIC.len() + 2 + 2 + header.len() < 65_000 {
        (1u8, 2)
    } else {
        (2u8, 4)
    };
    let prefix = MAGIC.len() + 2 + len_bytes;
    let total = (prefix + header.len() + 1).div_ceil(64) * 64;
    header.extend(std::iter::repeat_n(' ', total - prefix - header.len() - 1));
    header.push('\n');

    let mut out = Vec::with_capacity(total + 4 * array.len());
    out.extend_from_slice(MAGIC);
    out.extend_from_slice(&[version, 0]);
    if version == 1 {
        out.extend_from_slice(&(header.len() as u16).to_le_bytes());
    } else {
        out.extend_from_slice(&(header.len() as u32).to_le_bytes());
    }
    out.extend_from_slice(header.as_bytes());
    for v in array.iter() {
        out.extend_from_slice(&v.to_le_bytes());
    }
    out
}

/// Reads a `.npy` file (see [`read_f32`]).
pub fn read_f32_file(path: impl AsRef<Path>) -> Result<ArrayD<f32>, NpyError> {
    let path = path.as_ref();
    let bytes = std::fs::read(path).map_err(|source| NpyError::Io {
        path: path.to_path_buf(),
        source,
    })?;
    read_f32(&bytes)
}

/// Writes a `.npy` file (see [`write_f32`]).
pub fn write_f32_file(path: impl AsRef<Path>, array: &ArrayD<f32>) -> Result<(), NpyError> {
    let path = path.as_ref();
    write_atomically(path, &write_f32(array)).map_err(|source| NpyError::Io {
        path: path.to_path_buf(),
        source,
    })
}

/// Writes `bytes` to `path` through a temporary file in the same folder, renamed into place
/// once complete: a reader never sees half a file, and a failed write leaves none.
pub fn write_atomically(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    let name = path
        .file_name()
        .map_or_else(|| std::ffi::OsString::from("out"), |n| n.to_os_string());
    let mut tmp_name = std::ffi::OsString::from(".");
    tmp_name.push(&name);
    tmp_name.push(format!(".{}.tmp", std::process::id()));
    let tmp = path.with_file_name(tmp_name);
    let result = std::fs::write(&tmp, bytes).and_then(|()| std::fs::rename(&tmp, path));
    if result.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    result
}

/// What the header says.
#[derive(Debug)]
struct Header {
    dtype: Dtype,
    shape: Vec<usize>,
}

/// A header dict value.
#[derive(Debug)]
enum Value {
    Str(String),
    Bool(bool),
    Tuple(Vec<usize>),
}

/// Parses the header dict: exactly the keys `descr`, `fortran_order` and `shape`.
fn parse_header(text: &str) -> Result<Header, NpyError> {
    let mut p = Parser {
        s: text.as_bytes(),
        i: 0,
    };
    let items = p.dict()?;
    p.skip_ws();
    if p.i != p.s.len() {
        return Err(NpyError::Header(format!(
            "unexpected text after the dict at byte {}",
            p.i
        )));
    }
    let (mut descr, mut fortran, mut shape) = (None, None, None);
    for (key, value) in items {
        let slot_taken = match (key.as_str(), value) {
            ("descr", Value::Str(s)) => descr.replace(s).is_some(),
            ("fortran_order", Value::Bool(b)) => fortran.replace(b).is_some(),
            ("shape", Value::Tuple(t)) => shape.replace(t).is_some(),
            ("descr" | "fortran_order" | "shape", v) => {
                return Err(NpyError::Header(format!(
                    "key `{key}` has an unexpected value {v:?}"
                )));
            }
            _ => return Err(NpyError::Header(format!("unexpected key `{key}`"))),
        };
        if slot_taken {
            return Err(NpyError::Header(format!("duplicate key `{key}`")));
        }
    }
    let (Some(descr), Some(fortran), Some(shape)) = (descr, fortran, shape) else {
        return Err(NpyError::Header(
            "the header needs the keys `descr`, `fortran_order` and `shape`".into(),
        ));
    };
    let dtype = match descr.as_str() {
        "<f4" => Dtype::F32,
        "<f8" => Dtype::F64,
        _ => return Err(NpyError::UnsupportedDtype(descr)),
    };
    if fortran {
        return Err(NpyError::FortranOrder);
    }
    Ok(Header { dtype, shape })
}

/// A tiny recursive-descent parser for the subset of Python literals `.npy` headers use.
struct Parser<'a> {
    s: &'a [u8],
    i: usize,
}

impl Parser<'_> {
    fn err<T>(&self, what: &str) -> Result<T, NpyError> {
        Err(NpyError::Header(format!(
            "expected {what} at byte {}",
            self.i
        )))
    }

    fn skip_ws(&mut self) {
        while self.s.get(self.i).is_some_and(u8::is_ascii_whitespace) {
            self.i += 1;
        }
    }

    /// Skips whitespace, then consumes `c` if it is next.
    fn eat(&mut self, c: u8) -> bool {
        self.skip_ws();
        if self.s.get(self.i) == Some(&c) {
            self.i += 1;
            true
        } else {
            false
        }
    }

    fn dict(&mut self) -> Result<Vec<(String, Value)>, NpyError> {
        if !self.eat(b'{') {
            return self.err("`{`");
        }
        let mut items = Vec::new();
        loop {
            if self.eat(b'}') {
                return Ok(items);
            }
            let key = self.string()?;
            if !self.eat(b':') {
                return self.err("`:`");
            }
            let value = self.value()?;
            items.push((key, value));
            if !self.eat(b',') {
                if self.eat(b'}') {
                    return Ok(items);
                }
                return self.err("`,` or `}`");
            }
        }
    }

    fn string(&mut self) -> Result<String, NpyError> {
        self.skip_ws();
        let quote = match self.s.get(self.i) {
            Some(&q @ (b'\'' | b'"')) => q,
            _ => return self.err("a quoted string"),
        };
        let start = self.i + 1;
        let Some(len) = self.s[start..].iter().position(|&c| c == quote) else {
            return self.err("a closing quote");
        };
        self.i = start + len + 1;
        Ok(String::from_utf8_lossy(&self.s[start..start + len]).into_owned())
    }

    fn value(&mut self) -> Result<Value, NpyError> {
        self.skip_ws();
        let rest = &self.s[self.i..];
        if rest.starts_with(b"True") {
            self.i += 4;
            Ok(Value::Bool(true))
        } else if rest.starts_with(b"False") {
            self.i += 5;
            Ok(Value::Bool(false))
        } else if rest.starts_with(b"(") {
            self.tuple().map(Value::Tuple)
        } else {
            self.string().map(Value::Str)
        }
    }

    fn tuple(&mut self) -> Result<Vec<usize>, NpyError> {
        if !self.eat(b'(') {
            return self.err("`(`");
        }
        let mut dims = Vec::new();
        loop {
            if self.eat(b')') {
                return Ok(dims);
            }
            dims.push(self.int()?);
            if !self.eat(b',') {
                if self.eat(b')') {
                    return Ok(dims);
                }
                return self.err("`,` or `)`");
            }
        }
    }

    /// A non-negative decimal integer (Python 2 headers may add an `L` suffix).
    fn int(&mut self) -> Result<usize, NpyError> {
        self.skip_ws();
        let start = self.i;
        let mut n: usize = 0;
        while let Some(&c) = self.s.get(self.i).filter(|c| c.is_ascii_digit()) {
            n = n
                .checked_mul(10)
                .and_then(|n| n.checked_add(usize::from(c - b'0')))
                .ok_or_else(|| NpyError::Header(format!("dimension too large at byte {start}")))?;
            self.i += 1;
        }
        if self.i == start {
            return self.err("a dimension");
        }
        if self.s.get(self.i) == Some(&b'L') {
            self.i += 1;
        }
        Ok(n)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    type TestResult = Result<(), Box<dyn std::error::Error>>;

    /// A `.npy` file with a hand-written header (padded as numpy does) and raw data.
    fn npy(version: u8, header: &str, data: &[u8]) -> Vec<u8> {
        let mut out = MAGIC.to_vec();
        out.extend_from_slice(&[version, 0]);
        let h = format!("{header}\n");
        if version == 1 {
            out.extend_from_slice(&(h.len() as u16).to_le_bytes());
        } else {
            out.extend_from_slice(&(h.len() as u32).to_le_bytes());
        }
        out.extend_from_slice(h.as_bytes());
        out.extend_from_slice(data);
        out
    }

    fn f32_bytes(values: &[f32]) -> Vec<u8> {
        values.iter().flat_map(|v| v.to_le_bytes()).collect()
    }

    #[test]
    fn round_trip() -> TestResult {
        for shape in [
            vec![],
            vec![5],
            vec![2, 3],
            vec![3, 4, 5],
            vec![0, 3],
            vec![1, 2, 1, 3],
        ] {
            let n: usize = shape.iter().product();
            let a = ArrayD::from_shape_vec(
                IxDyn(&shape),
                (0..n).map(|i| i as f32 * 0.5 - 1.0).collect(),
            )?;
            let bytes = write_f32(&a);
            assert_eq!((bytes.len() - 4 * n) % 64, 0, "data is 64-byte aligned");
            assert_eq!(read_f32(&bytes)?, a);
        }
        Ok(())
    }

    #[test]
    fn round_trip_non_contiguous_view_is_row_major() -> TestResult {
        let a = ArrayD::from_shape_vec(IxDyn(&[2, 3]), vec![1., 2., 3., 4., 5., 6.])?;
        let t = a.t().to_owned();
        assert_eq!(read_f32(&write_f32(&t))?, t);
        Ok(())
    }

    #[test]
    fn file_round_trip() -> TestResult {
        let path = std::env::temp_dir().join(format!("adcnn-npy-test-{}.npy", std::process::id()));
        let a = ArrayD::from_shape_vec(IxDyn(&[2, 2]), vec![1., -2., 3.5, 1e-30])?;
        write_f32_file(&path, &a)?;
        let b = read_f32_file(&path);
        std::fs::remove_file(&path)?;
        assert_eq!(b?, a);
        assert!(matches!(read_f32_file(&path), Err(NpyError::Io { .. })));
        Ok(())
    }

    #[test]
    fn reads_numpy_written_headers() -> TestResult {
        // Exactly what numpy 1.x/2.x writes for np.arange(6, dtype='<f4').reshape(2, 3).
        let data = f32_bytes(&[0., 1., 2., 3., 4., 5.]);
        let header = "{'descr': '<f4', 'fortran_order': False, 'shape': (2, 3), }";
        let padded = format!("{header:<117}");
        let a = read_f32(&npy(1, &padded, &data))?;
        assert_eq!(a.shape(), [2, 3]);
        assert_eq!(a[[1, 2]], 5.0);
        // Versions 2 and 3, double quotes, no trailing comma, Python 2 `L` suffixes.
        let a = read_f32(&npy(
            2,
            r#"{"shape": (2L, 3L), "fortran_order": False, "descr": "<f4"}"#,
            &data,
        ))?;
        assert_eq!(a.shape(), [2, 3]);
        let a = read_f32(&npy(
            3,
            "{'descr':'<f4','fortran_order':False,'shape':(6,)}",
            &data,
        ))?;
        assert_eq!(a.shape(), [6]);
        Ok(())
    }

    #[test]
    fn converts_f64() -> TestResult {
        let data: Vec<u8> = [1.5f64, -2.25, 1e300]
            .iter()
            .flat_map(|v| v.to_le_bytes())
            .collect();
        let a = read_f32(&npy(
            1,
            "{'descr': '<f8', 'fortran_order': False, 'shape': (3,), }",
            &data,
        ))?;
        assert_eq!(a.as_slice(), Some(&[1.5f32, -2.25, f32::INFINITY][..]));
        Ok(())
    }

    #[test]
    fn rejects_truncated_and_padded_data() {
        let good = write_f32(&ArrayD::from_elem(IxDyn(&[3, 3]), 1.0f32));
        for cut in 1..good.len() {
            assert!(
                read_f32(&good[..cut]).is_err(),
                "a file cut to {cut} bytes was accepted"
            );
        }
        let mut long = good.clone();
        long.push(0);
        assert!(matches!(
            read_f32(&long),
            Err(NpyError::DataLength {
                expected: 36,
                found: 37,
                ..
            })
        ));
        assert!(matches!(
            read_f32(&good[..good.len() - 1]),
            Err(NpyError::DataLength { .. })
        ));
    }

    #[test]
    fn rejects_bad_magic_and_version() {
        assert!(matches!(read_f32(b""), Err(NpyError::BadMagic)));
        assert!(matches!(
            read_f32(b"\x93NUMPZ\x01\x00"),
            Err(NpyError::BadMagic)
        ));
        assert!(matches!(
            read_f32(b"PK\x03\x04 zip file"),
            Err(NpyError::BadMagic)
        ));
        let mut v4 = write_f32(&ArrayD::zeros(IxDyn(&[1])));
        v4[6] = 4;
        assert!(matches!(
            read_f32(&v4),
            Err(NpyError::UnsupportedVersion { major: 4, minor: 0 })
        ));
    }

    #[test]
    fn rejects_fortran_order_and_other_dtypes() {
        let data = f32_bytes(&[1., 2.]);
        let f = npy(
            1,
            "{'descr': '<f4', 'fortran_order': True, 'shape': (2,), }",
            &data,
        );
        assert!(matches!(read_f32(&f), Err(NpyError::FortranOrder)));
        for descr in [">f4", "<i4", "<f2", "|u1", "<c8"] {
            let f = npy(
                1,
                &format!("{{'descr': '{descr}', 'fortran_order': False, 'shape': (2,), }}"),
                &data,
            );
            assert!(matches!(read_f32(&f), Err(NpyError::UnsupportedDtype(d)) if d == descr));
        }
    }

    #[test]
    fn rejects_overflowing_and_huge_shapes() {
        let big = usize::MAX / 2 + 1;
        let f = npy(
            1,
            &format!("{{'descr': '<f4', 'fortran_order': False, 'shape': ({big}, 4), }}"),
            &[],
        );
        assert!(matches!(read_f32(&f), Err(NpyError::TooLarge { .. })));
        // Element count fits, byte count does not.
        let f = npy(
            1,
            &format!("{{'descr': '<f4', 'fortran_order': False, 'shape': ({big},), }}"),
            &[],
        );
        assert!(matches!(read_f32(&f), Err(NpyError::TooLarge { .. })));
        let f = npy(
            1,
            "{'descr': '<f4', 'fortran_order': False, 'shape': (99999999999999999999999,), }",
            &[],
        );
        assert!(matches!(read_f32(&f), Err(NpyError::Header(_))));
        // A large but representable shape with no data: an error, not an allocation.
        let f = npy(
            1,
            "{'descr': '<f4', 'fortran_order': False, 'shape': (100000, 100000), }",
            &[],
        );
        assert!(matches!(read_f32(&f), Err(NpyError::DataLength { .. })));
    }

    #[test]
    fn rejects_malformed_headers() {
        let data = f32_bytes(&[1.]);
        for header in [
            "",
            "{",
            "{'descr': '<f4', 'fortran_order': False}",
            "{'descr': '<f4', 'fortran_order': False, 'shape': (1,), 'extra': 1}",
            "{'descr': '<f4', 'descr': '<f4', 'fortran_order': False, 'shape': (1,)}",
            "{'descr': '<f4', 'fortran_order': 0, 'shape': (1,)}",
            "{'descr': '<f4', 'fortran_order': False, 'shape': (-1,)}",
            "{'descr': '<f4', 'fortran_order': False, 'shape': (1,)} trailing",
            "{'descr: '<f4', 'fortran_order': False, 'shape': (1,)}",
        ] {
            assert!(
                matches!(read_f32(&npy(1, header, &data)), Err(NpyError::Header(_))),
                "accepted {header:?}"
            );
        }
        // A header length beyond the limit.
        let mut f = MAGIC.to_vec();
        f.extend_from_slice(&[2, 0]);
        f.extend_from_slice(&(MAX_HEADER_LEN as u32 + 1).to_le_bytes());
        assert!(matches!(read_f32(&f), Err(NpyError::Header(_))));
        // Not ASCII in a version 1 header.
        let f = npy(
            1,
            "{'descr': '<f4', 'fortran_order': False, 'shape': (1,), '\u{e9}': 1}",
            &data,
        );
        assert!(matches!(read_f32(&f), Err(NpyError::Header(_))));
    }

    proptest! {
        #[test]
        fn random_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..256)) {
            let _ = read_f32(&bytes);
        }

        #[test]
        fn random_headers_never_panic(
            version in 1u8..=3,
            header in "[{}()'\":, a-z_<>0-9TrueFals]{0,80}",
            data in proptest::collection::vec(any::<u8>(), 0..32),
        ) {
            let _ = read_f32(&npy(version, &header, &data));
        }

        #[test]
        fn round_trips_any_values(values in proptest::collection::vec(any::<f32>(), 0..40), split in 1usize..5) {
            let n = values.len() - values.len() % split;
            let a = ArrayD::from_shape_vec(IxDyn(&[split, n / split]), values[..n].to_vec()).expect("shape fits");
            let b = read_f32(&write_f32(&a)).expect("round trip");
            prop_assert!(a.iter().zip(b.iter()).all(|(x, y)| x.to_bits() == y.to_bits()));
            prop_assert_eq!(a.shape(), b.shape());
        }
    }
}
