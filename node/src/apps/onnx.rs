//! Reads the weight tensors (graph initializers) out of an ONNX file, without protoc or an ONNX crate.
//!
//! An ONNX file is one protobuf `ModelProto`. Only the path to the weights is decoded:
//! `ModelProto.graph` (field 7) → `GraphProto.initializer` (field 5, repeated `TensorProto`) →
//! `dims` (1), `data_type` (2), `float_data` (4), `name` (8), `raw_data` (9), `data_location` (14).
//! Every other field is skipped by its wire type. Only float32 tensors stored inside the file are
//! accepted (what Silero VAD's `silero_vad_16k_op15.onnx` holds); anything else is an error, not a guess.

use std::collections::BTreeMap;

/// `TensorProto.DataType.FLOAT`.
const FLOAT: i64 = 1;
/// `TensorProto.DataLocation.EXTERNAL`: the data lives in another file.
const EXTERNAL: i64 = 1;

/// One float32 initializer: its shape and values (row-major).
#[derive(Clone, Debug, PartialEq)]
pub struct Initializer {
    pub dims: Vec<usize>,
    pub data: Vec<f32>,
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum OnnxError {
    #[error("truncated protobuf at byte {0}")]
    Truncated(usize),
    #[error("bad varint at byte {0}")]
    Varint(usize),
    #[error("unsupported protobuf wire type {0} at byte {1}")]
    WireType(u64, usize),
    #[error("the file has no graph")]
    NoGraph,
    #[error("initializer {name:?}: {why}")]
    Tensor { name: String, why: String },
}

/// A protobuf reader over one message's bytes.
struct Reader<'a> {
    buf: &'a [u8],
    pos: usize,
}

/// One field's value, by wire type.
enum Field<'a> {
    Varint(u64),
    Bytes(&'a [u8]),
    Fixed32(u32),
    Fixed64,
}

impl<'a> Reader<'a> {
    fn new(buf: &'a [u8]) -> Self {
        Self { buf, pos: 0 }
    }

    fn varint(&mut self) -> Result<u64, OnnxError> {
        let start = self.pos;
        let mut v: u64 = 0;
        for shift in (0..64).step_by(7) {
            let b = *self.buf.get(self.pos).ok_or(OnnxError::Truncated(start))?;
            self.pos += 1;
            v |= u64::from(b & 0x7f) << shift;
            if b & 0x80 == 0 {
                return Ok(v);
            }
        }
        Err(OnnxError::Varint(start))
    }

    fn take(&mut self, n: usize) -> Result<&'a [u8], OnnxError> {
        let end = self
            .pos
            .checked_add(n)
            .filter(|&e| e <= self.buf.len())
            .ok_or(OnnxError::Truncated(self.pos))?;
        let s = &self.buf[self.pos..end];
        self.pos = end;
        Ok(s)
    }

    /// The next `(field number, value)`, or `None` at the end of the message.
    fn next(&mut self) -> Result<Option<(u64, Field<'a>)>, OnnxError> {
        if self.pos >= self.buf.len() {
            return Ok(None);
        }
        let at = self.pos;
        let key = self.varint()?;
        let value = match key & 7 {
            0 => Field::Varint(self.varint()?),
            1 => {
                self.take(8)?;
                Field::Fixed64
            }
            2 => {
                let n = usize::try_from(self.varint()?).map_err(|_| OnnxError::Truncated(at))?;
                Field::Bytes(self.take(n)?)
            }
            5 => {
                let b = self.take(4)?;
                Field::Fixed32(u32::from_le_bytes([b[0], b[1], b[2], b[3]]))
            }
            // 3 and 4 are the deprecated groups, which ONNX does not use.
            w => return Err(OnnxError::WireType(w, at)),
        };
        Ok(Some((key >> 3, value)))
    }
}

