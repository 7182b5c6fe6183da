//! Batches of sentence pairs for sequence-to-sequence training: pairs of similar length are
//! batched together (little padding), padded with the pad id, and turned into the encoder
//! input, the decoder input (BOS + target) and the decoder target (target + EOS).

use crate::batcher::{shuffled_order, Batch, BatchSource};
use crate::error::{DataError, Result};
use candle_core::{Device, Tensor};

/// Special token ids of a translation vocabulary.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SpecialIds {
    /// Padding.
    pub pad: u32,
    /// Beginning of sentence (first decoder input).
    pub bos: u32,
    /// End of sentence (last decoder target).
    pub eos: u32,
}

/// Tokenized sentence pairs, batched by similar length; a [`BatchSource`] whose batches are
/// `inputs` = source ids `(batch, src_len)`, `extra[0]` = decoder input `(batch, tgt_len + 1)`
/// (BOS first), `targets` = decoder target `(batch, tgt_len + 1)` (EOS last), all u32, padded
/// with `pad`.
#[derive(Debug, Clone)]
pub struct TranslationBatches {
    pairs: Vec<(Vec<u32>, Vec<u32>)>,
    batch_size: usize,
    ids: SpecialIds,
    shuffle: Option<u64>,
    device: Device,
}

impl TranslationBatches {
    /// Pairs longer than `max_len` tokens (either side, before BOS/EOS) are truncated.
    pub fn new(
        mut pairs: Vec<(Vec<u32>, Vec<u32>)>,
        batch_size: usize,
        max_len: usize,
        ids: SpecialIds,
        device: &Device,
    ) -> Result<Self> {
        if batch_size == 0 || max_len == 0 {
            return Err(DataError::InvalidArgument(
                "batch_size and max_len must be at least 1".into(),
            ));
        }
        for (s, t) in pairs.iter_mut() {
            s.truncate(max_len);
            t.truncate(max_len);
        }
        Ok(Self {
            pairs,
            batch_size,
            ids,
            shuffle: None,
            device: device.clone(),
        })
    }

    /// Shuffles every epoch with `seed` (by default the order is by length, for evaluation).
    pub fn shuffle(mut self, seed: u64) -> Self {
        self.shuffle = Some(seed);
        self
    }

    /// The tokenized pairs.
    pub fn pairs(&self) -> &[(Vec<u32>, Vec<u32>)] {
        &self.pairs
    }

    fn len_key(&self, i: usize) -> (usize, usize) {
        (self.pairs[i].0.len(), self.pairs[i].1.len())
    }
}

impl BatchSource for TranslationBatches {
    fn num_items(&self) -> usize {
        self.pairs.len()
    }

    fn batch_size(&self) -> usize {
        self.batch_size
    }

    /// Shuffled, then sorted by length inside pools of 50 batches, and the batches of the
    /// epoch shuffled again: batches hold similar lengths, their order stays random.
    fn epoch_order(&self, epoch: usize) -> Vec<usize> {
        let n = self.pairs.len();
        let Some(seed) = self.shuffle else {
            let mut order: Vec<usize> = (0..n).collect();
            order.sort_by_key(|&i| self.len_key(i));
            return order;
        };
        let mut order = shuffled_order(n, seed, epoch);
        let pool = self.batch_size * 50;
        for chunk in order.chunks_mut(pool) {
            chunk.sort_by_key(|&i| self.len_key(i));
        }
        let batches: Vec<&[usize]> = order.chunks(self.batch_size).collect();
        let perm = shuffled_order(batches.len(), seed ^ 0x5EED, epoch);
        perm.iter().flat_map(|&b| batches[b].iter().copied()).collect()
    }

    fn make_batch(&self, indices: &[usize]) -> Result<Batch> {
        let b = indices.len();
        let s_len = indices
            .iter()
            .map(|&i| self.pairs[i].0.len())
            .max()
            .unwrap_or(0)
            .max(1);
        let t_len = indices.iter().map(|&i| self.pairs[i].1.len()).max().unwrap_or(0) + 1;
        let SpecialIds { pad, bos, eos } = self.ids;
        let mut src = vec![pad; b * s_len];
        let mut tin = vec![pad; b * t_len];
        let mut tout = vec![pad; b * t_len];
        for (r, &i) in indices.iter().enumerate() {
            let (s, t) = &self.pairs[i];
            src[r * s_len..r * s_len + s.len()].copy_from_slice(s);
            tin[r * t_len] = bos;
            tin[r * t_len + 1..r * t_len + 1 + t.len()].copy_from_slice(t);
            tout[r * t_len..r * t_len + t.len()].copy_from_slice(t);
            tout[r * t_len + t.len()] = eos;
        }
        Ok(Batch {
            inputs: Tensor::from_vec(src, (b, s_len), &self.device)?,
            targets: Tensor::from_vec(tout, (b, t_len), &self.device)?,
            extra: vec![Tensor::from_vec(tin, (b, t_len), &self.device)?],
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::batcher::epoch_batches;

    #[test]
    fn batches_pad_shift_and_group_similar_lengths() -> Result<()> {
        let ids = SpecialIds {
            pad: 0,
            bos: 1,
            eos: 2,
        };
        let pairs: Vec<(Vec<u32>, Vec<u32>)> = (0..200u32)
            .map(|i| {
                (
                    (0..(i % 17 + 1)).map(|j| 10 + j).collect(),
                    (0..(i % 13 + 1)).map(|j| 100 + j).collect(),
                )
            })
            .collect();
        let src = TranslationBatches::new(pairs, 8, 12, ids, &Device::Cpu)?.shuffle(3);
        let mut seen = 0;
        let mut padding = 0usize;
        for b in epoch_batches(&src, 0) {
            let b = b?;
            let (x, tin, tout) = (
                b.inputs.to_vec2::<u32>()?,
                b.extra[0].to_vec2::<u32>()?,
                b.targets.to_vec2::<u32>()?,
            );
            for r in 0..x.len() {
                assert_eq!(tin[r][0], 1, "decoder input starts with BOS");
                let n = tout[r].iter().position(|&t| t == 2).expect("EOS");
                assert_eq!(
                    &tin[r][1..=n],
                    &tout[r][..n],
                    "target is the input shifted by one"
                );
                assert!(tout[r][n + 1..].iter().all(|&t| t == 0) && x[r].len() <= 12);
                padding += x[r].iter().filter(|&&t| t == 0).count();
            }
            seen += x.len();
        }
        assert_eq!(seen, 200);
        // Length bucketing keeps padding low: well under a third of the source positions.
        assert!(padding < 200 * 12 / 3, "padding {padding}");
        let e0: Vec<usize> = src.epoch_order(0);
        assert_ne!(e0, src.epoch_order(1));
        let mut sorted = e0.clone();
        sorted.sort();
        assert_eq!(sorted, (0..200).collect::<Vec<_>>());
        Ok(())
    }
}
