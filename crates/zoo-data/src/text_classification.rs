//! Labelled sentences for text classification (SST-2, TREC): reading the tab-separated files,
//! and batches of token ids padded to the longest sentence of the batch with their attention
//! mask, sentences of similar length batched together.

use crate::batcher::{shuffled_order, Batch, BatchSource};
use crate::error::{DataError, Result};
use candle_core::{Device, Tensor};
use std::path::Path;

/// Reads `text<TAB>label…` lines after a header line (the `../shared/data/sst2` and `trec`
/// format): returns `(text, label)` pairs; `label_column` is the 0-based column of the integer
/// label (1 in both data sets).
pub fn read_labelled_tsv(path: &Path, label_column: usize) -> Result<Vec<(String, u32)>> {
    let text = std::fs::read_to_string(path).map_err(|e| DataError::io(path, e))?;
    let mut rows = Vec::new();
    for (i, line) in text.lines().enumerate().skip(1) {
        if line.trim().is_empty() {
            continue;
        }
        let cols: Vec<&str> = line.split('\t').collect();
        let label = cols
            .get(label_column)
            .and_then(|s| s.trim().parse::<u32>().ok())
            .ok_or_else(|| DataError::Format {
                path: path.to_path_buf(),
                message: format!(
                    "line {}: expected text and an integer label in column {label_column}, got {line:?}",
                    i + 1
                ),
            })?;
        rows.push((cols[0].to_string(), label));
    }
    if rows.is_empty() {
        return Err(DataError::Format {
            path: path.to_path_buf(),
            message: "no labelled rows after the header".into(),
        });
    }
    Ok(rows)
}

/// Tokenized sentences with labels; a [`BatchSource`] whose batches are `inputs` = token ids
/// `(batch, longest)` u32 padded with `pad`, `extra[0]` = attention mask `(batch, longest)` u32
/// (1 = token), `targets` = labels `(batch,)` u32.
#[derive(Debug, Clone)]
pub struct ClassificationBatches {
    items: Vec<(Vec<u32>, u32)>,
    batch_size: usize,
    pad: u32,
    shuffle: Option<u64>,
    device: Device,
}

impl ClassificationBatches {
    /// `items` are `(token ids, label)`; ids beyond `max_len` are cut (keep the tokenizer's last
    /// special token yourself if the model needs it).
    pub fn new(
        mut items: Vec<(Vec<u32>, u32)>,
        batch_size: usize,
        max_len: usize,
        pad: u32,
        device: &Device,
    ) -> Result<Self> {
        if batch_size == 0 || max_len == 0 {
            return Err(DataError::InvalidArgument(
                "batch_size and max_len must be at least 1".into(),
            ));
        }
        if let Some(i) = items.iter().position(|(ids, _)| ids.is_empty()) {
            return Err(DataError::InvalidArgument(format!("sentence {i} has no tokens")));
        }
        for (ids, _) in items.iter_mut() {
            ids.truncate(max_len);
        }
        Ok(Self {
            items,
            batch_size,
            pad,
            shuffle: None,
            device: device.clone(),
        })
    }

    /// Shuffles every epoch with `seed` (by default: sorted by length, for evaluation).
    pub fn shuffle(mut self, seed: u64) -> Self {
        self.shuffle = Some(seed);
        self
    }
}

impl BatchSource for ClassificationBatches {
    fn num_items(&self) -> usize {
        self.items.len()
    }

    fn batch_size(&self) -> usize {
        self.batch_size
    }

    /// Shuffled, sorted by length inside pools of 50 batches, then the batches shuffled: little
    /// padding, random order.
    fn epoch_order(&self, epoch: usize) -> Vec<usize> {
        let n = self.items.len();
        let len = |i: &usize| self.items[*i].0.len();
        let Some(seed) = self.shuffle else {
            let mut order: Vec<usize> = (0..n).collect();
            order.sort_by_key(len);
            return order;
        };
        let mut order = shuffled_order(n, seed, epoch);
        for chunk in order.chunks_mut(self.batch_size * 50) {
            chunk.sort_by_key(len);
        }
        let batches: Vec<&[usize]> = order.chunks(self.batch_size).collect();
        let perm = shuffled_order(batches.len(), seed ^ 0x5EED, epoch);
        perm.iter().flat_map(|&b| batches[b].iter().copied()).collect()
    }

    fn make_batch(&self, indices: &[usize]) -> Result<Batch> {
        let b = indices.len();
        let l = indices
            .iter()
            .map(|&i| self.items[i].0.len())
            .max()
            .unwrap_or(1)
            .max(1);
        let mut ids = vec![self.pad; b * l];
        let mut mask = vec![0u32; b * l];
        let mut labels = Vec::with_capacity(b);
        for (r, &i) in indices.iter().enumerate() {
            let (t, y) = &self.items[i];
            ids[r * l..r * l + t.len()].copy_from_slice(t);
            mask[r * l..r * l + t.len()].fill(1);
            labels.push(*y);
        }
        Ok(Batch {
            inputs: Tensor::from_vec(ids, (b, l), &self.device)?,
            targets: Tensor::from_vec(labels, b, &self.device)?,
            extra: vec![Tensor::from_vec(mask, (b, l), &self.device)?],
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::batcher::epoch_batches;

    #[test]
    fn reads_tsv_and_batches_with_padding_and_masks() -> Result<()> {
        let dir = tempfile::tempdir().map_err(|e| DataError::io(Path::new("tmp"), e))?;
        let p = dir.path().join("x.tsv");
        std::fs::write(&p, "text\tlabel\ngood film\t1\nbad\t0\n").map_err(|e| DataError::io(&p, e))?;
        let rows = read_labelled_tsv(&p, 1)?;
        assert_eq!(rows, vec![("good film".to_string(), 1), ("bad".to_string(), 0)]);
        std::fs::write(&p, "text\tlabel\nno label here\n").map_err(|e| DataError::io(&p, e))?;
        assert!(read_labelled_tsv(&p, 1)
            .unwrap_err()
            .to_string()
            .contains("line 2"));

        let items = vec![(vec![5, 6, 7], 1), (vec![8], 0), (vec![9, 9, 9, 9, 9], 1)];
        let src = ClassificationBatches::new(items, 2, 4, 0, &Device::Cpu)?.shuffle(3);
        let mut seen = 0;
        for batch in epoch_batches(&src, 0) {
            let batch = batch?;
            let ids = batch.inputs.to_vec2::<u32>()?;
            let mask = batch.extra[0].to_vec2::<u32>()?;
            for (row, m) in ids.iter().zip(&mask) {
                let real = m.iter().filter(|&&x| x == 1).count();
                assert!(row[..real].iter().all(|&t| t != 0) && row[real..].iter().all(|&t| t == 0));
                assert!(real <= 4); // truncated at max_len
            }
            seen += ids.len();
        }
        assert_eq!(seen, 3);
        assert!(ClassificationBatches::new(vec![(vec![], 0)], 2, 4, 0, &Device::Cpu).is_err());
        Ok(())
    }
}