/// The float32 initializers of the ONNX model in `bytes`, by name.
pub fn initializers(bytes: &[u8]) -> Result<BTreeMap<String, Initializer>, OnnxError> {
    let mut model = Reader::new(bytes);
    let mut graph = None;
    while let Some((field, value)) = model.next()? {
        if let (7, Field::Bytes(b)) = (field, value) {
            graph = Some(b);
        }
    }
    let mut g = Reader::new(graph.ok_or(OnnxError::NoGraph)?);
    let mut out = BTreeMap::new();
    while let Some((field, value)) = g.next()? {
        if let (5, Field::Bytes(b)) = (field, value) {
            let (name, tensor) = tensor(b)?;
            out.insert(name, tensor);
        }
    }
    Ok(out)
}

fn tensor(bytes: &[u8]) -> Result<(String, Initializer), OnnxError> {
    let mut r = Reader::new(bytes);
    let mut dims: Vec<i64> = Vec::new();
    let mut data_type = 0i64;
    let mut name = String::new();
    let mut raw: Option<&[u8]> = None;
    let mut floats: Vec<f32> = Vec::new();
    let mut location = 0i64;
    while let Some((field, value)) = r.next()? {
        match (field, value) {
            (1, Field::Varint(v)) => dims.push(v as i64),
            (1, Field::Bytes(packed)) => {
                let mut p = Reader::new(packed);
                while p.pos < packed.len() {
                    dims.push(p.varint()? as i64);
                }
            }
            (2, Field::Varint(v)) => data_type = v as i64,
            (4, Field::Fixed32(v)) => floats.push(f32::from_bits(v)),
            (4, Field::Bytes(packed)) => floats.extend(le_f32s(packed)),
            (8, Field::Bytes(b)) => name = String::from_utf8_lossy(b).into_owned(),
            (9, Field::Bytes(b)) => raw = Some(b),
            (14, Field::Varint(v)) => location = v as i64,
            _ => {}
        }
    }
    let bad = |why: String| OnnxError::Tensor {
        name: name.clone(),
        why,
    };
    if data_type != FLOAT {
        return Err(bad(format!("data type {data_type}, only float32 is read")));
    }
    if location == EXTERNAL {
        return Err(bad("stored in an external file".into()));
    }
    let dims: Vec<usize> = dims
        .iter()
        .map(|&d| usize::try_from(d).map_err(|_| bad(format!("negative dim {d}"))))
        .collect::<Result<_, _>>()?;
    let count = dims
        .iter()
        .try_fold(1usize, |acc, &d| acc.checked_mul(d))
        .ok_or_else(|| bad("too many elements".into()))?;
    let data = match raw {
        Some(raw) => {
            if raw.len() != count * 4 {
                return Err(bad(format!("{} raw bytes for {count} floats", raw.len())));
            }
            le_f32s(raw).collect()
        }
        None => floats,
    };
    if data.len() != count {
        return Err(bad(format!("{} values for shape {dims:?}", data.len())));
    }
    Ok((name.clone(), Initializer { dims, data }))
}

