//! BERT, with Hugging Face's configuration and weight names, on the zoo's layers and fused
//! attention.
//!
//! A `BertModel` state_dict (as in `model.safetensors` of `bert-base-uncased` or
//! `sentence-transformers/all-MiniLM-L6-v2`) loads unchanged: `embeddings.*`,
//! `encoder.layer.N.attention.self.{query,key,value}`, `encoder.layer.N.attention.output.*`,
//! `encoder.layer.N.intermediate.dense`, `encoder.layer.N.output.*`, `pooler.dense`; a `bert.`
//! prefix (task checkpoints) is recognized. Padding is handled with the attention mask: padded
//! keys are never attended to (right padding becomes per-row key lengths, which the fused
//! kernel skips block by block).

use candle_core::{DType, Module, Result, Tensor, D};
use candle_nn::{Embedding, VarBuilder};
use serde::{Deserialize, Serialize};
use zoo_kernels::attention::{flash_attention, AttentionDropout, AttentionMask, AttentionOptions};
use zoo_kernels::dropout::dropout_t;
use zoo_kernels::heads::{merge_heads, merge_heads_packed, split_heads, split_heads_packed};
use zoo_nn::init::linear_torch;
use zoo_nn::{Activation, LayerNorm, Linear, LoraConfig, LoraLinear};

/// Hugging Face's `BertConfig` (the fields a `BertModel` uses; others in `config.json` are
/// ignored). Defaults are `bert-base-uncased`'s.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct BertConfig {
    /// Token vocabulary size.
    pub vocab_size: usize,
    /// Width of every hidden state.
    pub hidden_size: usize,
    /// Encoder layers.
    pub num_hidden_layers: usize,
    /// Attention heads per layer (must divide `hidden_size`).
    pub num_attention_heads: usize,
    /// Width of the feed-forward layer.
    pub intermediate_size: usize,
    /// `"gelu"` (exact), `"gelu_new"` / `"gelu_pytorch_tanh"` (tanh approximation), `"relu"`,
    /// `"silu"`.
    pub hidden_act: String,
    /// Dropout after embeddings and each sub-layer while training.
    pub hidden_dropout_prob: f32,
    /// Dropout on attention probabilities while training.
    pub attention_probs_dropout_prob: f32,
    /// Learned positions available.
    pub max_position_embeddings: usize,
    /// Segment (token type) vocabulary size.
    pub type_vocab_size: usize,
    /// Layer-norm epsilon.
    pub layer_norm_eps: f64,
    /// Id of the padding token.
    pub pad_token_id: u32,
}

impl Default for BertConfig {
    fn default() -> Self {
        Self {
            vocab_size: 30522,
            hidden_size: 768,
            num_hidden_layers: 12,
            num_attention_heads: 12,
            intermediate_size: 3072,
            hidden_act: "gelu".into(),
            hidden_dropout_prob: 0.1,
            attention_probs_dropout_prob: 0.1,
            max_position_embeddings: 512,
            type_vocab_size: 2,
            layer_norm_eps: 1e-12,
            pad_token_id: 0,
        }
    }
}

impl BertConfig {
    /// Parses a Hugging Face `config.json`.
    pub fn from_json(text: &str) -> Result<Self> {
        serde_json::from_str(text)
            .map_err(|e| candle_core::Error::Msg(format!("BertConfig: invalid config.json: {e}")))
    }

    /// The feed-forward activation named by `hidden_act`.
    pub fn activation(&self) -> Result<Activation> {
        Ok(match self.hidden_act.as_str() {
            "gelu" => Activation::Gelu,
            "gelu_new" | "gelu_pytorch_tanh" | "gelu_fast" => Activation::GeluTanh,
            "relu" => Activation::Relu,
            "silu" | "swish" => Activation::Silu,
            other => candle_core::bail!(
                "BertConfig: hidden_act {other:?} is not supported (gelu, gelu_new, gelu_pytorch_tanh, relu, silu)"
            ),
        })
    }

    /// Checks the sizes that must agree.
    pub fn validate(&self) -> Result<()> {
        if self.num_attention_heads == 0 || !self.hidden_size.is_multiple_of(self.num_attention_heads) {
            candle_core::bail!(
                "BertConfig: hidden_size {} is not divisible by num_attention_heads {}",
                self.hidden_size,
                self.num_attention_heads
            );
        }
        self.activation().map(|_| ())
    }

