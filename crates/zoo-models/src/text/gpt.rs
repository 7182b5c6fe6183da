//! A decoder-only Transformer language model (GPT): token embeddings, learned or rotary
//! positions, pre-norm blocks with causal fused attention, a final norm and a language-model
//! head tied to the token embeddings; KV-cache generation with temperature / top-k / top-p.
//!
//! Weight names: `wte.weight`, `wpe.weight` (learned positions), `h.N.*` (each block is a
//! PyTorch `nn.TransformerEncoderLayer` with `norm_first=True`: `self_attn.in_proj_weight`,
//! `linear1`, `linear2`, `norm1`, `norm2`), `ln_f.*`, and `lm_head.weight` when untied.

use super::sampling::{Sampler, SamplingConfig};
use candle_core::{DType, Device, Module, ModuleT, Result, Tensor};
use candle_nn::{Embedding, Init, VarBuilder};
use serde::{Deserialize, Serialize};
use zoo_nn::{
    Activation, EncoderArgs, KvCache, LearnedPositionalEmbedding, Linear, Norm, NormKind, RotaryEmbedding,
    TransformerEncoderLayer, TransformerLayerConfig,
};

/// How positions reach the model.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum PositionKind {
    /// Learned absolute embeddings added to the tokens (GPT-2).
    #[default]
    Learned,
    /// Rotary embeddings on queries and keys (GPT-NeoX, LLaMA).
    Rotary,
}

/// Sizes and options of [`Gpt`]; the defaults are nanoGPT's Shakespeare character model.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct GptConfig {
    /// Vocabulary size.
    pub vocab_size: usize,
    /// Longest context (positions `0..block_size`).
    pub block_size: usize,
    /// Transformer blocks.
    pub n_layer: usize,
    /// Attention heads.
    pub n_head: usize,
    /// Key/value heads (grouped-query attention); `None` = `n_head`.
    pub n_kv_head: Option<usize>,
    /// Model width.
    pub n_embd: usize,
    /// Dropout on embeddings, attention and residual branches while training.
    pub dropout: f32,
    /// Biases in linear layers and norms.
    pub bias: bool,
    /// Learned or rotary positions.
    pub positions: PositionKind,
    /// Rotary base (with rotary positions).
    pub rope_base: f64,
    /// The output projection shares the token embedding matrix.
    pub tie_embeddings: bool,
    /// Feed-forward width as a multiple of `n_embd`.
    pub ff_mult: usize,
    /// Feed-forward activation (`Silu` with `gated_ffn` is SwiGLU).
    pub activation: Activation,
    /// Gated feed-forward.
    pub gated_ffn: bool,
    /// Layer norm or RMS norm.
    pub norm: NormKind,
    /// Norm epsilon.
    pub layer_norm_eps: f64,
}

impl Default for GptConfig {
    fn default() -> Self {
        Self {
            vocab_size: 65,
            block_size: 256,
            n_layer: 6,
            n_head: 6,
            n_kv_head: None,
            n_embd: 384,
            dropout: 0.2,
            bias: true,
            positions: PositionKind::Learned,
            rope_base: 10000.0,
            tie_embeddings: true,
            ff_mult: 4,
            activation: Activation::Gelu,
            gated_ffn: false,
            norm: NormKind::LayerNorm,
            layer_norm_eps: 1e-5,
        }
    }
}

impl GptConfig {
    fn layer(&self) -> TransformerLayerConfig {
        TransformerLayerConfig {
            d_model: self.n_embd,
            nhead: self.n_head,
            num_kv_heads: self.n_kv_head,
            dim_feedforward: self.ff_mult * self.n_embd,
            dropout: self.dropout,
            activation: self.activation,
            gated_ffn: self.gated_ffn,
            layer_norm_eps: self.layer_norm_eps,
            batch_first: true,
            norm_first: true,
            bias: self.bias,
            norm: self.norm,
        }
    }
}

/// The decoder-only language model; see the module docs.
#[derive(Debug, Clone)]
pub struct Gpt {
    wte: Embedding,
    wpe: Option<LearnedPositionalEmbedding>,
    rope: Option<RotaryEmbedding>,
    blocks: Vec<TransformerEncoderLayer>,
    ln_f: Norm,
    lm_head: Linear,
    cfg: GptConfig,
}

