//! Language-model data: a token stream cut into random contiguous blocks (nanoGPT's
//! `get_batch`), as a [`BatchSource`] whose blocks are drawn afresh every epoch.

use crate::batcher::{shuffled_order, Batch, BatchSource};
use crate::error::{DataError, Result};
use candle_core::{Device, Tensor};
use std::path::Path;

/// A token stream with a block size: each item is a block of `block_size` tokens starting at a
/// random position; the target is the same block shifted by one token.
#[derive(Debug, Clone)]
pub struct LmBlocks {
    tokens: Vec<u32>,
    block_size: usize,
    batch_size: usize,
    blocks_per_epoch: usize,
    seed: u64,
    device: Device,
}

impl LmBlocks {
    /// `blocks_per_epoch` blocks per epoch (by default one pass over the tokens:
    /// `len / block_size`), drawn from `seed`.
    pub fn new(
        tokens: Vec<u32>,
        block_size: usize,
        batch_size: usize,
        seed: u64,
        device: &Device,
    ) -> Result<Self> {
        if block_size == 0 || batch_size == 0 {
            return Err(DataError::InvalidArgument(
                "block_size and batch_size must be at least 1".into(),
            ));
        }
        if tokens.len() <= block_size {
            return Err(DataError::InvalidArgument(format!(
                "{} tokens cannot fill one block of {block_size} plus its target",
                tokens.len()
            )));
        }
        let blocks_per_epoch = (tokens.len() / block_size).max(1);
        Ok(Self {
            tokens,
            block_size,
            batch_size,
            blocks_per_epoch,
            seed,
            device: device.clone(),
        })
    }

    /// Sets how many blocks make one epoch.
    pub fn with_blocks_per_epoch(mut self, n: usize) -> Self {
        self.blocks_per_epoch = n.max(1);
        self
    }

    /// The tokens.
    pub fn tokens(&self) -> &[u32] {
        &self.tokens
    }

    /// Tokens per block.
    pub fn block_size(&self) -> usize {
        self.block_size
    }

    /// Start of block `index` of `epoch`: uniform over every valid start, fixed by
    /// `(seed, epoch, index)`.
    fn start(&self, epoch: usize, index: usize) -> usize {
        let mut z = self.seed
            ^ (epoch as u64).wrapping_mul(0x9E37_79B9_7F4A_7C15)
            ^ (index as u64).wrapping_mul(0xD1B5_4A32_D192_ED03);
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^= z >> 31;
        (z % (self.tokens.len() - self.block_size) as u64) as usize
    }
}

impl BatchSource for LmBlocks {
    fn num_items(&self) -> usize {
        self.blocks_per_epoch
    }

    fn batch_size(&self) -> usize {
        self.batch_size
    }

    fn epoch_order(&self, epoch: usize) -> Vec<usize> {
        shuffled_order(self.blocks_per_epoch, self.seed, epoch)
    }

    fn make_batch(&self, indices: &[usize]) -> Result<Batch> {
        self.make_epoch_batch(0, indices)
    }

    fn make_epoch_batch(&self, epoch: usize, indices: &[usize]) -> Result<Batch> {
        let t = self.block_size;
        let mut x = Vec::with_capacity(indices.len() * t);
        let mut y = Vec::with_capacity(indices.len() * t);
        for &i in indices {
            let s = self.start(epoch, i);
            x.extend_from_slice(&self.tokens[s..s + t]);
            y.extend_from_slice(&self.tokens[s + 1..s + t + 1]);
        }
        Ok(Batch {
            inputs: Tensor::from_vec(x, (indices.len(), t), &self.device)?,
            targets: Tensor::from_vec(y, (indices.len(), t), &self.device)?,
            extra: Vec::new(),
        })
    }
}

/// Consecutive, non-overlapping blocks covering a token stream once, in order: the
/// deterministic evaluation counterpart of [`LmBlocks`].
#[derive(Debug, Clone)]
pub struct LmEvalBlocks {
    tokens: Vec<u32>,
    block_size: usize,
    batch_size: usize,
    device: Device,
}

impl LmEvalBlocks {
    /// Every full block of `tokens` (with its shifted target).
    pub fn new(tokens: Vec<u32>, block_size: usize, batch_size: usize, device: &Device) -> Result<Self> {
        if block_size == 0 || batch_size == 0 || tokens.len() <= block_size {
            return Err(DataError::InvalidArgument(format!(
                "{} tokens, block {block_size}, batch {batch_size}: need at least one block and a batch of 1",
                tokens.len()
            )));
        }
        Ok(Self {
            tokens,
            block_size,
            batch_size,
            device: device.clone(),
        })
    }
}

