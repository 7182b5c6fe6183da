//! An encoder-decoder Transformer for translation ("Attention Is All You Need"): token
//! embeddings scaled by `sqrt(d_model)`, sinusoidal positions, PyTorch's `nn.Transformer`, and a
//! generator (optionally tied to the target embeddings, with embeddings optionally shared
//! between languages). Greedy and beam-search decoding run incrementally: the encoder runs once,
//! the memory's keys/values are projected once per layer, and each decoding step feeds only the
//! new token (cached self-attention keys/values), so generating `L` tokens is not `L`
//! re-encodings.
//!
//! Weight names: `src_tok_emb.weight`, `tgt_tok_emb.weight` (absent when shared),
//! `transformer.*` (PyTorch's `nn.Transformer` keys), `generator.weight`/`generator.bias`
//! (absent when tied).

use candle_core::{DType, Module, Result, Tensor, D};
use candle_nn::{Embedding, Init, VarBuilder};
use serde::{Deserialize, Serialize};
use zoo_nn::{
    DecoderArgs, EncoderArgs, Linear, SinusoidalPositionalEncoding, Transformer, TransformerConfig,
    TransformerLayerConfig,
};

/// Sizes and options of [`Seq2SeqTransformer`].
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct Seq2SeqConfig {
    /// Source vocabulary size.
    pub src_vocab_size: usize,
    /// Target vocabulary size.
    pub tgt_vocab_size: usize,
    /// One embedding matrix for both languages (needs equal vocabularies, e.g. a joint BPE).
    pub share_embeddings: bool,
    /// The generator reuses the target embedding matrix.
    pub tie_generator: bool,
    /// Encoder/decoder options (d_model, heads, feed-forward, dropout, norm placement…).
    pub layer: TransformerLayerConfig,
    /// Encoder layers.
    pub num_encoder_layers: usize,
    /// Decoder layers.
    pub num_decoder_layers: usize,
    /// Longest sentence (positions of the sinusoidal table).
    pub max_len: usize,
    /// Padding id (ignored by attention and by the loss).
    pub pad_id: u32,
    /// Beginning-of-sentence id (first decoder input).
    pub bos_id: u32,
    /// End-of-sentence id (ends a hypothesis).
    pub eos_id: u32,
}

impl Default for Seq2SeqConfig {
    fn default() -> Self {
        Self {
            src_vocab_size: 8000,
            tgt_vocab_size: 8000,
            share_embeddings: false,
            tie_generator: true,
            layer: TransformerLayerConfig {
                d_model: 256,
                nhead: 8,
                dim_feedforward: 1024,
                dropout: 0.1,
                norm_first: true,
                ..Default::default()
            },
            num_encoder_layers: 3,
            num_decoder_layers: 3,
            max_len: 256,
            pad_id: 0,
            bos_id: 1,
            eos_id: 2,
        }
    }
}

/// Options of [`Seq2SeqTransformer::beam_search`].
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct BeamConfig {
    /// Hypotheses kept per step (1 = greedy).
    pub beam_size: usize,
    /// GNMT length penalty exponent α: scores are divided by `((5 + len) / 6)^α`.
    pub length_penalty: f64,
    /// Longest output, in tokens (without BOS).
    pub max_len: usize,
}

impl Default for BeamConfig {
    fn default() -> Self {
        Self {
            beam_size: 4,
            length_penalty: 0.6,
            max_len: 64,
        }
    }
}

/// The translator; see the module docs.
#[derive(Debug, Clone)]
pub struct Seq2SeqTransformer {
    src_emb: Embedding,
    tgt_emb: Embedding,
    pe: SinusoidalPositionalEncoding,
    transformer: Transformer,
    generator: Linear,
    cfg: Seq2SeqConfig,
}

impl Seq2SeqTransformer {
    /// Builds (or loads) the model through `vb`.
    pub fn new(cfg: &Seq2SeqConfig, vb: VarBuilder) -> Result<Self> {
        let d = cfg.layer.d_model;
        if cfg.share_embeddings && cfg.src_vocab_size != cfg.tgt_vocab_size {
            candle_core::bail!(
                "Seq2SeqTransformer: shared embeddings need equal vocabularies, got {} and {}",
                cfg.src_vocab_size,
                cfg.tgt_vocab_size
            );
        }
        let init = Init::Randn {
            mean: 0.0,
            stdev: (d as f64).powf(-0.5),
        };
        let src_w = vb.get_with_hints((cfg.src_vocab_size, d), "src_tok_emb.weight", init)?;
        let tgt_w = if cfg.share_embeddings {
            src_w.clone()
        } else {
            vb.get_with_hints((cfg.tgt_vocab_size, d), "tgt_tok_emb.weight", init)?
        };
        let generator = if cfg.tie_generator {
            let b = vb.get_with_hints(cfg.tgt_vocab_size, "generator.bias", Init::Const(0.0))?;
            Linear::new(tgt_w.clone(), Some(b))
        } else {
            zoo_nn::init::linear_torch(d, cfg.tgt_vocab_size, true, vb.pp("generator"))?
        };
        let transformer = Transformer::new(
            &TransformerConfig {
                layer: TransformerLayerConfig {
                    batch_first: true,
                    ..cfg.layer.clone()
                },
                num_encoder_layers: cfg.num_encoder_layers,
                num_decoder_layers: cfg.num_decoder_layers,
            },
            vb.pp("transformer"),
        )?;
        Ok(Self {
            src_emb: Embedding::new(src_w, d),
            tgt_emb: Embedding::new(tgt_w, d),
            pe: SinusoidalPositionalEncoding::new(d, cfg.max_len, vb.dtype(), vb.device())?,
            transformer,
            generator,
            cfg: cfg.clone(),
        })
    }