    /// Every parameter a `BertModel` with this config has, with its shape, under Hugging
    /// Face's names (with the pooler when `pooler`).
    pub fn parameter_shapes(&self, pooler: bool) -> Vec<(String, Vec<usize>)> {
        let (h, f) = (self.hidden_size, self.intermediate_size);
        let mut v = vec![
            (
                "embeddings.word_embeddings.weight".to_string(),
                vec![self.vocab_size, h],
            ),
            (
                "embeddings.position_embeddings.weight".into(),
                vec![self.max_position_embeddings, h],
            ),
            (
                "embeddings.token_type_embeddings.weight".into(),
                vec![self.type_vocab_size, h],
            ),
            ("embeddings.LayerNorm.weight".into(), vec![h]),
            ("embeddings.LayerNorm.bias".into(), vec![h]),
        ];
        for i in 0..self.num_hidden_layers {
            let p = format!("encoder.layer.{i}");
            for (name, shape) in [
                ("attention.self.query", (h, h)),
                ("attention.self.key", (h, h)),
                ("attention.self.value", (h, h)),
                ("attention.output.dense", (h, h)),
                ("intermediate.dense", (f, h)),
                ("output.dense", (h, f)),
            ] {
                v.push((format!("{p}.{name}.weight"), vec![shape.0, shape.1]));
                v.push((format!("{p}.{name}.bias"), vec![shape.0]));
            }
            for ln in ["attention.output.LayerNorm", "output.LayerNorm"] {
                v.push((format!("{p}.{ln}.weight"), vec![h]));
                v.push((format!("{p}.{ln}.bias"), vec![h]));
            }
        }
        if pooler {
            v.push(("pooler.dense.weight".into(), vec![h, h]));
            v.push(("pooler.dense.bias".into(), vec![h]));
        }
        v
    }
}

/// Word + position + token-type embeddings, then LayerNorm and dropout.
#[derive(Debug, Clone)]
pub struct BertEmbeddings {
    word_embeddings: Embedding,
    position_embeddings: Embedding,
    token_type_embeddings: Embedding,
    layer_norm: LayerNorm,
    dropout: f32,
    max_positions: usize,
}

impl BertEmbeddings {
    /// Builds (or loads) `embeddings.*` through `vb`.
    pub fn new(cfg: &BertConfig, vb: VarBuilder) -> Result<Self> {
        let h = cfg.hidden_size;
        let emb = |n: usize, name: &str| candle_nn::embedding(n, h, vb.pp(name));
        Ok(Self {
            word_embeddings: emb(cfg.vocab_size, "word_embeddings")?,
            position_embeddings: emb(cfg.max_position_embeddings, "position_embeddings")?,
            token_type_embeddings: emb(cfg.type_vocab_size, "token_type_embeddings")?,
            layer_norm: LayerNorm::new(h, cfg.layer_norm_eps, true, vb.pp("LayerNorm"))?,
            dropout: cfg.hidden_dropout_prob,
            max_positions: cfg.max_position_embeddings,
        })
    }

    /// `input_ids (batch, seq)` (and optional `token_type_ids`, zeros by default) →
    /// `(batch, seq, hidden)`.
    pub fn forward(
        &self,
        input_ids: &Tensor,
        token_type_ids: Option<&Tensor>,
        train: bool,
    ) -> Result<Tensor> {
        let (_, seq) = input_ids.dims2()?;
        if seq > self.max_positions {
            candle_core::bail!(
                "Bert: {seq} tokens exceed max_position_embeddings {}; truncate the input",
                self.max_positions
            );
        }
        let dev = input_ids.device();
        let positions = Tensor::arange(0u32, seq as u32, dev)?;
        let types = match token_type_ids {
            Some(t) => self.token_type_embeddings.forward(t)?,
            None => self
                .token_type_embeddings
                .forward(&Tensor::zeros(seq, DType::U32, dev)?)?
                .unsqueeze(0)?,
        };
        let x = self
            .word_embeddings
            .forward(input_ids)?
            .broadcast_add(&self.position_embeddings.forward(&positions)?.unsqueeze(0)?)?
            .broadcast_add(&types)?;
        dropout_t(self.layer_norm.forward(&x)?, self.dropout, train)
    }
}