impl Gpt {
    /// Builds (or loads) the model through `vb`.
    pub fn new(cfg: &GptConfig, vb: VarBuilder) -> Result<Self> {
        if cfg.vocab_size == 0 || cfg.block_size == 0 || cfg.n_embd == 0 {
            candle_core::bail!("Gpt: vocab_size, block_size and n_embd must be positive ({cfg:?})");
        }
        let wte_w = vb.get_with_hints(
            (cfg.vocab_size, cfg.n_embd),
            "wte.weight",
            Init::Randn {
                mean: 0.0,
                stdev: 0.02,
            },
        )?;
        let (wpe, rope) = match cfg.positions {
            PositionKind::Learned => (
                Some(LearnedPositionalEmbedding::new(
                    cfg.block_size,
                    cfg.n_embd,
                    vb.pp("wpe"),
                )?),
                None,
            ),
            PositionKind::Rotary => {
                let head_dim = cfg.n_embd / cfg.n_head.max(1);
                let rope =
                    RotaryEmbedding::new(head_dim, cfg.block_size, cfg.rope_base, vb.dtype(), vb.device())?;
                (None, Some(rope))
            }
        };
        let layer = cfg.layer();
        let blocks = (0..cfg.n_layer)
            .map(|i| TransformerEncoderLayer::new(&layer, vb.pp("h").pp(i)))
            .collect::<Result<Vec<_>>>()?;
        let ln_f = Norm::new(cfg.norm, cfg.n_embd, cfg.layer_norm_eps, cfg.bias, vb.pp("ln_f"))?;
        let lm_head = if cfg.tie_embeddings {
            Linear::new(wte_w.clone(), None)
        } else {
            let w = vb.get_with_hints(
                (cfg.vocab_size, cfg.n_embd),
                "lm_head.weight",
                Init::Randn {
                    mean: 0.0,
                    stdev: 0.02,
                },
            )?;
            Linear::new(w, None)
        };
        Ok(Self {
            wte: Embedding::new(wte_w, cfg.n_embd),
            wpe,
            rope,
            blocks,
            ln_f,
            lm_head,
            cfg: cfg.clone(),
        })
    }

    /// The configuration.
    pub fn config(&self) -> &GptConfig {
        &self.cfg
    }

    fn check_ids(&self, ids: &Tensor) -> Result<(usize, usize)> {
        let (b, t) = ids.dims2().map_err(|_| {
            candle_core::Error::Msg(format!(
                "Gpt: token ids must be (batch, seq), got {:?}",
                ids.dims()
            ))
        })?;
        if t > self.cfg.block_size {
            candle_core::bail!(
                "Gpt: sequence of {t} tokens is longer than block_size {}",
                self.cfg.block_size
            );
        }
        Ok((b, t))
    }

    /// Embeddings of `ids` at positions `offset..` (token + learned position).
    fn embed(&self, ids: &Tensor, offset: usize) -> Result<Tensor> {
        let x = self.wte.forward(ids)?;
        match &self.wpe {
            Some(wpe) => wpe.forward_at(&x, offset),
            None => Ok(x),
        }
    }

    /// Logits `(batch, seq, vocab)` for token ids `(batch, seq)` u32 (causal: position `i`
    /// sees tokens `0..=i`).
    pub fn forward_t(&self, ids: &Tensor, train: bool) -> Result<Tensor> {
        self.check_ids(ids)?;
        let mut x = zoo_kernels::dropout::dropout_t(self.embed(ids, 0)?, self.cfg.dropout, train)?;
        for block in &self.blocks {
            x = match &self.rope {
                Some(rope) => block.forward_rotary(&x, rope, train)?,
                None => block.forward(
                    &x,
                    &EncoderArgs {
                        is_causal: true,
                        train,
                        ..Default::default()
                    },
                )?,
            };
        }
        self.lm_head.forward(&self.ln_f.forward(&x)?)
    }

    /// Feeds `ids (batch, n)` at the positions after those in `caches`; returns the logits of
    /// the last position, `(batch, vocab)`.
    fn step(&self, ids: &Tensor, caches: &mut [KvCache]) -> Result<Tensor> {
        let offset = caches.first().map_or(0, KvCache::len);
        let mut x = self.embed(ids, offset)?;
        for (block, cache) in self.blocks.iter().zip(caches.iter_mut()) {
            x = block.forward_cached(&x, cache, self.rope.as_ref())?;
        }
        let n = x.dim(1)?;
        self.lm_head
            .forward(&self.ln_f.forward(&x.narrow(1, n - 1, 1)?)?)?
            .squeeze(1)
    }

