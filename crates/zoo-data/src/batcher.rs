//! Batching: the [`BatchSource`] trait the training loop consumes, and [`ImageBatcher`] for
//! in-memory image classification sets.
//!
//! An epoch visits every sample exactly once, in an order that depends only on
//! `(seed, epoch)`: a run resumed at epoch `e` sees the same batches as one that never stopped.

use crate::error::{DataError, Result};
use crate::mnist::ImageSplit;
use candle_core::{Device, Tensor};
use rand::{seq::SliceRandom, SeedableRng};
use std::sync::Arc;

/// Inputs and targets of one mini-batch, already on the training device.
#[derive(Debug, Clone)]
pub struct Batch {
    /// Model inputs, e.g. images `(batch, 1, 28, 28)` f32.
    pub inputs: Tensor,
    /// Targets, e.g. class indices `(batch,)` u32.
    pub targets: Tensor,
    /// Further model inputs, e.g. the decoder input of a translation batch.
    pub extra: Vec<Tensor>,
}

/// A data set cut into mini-batches, epoch by epoch.
pub trait BatchSource {
    /// Number of samples in one epoch.
    fn num_items(&self) -> usize;
    /// Samples per batch (the last batch of an epoch may hold fewer).
    fn batch_size(&self) -> usize;
    /// The sample indices of `epoch`, in visiting order; a permutation of `0..num_items()`.
    fn epoch_order(&self, epoch: usize) -> Vec<usize>;
    /// Builds the batch holding these samples.
    fn make_batch(&self, indices: &[usize]) -> Result<Batch>;

    /// Builds a batch of `epoch` (0-based). Sources whose samples are drawn afresh every epoch
    /// (random text blocks) override this; by default it is [`Self::make_batch`].
    fn make_epoch_batch(&self, epoch: usize, indices: &[usize]) -> Result<Batch> {
        let _ = epoch;
        self.make_batch(indices)
    }

    /// Number of batches per epoch, counting a final partial batch.
    fn num_batches(&self) -> usize {
        self.num_items().div_ceil(self.batch_size().max(1))
    }
}

/// The batches of `epoch`, in order.
pub fn epoch_batches(source: &dyn BatchSource, epoch: usize) -> impl Iterator<Item = Result<Batch>> + '_ {
    let order = source.epoch_order(epoch);
    let bs = source.batch_size().max(1);
    (0..order.len().div_ceil(bs)).map(move |b| {
        let end = ((b + 1) * bs).min(order.len());
        source.make_epoch_batch(epoch, &order[b * bs..end])
    })
}

/// A seeded permutation of `0..n` for `epoch`: identical for the same `(seed, epoch)`.
pub fn shuffled_order(n: usize, seed: u64, epoch: usize) -> Vec<usize> {
    // SplitMix64 finalizer: decorrelates neighbouring (seed, epoch) pairs.
    let mut z = seed ^ (epoch as u64).wrapping_mul(0x9E37_79B9_7F4A_7C15);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^= z >> 31;
    let mut rng = rand::rngs::StdRng::seed_from_u64(z);
    let mut order: Vec<usize> = (0..n).collect();
    order.shuffle(&mut rng);
    order
}

/// Batches an [`ImageSplit`] as normalized f32 images `(batch, 1, rows, cols)` with u32 labels.
#[derive(Debug, Clone)]
pub struct ImageBatcher {
    split: Arc<ImageSplit>,
    batch_size: usize,
    shuffle_seed: Option<u64>,
    device: Device,
    /// `lut[p]` = `(p / 255 - mean) / std`: one lookup per pixel instead of arithmetic.
    lut: [f32; 256],
}

impl ImageBatcher {
    /// Sequential batches of `batch_size` images normalized with `(mean, std)`.
    pub fn new(
        split: impl Into<Arc<ImageSplit>>,
        batch_size: usize,
        (mean, std): (f32, f32),
        device: &Device,
    ) -> Result<Self> {
        if batch_size == 0 {
            return Err(DataError::InvalidArgument("batch size must be at least 1".into()));
        }
        if !(std > 0.0 && std.is_finite() && mean.is_finite()) {
            return Err(DataError::InvalidArgument(format!(
                "normalization needs a finite mean and a positive std, got mean {mean}, std {std}"
            )));
        }
        let mut lut = [0f32; 256];
        for (p, v) in lut.iter_mut().enumerate() {
            *v = (p as f32 / 255.0 - mean) / std;
        }
        Ok(Self {
            split: split.into(),
            batch_size,
            shuffle_seed: None,
            device: device.clone(),
            lut,
        })
    }