/// Which keys each row may attend to, prepared once per batch for every layer.
#[derive(Debug, Clone)]
pub enum KeyMask {
    /// Every key is real.
    None,
    /// Right padding: row `b` has `len[b]` real tokens, `(batch,)` u32.
    Lengths(Tensor),
    /// Any other pattern: `(batch, 1, 1, seq)` u32, non-zero = real token.
    Allow(Tensor),
}

impl KeyMask {
    /// From Hugging Face's `attention_mask (batch, seq)` (1 = token, 0 = padding).
    pub fn from_attention_mask(mask: &Tensor) -> Result<Self> {
        let (b, l) = mask.dims2()?;
        let host = mask.to_dtype(DType::U32)?.to_vec2::<u32>()?;
        let lens: Vec<u32> = host
            .iter()
            .map(|r| r.iter().filter(|&&m| m != 0).count() as u32)
            .collect();
        let right_padded = host
            .iter()
            .zip(&lens)
            .all(|(r, &n)| r.iter().enumerate().all(|(j, &m)| (m != 0) == (j < n as usize)));
        if lens.iter().all(|&n| n as usize == l) {
            Ok(Self::None)
        } else if right_padded {
            Ok(Self::Lengths(Tensor::from_vec(lens, b, mask.device())?))
        } else {
            Ok(Self::Allow(mask.to_dtype(DType::U32)?.reshape((b, 1, 1, l))?))
        }
    }

    fn options(&self) -> AttentionOptions {
        match self {
            Self::None => AttentionOptions::default(),
            Self::Lengths(t) => AttentionOptions {
                kv_lengths: Some(t.clone()),
                ..Default::default()
            },
            Self::Allow(t) => AttentionOptions {
                mask: Some(AttentionMask::Allow(t.clone())),
                ..Default::default()
            },
        }
    }
}

/// One post-norm BERT layer: self-attention (`attention.self`, `attention.output`), then the
/// feed-forward (`intermediate`, `output`), each with a residual and LayerNorm.
#[derive(Debug, Clone)]
pub struct BertLayer {
    query: LoraLinear,
    key: LoraLinear,
    value: LoraLinear,
    attn_out: LoraLinear,
    attn_norm: LayerNorm,
    intermediate: LoraLinear,
    output: LoraLinear,
    out_norm: LayerNorm,
    activation: Activation,
    heads: usize,
    hidden_dropout: f32,
    attn_dropout: f32,
}

impl BertLayer {
    /// Builds (or loads) `encoder.layer.N.*` through `vb`; with `lora`, the target modules
    /// get adapters created through the second `VarBuilder` (at the same path).
    pub fn new(cfg: &BertConfig, vb: VarBuilder, lora: Option<(&LoraConfig, VarBuilder)>) -> Result<Self> {
        let (h, f, eps) = (cfg.hidden_size, cfg.intermediate_size, cfg.layer_norm_eps);
        let lin = |i: usize, o: usize, path: &str| -> Result<LoraLinear> {
            let mut base_vb = vb.clone();
            for part in path.split('.') {
                base_vb = base_vb.pp(part);
            }
            let base = linear_torch(i, o, true, base_vb)?;
            match &lora {
                Some((lc, avb)) if lc.targets(path) => {
                    let mut a = avb.clone();
                    for part in path.split('.') {
                        a = a.pp(part);
                    }
                    LoraLinear::new(base, lc, a)
                }
                _ => Ok(LoraLinear::plain(base)),
            }
        };
        let ao = vb.pp("attention").pp("output");
        Ok(Self {
            query: lin(h, h, "attention.self.query")?,
            key: lin(h, h, "attention.self.key")?,
            value: lin(h, h, "attention.self.value")?,
            attn_out: lin(h, h, "attention.output.dense")?,
            attn_norm: LayerNorm::new(h, eps, true, ao.pp("LayerNorm"))?,
            intermediate: lin(h, f, "intermediate.dense")?,
            output: lin(f, h, "output.dense")?,
            out_norm: LayerNorm::new(h, eps, true, vb.pp("output").pp("LayerNorm"))?,
            activation: cfg.activation()?,
            heads: cfg.num_attention_heads,
            hidden_dropout: cfg.hidden_dropout_prob,
            attn_dropout: cfg.attention_probs_dropout_prob,
        })
    }

    /// `x (batch, seq, hidden)` → same shape.
    pub fn forward(&self, x: &Tensor, mask: &KeyMask, train: bool) -> Result<Tensor> {
        self.forward_rows(x, mask, None, train)
    }

