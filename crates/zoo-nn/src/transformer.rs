//! PyTorch's Transformer family — `nn.TransformerEncoderLayer`, `nn.TransformerDecoderLayer`,
//! `nn.TransformerEncoder`, `nn.TransformerDecoder`, `nn.Transformer` — with their arguments,
//! masks and `state_dict` key names (`self_attn`, `multihead_attn`, `linear1`, `linear2`,
//! `norm1..3`, `layers.N`, `encoder.norm`, `decoder.norm`), so a PyTorch checkpoint saved as
//! safetensors loads unchanged and gives the same outputs. Attention runs on the fused kernel
//! (through [`MultiHeadAttention`]); every op has a backward pass.
//!
//! Shapes are `(batch, seq, d_model)` (`batch_first`, the default here; PyTorch's default is
//! sequence-first, set `batch_first: false` for that).

use crate::activation::Activation;
use crate::attention::{KvCache, MhaArgs, MultiHeadAttention, MultiHeadAttentionConfig};
use crate::feed_forward::{FeedForward, FeedForwardConfig};
use crate::norm::{Norm, NormKind};
use crate::positional::RotaryEmbedding;
use candle_core::{Module, Result, Tensor};
use candle_nn::VarBuilder;
use serde::{Deserialize, Serialize};
use zoo_kernels::dropout::dropout_t;

/// Options of one encoder or decoder layer; names and defaults follow PyTorch.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct TransformerLayerConfig {
    /// Model width.
    pub d_model: usize,
    /// Attention heads; must divide `d_model`.
    pub nhead: usize,
    /// Key/value heads (grouped-query attention; `None` = `nhead`, as PyTorch).
    pub num_kv_heads: Option<usize>,
    /// Feed-forward hidden width.
    pub dim_feedforward: usize,
    /// Dropout (attention probabilities, feed-forward hidden layer, residual branches).
    pub dropout: f32,
    /// Feed-forward activation.
    pub activation: Activation,
    /// Gated feed-forward (SwiGLU with `Silu`); adds `linear_gate`.
    pub gated_ffn: bool,
    /// Normalization epsilon.
    pub layer_norm_eps: f64,
    /// `(batch, seq, feature)` inputs (true) or `(seq, batch, feature)`.
    pub batch_first: bool,
    /// Pre-norm (`x + f(norm(x))`) instead of post-norm (`norm(x + f(x))`).
    pub norm_first: bool,
    /// Biases in the linear layers and the layer norms.
    pub bias: bool,
    /// Layer norm (PyTorch) or RMS norm.
    pub norm: NormKind,
}

impl Default for TransformerLayerConfig {
    fn default() -> Self {
        Self {
            d_model: 512,
            nhead: 8,
            num_kv_heads: None,
            dim_feedforward: 2048,
            dropout: 0.1,
            activation: Activation::Relu,
            gated_ffn: false,
            layer_norm_eps: 1e-5,
            batch_first: true,
            norm_first: false,
            bias: true,
            norm: NormKind::LayerNorm,
        }
    }
}

impl TransformerLayerConfig {
    fn attention(&self) -> MultiHeadAttentionConfig {
        MultiHeadAttentionConfig {
            embed_dim: self.d_model,
            num_heads: self.nhead,
            num_kv_heads: self.num_kv_heads,
            dropout: self.dropout,
            bias: self.bias,
            kdim: None,
            vdim: None,
            // The layers work batch-first inside; conversion happens once at the edges.
            batch_first: true,
        }
    }

    fn feed_forward(&self) -> FeedForwardConfig {
        FeedForwardConfig {
            d_model: self.d_model,
            dim_feedforward: self.dim_feedforward,
            activation: self.activation,
            gated: self.gated_ffn,
            dropout: self.dropout,
            bias: self.bias,
        }
    }

    fn norm(&self, vb: VarBuilder) -> Result<Norm> {
        Norm::new(self.norm, self.d_model, self.layer_norm_eps, self.bias, vb)
    }