    /// The configuration.
    pub fn config(&self) -> &Seq2SeqConfig {
        &self.cfg
    }

    /// `(batch, len)` u8: 1 where `ids` is padding.
    fn padding(&self, ids: &Tensor) -> Result<Tensor> {
        ids.eq(self.cfg.pad_id)
    }

    /// Embeddings × sqrt(d_model) + positions `offset..`, dropout while training.
    fn embed(&self, emb: &Embedding, ids: &Tensor, offset: usize, train: bool) -> Result<Tensor> {
        let x = (emb.forward(ids)? * (self.cfg.layer.d_model as f64).sqrt())?;
        let x = self.pe.forward_at(&x, offset)?;
        zoo_kernels::dropout::dropout_t(x, self.cfg.layer.dropout, train)
    }

    /// Encoder output `(batch, src_len, d)` and the source padding mask.
    pub fn encode(&self, src: &Tensor, train: bool) -> Result<(Tensor, Tensor)> {
        let pad = self.padding(src)?;
        let x = self.embed(&self.src_emb, src, 0, train)?;
        let memory = self.transformer.encoder.forward(
            &x,
            &EncoderArgs {
                key_padding_mask: Some(&pad),
                train,
                ..Default::default()
            },
        )?;
        Ok((memory, pad))
    }

    /// Teacher-forced logits `(batch, tgt_len, tgt_vocab)` for source ids `(batch, src_len)` and
    /// decoder inputs `(batch, tgt_len)` (BOS + target without its last token).
    pub fn forward_t(&self, src: &Tensor, tgt_in: &Tensor, train: bool) -> Result<Tensor> {
        let (memory, src_pad) = self.encode(src, train)?;
        let tgt_pad = self.padding(tgt_in)?;
        let y = self.embed(&self.tgt_emb, tgt_in, 0, train)?;
        let out = self.transformer.decoder.forward(
            &y,
            &memory,
            &DecoderArgs {
                tgt_is_causal: true,
                tgt_key_padding_mask: Some(&tgt_pad),
                memory_key_padding_mask: Some(&src_pad),
                train,
                ..Default::default()
            },
        )?;
        self.generator.forward(&out)
    }

    /// Greedy decoding of one source sentence `(src_len,)`: the most likely token at each step.
    pub fn greedy(&self, src: &[u32], max_len: usize) -> Result<Vec<u32>> {
        self.beam_search(
            src,
            &BeamConfig {
                beam_size: 1,
                length_penalty: 0.0,
                max_len,
            },
        )
    }