    /// The layer on packed token rows `x (Σ lengths, hidden)` of right-padded sequences (see
    /// [`zoo_kernels::heads::split_heads_packed`]): only attention sees the padded
    /// `(batch, heads, seq, head_dim)` layout, so padding costs no projection or feed-forward
    /// work. `mask` must be the matching [`KeyMask::Lengths`].
    pub fn forward_packed(
        &self,
        x: &Tensor,
        mask: &KeyMask,
        lengths: &[usize],
        seq: usize,
        train: bool,
    ) -> Result<Tensor> {
        self.forward_rows(x, mask, Some((lengths, seq)), train)
    }

    fn forward_rows(
        &self,
        x: &Tensor,
        mask: &KeyMask,
        packed: Option<(&[usize], usize)>,
        train: bool,
    ) -> Result<Tensor> {
        let heads = |l: &LoraLinear| {
            let y = l.forward_t(x, train)?;
            match packed {
                None => split_heads(&y, self.heads),
                Some((lengths, seq)) => split_heads_packed(&y, lengths, seq, self.heads),
            }
        };
        let (q, k, v) = (heads(&self.query)?, heads(&self.key)?, heads(&self.value)?);
        let mut opts = mask.options();
        if train && self.attn_dropout > 0.0 {
            opts.dropout = Some(AttentionDropout::new(self.attn_dropout));
        }
        let ctx = flash_attention(&q, &k, &v, &opts)?;
        let ctx = match packed {
            None => merge_heads(&ctx)?,
            Some((lengths, _)) => merge_heads_packed(&ctx, lengths)?,
        };
        let a = dropout_t(self.attn_out.forward_t(&ctx, train)?, self.hidden_dropout, train)?;
        let x = self.attn_norm.forward(&(x + a)?)?;
        let inner = match self.activation {
            Activation::Relu => self.intermediate.forward_relu_t(&x, train)?,
            Activation::Gelu => self.intermediate.forward_gelu_t(&x, train)?,
            act => act.forward(&self.intermediate.forward_t(&x, train)?)?,
        };
        let y = dropout_t(self.output.forward_t(&inner, train)?, self.hidden_dropout, train)?;
        self.out_norm.forward(&(x + y)?)
    }
}

/// How token states become one sentence vector.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
pub enum Pooling {
    /// Mean over real (unpadded) tokens: sentence-transformers' default.
    #[default]
    Mean,
    /// The first token's state (`[CLS]`).
    Cls,
}

/// `BertModel`: embeddings, `num_hidden_layers` encoder layers and the optional pooler.
#[derive(Debug, Clone)]
pub struct Bert {
    embeddings: BertEmbeddings,
    layers: Vec<BertLayer>,
    pooler: Option<Linear>,
    cfg: BertConfig,
}

impl Bert {
    /// Builds (or loads) the model through `vb`; with `pooler`, also `pooler.dense`. A `bert.`
    /// prefix on the stored names is detected.
    pub fn new(cfg: &BertConfig, vb: VarBuilder, pooler: bool) -> Result<Self> {
        Self::new_with_lora(cfg, vb, pooler, None)
    }

    /// [`Self::new`] with LoRA adapters on the modules `lora.0` targets (`"query"`, `"value"`,
    /// …), created or loaded through `lora.1` under `encoder.layer.N.<module>.lora_{A,B}.weight`
    /// (give it its own `VarMap`: those are the parameters that train).
    pub fn new_with_lora(
        cfg: &BertConfig,
        vb: VarBuilder,
        pooler: bool,
        lora: Option<(&LoraConfig, VarBuilder)>,
    ) -> Result<Self> {
        cfg.validate()?;
        let vb = if vb.contains_tensor("bert.embeddings.word_embeddings.weight") {
            vb.pp("bert")
        } else {
            vb
        };
        let enc = vb.pp("encoder").pp("layer");
        Ok(Self {
            embeddings: BertEmbeddings::new(cfg, vb.pp("embeddings"))?,
            layers: (0..cfg.num_hidden_layers)
                .map(|i| {
                    let adapter = lora
                        .as_ref()
                        .map(|(c, avb)| (*c, avb.pp("encoder").pp("layer").pp(i)));
                    BertLayer::new(cfg, enc.pp(i), adapter)
                })
                .collect::<Result<_>>()?,
            pooler: if pooler {
                Some(linear_torch(
                    cfg.hidden_size,
                    cfg.hidden_size,
                    true,
                    vb.pp("pooler").pp("dense"),
                )?)
            } else {
                None
            },
            cfg: cfg.clone(),
        })
    }