    /// The optional final norm of an encoder or decoder stack.
    fn final_norm(&self, wanted: bool, vb: VarBuilder) -> Result<Option<Norm>> {
        if wanted {
            self.norm(vb).map(Some)
        } else {
            Ok(None)
        }
    }

    fn check(&self) -> Result<()> {
        if self.nhead == 0 || !self.d_model.is_multiple_of(self.nhead) {
            candle_core::bail!(
                "Transformer layer: nhead ({}) must divide d_model ({})",
                self.nhead,
                self.d_model
            );
        }
        if !(0.0..1.0).contains(&self.dropout) {
            candle_core::bail!("Transformer layer: dropout {} must be in [0, 1)", self.dropout);
        }
        Ok(())
    }

    /// `(seq, batch, d)` → `(batch, seq, d)` when not batch-first.
    fn to_batch_first(&self, x: &Tensor) -> Result<Tensor> {
        if self.batch_first {
            Ok(x.clone())
        } else {
            x.transpose(0, 1)
        }
    }
}

/// Per-call options of an encoder (layer): PyTorch's `src_mask`, `src_key_padding_mask`,
/// `is_causal`, plus train/eval.
#[derive(Debug, Clone, Copy, Default)]
pub struct EncoderArgs<'a> {
    /// `(seq, seq)` or `(batch·nhead, seq, seq)`: integer non-zero = not allowed, or float added.
    pub mask: Option<&'a Tensor>,
    /// `(batch, seq)`: integer non-zero = padding (ignored as a key), or float added.
    pub key_padding_mask: Option<&'a Tensor>,
    /// Causal self-attention (in addition to `mask`).
    pub is_causal: bool,
    /// Training mode: dropout on.
    pub train: bool,
}

/// Per-call options of a decoder (layer): PyTorch's `tgt_mask`, `memory_mask`,
/// `tgt_key_padding_mask`, `memory_key_padding_mask`, `tgt_is_causal`, `memory_is_causal`.
#[derive(Debug, Clone, Copy, Default)]
pub struct DecoderArgs<'a> {
    /// Self-attention mask over the target, `(tgt, tgt)` or `(batch·nhead, tgt, tgt)`.
    pub tgt_mask: Option<&'a Tensor>,
    /// Cross-attention mask, `(tgt, src)` or `(batch·nhead, tgt, src)`.
    pub memory_mask: Option<&'a Tensor>,
    /// `(batch, tgt)` target padding.
    pub tgt_key_padding_mask: Option<&'a Tensor>,
    /// `(batch, src)` memory (source) padding.
    pub memory_key_padding_mask: Option<&'a Tensor>,
    /// Causal self-attention over the target (in addition to `tgt_mask`).
    pub tgt_is_causal: bool,
    /// Causal cross-attention (rare; in addition to `memory_mask`).
    pub memory_is_causal: bool,
    /// Training mode: dropout on.
    pub train: bool,
}

/// `nn.TransformerEncoderLayer`: self-attention and feed-forward, each with a residual
/// connection and a norm (post-norm by default, pre-norm with `norm_first`).
#[derive(Debug, Clone)]
pub struct TransformerEncoderLayer {
    self_attn: MultiHeadAttention,
    ff: FeedForward,
    norm1: Norm,
    norm2: Norm,
    cfg: TransformerLayerConfig,
}

impl TransformerEncoderLayer {
    /// Reads `self_attn.*`, `linear1.*`, `linear2.*`, `norm1.*`, `norm2.*` from `vb`.
    pub fn new(cfg: &TransformerLayerConfig, vb: VarBuilder) -> Result<Self> {
        cfg.check()?;
        Ok(Self {
            self_attn: MultiHeadAttention::new(&cfg.attention(), vb.pp("self_attn"))?,
            ff: FeedForward::new(&cfg.feed_forward(), vb.clone())?,
            norm1: cfg.norm(vb.pp("norm1"))?,
            norm2: cfg.norm(vb.pp("norm2"))?,
            cfg: cfg.clone(),
        })
    }