    /// Continues `prompt` by `max_new_tokens` tokens (batch of one), with per-layer KV caches:
    /// each new token costs one position, not a pass over the whole context. When the context
    /// would pass `block_size`, the cache restarts from the last `block_size / 2` tokens.
    /// Returns the new tokens only.
    pub fn generate(
        &self,
        prompt: &[u32],
        max_new_tokens: usize,
        sampling: &SamplingConfig,
    ) -> Result<Vec<u32>> {
        if prompt.is_empty() {
            candle_core::bail!("Gpt::generate: the prompt must hold at least one token");
        }
        if let Some(&bad) = prompt.iter().find(|&&t| t as usize >= self.cfg.vocab_size) {
            candle_core::bail!(
                "Gpt::generate: token {bad} is outside the vocabulary ({})",
                self.cfg.vocab_size
            );
        }
        let dev = self.wte.embeddings().device().clone();
        let mut sampler = Sampler::new(sampling)?;
        let mut context: Vec<u32> = prompt.to_vec();
        let mut out = Vec::with_capacity(max_new_tokens);
        let mut caches = vec![KvCache::new(); self.blocks.len()];
        let keep = (self.cfg.block_size / 2).max(1);
        let prefill = |ctx: &[u32], caches: &mut Vec<KvCache>| -> Result<Tensor> {
            caches.iter_mut().for_each(KvCache::reset);
            let start = ctx.len().saturating_sub(if ctx.len() > self.cfg.block_size {
                keep
            } else {
                ctx.len()
            });
            self.step(&Tensor::new(&ctx[start..], &dev)?.unsqueeze(0)?, caches)
        };
        let mut logits = prefill(&context, &mut caches)?;
        for _ in 0..max_new_tokens {
            let next = sampler.sample(&logits.squeeze(0)?)?;
            out.push(next);
            context.push(next);
            logits = if caches[0].len() + 1 > self.cfg.block_size {
                let start = context.len() - keep;
                prefill(&context[start..], &mut caches)?
            } else {
                self.step(&Tensor::new(&[next], &dev)?.unsqueeze(0)?, &mut caches)?
            };
        }
        Ok(out)
    }

    /// Logits of the last position for every prefix length, recomputed without caches
    /// (`(seq, vocab)`); the reference that cached generation is tested against.
    pub fn last_logits_uncached(&self, ids: &[u32], device: &Device) -> Result<Tensor> {
        let logits = self.forward_t(&Tensor::new(ids, device)?.unsqueeze(0)?, false)?;
        logits.squeeze(0)?.to_dtype(DType::F32)
    }
}

impl ModuleT for Gpt {
    fn forward_t(&self, ids: &Tensor, train: bool) -> Result<Tensor> {
        Gpt::forward_t(self, ids, train)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_nn::VarMap;

    fn tiny(positions: PositionKind) -> GptConfig {
        GptConfig {
            vocab_size: 11,
            block_size: 16,
            n_layer: 2,
            n_head: 2,
            n_embd: 16,
            dropout: 0.0,
            positions,
            ..Default::default()
        }
    }

    #[test]
    fn cached_generation_equals_recomputation_and_is_causal() -> Result<()> {
        let dev = Device::Cpu;
        for positions in [PositionKind::Learned, PositionKind::Rotary] {
            let vm = VarMap::new();
            let gpt = Gpt::new(
                &tiny(positions),
                zoo_nn::init::seeded_var_builder(&vm, 1, DType::F32, &dev),
            )?;
            // Greedy generation with caches must pick exactly what full recomputation picks.
            let prompt = [1u32, 5, 7];
            let greedy = SamplingConfig {
                temperature: 0.0,
                ..Default::default()
            };
            let generated = gpt.generate(&prompt, 8, &greedy)?;
            let mut ctx = prompt.to_vec();
            for &tok in &generated {
                let logits = gpt.last_logits_uncached(&ctx, &dev)?;
                let last = logits.get(ctx.len() - 1)?.argmax(0)?.to_scalar::<u32>()?;
                assert_eq!(tok, last, "{positions:?}: cached generation diverged at {ctx:?}");
                ctx.push(tok);
            }
            // Causality: changing a later token leaves earlier logits unchanged.
            let a = gpt.last_logits_uncached(&[1, 2, 3, 4], &dev)?;
            let b = gpt.last_logits_uncached(&[1, 2, 3, 9], &dev)?;
            let d = (a.narrow(0, 0, 3)? - b.narrow(0, 0, 3)?)?
                .abs()?
                .max_all()?
                .to_scalar::<f32>()?;
            assert!(d < 1e-6, "{positions:?}: future tokens leak into the past ({d})");
            // Past block_size the cache restarts instead of failing.
            assert_eq!(gpt.generate(&prompt, 40, &SamplingConfig::default())?.len(), 40);
        }
        Ok(())
    }

    #[test]
    fn tied_head_shares_the_embedding_and_bad_inputs_are_errors() -> Result<()> {
        let dev = Device::Cpu;
        let vm = VarMap::new();
        let gpt = Gpt::new(
            &tiny(PositionKind::Learned),
            zoo_nn::init::seeded_var_builder(&vm, 1, DType::F32, &dev),
        )?;
        let names: Vec<String> = vm
            .data()
            .lock()
            .map_err(|_| candle_core::Error::Msg("lock".into()))?
            .keys()
            .cloned()
            .collect();
        assert!(names.contains(&"wte.weight".to_string()) && !names.iter().any(|n| n.starts_with("lm_head")));
        assert!(
            gpt.forward_t(&Tensor::zeros((1, 17), DType::U32, &dev)?, false)
                .is_err(),
            "longer than block_size"
        );
        assert!(
            gpt.generate(&[11], 1, &SamplingConfig::default()).is_err(),
            "token outside the vocabulary"
        );
        Ok(())
    }
}