    /// The configuration.
    pub fn config(&self) -> &BertConfig {
        &self.cfg
    }

    /// The encoder layers (for freezing or fine-tuning the last k).
    pub fn layers(&self) -> &[BertLayer] {
        &self.layers
    }

    /// The same model with every LoRA update folded into its base weight (same outputs in
    /// evaluation mode, no adapter cost).
    pub fn merged(&self) -> Result<Self> {
        let mut m = self.clone();
        for l in &mut m.layers {
            for lin in [
                &mut l.query,
                &mut l.key,
                &mut l.value,
                &mut l.attn_out,
                &mut l.intermediate,
                &mut l.output,
            ] {
                *lin = LoraLinear::plain(lin.merge()?);
            }
        }
        Ok(m)
    }

    /// Last hidden states `(batch, seq, hidden)` for `input_ids (batch, seq)` (u32), an optional
    /// `attention_mask (batch, seq)` (1 = token, 0 = padding) and optional `token_type_ids`.
    ///
    /// With right padding (every row's tokens first), the layers skip the padded positions and
    /// their hidden states are zeros; Hugging Face computes values there that no output uses.
    pub fn forward(
        &self,
        input_ids: &Tensor,
        attention_mask: Option<&Tensor>,
        token_type_ids: Option<&Tensor>,
        train: bool,
    ) -> Result<Tensor> {
        self.forward_frozen(input_ids, attention_mask, token_type_ids, train, 0)
    }

    /// [`Self::forward`] with the embeddings and the bottom `frozen_layers` layers cut from the
    /// autograd graph (fine-tuning the top of the model only: the backward pass stops there).
    pub fn forward_frozen(
        &self,
        input_ids: &Tensor,
        attention_mask: Option<&Tensor>,
        token_type_ids: Option<&Tensor>,
        train: bool,
        frozen_layers: usize,
    ) -> Result<Tensor> {
        let (b, l) = input_ids.dims2()?;
        if let Some(m) = attention_mask {
            if m.dims() != [b, l] {
                candle_core::bail!(
                    "Bert: attention_mask {:?} must match input_ids ({b}, {l})",
                    m.dims()
                );
            }
        }
        let mask = match attention_mask {
            Some(m) => KeyMask::from_attention_mask(m)?,
            None => KeyMask::None,
        };
        let mut x = self.embeddings.forward(input_ids, token_type_ids, train)?;
        // Right padding: the layers run on the real tokens only (packed rows), and the output
        // is padded back with zeros at the padded positions.
        let lengths = match &mask {
            KeyMask::Lengths(t) => Some(
                t.to_vec1::<u32>()?
                    .into_iter()
                    .map(|n| n as usize)
                    .collect::<Vec<_>>(),
            ),
            _ => None,
        };
        if let Some(lengths) = &lengths {
            x = merge_heads_packed(&x.unsqueeze(1)?, lengths)?;
        }
        if frozen_layers > 0 {
            x = x.detach();
        }
        for (i, layer) in self.layers.iter().enumerate() {
            x = match &lengths {
                Some(lengths) => layer.forward_packed(&x, &mask, lengths, l, train)?,
                None => layer.forward(&x, &mask, train)?,
            };
            if i + 1 == frozen_layers {
                x = x.detach();
            }
        }
        match &lengths {
            Some(lengths) => split_heads_packed(&x, lengths, l, 1)?.squeeze(1),
            None => Ok(x),
        }
    }

    /// `tanh(pooler.dense(hidden[:, 0]))`, `(batch, hidden)`: BERT's pooled output.
    pub fn pooled(&self, hidden: &Tensor) -> Result<Tensor> {
        let Some(p) = &self.pooler else {
            candle_core::bail!("Bert: this model was built without its pooler (pooler.dense)")
        };
        p.forward(&hidden.narrow(1, 0, 1)?.squeeze(1)?)?.tanh()
    }
}

