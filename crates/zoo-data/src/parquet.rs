//! Reader for MNIST-style data sets stored as Hugging Face parquet: one row per sample with
//! `image: struct<bytes: binary (PNG), path: string>` and `label: int64`. The hub loader and
//! local copies share this reader, so the offline tests exercise the hub path's decoding.

use crate::error::{DataError, Result};
use crate::mnist::ImageSplit;
use parquet::file::reader::{FileReader, SerializedFileReader};
use parquet::record::Field;
use std::path::Path;

/// Reads one split (e.g. `mnist/train-00000-of-00001.parquet`) into memory.
///
/// Every image must decode to `rows × cols` 8-bit grayscale pixels and every label must lie in
/// `0..num_classes`; the first violation is reported with the file and row.
pub fn read_image_parquet(path: &Path, rows: usize, cols: usize, num_classes: usize) -> Result<ImageSplit> {
    if num_classes == 0 {
        return Err(DataError::InvalidArgument(
            "num_classes must be at least 1".into(),
        ));
    }
    let file = std::fs::File::open(path).map_err(|e| DataError::io(path, e))?;
    let reader = SerializedFileReader::new(file)
        .map_err(|e| DataError::format(path, format!("not a readable parquet file: {e}")))?;
    let n = reader.metadata().file_metadata().num_rows().max(0) as usize;
    let mut images = Vec::with_capacity(n * rows * cols);
    let mut labels = Vec::with_capacity(n);
    let iter = reader
        .get_row_iter(None)
        .map_err(|e| DataError::format(path, format!("cannot iterate rows: {e}")))?;
    for (row_idx, row) in iter.enumerate() {
        let row = row.map_err(|e| DataError::format(path, format!("row {row_idx}: {e}")))?;
        let mut png: Option<&[u8]> = None;
        let mut label: Option<i64> = None;
        for (name, field) in row.get_column_iter() {
            match (name.as_str(), field) {
                ("image", Field::Group(image)) => {
                    for (inner, value) in image.get_column_iter() {
                        if let ("bytes", Field::Bytes(b)) = (inner.as_str(), value) {
                            png = Some(b.data());
                        }
                    }
                }
                ("label", Field::Long(l)) => label = Some(*l),
                ("label", Field::Int(l)) => label = Some(*l as i64),
                _ => {}
            }
        }
        let bad = |what: String| DataError::format(path, format!("row {row_idx}: {what}"));
        let png = png.ok_or_else(|| bad("no `image.bytes` column".into()))?;
        let label = label.ok_or_else(|| bad("no integer `label` column".into()))?;
        if label < 0 || label as usize >= num_classes {
            return Err(bad(format!(
                "label {label} is out of range 0..={}",
                num_classes - 1
            )));
        }
        let img = image::load_from_memory(png)
            .map_err(|e| bad(format!("image bytes do not decode: {e}")))?
            .to_luma8();
        if img.width() as usize != cols || img.height() as usize != rows {
            return Err(bad(format!(
                "image is {}x{}, expected {cols}x{rows}",
                img.width(),
                img.height()
            )));
        }
        images.extend_from_slice(img.as_raw());
        labels.push(label as u8);
    }
    Ok(ImageSplit {
        images,
        labels,
        rows,
        cols,
    })
}
