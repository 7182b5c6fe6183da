//! Reader for the IDX format of MNIST and Fashion-MNIST, gzip-compressed or raw.
//!
//! IDX is big-endian: two zero bytes, a type byte (`0x08` = unsigned byte), the number of
//! dimensions, one `u32` per dimension, then the data in row-major order. The reader checks
//! all of it and reports problems with the file's name; it never panics on bad input.

use crate::error::{DataError, Result};
use std::io::Read;
use std::path::Path;

/// IDX type code for unsigned bytes, the only element type MNIST-style files use.
const IDX_TYPE_U8: u8 = 0x08;
/// Magic number of an images file: unsigned bytes, 3 dimensions `(count, rows, cols)`.
pub const IMAGES_MAGIC: u32 = 0x0000_0803;
/// Magic number of a labels file: unsigned bytes, 1 dimension `(count)`.
pub const LABELS_MAGIC: u32 = 0x0000_0801;

/// A decoded IDX array of unsigned bytes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IdxArray {
    /// The dimensions from the header, outermost first.
    pub dims: Vec<usize>,
    /// The elements, row-major, `dims.iter().product()` of them.
    pub data: Vec<u8>,
}

/// Images read from an IDX images file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IdxImages {
    /// Number of images.
    pub count: usize,
    /// Rows per image.
    pub rows: usize,
    /// Columns per image.
    pub cols: usize,
    /// Pixels, `count * rows * cols` bytes, image after image, row-major.
    pub pixels: Vec<u8>,
}

/// Reads the whole file, transparently gunzipping it when it starts with the gzip magic.
fn read_maybe_gzip(path: &Path) -> Result<Vec<u8>> {
    let raw = std::fs::read(path).map_err(|e| DataError::io(path, e))?;
    if raw.len() >= 2 && raw[0] == 0x1f && raw[1] == 0x8b {
        let mut out = Vec::with_capacity(raw.len() * 4);
        flate2::read::MultiGzDecoder::new(raw.as_slice())
            .read_to_end(&mut out)
            .map_err(|e| {
                let why = if e.kind() == std::io::ErrorKind::UnexpectedEof {
                    "gzip stream ends early: the file is truncated (download it again)".to_string()
                } else {
                    format!("corrupt gzip stream ({e}): download the file again")
                };
                DataError::format(path, why)
            })?;
        Ok(out)
    } else {
        Ok(raw)
    }
}

fn be_u32(bytes: &[u8]) -> u32 {
    u32::from_be_bytes([bytes[0], bytes[1], bytes[2], bytes[3]])
}

/// Reads any unsigned-byte IDX file and checks that `expected_magic` matches.
pub fn read_idx(path: &Path, expected_magic: u32) -> Result<IdxArray> {
    let bytes = read_maybe_gzip(path)?;
    if bytes.len() < 4 {
        return Err(DataError::format(
            path,
            format!(
                "file has {} bytes, too short for an IDX header (empty or truncated download?)",
                bytes.len()
            ),
        ));
    }
    let magic = be_u32(&bytes[0..4]);
    if magic != expected_magic {
        let hint = match magic {
            IMAGES_MAGIC => " (this is an images file; a labels file was expected)".to_string(),
            LABELS_MAGIC => " (this is a labels file; an images file was expected)".to_string(),
            m if m >> 16 == 0x1f8b => " (is the file gzip-compressed twice?)".to_string(),
            m if m >> 16 == 0 && bytes[2] != IDX_TYPE_U8 => format!(
                " (IDX element type 0x{:02x} is not supported: MNIST-style files hold unsigned bytes, 0x08)",
                bytes[2]
            ),
            _ => " (not an IDX file, or a corrupt one)".to_string(),
        };
        return Err(DataError::format(
            path,
            format!("expected IDX magic 0x{expected_magic:08x}, found 0x{magic:08x}{hint}"),
        ));
    }
    let ndims = bytes[3] as usize;
    let header_len = 4 + 4 * ndims;
    if bytes.len() < header_len {
        return Err(DataError::format(
            path,
            format!(
                "header announces {ndims} dimensions ({header_len} header bytes) but the file has only {} bytes (truncated?)",
                bytes.len()
            ),
        ));
    }
    let dims: Vec<usize> = (0..ndims)
        .map(|i| be_u32(&bytes[4 + 4 * i..8 + 4 * i]) as usize)
        .collect();
    let expected = dims
        .iter()
        .try_fold(1usize, |acc, &d| acc.checked_mul(d))
        .ok_or_else(|| DataError::format(path, format!("dimensions {dims:?} overflow")))?;
    let actual = bytes.len() - header_len;
    if actual != expected {
        let what = if actual < expected {
            "the file is truncated (download it again)"
        } else {
            "the file has trailing bytes after the data"
        };
        return Err(DataError::format(
            path,
            format!("header dimensions {dims:?} need {expected} data bytes, found {actual}: {what}"),
        ));
    }
    let mut data = bytes;
    data.drain(..header_len);
    Ok(IdxArray { dims, data })
}