fn le_f32s(b: &[u8]) -> impl Iterator<Item = f32> + '_ {
    b.chunks_exact(4)
        .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    fn varint(mut v: u64, out: &mut Vec<u8>) {
        loop {
            let b = (v & 0x7f) as u8;
            v >>= 7;
            if v == 0 {
                out.push(b);
                return;
            }
            out.push(b | 0x80);
        }
    }

    fn bytes_field(field: u64, b: &[u8], out: &mut Vec<u8>) {
        varint(field << 3 | 2, out);
        varint(b.len() as u64, out);
        out.extend_from_slice(b);
    }

    fn varint_field(field: u64, v: u64, out: &mut Vec<u8>) {
        varint(field << 3, out);
        varint(v, out);
    }

    /// A ModelProto with one graph holding `tensors` (each already encoded), plus fields to skip.
    fn model(tensors: &[Vec<u8>]) -> Vec<u8> {
        let mut graph = Vec::new();
        bytes_field(1, b"a node, skipped", &mut graph);
        for t in tensors {
            bytes_field(5, t, &mut graph);
        }
        let mut m = Vec::new();
        varint_field(1, 8, &mut m); // ir_version
        bytes_field(2, b"producer", &mut m);
        varint(5 << 3 | 1, &mut m); // a fixed64 field
        m.extend_from_slice(&[0; 8]);
        bytes_field(7, &graph, &mut m);
        m
    }

    #[test]
    fn reads_raw_packed_and_unpacked_float_tensors() {
        // raw_data, unpacked dims.
        let mut a = Vec::new();
        varint_field(1, 2, &mut a);
        varint_field(1, 2, &mut a);
        varint_field(2, 1, &mut a);
        bytes_field(8, b"a", &mut a);
        let raw: Vec<u8> = [1.0f32, -2.0, 0.5, 3.25]
            .iter()
            .flat_map(|f| f.to_le_bytes())
            .collect();
        bytes_field(9, &raw, &mut a);
        // float_data as fixed32 values, packed dims.
        let mut b = Vec::new();
        let mut packed = Vec::new();
        varint(3, &mut packed);
        bytes_field(1, &packed, &mut b);
        varint_field(2, 1, &mut b);
        bytes_field(8, b"b", &mut b);
        for f in [7.0f32, 8.0, 9.0] {
            varint(4 << 3 | 5, &mut b);
            b.extend_from_slice(&f.to_le_bytes());
        }
        let got = initializers(&model(&[a, b])).unwrap();
        assert_eq!(got["a"].dims, [2, 2]);
        assert_eq!(got["a"].data, [1.0, -2.0, 0.5, 3.25]);
        assert_eq!(got["b"].dims, [3]);
        assert_eq!(got["b"].data, [7.0, 8.0, 9.0]);
    }

    #[test]
    fn refuses_what_it_cannot_read() {
        let mut int64 = Vec::new();
        varint_field(1, 1, &mut int64);
        varint_field(2, 7, &mut int64);
        bytes_field(8, b"i", &mut int64);
        bytes_field(9, &[0; 8], &mut int64);
        assert!(matches!(
            initializers(&model(&[int64])),
            Err(OnnxError::Tensor { .. })
        ));
        let mut short = Vec::new();
        varint_field(1, 4, &mut short);
        varint_field(2, 1, &mut short);
        bytes_field(9, &[0; 12], &mut short);
        assert!(initializers(&model(&[short])).is_err());
        let m = model(&[]);
        assert!(matches!(
            initializers(&m[..m.len() - 3]),
            Err(OnnxError::Truncated(_))
        ));
        assert_eq!(initializers(&[]), Err(OnnxError::NoGraph));
        assert!(initializers(&[0xff; 16]).is_err());
    }

    /// Needs weights: `runmesh models fetch silero-vad` and RUNMESH_MODELS_DIR.
    #[test]
    fn reads_the_silero_vad_weights() {
        let Some(dir) = std::env::var_os("RUNMESH_MODELS_DIR") else {
            eprintln!("skipping: RUNMESH_MODELS_DIR is not set");
            return;
        };
        let path = std::path::Path::new(&dir).join("silero-vad/silero_vad_16k_op15.onnx");
        let Ok(bytes) = std::fs::read(&path) else {
            eprintln!("skipping: {} not fetched", path.display());
            return;
        };
        let w = initializers(&bytes).unwrap();
        assert_eq!(w.len(), 15, "{:?}", w.keys().collect::<Vec<_>>());
        assert_eq!(w["model.stft.forward_basis_buffer"].dims, [258, 1, 256]);
        assert_eq!(w["model.decoder.rnn.weight_ih"].dims, [512, 128]);
        assert_eq!(w["model.decoder.decoder.2.bias"].dims, [1]);
    }
}