    fn sa_block(&self, x: &Tensor, args: &EncoderArgs) -> Result<Tensor> {
        let out = self
            .self_attn
            .forward(
                x,
                x,
                x,
                &MhaArgs {
                    key_padding_mask: args.key_padding_mask,
                    attn_mask: args.mask,
                    is_causal: args.is_causal,
                    train: args.train,
                    ..Default::default()
                },
            )?
            .output;
        dropout_t(out, self.cfg.dropout, args.train)
    }

    fn ff_block(&self, x: &Tensor, train: bool) -> Result<Tensor> {
        dropout_t(self.ff.forward_t(x, train)?, self.cfg.dropout, train)
    }

    /// Batch-first input to batch-first output.
    fn forward_bf(&self, x: &Tensor, args: &EncoderArgs) -> Result<Tensor> {
        if self.cfg.norm_first {
            let x = (x + self.sa_block(&self.norm1.forward(x)?, args)?)?;
            &x + self.ff_block(&self.norm2.forward(&x)?, args.train)?
        } else {
            let x = self.norm1.forward(&(x + self.sa_block(x, args)?)?)?;
            self.norm2.forward(&(&x + self.ff_block(&x, args.train)?)?)
        }
    }

    /// `src (batch, seq, d_model)` (or sequence-first) → same shape.
    pub fn forward(&self, src: &Tensor, args: &EncoderArgs) -> Result<Tensor> {
        let y = self.forward_bf(&self.cfg.to_batch_first(src)?, args)?;
        self.cfg.to_batch_first(&y)
    }

    /// Causal self-attention block of a decoder-only model, for new positions
    /// `x (batch, new, d)` (batch-first) attending to themselves and to `cache` (which grows by
    /// `new`); evaluation mode. Equals [`Self::forward`] with `is_causal` on the whole sequence.
    pub fn forward_cached(
        &self,
        x: &Tensor,
        cache: &mut KvCache,
        rotary: Option<&RotaryEmbedding>,
    ) -> Result<Tensor> {
        let args = MhaArgs {
            is_causal: true,
            rotary,
            ..Default::default()
        };
        let mut sa = |h: &Tensor| self.self_attn.forward_cached(h, cache, &args);
        if self.cfg.norm_first {
            let x = (x + sa(&self.norm1.forward(x)?)?)?;
            &x + self.ff.forward_t(&self.norm2.forward(&x)?, false)?
        } else {
            let x = self.norm1.forward(&(x + sa(x)?)?)?;
            self.norm2.forward(&(&x + self.ff.forward_t(&x, false)?)?)
        }
    }

    /// [`Self::forward`] for batch-first inputs with rotary positions (decoder-only models):
    /// causal self-attention over `x`, queries and keys rotated from position 0.
    pub fn forward_rotary(&self, x: &Tensor, rotary: &RotaryEmbedding, train: bool) -> Result<Tensor> {
        let args = MhaArgs {
            is_causal: true,
            rotary: Some(rotary),
            train,
            ..Default::default()
        };
        let sa = |h: &Tensor| -> Result<Tensor> {
            dropout_t(
                self.self_attn.forward(h, h, h, &args)?.output,
                self.cfg.dropout,
                train,
            )
        };
        if self.cfg.norm_first {
            let x = (x + sa(&self.norm1.forward(x)?)?)?;
            &x + self.ff_block(&self.norm2.forward(&x)?, train)?
        } else {
            let x = self.norm1.forward(&(x + sa(x)?)?)?;
            self.norm2.forward(&(&x + self.ff_block(&x, train)?)?)
        }
    }
}

/// `nn.TransformerDecoderLayer`: masked self-attention, cross-attention over the encoder's
/// output (`memory`), and feed-forward, each with a residual connection and a norm.
#[derive(Debug, Clone)]
pub struct TransformerDecoderLayer {
    self_attn: MultiHeadAttention,
    multihead_attn: MultiHeadAttention,
    ff: FeedForward,
    norm1: Norm,
    norm2: Norm,
    norm3: Norm,
    cfg: TransformerLayerConfig,
}