    /// Shuffles each epoch with a permutation seeded by `(seed, epoch)`.
    pub fn shuffle(mut self, seed: u64) -> Self {
        self.shuffle_seed = Some(seed);
        self
    }

    /// The split being batched.
    pub fn split(&self) -> &ImageSplit {
        &self.split
    }
}

impl BatchSource for ImageBatcher {
    fn num_items(&self) -> usize {
        self.split.len()
    }

    fn batch_size(&self) -> usize {
        self.batch_size
    }

    fn epoch_order(&self, epoch: usize) -> Vec<usize> {
        match self.shuffle_seed {
            Some(seed) => shuffled_order(self.split.len(), seed, epoch),
            None => (0..self.split.len()).collect(),
        }
    }

    fn make_batch(&self, indices: &[usize]) -> Result<Batch> {
        let (rows, cols) = (self.split.rows, self.split.cols);
        let px = rows * cols;
        let mut images = Vec::with_capacity(indices.len() * px);
        let mut labels = Vec::with_capacity(indices.len());
        for &i in indices {
            let (Some(img), Some(&label)) = (
                self.split.images.get(i * px..(i + 1) * px),
                self.split.labels.get(i),
            ) else {
                return Err(DataError::InvalidArgument(format!(
                    "sample index {i} is out of range for a split of {} samples",
                    self.split.len()
                )));
            };
            images.extend(img.iter().map(|&p| self.lut[p as usize]));
            labels.push(label as u32);
        }
        let n = indices.len();
        Ok(Batch {
            inputs: Tensor::from_vec(images, (n, 1, rows, cols), &self.device)?,
            targets: Tensor::from_vec(labels, n, &self.device)?,
            extra: Vec::new(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn split(n: usize) -> ImageSplit {
        ImageSplit {
            images: (0..n * 4).map(|i| (i % 256) as u8).collect(),
            labels: (0..n).map(|i| (i % 10) as u8).collect(),
            rows: 2,
            cols: 2,
        }
    }

    #[test]
    fn every_sample_once_per_epoch_and_last_partial_batch_kept() {
        let b = ImageBatcher::new(split(103), 10, (0.0, 1.0), &Device::Cpu)
            .unwrap()
            .shuffle(7);
        assert_eq!(b.num_batches(), 11);
        for epoch in 0..3 {
            let mut seen = Vec::new();
            let batches: Vec<_> = epoch_batches(&b, epoch).map(|r| r.unwrap()).collect();
            assert_eq!(batches.len(), 11);
            assert_eq!(batches[10].inputs.dims(), &[3, 1, 2, 2]);
            for batch in &batches {
                seen.extend(batch.targets.to_vec1::<u32>().unwrap());
            }
            let mut order = b.epoch_order(epoch);
            let expected: Vec<u32> = order.iter().map(|&i| (i % 10) as u32).collect();
            assert_eq!(seen, expected);
            order.sort();
            assert_eq!(order, (0..103).collect::<Vec<_>>());
        }
    }

    #[test]
    fn order_depends_only_on_seed_and_epoch() {
        assert_eq!(shuffled_order(50, 1, 2), shuffled_order(50, 1, 2));
        assert_ne!(shuffled_order(50, 1, 2), shuffled_order(50, 1, 3));
        assert_ne!(shuffled_order(50, 1, 2), shuffled_order(50, 2, 2));
    }

    #[test]
    fn normalizes_pixels() {
        let b = ImageBatcher::new(split(2), 2, (0.5, 0.25), &Device::Cpu).unwrap();
        let batch = b.make_batch(&[1]).unwrap();
        let v = batch.inputs.flatten_all().unwrap().to_vec1::<f32>().unwrap();
        let want: Vec<f32> = (4..8).map(|p| (p as f32 / 255.0 - 0.5) / 0.25).collect();
        assert_eq!(v, want);
        assert!(b.make_batch(&[2]).is_err());
        assert!(ImageBatcher::new(split(2), 0, (0.0, 1.0), &Device::Cpu).is_err());
    }
}