    /// Beam search for one source sentence; returns the best hypothesis without BOS/EOS.
    pub fn beam_search(&self, src: &[u32], cfg: &BeamConfig) -> Result<Vec<u32>> {
        if cfg.beam_size == 0 {
            candle_core::bail!("beam_search: beam_size must be at least 1");
        }
        let dev = self.src_emb.embeddings().device().clone();
        let src_t = Tensor::new(src, &dev)?.unsqueeze(0)?;
        let (memory, src_pad) = self.encode(&src_t, false)?;
        let k = cfg.beam_size;
        // Every beam row attends to the same memory.
        let rows = Tensor::zeros(k, DType::U32, &dev)?;
        let memory = memory.index_select(&rows, 0)?;
        let src_pad = src_pad.index_select(&rows, 0)?;
        let mut cache = self.transformer.decoder.start_cache(&memory)?;
        let max_len = cfg.max_len.min(self.cfg.max_len.saturating_sub(1));
        let penalty = |len: usize| ((5.0 + len as f64) / 6.0).powf(cfg.length_penalty);
        // (tokens, log-probability); at the start only beam 0 is live.
        let mut beams: Vec<(Vec<u32>, f64)> = vec![(Vec::new(), 0.0)];
        let mut finished: Vec<(Vec<u32>, f64)> = Vec::new();
        let mut last: Vec<u32> = vec![self.cfg.bos_id; k];
        for step in 0..max_len {
            let ids = Tensor::new(last.as_slice(), &dev)?.unsqueeze(1)?;
            let x = self.embed(&self.tgt_emb, &ids, step, false)?;
            let out = self
                .transformer
                .decoder
                .forward_step(&x, &mut cache, Some(&src_pad))?;
            let logp = candle_nn::ops::log_softmax(
                &self.generator.forward(&out)?.squeeze(1)?.to_dtype(DType::F32)?,
                D::Minus1,
            )?;
            let logp: Vec<Vec<f32>> = logp.to_vec2()?;
            // Candidates from every live beam, best first.
            let mut cand: Vec<(usize, u32, f64)> = Vec::new();
            for (b, (_, score)) in beams.iter().enumerate() {
                let mut row: Vec<(u32, f32)> =
                    logp[b].iter().enumerate().map(|(t, &l)| (t as u32, l)).collect();
                row.sort_by(|a, b| b.1.total_cmp(&a.1));
                for &(t, l) in row.iter().take(k) {
                    cand.push((b, t, score + l as f64));
                }
            }
            cand.sort_by(|a, b| b.2.total_cmp(&a.2));
            let mut next: Vec<(Vec<u32>, f64)> = Vec::new();
            let mut parents: Vec<u32> = Vec::new();
            for (b, t, s) in cand {
                if t == self.cfg.eos_id {
                    finished.push((beams[b].0.clone(), s / penalty(beams[b].0.len() + 1)));
                } else {
                    let mut toks = beams[b].0.clone();
                    toks.push(t);
                    next.push((toks, s));
                    parents.push(b as u32);
                }
                if next.len() == k {
                    break;
                }
            }
            // Stop when no live hypothesis can beat the best finished one (scores only fall).
            let best_done = finished.iter().map(|f| f.1).fold(f64::NEG_INFINITY, f64::max);
            let best_live = next.first().map_or(f64::NEG_INFINITY, |n| n.1 / penalty(max_len));
            if next.is_empty() || (finished.len() >= k && best_done >= best_live) {
                beams = next;
                break;
            }
            // Reorder the caches so row i continues hypothesis i (padding rows repeat the last).
            let mut order = parents.clone();
            order.resize(k, *parents.last().unwrap_or(&0));
            cache.select_rows(&Tensor::new(order.as_slice(), &dev)?)?;
            last = next
                .iter()
                .map(|n| *n.0.last().unwrap_or(&self.cfg.bos_id))
                .collect();
            last.resize(k, self.cfg.pad_id);
            beams = next;
        }
        for (toks, s) in beams {
            finished.push((toks.clone(), s / penalty(toks.len())));
        }
        Ok(finished
            .into_iter()
            .max_by(|a, b| a.1.total_cmp(&b.1))
            .map(|f| f.0)
            .unwrap_or_default())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::Device;
    use candle_nn::VarMap;

    fn tiny() -> Seq2SeqConfig {
        Seq2SeqConfig {
            src_vocab_size: 13,
            tgt_vocab_size: 13,
            layer: TransformerLayerConfig {
                d_model: 16,
                nhead: 2,
                dim_feedforward: 32,
                dropout: 0.0,
                norm_first: true,
                ..Default::default()
            },
            num_encoder_layers: 1,
            num_decoder_layers: 2,
            max_len: 32,
            ..Default::default()
        }
    }

    #[test]
    fn greedy_with_caches_equals_full_recomputation_and_beam_one_is_greedy() -> Result<()> {
        let dev = Device::Cpu;
        let vm = VarMap::new();
        let m = Seq2SeqTransformer::new(
            &tiny(),
            zoo_nn::init::seeded_var_builder(&vm, 5, DType::F32, &dev),
        )?;
        let src = [5u32, 7, 3, 9, 4];
        let greedy = m.greedy(&src, 10)?;
        // Recompute every step from scratch with teacher forcing on the greedy prefix.
        let mut prefix = vec![m.cfg.bos_id];
        for &tok in &greedy {
            let logits = m.forward_t(
                &Tensor::new(&src, &dev)?.unsqueeze(0)?,
                &Tensor::new(prefix.as_slice(), &dev)?.unsqueeze(0)?,
                false,
            )?;
            let best = logits
                .squeeze(0)?
                .get(prefix.len() - 1)?
                .argmax(0)?
                .to_scalar::<u32>()?;
            assert_eq!(best, tok, "cached greedy decoding diverged after {prefix:?}");
            prefix.push(tok);
        }
        let beam1 = m.beam_search(
            &src,
            &BeamConfig {
                beam_size: 1,
                length_penalty: 0.0,
                max_len: 10,
            },
        )?;
        assert_eq!(beam1, greedy);
        let beam4 = m.beam_search(
            &src,
            &BeamConfig {
                beam_size: 4,
                length_penalty: 0.6,
                max_len: 10,
            },
        )?;
        assert!(beam4.len() <= 10);
        Ok(())
    }
}