impl TransformerDecoderLayer {
    /// Reads `self_attn.*`, `multihead_attn.*`, `linear1.*`, `linear2.*`, `norm1..3.*`.
    pub fn new(cfg: &TransformerLayerConfig, vb: VarBuilder) -> Result<Self> {
        cfg.check()?;
        Ok(Self {
            self_attn: MultiHeadAttention::new(&cfg.attention(), vb.pp("self_attn"))?,
            multihead_attn: MultiHeadAttention::new(&cfg.attention(), vb.pp("multihead_attn"))?,
            ff: FeedForward::new(&cfg.feed_forward(), vb.clone())?,
            norm1: cfg.norm(vb.pp("norm1"))?,
            norm2: cfg.norm(vb.pp("norm2"))?,
            norm3: cfg.norm(vb.pp("norm3"))?,
            cfg: cfg.clone(),
        })
    }

    fn sa_block(&self, x: &Tensor, args: &DecoderArgs) -> Result<Tensor> {
        let mha = MhaArgs {
            key_padding_mask: args.tgt_key_padding_mask,
            attn_mask: args.tgt_mask,
            is_causal: args.tgt_is_causal,
            train: args.train,
            ..Default::default()
        };
        dropout_t(
            self.self_attn.forward(x, x, x, &mha)?.output,
            self.cfg.dropout,
            args.train,
        )
    }

    fn mha_block(&self, x: &Tensor, memory: &Tensor, args: &DecoderArgs) -> Result<Tensor> {
        let mha = MhaArgs {
            key_padding_mask: args.memory_key_padding_mask,
            attn_mask: args.memory_mask,
            is_causal: args.memory_is_causal,
            train: args.train,
            ..Default::default()
        };
        let out = self.multihead_attn.forward(x, memory, memory, &mha)?.output;
        dropout_t(out, self.cfg.dropout, args.train)
    }

    fn ff_block(&self, x: &Tensor, train: bool) -> Result<Tensor> {
        dropout_t(self.ff.forward_t(x, train)?, self.cfg.dropout, train)
    }

    fn forward_bf(&self, x: &Tensor, memory: &Tensor, args: &DecoderArgs) -> Result<Tensor> {
        if self.cfg.norm_first {
            let x = (x + self.sa_block(&self.norm1.forward(x)?, args)?)?;
            let x = (&x + self.mha_block(&self.norm2.forward(&x)?, memory, args)?)?;
            &x + self.ff_block(&self.norm3.forward(&x)?, args.train)?
        } else {
            let x = self.norm1.forward(&(x + self.sa_block(x, args)?)?)?;
            let x = self.norm2.forward(&(&x + self.mha_block(&x, memory, args)?)?)?;
            self.norm3.forward(&(&x + self.ff_block(&x, args.train)?)?)
        }
    }

    /// `tgt (batch, tgt_len, d)`, `memory (batch, src_len, d)` (or sequence-first) →
    /// `(batch, tgt_len, d)`.
    pub fn forward(&self, tgt: &Tensor, memory: &Tensor, args: &DecoderArgs) -> Result<Tensor> {
        let y = self.forward_bf(
            &self.cfg.to_batch_first(tgt)?,
            &self.cfg.to_batch_first(memory)?,
            args,
        )?;
        self.cfg.to_batch_first(&y)
    }

    /// Incremental decoding (evaluation mode): new target positions `x (batch, new, d)`
    /// (batch-first) with causal self-attention over `self_cache` (which grows) and
    /// cross-attention over `memory_kv` (from [`MultiHeadAttention::memory_kv`]).
    pub fn forward_step(
        &self,
        x: &Tensor,
        self_cache: &mut KvCache,
        memory_kv: &KvCache,
        memory_key_padding_mask: Option<&Tensor>,
    ) -> Result<Tensor> {
        let self_args = MhaArgs {
            is_causal: true,
            ..Default::default()
        };
        let cross_args = MhaArgs {
            key_padding_mask: memory_key_padding_mask,
            ..Default::default()
        };
        let mut sa = |h: &Tensor| self.self_attn.forward_cached(h, self_cache, &self_args);
        let ca = |h: &Tensor| self.multihead_attn.forward_with_kv(h, memory_kv, &cross_args);
        if self.cfg.norm_first {
            let x = (x + sa(&self.norm1.forward(x)?)?)?;
            let x = (&x + ca(&self.norm2.forward(&x)?)?)?;
            &x + self.ff.forward_t(&self.norm3.forward(&x)?, false)?
        } else {
            let x = self.norm1.forward(&(x + sa(x)?)?)?;
            let x = self.norm2.forward(&(&x + ca(&x)?)?)?;
            self.norm3.forward(&(&x + self.ff.forward_t(&x, false)?)?)
        }
    }
}

