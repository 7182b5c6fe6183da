//! Sentence embeddings as sentence-transformers computes them: tokenize with padding to the
//! longest sentence of the batch (not the tokenizer file's fixed 128), truncate at the model's
//! `max_seq_length`, run BERT, mean-pool over real tokens, L2-normalize.

use super::bert::{pool_sentences, Bert, Pooling};
use super::msg;
use candle_core::{Device, Result, Tensor};
use tokenizers::Tokenizer;
use zoo_data::hub::HubOptions;

/// A BERT encoder with its tokenizer and pooling: text in, one vector per sentence out.
pub struct SentenceEncoder {
    bert: Bert,
    tokenizer: Tokenizer,
    pooling: Pooling,
    normalize: bool,
    device: Device,
}

impl SentenceEncoder {
    /// Loads model and tokenizer (mean pooling, normalized, as `all-MiniLM-L6-v2`); sequences
    /// are truncated at the repository's `max_seq_length` (else the model's position limit).
    pub fn from_pretrained(repo_or_dir: &str, opts: &HubOptions, device: &Device) -> Result<Self> {
        let (bert, files) = Bert::from_pretrained(repo_or_dir, opts, device)?;
        let Some(tok_path) = &files.tokenizer else {
            candle_core::bail!("{repo_or_dir}: no tokenizer.json, which a sentence encoder needs")
        };
        let tokenizer =
            Tokenizer::from_file(tok_path).map_err(|e| msg(format!("{}: {e}", tok_path.display())))?;
        let max_len = files
            .max_seq_length()?
            .unwrap_or(bert.config().max_position_embeddings)
            .min(bert.config().max_position_embeddings);
        Self::new(bert, tokenizer, max_len, Pooling::Mean, true, device)
    }

    /// From parts. The tokenizer's own padding/truncation settings are replaced: batches pad to
    /// their longest sentence and truncate at `max_len` tokens.
    pub fn new(
        bert: Bert,
        mut tokenizer: Tokenizer,
        max_len: usize,
        pooling: Pooling,
        normalize: bool,
        device: &Device,
    ) -> Result<Self> {
        zoo_data::tokenize::set_batch_lengths(&mut tokenizer, true, max_len).map_err(msg)?;
        Ok(Self {
            bert,
            tokenizer,
            pooling,
            normalize,
            device: device.clone(),
        })
    }

    /// The encoder.
    pub fn bert(&self) -> &Bert {
        &self.bert
    }

    /// The tokenizer, with the batch padding and truncation described in [`Self::new`].
    pub fn tokenizer(&self) -> &Tokenizer {
        &self.tokenizer
    }

    /// `(input_ids, attention_mask)`, both `(batch, longest)` u32.
    pub fn tokenize(&self, texts: &[&str]) -> Result<(Tensor, Tensor)> {
        if texts.is_empty() {
            candle_core::bail!("SentenceEncoder: no sentences to encode");
        }
        let enc = self.tokenizer.encode_batch(texts.to_vec(), true).map_err(msg)?;
        let (b, l) = (enc.len(), enc[0].get_ids().len());
        let ids: Vec<u32> = enc.iter().flat_map(|e| e.get_ids().iter().copied()).collect();
        let mask: Vec<u32> = enc
            .iter()
            .flat_map(|e| e.get_attention_mask().iter().copied())
            .collect();
        Ok((
            Tensor::from_vec(ids, (b, l), &self.device)?,
            Tensor::from_vec(mask, (b, l), &self.device)?,
        ))
    }

    /// Token states `(batch, longest, hidden)` and the attention mask, evaluation mode.
    pub fn token_embeddings(&self, texts: &[&str]) -> Result<(Tensor, Tensor)> {
        let (ids, mask) = self.tokenize(texts)?;
        Ok((self.bert.forward(&ids, Some(&mask), None, false)?, mask))
    }

    /// One vector per sentence, `(batch, hidden)`, all sentences in one padded batch.
    pub fn embed(&self, texts: &[&str]) -> Result<Tensor> {
        let (hidden, mask) = self.token_embeddings(texts)?;
        pool_sentences(&hidden, &mask, self.pooling, self.normalize)
    }

    /// Embeddings of any number of sentences, `(texts.len(), hidden)` in the given order, computed
    /// `batch_size` at a time. Like sentence-transformers' `encode`, sentences are grouped by
    /// length first, so a batch pads to a similar length instead of to the longest overall.
    pub fn encode(&self, texts: &[&str], batch_size: usize) -> Result<Tensor> {
        if batch_size == 0 {
            candle_core::bail!("SentenceEncoder: batch_size must be at least 1");
        }
        // Order by character length, longest first (sentence-transformers' heuristic).
        let mut order: Vec<usize> = (0..texts.len()).collect();
        order.sort_by_key(|&i| std::cmp::Reverse(texts[i].chars().count()));
        let mut parts = Vec::with_capacity(texts.len().div_ceil(batch_size));
        for chunk in order.chunks(batch_size) {
            let batch: Vec<&str> = chunk.iter().map(|&i| texts[i]).collect();
            parts.push(self.embed(&batch)?);
        }
        let sorted = Tensor::cat(&parts, 0)?;
        // Row r of `sorted` is sentence order[r]; put it back at its place.
        let mut back = vec![0u32; texts.len()];
        for (r, &i) in order.iter().enumerate() {
            back[i] = r as u32;
        }
        sorted.index_select(&Tensor::from_vec(back, texts.len(), &self.device)?, 0)
    }
}