/// One vector per sentence from token states `hidden (batch, seq, h)` and the
/// `attention_mask (batch, seq)`, L2-normalized when `normalize` (sentence-transformers'
/// `Normalize` module).
pub fn pool_sentences(
    hidden: &Tensor,
    attention_mask: &Tensor,
    pooling: Pooling,
    normalize: bool,
) -> Result<Tensor> {
    let pooled = match pooling {
        Pooling::Cls => hidden.narrow(1, 0, 1)?.squeeze(1)?,
        Pooling::Mean => {
            let m = attention_mask.to_dtype(hidden.dtype())?.unsqueeze(D::Minus1)?;
            let sum = hidden.broadcast_mul(&m)?.sum(1)?;
            // sentence-transformers clamps the count at 1e-9.
            let count = m.sum(1)?.clamp(1e-9, f64::INFINITY)?;
            sum.broadcast_div(&count)?
        }
    };
    if !normalize {
        return Ok(pooled);
    }
    // F.normalize: x / max(‖x‖, 1e-12).
    let norm = pooled
        .sqr()?
        .sum_keepdim(D::Minus1)?
        .sqrt()?
        .clamp(1e-12, f64::INFINITY)?;
    pooled.broadcast_div(&norm)
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::Device;
    use candle_nn::VarMap;

    /// A padded batch (which runs on packed rows) gives each sentence's hidden states as if it
    /// were alone, zeros at the padding, and the same gradients.
    #[test]
    fn padded_batches_skip_padding_and_match_each_sentence_alone() -> Result<()> {
        let dev = Device::Cpu;
        let cfg = BertConfig {
            vocab_size: 40,
            hidden_size: 24,
            num_hidden_layers: 2,
            num_attention_heads: 3,
            intermediate_size: 48,
            max_position_embeddings: 16,
            hidden_dropout_prob: 0.0,
            attention_probs_dropout_prob: 0.0,
            ..Default::default()
        };
        let vm = VarMap::new();
        let bert = Bert::new(&cfg, VarBuilder::from_varmap(&vm, DType::F32, &dev), false)?;
        let sentences: [&[u32]; 3] = [&[1, 5, 9, 4, 2], &[1, 7, 2], &[1, 3, 8, 8, 11, 6, 2]];
        let seq = 7;
        let mut ids = Vec::new();
        let mut mask = Vec::new();
        for s in sentences {
            ids.extend(s.iter().copied().chain(std::iter::repeat_n(0, seq - s.len())));
            mask.extend((0..seq).map(|j| u32::from(j < s.len())));
        }
        let ids = Tensor::from_vec(ids, (3, seq), &dev)?;
        let mask = Tensor::from_vec(mask, (3, seq), &dev)?;
        let batch = bert.forward(&ids, Some(&mask), None, true)?;
        let probe = Tensor::randn(0f32, 1.0, batch.dims(), &dev)?;
        let grads = (&batch * &probe)?.sum_all()?.backward()?;
        let w = vm.data().lock().expect("lock")["encoder.layer.0.attention.self.query.weight"].clone();
        let got_grad = grads.get(w.as_tensor()).expect("query grad").clone();
        let mut want_grad = Tensor::zeros_like(&got_grad)?;
        for (i, s) in sentences.iter().enumerate() {
            let alone = bert.forward(&Tensor::new(*s, &dev)?.unsqueeze(0)?, None, None, true)?;
            let row = batch.get(i)?;
            let real = row.narrow(0, 0, s.len())?;
            let e = (real - alone.get(0)?)?.abs()?.max_all()?.to_scalar::<f32>()?;
            assert!(
                e < 1e-5,
                "sentence {i}: padded batch differs from alone by {e:.2e}"
            );
            let pad = row.narrow(0, s.len(), seq - s.len())?;
            assert_eq!(pad.abs()?.sum_all()?.to_scalar::<f32>()?, 0.0, "padding is zero");
            let p = probe.get(i)?.narrow(0, 0, s.len())?.unsqueeze(0)?;
            let g = (alone * p)?.sum_all()?.backward()?;
            want_grad = (want_grad + g.get(w.as_tensor()).expect("query grad"))?;
        }
        let e = (&got_grad - &want_grad)?.abs()?.max_all()?.to_scalar::<f32>()?;
        let scale = want_grad.abs()?.max_all()?.to_scalar::<f32>()?;
        assert!(
            e <= 1e-4 * scale.max(1.0),
            "query gradient differs by {e:.2e} (max {scale:.2e})"
        );
        Ok(())
    }
}