/// Per-layer state of incremental decoding with a [`TransformerDecoder`]: each layer's
/// self-attention keys/values so far and its cross-attention keys/values of the memory.
#[derive(Debug, Clone)]
pub struct DecoderCache {
    self_attn: Vec<KvCache>,
    cross: Vec<KvCache>,
}

impl DecoderCache {
    /// Target positions decoded so far.
    pub fn len(&self) -> usize {
        self.self_attn.first().map_or(0, KvCache::len)
    }

    /// Whether nothing has been decoded yet.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Keeps (and reorders) batch rows `rows` of every cache (beam search).
    pub fn select_rows(&mut self, rows: &Tensor) -> Result<()> {
        for c in self.self_attn.iter_mut().chain(self.cross.iter_mut()) {
            c.select_rows(rows)?;
        }
        Ok(())
    }
}

/// `nn.TransformerEncoder`: `num_layers` encoder layers (`layers.N.*`) and an optional final
/// norm (`norm.*`).
#[derive(Debug, Clone)]
pub struct TransformerEncoder {
    layers: Vec<TransformerEncoderLayer>,
    norm: Option<Norm>,
    cfg: TransformerLayerConfig,
}

impl TransformerEncoder {
    /// Builds `num_layers` layers; `final_norm` adds `norm` (as `nn.Transformer` always does).
    pub fn new(
        cfg: &TransformerLayerConfig,
        num_layers: usize,
        final_norm: bool,
        vb: VarBuilder,
    ) -> Result<Self> {
        let layers = (0..num_layers)
            .map(|i| TransformerEncoderLayer::new(cfg, vb.pp("layers").pp(i)))
            .collect::<Result<Vec<_>>>()?;
        let norm = cfg.final_norm(final_norm, vb.pp("norm"))?;
        Ok(Self {
            layers,
            norm,
            cfg: cfg.clone(),
        })
    }

    /// The layers.
    pub fn layers(&self) -> &[TransformerEncoderLayer] {
        &self.layers
    }

    /// `src (batch, seq, d)` (or sequence-first) → same shape.
    pub fn forward(&self, src: &Tensor, args: &EncoderArgs) -> Result<Tensor> {
        let mut x = self.cfg.to_batch_first(src)?;
        for layer in &self.layers {
            x = layer.forward_bf(&x, args)?;
        }
        if let Some(n) = &self.norm {
            x = n.forward(&x)?;
        }
        self.cfg.to_batch_first(&x)
    }
}

/// `nn.TransformerDecoder`: `num_layers` decoder layers (`layers.N.*`) and an optional final
/// norm (`norm.*`).
#[derive(Debug, Clone)]
pub struct TransformerDecoder {
    layers: Vec<TransformerDecoderLayer>,
    norm: Option<Norm>,
    cfg: TransformerLayerConfig,
}

impl TransformerDecoder {
    /// Builds `num_layers` layers; `final_norm` adds `norm`.
    pub fn new(
        cfg: &TransformerLayerConfig,
        num_layers: usize,
        final_norm: bool,
        vb: VarBuilder,
    ) -> Result<Self> {
        let layers = (0..num_layers)
            .map(|i| TransformerDecoderLayer::new(cfg, vb.pp("layers").pp(i)))
            .collect::<Result<Vec<_>>>()?;
        let norm = cfg.final_norm(final_norm, vb.pp("norm"))?;
        Ok(Self {
            layers,
            norm,
            cfg: cfg.clone(),
        })
    }

    /// The layers.
    pub fn layers(&self) -> &[TransformerDecoderLayer] {
        &self.layers
    }