impl BatchSource for LmEvalBlocks {
    fn num_items(&self) -> usize {
        (self.tokens.len() - 1) / self.block_size
    }

    fn batch_size(&self) -> usize {
        self.batch_size
    }

    fn epoch_order(&self, _epoch: usize) -> Vec<usize> {
        (0..self.num_items()).collect()
    }

    fn make_batch(&self, indices: &[usize]) -> Result<Batch> {
        let t = self.block_size;
        let mut x = Vec::with_capacity(indices.len() * t);
        let mut y = Vec::with_capacity(indices.len() * t);
        for &i in indices {
            x.extend_from_slice(&self.tokens[i * t..(i + 1) * t]);
            y.extend_from_slice(&self.tokens[i * t + 1..(i + 1) * t + 1]);
        }
        Ok(Batch {
            inputs: Tensor::from_vec(x, (indices.len(), t), &self.device)?,
            targets: Tensor::from_vec(y, (indices.len(), t), &self.device)?,
            extra: Vec::new(),
        })
    }
}

/// Reads a UTF-8 text corpus (e.g. Tiny Shakespeare's `input.txt`) and splits it at a character
/// boundary: the first `train_fraction` for training, the rest for validation (nanoGPT: 0.9).
pub fn read_split_text(path: impl AsRef<Path>, train_fraction: f64) -> Result<(String, String)> {
    let path = path.as_ref();
    let text = std::fs::read_to_string(path).map_err(|e| DataError::io(path, e))?;
    if !(0.0..=1.0).contains(&train_fraction) {
        return Err(DataError::InvalidArgument(format!(
            "train_fraction {train_fraction} must be in [0, 1]"
        )));
    }
    let n = text.chars().count();
    let cut = text
        .char_indices()
        .nth((n as f64 * train_fraction) as usize)
        .map_or(text.len(), |(i, _)| i);
    Ok((text[..cut].to_string(), text[cut..].to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::batcher::epoch_batches;

    #[test]
    fn blocks_are_shifted_pairs_and_change_between_epochs() -> Result<()> {
        let tokens: Vec<u32> = (0..1000).collect();
        let src = LmBlocks::new(tokens, 16, 4, 7, &Device::Cpu)?;
        assert_eq!(src.num_items(), 62);
        let b0: Vec<_> = epoch_batches(&src, 0).collect::<Result<_>>()?;
        let b1: Vec<_> = epoch_batches(&src, 1).collect::<Result<_>>()?;
        let x = b0[0].inputs.to_vec2::<u32>()?;
        let y = b0[0].targets.to_vec2::<u32>()?;
        for (xr, yr) in x.iter().zip(&y) {
            for t in 0..16 {
                assert_eq!(yr[t], xr[t] + 1, "target is the next token");
                if t > 0 {
                    assert_eq!(xr[t], xr[t - 1] + 1, "blocks are contiguous");
                }
            }
        }
        assert_ne!(
            b0[0].inputs.to_vec2::<u32>()?,
            b1[0].inputs.to_vec2::<u32>()?,
            "fresh blocks every epoch"
        );
        // Same seed and epoch: same batches.
        let again: Vec<_> = epoch_batches(&src, 0).collect::<Result<_>>()?;
        assert_eq!(again[3].inputs.to_vec2::<u32>()?, b0[3].inputs.to_vec2::<u32>()?);
        Ok(())
    }

    #[test]
    fn eval_blocks_cover_the_stream_once() -> Result<()> {
        let src = LmEvalBlocks::new((0..50).collect(), 8, 4, &Device::Cpu)?;
        assert_eq!(src.num_items(), 6);
        let firsts: Vec<u32> = epoch_batches(&src, 0)
            .map(|b| b.and_then(|b| Ok(b.inputs.to_vec2::<u32>()?)))
            .collect::<Result<Vec<_>>>()?
            .concat()
            .iter()
            .map(|r| r[0])
            .collect();
        assert_eq!(firsts, vec![0, 8, 16, 24, 32, 40]);
        assert!(LmBlocks::new(vec![1, 2, 3], 3, 1, 0, &Device::Cpu).is_err());
        Ok(())
    }
}