/// Reads an IDX images file (`count × rows × cols` unsigned bytes).
pub fn read_images(path: &Path) -> Result<IdxImages> {
    let arr = read_idx(path, IMAGES_MAGIC)?;
    let [count, rows, cols] = arr.dims[..] else {
        return Err(DataError::format(
            path,
            format!("images need 3 dimensions, found {:?}", arr.dims),
        ));
    };
    Ok(IdxImages {
        count,
        rows,
        cols,
        pixels: arr.data,
    })
}

/// Reads an IDX labels file and checks every label is below `num_classes`.
pub fn read_labels(path: &Path, num_classes: usize) -> Result<Vec<u8>> {
    if num_classes == 0 {
        return Err(DataError::InvalidArgument(
            "num_classes must be at least 1".into(),
        ));
    }
    let arr = read_idx(path, LABELS_MAGIC)?;
    if arr.dims.len() != 1 {
        return Err(DataError::format(
            path,
            format!("labels need 1 dimension, found {:?}", arr.dims),
        ));
    }
    if let Some((i, &l)) = arr
        .data
        .iter()
        .enumerate()
        .find(|(_, &l)| l as usize >= num_classes)
    {
        return Err(DataError::format(
            path,
            format!("label {l} at index {i} is out of range 0..={}", num_classes - 1),
        ));
    }
    Ok(arr.data)
}

/// Encodes an unsigned-byte IDX file; used by tests and tools to build fixtures.
pub fn encode_idx(dims: &[usize], data: &[u8]) -> Vec<u8> {
    let mut out = vec![0, 0, IDX_TYPE_U8, dims.len() as u8];
    for &d in dims {
        out.extend_from_slice(&(d as u32).to_be_bytes());
    }
    out.extend_from_slice(data);
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    fn write(dir: &Path, name: &str, bytes: &[u8]) -> std::path::PathBuf {
        let p = dir.join(name);
        std::fs::write(&p, bytes).unwrap();
        p
    }

    fn gzip(bytes: &[u8]) -> Vec<u8> {
        let mut enc = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
        enc.write_all(bytes).unwrap();
        enc.finish().unwrap()
    }

    #[test]
    fn raw_and_gzip_round_trip() {
        let dir = tempfile::tempdir().unwrap();
        let pixels: Vec<u8> = (0..2 * 3 * 4).map(|i| i as u8).collect();
        let raw = encode_idx(&[2, 3, 4], &pixels);
        for (name, bytes) in [("raw", raw.clone()), ("gz", gzip(&raw))] {
            let img = read_images(&write(dir.path(), name, &bytes)).unwrap();
            assert_eq!((img.count, img.rows, img.cols), (2, 3, 4));
            assert_eq!(img.pixels, pixels);
        }
    }

    #[test]
    fn errors_name_the_file_and_the_problem() {
        let dir = tempfile::tempdir().unwrap();
        let labels = encode_idx(&[3], &[1, 2, 3]);
        // Pixels that do not compress well, so that cutting the gzip stream truncates data.
        let noisy: Vec<u8> = (0..256u32).map(|i| (i * 7919 % 251) as u8).collect();
        let cases: Vec<(&str, Vec<u8>, &str)> = vec![
            ("empty", vec![], "too short"),
            ("short-header", vec![0, 0, 8, 3, 0, 0], "truncated"),
            ("wrong-magic", labels.clone(), "labels file"),
            ("double-gz", gzip(&gzip(&labels)), "compressed twice"),
            (
                "truncated-data",
                encode_idx(&[2, 2, 2], &[0; 8])[..20].to_vec(),
                "truncated",
            ),
            (
                "trailing",
                [encode_idx(&[1, 2, 2], &[0; 4]), vec![7]].concat(),
                "trailing",
            ),
            ("bad-type", vec![0, 0, 0x0d, 3, 0, 0, 0, 0], "element type"),
            (
                "truncated-gz",
                gzip(&encode_idx(&[4, 8, 8], &noisy))[..100].to_vec(),
                "truncated",
            ),
            ("garbage-gz", [vec![0x1f, 0x8b], vec![0xff; 40]].concat(), "gzip"),
        ];
        for (name, bytes, expect) in cases {
            let err = read_images(&write(dir.path(), name, &bytes))
                .unwrap_err()
                .to_string();
            assert!(err.contains(name), "{name}: error does not name the file: {err}");
            assert!(err.contains(expect), "{name}: expected '{expect}' in: {err}");
        }
        let missing = read_images(&dir.path().join("nope")).unwrap_err().to_string();
        assert!(missing.contains("nope"), "{missing}");
    }

    #[test]
    fn labels_out_of_range_are_rejected() {
        let dir = tempfile::tempdir().unwrap();
        let p = write(dir.path(), "labels", &encode_idx(&[4], &[0, 9, 10, 1]));
        let err = read_labels(&p, 10).unwrap_err().to_string();
        assert!(err.contains("label 10 at index 2"), "{err}");
        assert_eq!(read_labels(&p, 11).unwrap(), vec![0, 9, 10, 1]);
        assert!(read_labels(&p, 0).unwrap_err().to_string().contains("at least 1"));
    }
}