    /// Starts incremental decoding against `memory (batch, src_len, d)` (batch-first): the
    /// memory's keys and values are projected once per layer.
    pub fn start_cache(&self, memory: &Tensor) -> Result<DecoderCache> {
        let memory = self.cfg.to_batch_first(memory)?;
        Ok(DecoderCache {
            self_attn: vec![KvCache::new(); self.layers.len()],
            cross: self
                .layers
                .iter()
                .map(|l| l.multihead_attn.memory_kv(&memory))
                .collect::<Result<_>>()?,
        })
    }

    /// Decodes new target positions `tgt (batch, new, d)` (batch-first) after those already in
    /// `cache`; equals the last `new` rows of [`Self::forward`] with a causal target mask on the
    /// whole target, at the cost of the new positions only.
    pub fn forward_step(
        &self,
        tgt: &Tensor,
        cache: &mut DecoderCache,
        memory_key_padding_mask: Option<&Tensor>,
    ) -> Result<Tensor> {
        let mut x = tgt.clone();
        for (i, layer) in self.layers.iter().enumerate() {
            x = layer.forward_step(
                &x,
                &mut cache.self_attn[i],
                &cache.cross[i],
                memory_key_padding_mask,
            )?;
        }
        match &self.norm {
            Some(n) => n.forward(&x),
            None => Ok(x),
        }
    }

    /// `tgt (batch, tgt_len, d)`, `memory (batch, src_len, d)` → `(batch, tgt_len, d)`.
    pub fn forward(&self, tgt: &Tensor, memory: &Tensor, args: &DecoderArgs) -> Result<Tensor> {
        let mut x = self.cfg.to_batch_first(tgt)?;
        let memory = self.cfg.to_batch_first(memory)?;
        for layer in &self.layers {
            x = layer.forward_bf(&x, &memory, args)?;
        }
        if let Some(n) = &self.norm {
            x = n.forward(&x)?;
        }
        self.cfg.to_batch_first(&x)
    }
}

/// Options of [`Transformer`] (`nn.Transformer`): the layer options plus the layer counts.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct TransformerConfig {
    /// Options shared by every layer.
    #[serde(flatten)]
    pub layer: TransformerLayerConfig,
    /// Encoder layers.
    pub num_encoder_layers: usize,
    /// Decoder layers.
    pub num_decoder_layers: usize,
}

impl Default for TransformerConfig {
    fn default() -> Self {
        Self {
            layer: TransformerLayerConfig::default(),
            num_encoder_layers: 6,
            num_decoder_layers: 6,
        }
    }
}

/// `nn.Transformer`: encoder (`encoder.layers.N`, `encoder.norm`) and decoder
/// (`decoder.layers.N`, `decoder.norm`).
#[derive(Debug, Clone)]
pub struct Transformer {
    /// The encoder.
    pub encoder: TransformerEncoder,
    /// The decoder.
    pub decoder: TransformerDecoder,
}

impl Transformer {
    /// Builds (or loads) the model through `vb`. Fresh weights use each layer's own
    /// initialization (PyTorch's `nn.Transformer` re-draws every matrix Xavier-uniform;
    /// loading its `state_dict` gives exactly its weights).
    pub fn new(cfg: &TransformerConfig, vb: VarBuilder) -> Result<Self> {
        Ok(Self {
            encoder: TransformerEncoder::new(&cfg.layer, cfg.num_encoder_layers, true, vb.pp("encoder"))?,
            decoder: TransformerDecoder::new(&cfg.layer, cfg.num_decoder_layers, true, vb.pp("decoder"))?,
        })
    }

    /// `src (batch, src_len, d)`, `tgt (batch, tgt_len, d)` → `(batch, tgt_len, d)`. The source
    /// options are `enc` (`src_mask`, `src_key_padding_mask`, `src_is_causal`); `dec` carries
    /// the target and memory options. `enc.train` is ignored: `dec.train` sets the mode.
    pub fn forward(
        &self,
        src: &Tensor,
        tgt: &Tensor,
        enc: &EncoderArgs,
        dec: &DecoderArgs,
    ) -> Result<Tensor> {
        let memory = self.encoder.forward(
            src,
            &EncoderArgs {
                train: dec.train,
                ..*enc
            },
        )?;
        self.decoder.forward(tgt, &memory, dec)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::norm::NormKind;
    use candle_core::{DType, Device};
    use candle_nn::VarMap;

    fn max_diff(a: &Tensor, b: &Tensor) -> f32 {
        (a - b)
            .unwrap()
            .abs()
            .unwrap()
            .max_all()
            .unwrap()
            .to_scalar::<f32>()
            .unwrap()
    }

    fn cfg(norm_first: bool) -> TransformerLayerConfig {
        TransformerLayerConfig {
            d_model: 16,
            nhead: 4,
            num_kv_heads: Some(2),
            dim_feedforward: 32,
            dropout: 0.1,
            norm_first,
            norm: if norm_first {
                NormKind::RmsNorm
            } else {
                NormKind::LayerNorm
            },
            ..Default::default()
        }
    }

    #[test]
    fn cached_decoding_equals_full_recomputation() -> Result<()> {
        let dev = Device::Cpu;
        for norm_first in [false, true] {
            let vm = VarMap::new();
            let vb = crate::init::seeded_var_builder(&vm, 7, DType::F32, &dev);
            let dec = TransformerDecoder::new(&cfg(norm_first), 2, true, vb)?;
            let memory = Tensor::randn(0f32, 1., (2, 6, 16), &dev)?;
            let tgt = Tensor::randn(0f32, 1., (2, 7, 16), &dev)?;
            let pad = crate::masks::padding_mask(&[6, 3], 6, &dev)?;
            let full = dec.forward(
                &tgt,
                &memory,
                &DecoderArgs {
                    tgt_is_causal: true,
                    memory_key_padding_mask: Some(&pad),
                    ..Default::default()
                },
            )?;
            // One position at a time, then in uneven chunks: both equal the full pass.
            for chunks in [vec![1usize; 7], vec![3, 1, 3]] {
                let mut cache = dec.start_cache(&memory)?;
                let mut outs = Vec::new();
                let mut at = 0;
                for n in chunks {
                    outs.push(dec.forward_step(&tgt.narrow(1, at, n)?, &mut cache, Some(&pad))?);
                    at += n;
                }
                assert_eq!(cache.len(), 7);
                let stepped = Tensor::cat(&outs, 1)?;
                let d = max_diff(&stepped, &full);
                assert!(
                    d < 1e-5,
                    "norm_first={norm_first}: cached decoding differs by {d}"
                );
            }
        }
        Ok(())
    }

    #[test]
    fn cached_decoder_only_blocks_equal_full_causal_passes_with_rotary() -> Result<()> {
        let dev = Device::Cpu;
        let vm = VarMap::new();
        let vb = crate::init::seeded_var_builder(&vm, 9, DType::F32, &dev);
        let layer = TransformerEncoderLayer::new(&cfg(true), vb)?;
        let rope = RotaryEmbedding::new(4, 32, 10000.0, DType::F32, &dev)?;
        let x = Tensor::randn(0f32, 1., (2, 9, 16), &dev)?;
        let full_plain = layer.forward(
            &x,
            &EncoderArgs {
                is_causal: true,
                ..Default::default()
            },
        )?;
        let full_rope = layer.forward_rotary(&x, &rope, false)?;
        assert!(
            max_diff(&full_plain, &full_rope) > 1e-3,
            "rotary positions change the result"
        );
        for (rotary, full) in [(None, &full_plain), (Some(&rope), &full_rope)] {
            let mut cache = KvCache::new();
            let a = layer.forward_cached(&x.narrow(1, 0, 5)?, &mut cache, rotary)?;
            let b = layer.forward_cached(&x.narrow(1, 5, 1)?, &mut cache, rotary)?;
            let c = layer.forward_cached(&x.narrow(1, 6, 3)?, &mut cache, rotary)?;
            let d = max_diff(&Tensor::cat(&[a, b, c], 1)?, full);
            assert!(d < 1e-5, "rotary={}: cached differs by {d}", rotary.is_some());
        }
        Ok(())
    }
}
