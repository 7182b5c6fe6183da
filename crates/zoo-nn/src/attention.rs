//! `MultiHeadAttention` with the semantics and parameter names of PyTorch's
//! `nn.MultiheadAttention`, running on the zoo's fused attention kernel.
//!
//! A PyTorch `state_dict` saved as safetensors loads unchanged: `in_proj_weight (3E, E)` and
//! `in_proj_bias (3E)` when key and value have the embedding width, otherwise
//! `q_proj_weight (E, E)`, `k_proj_weight (E, kdim)`, `v_proj_weight (E, vdim)`; then
//! `out_proj.weight (E, E)`, `out_proj.bias (E)`. Beyond PyTorch, `num_kv_heads` gives
//! grouped-query attention: the key/value rows of `in_proj_weight` shrink to
//! `num_kv_heads · head_dim` each.

use crate::linear::Linear;
use crate::positional::RotaryEmbedding;
use candle_core::{DType, Module, Result, Tensor};
use candle_nn::{Init, VarBuilder};
use serde::{Deserialize, Serialize};
use zoo_kernels::attention::{
    attention_probs, flash_attention_with_backend, repeat_kv, AttentionBackend, AttentionDropout,
    AttentionMask, AttentionOptions,
};

/// Sizes and options of [`MultiHeadAttention`]; field names and defaults follow PyTorch.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct MultiHeadAttentionConfig {
    /// Model width `E`.
    pub embed_dim: usize,
    /// Query heads; must divide `embed_dim`.
    pub num_heads: usize,
    /// Key/value heads for grouped-query attention (`None`: `num_heads`, as PyTorch).
    pub num_kv_heads: Option<usize>,
    /// Dropout on the attention probabilities while training.
    pub dropout: f32,
    /// Biases on the input and output projections.
    pub bias: bool,
    /// Width of the keys (`None`: `embed_dim`).
    pub kdim: Option<usize>,
    /// Width of the values (`None`: `embed_dim`).
    pub vdim: Option<usize>,
    /// Inputs are `(batch, seq, feature)` (true, the default here) or `(seq, batch, feature)`.
    pub batch_first: bool,
}

impl Default for MultiHeadAttentionConfig {
    fn default() -> Self {
        Self {
            embed_dim: 512,
            num_heads: 8,
            num_kv_heads: None,
            dropout: 0.0,
            bias: true,
            kdim: None,
            vdim: None,
            batch_first: true,
        }
    }
}

/// Per-call inputs besides query, key and value (PyTorch's `forward` keywords).
#[derive(Debug, Clone, Default)]
pub struct MhaArgs<'a> {
    /// `(batch, src_len)`: an integer tensor where non-zero marks padding to ignore (PyTorch's
    /// boolean `True`), or a float tensor added to the scores.
    pub key_padding_mask: Option<&'a Tensor>,
    /// `(tgt_len, src_len)` or `(batch·num_heads, tgt_len, src_len)`: integer, non-zero = NOT
    /// allowed (PyTorch's boolean convention), or float, added to the scores.
    pub attn_mask: Option<&'a Tensor>,
    /// Causal attention (aligned bottom-right when `tgt_len != src_len`, as in KV-cache decoding).
    pub is_causal: bool,
    /// Also return the attention probabilities (computed by the reference path).
    pub need_weights: bool,
    /// Average the returned probabilities over heads: `(batch, tgt, src)` instead of
    /// `(batch, heads, tgt, src)`.
    pub average_attn_weights: bool,
    /// Training mode: attention dropout is applied only then.
    pub train: bool,
    /// Rotary position embeddings applied to queries and keys (self-attention), with the
    /// position of the first query (`rotary_offset`; for cached decoding it is set for you).
    pub rotary: Option<&'a RotaryEmbedding>,
    /// Position of the first query/key row for `rotary`.
    pub rotary_offset: usize,
}

/// Keys and values of the positions attended to so far, `(batch, kv_heads, len, head_dim)`
/// each, for incremental decoding: each step projects only its new positions.
#[derive(Debug, Clone, Default)]
pub struct KvCache {
    k: Option<Tensor>,
    v: Option<Tensor>,
}

impl KvCache {
    /// An empty cache.
    pub fn new() -> Self {
        Self::default()
    }

    /// Cached positions.
    pub fn len(&self) -> usize {
        self.k.as_ref().and_then(|k| k.dim(2).ok()).unwrap_or(0)
    }

    /// Whether nothing is cached.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Forgets every position.
    pub fn reset(&mut self) {
        *self = Self::default();
    }

    /// Appends `k`, `v` (new positions) and returns the whole cached keys and values.
    fn append(&mut self, k: Tensor, v: Tensor) -> Result<(Tensor, Tensor)> {
        let (k, v) = match (&self.k, &self.v) {
            (Some(pk), Some(pv)) => (Tensor::cat(&[pk, &k], 2)?, Tensor::cat(&[pv, &v], 2)?),
            _ => (k, v),
        };
        self.k = Some(k.clone());
        self.v = Some(v.clone());
        Ok((k, v))
    }

    /// Keeps only batch rows `rows` (beam search reorders and prunes hypotheses).
    pub fn select_rows(&mut self, rows: &Tensor) -> Result<()> {
        if let (Some(k), Some(v)) = (&self.k, &self.v) {
            self.k = Some(k.index_select(rows, 0)?);
            self.v = Some(v.index_select(rows, 0)?);
        }
        Ok(())
    }
}

/// The result of [`MultiHeadAttention::forward`].
#[derive(Debug, Clone)]
pub struct MhaOutput {
    /// `(batch, tgt_len, embed_dim)` (or `(tgt_len, batch, embed_dim)` when not batch-first).
    pub output: Tensor,
    /// Attention probabilities when `need_weights` was set.
    pub weights: Option<Tensor>,
    /// Which attention implementation ran.
    pub backend: AttentionBackend,
}

/// The input projections: packed as PyTorch packs them when q, k, v share the width.
#[derive(Debug, Clone)]
enum InProj {
    Packed {
        weight: Tensor,
        bias: Option<Tensor>,
    },
    Separate {
        q: Tensor,
        k: Tensor,
        v: Tensor,
        bias: Option<Tensor>,
    },
}

/// Multi-head (and grouped-query) attention; see the module docs.
#[derive(Debug, Clone)]
pub struct MultiHeadAttention {
    in_proj: InProj,
    out_proj: Linear,
    cfg: MultiHeadAttentionConfig,
    head_dim: usize,
    kv_heads: usize,
}

impl MultiHeadAttention {
    /// Builds the layer through `vb` with PyTorch's initialization: Xavier-uniform input
    /// projections, zero biases, and `out_proj.weight` uniform in ±1/sqrt(E).
    pub fn new(cfg: &MultiHeadAttentionConfig, vb: VarBuilder) -> Result<Self> {
        let e = cfg.embed_dim;
        if cfg.num_heads == 0 || !e.is_multiple_of(cfg.num_heads) {
            candle_core::bail!(
                "MultiHeadAttention: num_heads ({}) must divide embed_dim ({e})",
                cfg.num_heads
            );
        }
        let kv_heads = cfg.num_kv_heads.unwrap_or(cfg.num_heads);
        if kv_heads == 0 || !cfg.num_heads.is_multiple_of(kv_heads) {
            candle_core::bail!(
                "MultiHeadAttention: num_kv_heads ({kv_heads}) must divide num_heads ({})",
                cfg.num_heads
            );
        }
        if !(0.0..1.0).contains(&cfg.dropout) {
            candle_core::bail!("MultiHeadAttention: dropout {} must be in [0, 1)", cfg.dropout);
        }
        let head_dim = e / cfg.num_heads;
        let kv_e = kv_heads * head_dim;
        let (kdim, vdim) = (cfg.kdim.unwrap_or(e), cfg.vdim.unwrap_or(e));
        let xavier = |rows: usize, cols: usize| {
            let a = (6.0 / (rows + cols) as f64).sqrt();
            Init::Uniform { lo: -a, up: a }
        };
        let bias = if cfg.bias {
            Some(vb.get_with_hints(e + 2 * kv_e, "in_proj_bias", Init::Const(0.0))?)
        } else {
            None
        };
        let in_proj = if kdim == e && vdim == e {
            let rows = e + 2 * kv_e;
            // PyTorch draws the packed (3E, E) matrix with Xavier bounds over its full shape.
            InProj::Packed {
                weight: vb.get_with_hints((rows, e), "in_proj_weight", xavier(rows, e))?,
                bias,
            }
        } else {
            InProj::Separate {
                q: vb.get_with_hints((e, e), "q_proj_weight", xavier(e, e))?,
                k: vb.get_with_hints((kv_e, kdim), "k_proj_weight", xavier(kv_e, kdim))?,
                v: vb.get_with_hints((kv_e, vdim), "v_proj_weight", xavier(kv_e, vdim))?,
                bias,
            }
        };
        let bound = 1.0 / (e as f64).sqrt();
        let ow = vb.pp("out_proj").get_with_hints(
            (e, e),
            "weight",
            Init::Uniform {
                lo: -bound,
                up: bound,
            },
        )?;
        let ob = if cfg.bias {
            Some(vb.pp("out_proj").get_with_hints(e, "bias", Init::Const(0.0))?)
        } else {
            None
        };
        Ok(Self {
            in_proj,
            out_proj: Linear::new(ow, ob),
            cfg: cfg.clone(),
            head_dim,
            kv_heads,
        })
    }

    /// The configuration.
    pub fn config(&self) -> &MultiHeadAttentionConfig {
        &self.cfg
    }

    /// Projects `x (batch, len, in)` with rows `rows` of the input projection.
    fn project(&self, x: &Tensor, which: usize) -> Result<Tensor> {
        let e = self.cfg.embed_dim;
        let kv_e = self.kv_heads * self.head_dim;
        let (start, len) = match which {
            0 => (0, e),
            1 => (e, kv_e),
            _ => (e + kv_e, kv_e),
        };
        let (w, b) = match &self.in_proj {
            InProj::Packed { weight, bias } => (weight.narrow(0, start, len)?, bias),
            InProj::Separate { q, k, v, bias } => ([q, k, v][which].clone(), bias),
        };
        let b = b.as_ref().map(|b| b.narrow(0, start, len)).transpose()?;
        crate::linear::linear(x, &w, b.as_ref())
    }

    /// `(batch, len, heads·head_dim)` → `(batch, heads, len, head_dim)`.
    fn split_heads(&self, x: &Tensor, heads: usize) -> Result<Tensor> {
        // One autograd node (candle's reshape + transpose + copy would be three).
        zoo_kernels::heads::split_heads(x, heads)
    }

    /// Attention of `query (batch, tgt, E)` over `key (batch, src, kdim)` and
    /// `value (batch, src, vdim)` (sequence-first when `batch_first` is false).
    pub fn forward(&self, query: &Tensor, key: &Tensor, value: &Tensor, args: &MhaArgs) -> Result<MhaOutput> {
        let bf = |t: &Tensor| {
            if self.cfg.batch_first {
                Ok(t.clone())
            } else {
                t.transpose(0, 1)
            }
        };
        let (query, key, value) = (bf(query)?, bf(key)?, bf(value)?);
        let (b, _, e) = query.dims3()?;
        let (bk, src, _) = key.dims3()?;
        if e != self.cfg.embed_dim || bk != b || value.dims3()?.1 != src {
            candle_core::bail!(
                "MultiHeadAttention: query {:?}, key {:?}, value {:?} do not fit embed_dim {} (batch and source lengths must agree)",
                query.dims(),
                key.dims(),
                value.dims(),
                self.cfg.embed_dim
            );
        }
        let h = self.cfg.num_heads;
        let mut q = self.split_heads(&self.project(&query, 0)?, h)?;
        let mut k = self.split_heads(&self.project(&key, 1)?, self.kv_heads)?;
        let v = self.split_heads(&self.project(&value, 2)?, self.kv_heads)?;
        if let Some(rope) = args.rotary {
            q = rope.apply(&q, args.rotary_offset)?;
            k = rope.apply(&k, args.rotary_offset)?;
        }
        let (ctx, weights, backend) = self.attend(&q, &k, &v, args)?;
        let output = self.finish(&ctx)?;
        let output = if self.cfg.batch_first {
            output
        } else {
            output.transpose(0, 1)?
        };
        Ok(MhaOutput {
            output,
            weights,
            backend,
        })
    }

    /// Self-attention of new positions `x (batch, new, E)` (batch-first) that also attends to
    /// every position in `cache`, and appends the new keys and values to it. With
    /// `args.is_causal` the new positions see the cached ones and the earlier new ones (the
    /// kernel's bottom-right causal alignment); rotary positions continue from `cache.len()`.
    /// Generating `L` tokens this way projects each token once instead of `L` times.
    pub fn forward_cached(&self, x: &Tensor, cache: &mut KvCache, args: &MhaArgs) -> Result<Tensor> {
        let (_, _, e) = x.dims3()?;
        if e != self.cfg.embed_dim {
            candle_core::bail!(
                "MultiHeadAttention: input {:?} does not fit embed_dim {}",
                x.dims(),
                self.cfg.embed_dim
            );
        }
        let offset = cache.len();
        let mut q = self.split_heads(&self.project(x, 0)?, self.cfg.num_heads)?;
        let mut k = self.split_heads(&self.project(x, 1)?, self.kv_heads)?;
        let v = self.split_heads(&self.project(x, 2)?, self.kv_heads)?;
        if let Some(rope) = args.rotary {
            q = rope.apply(&q, offset)?;
            k = rope.apply(&k, offset)?;
        }
        let (k, v) = cache.append(k.contiguous()?, v.contiguous()?)?;
        let (ctx, _, _) = self.attend(&q, &k, &v, args)?;
        self.finish(&ctx)
    }

    /// Projects `memory (batch, src, kdim)` (batch-first) into the keys and values of
    /// cross-attention, once per source sentence, for [`Self::forward_with_kv`].
    pub fn memory_kv(&self, memory: &Tensor) -> Result<KvCache> {
        let k = self
            .split_heads(&self.project(memory, 1)?, self.kv_heads)?
            .contiguous()?;
        let v = self
            .split_heads(&self.project(memory, 2)?, self.kv_heads)?
            .contiguous()?;
        Ok(KvCache {
            k: Some(k),
            v: Some(v),
        })
    }

    /// Cross-attention of `query (batch, tgt, E)` (batch-first) over keys and values made by
    /// [`Self::memory_kv`].
    pub fn forward_with_kv(&self, query: &Tensor, kv: &KvCache, args: &MhaArgs) -> Result<Tensor> {
        let (Some(k), Some(v)) = (&kv.k, &kv.v) else {
            candle_core::bail!("MultiHeadAttention: forward_with_kv needs a filled cache (memory_kv)")
        };
        let q = self.split_heads(&self.project(query, 0)?, self.cfg.num_heads)?;
        let (ctx, _, _) = self.attend(&q, k, v, args)?;
        self.finish(&ctx)
    }

    /// `(batch, heads, tgt, head_dim)` context → output projection, `(batch, tgt, E)`.
    fn finish(&self, ctx: &Tensor) -> Result<Tensor> {
        self.out_proj.forward(&zoo_kernels::heads::merge_heads(ctx)?)
    }

    /// Attention of projected `q (batch, heads, tgt, hd)` over `k`, `v` `(batch, kv_heads,
    /// src, hd)` with the call's masks, dropout and weights options.
    fn attend(
        &self,
        q: &Tensor,
        k: &Tensor,
        v: &Tensor,
        args: &MhaArgs,
    ) -> Result<(Tensor, Option<Tensor>, AttentionBackend)> {
        let (b, _, tgt, _) = q.dims4()?;
        let src = k.dim(2)?;
        let mask = self.combined_mask(args, b, tgt, src, q.dtype())?;
        let mut opts = AttentionOptions {
            causal: args.is_causal,
            mask,
            ..Default::default()
        };
        let dropout = if args.train { self.cfg.dropout } else { 0.0 };
        if args.need_weights {
            let why = "need_weights";
            let (ctx, probs) = explicit_attention(q, k, v, &opts, dropout)?;
            let weights = if args.need_weights {
                Some(if args.average_attn_weights {
                    probs.mean(1)?
                } else {
                    probs
                })
            } else {
                None
            };
            Ok((ctx, weights, AttentionBackend::Reference(why.into())))
        } else {
            // Dropout on the probabilities runs inside the fused kernel (a fresh mask per call).
            opts.dropout = (dropout > 0.0).then(|| AttentionDropout::new(dropout));
            let (ctx, backend) = flash_attention_with_backend(q, k, v, &opts)?;
            Ok((ctx, None, backend))
        }
    }

    /// PyTorch's masks as one mask over `(batch, heads, tgt, src)`.
    fn combined_mask(
        &self,
        args: &MhaArgs,
        b: usize,
        tgt: usize,
        src: usize,
        dtype: DType,
    ) -> Result<Option<AttentionMask>> {
        let h = self.cfg.num_heads;
        // Each PyTorch mask as an additive float tensor broadcastable to (b, h, tgt, src).
        let additive = |m: &Tensor, shape: &[usize]| -> Result<Tensor> {
            let m = m.reshape(shape)?;
            if m.dtype().is_float() {
                m.to_dtype(dtype)
            } else {
                // Non-zero = not allowed.
                let blocked = m.ne(0u32)?;
                blocked.where_cond(
                    &Tensor::full(f32::NEG_INFINITY, m.shape(), m.device())?.to_dtype(dtype)?,
                    &Tensor::zeros(m.shape(), dtype, m.device())?,
                )
            }
        };
        let mut parts = Vec::new();
        if let Some(kpm) = args.key_padding_mask {
            if kpm.dims() != [b, src] {
                candle_core::bail!(
                    "MultiHeadAttention: key_padding_mask must be (batch, src_len) = ({b}, {src}), got {:?}",
                    kpm.dims()
                );
            }
            parts.push(additive(kpm, &[b, 1, 1, src])?);
        }
        if let Some(am) = args.attn_mask {
            let shape = match am.dims() {
                [t, s] if *t == tgt && *s == src => vec![1, 1, tgt, src],
                [bh, t, s] if *bh == b * h && *t == tgt && *s == src => vec![b, h, tgt, src],
                other => candle_core::bail!(
                    "MultiHeadAttention: attn_mask must be (tgt_len, src_len) = ({tgt}, {src}) or (batch·num_heads, tgt_len, src_len), got {other:?}"
                ),
            };
            parts.push(additive(am, &shape)?);
        }
        let mut acc: Option<Tensor> = None;
        for p in parts {
            acc = Some(match acc {
                None => p,
                Some(a) => a.broadcast_add(&p)?,
            });
        }
        Ok(acc.map(AttentionMask::Additive))
    }
}

/// Attention that materializes the probabilities `(batch, heads, tgt, src)` (the kernels'
/// reference path): for `need_weights` and for dropout on the probabilities.
fn explicit_attention(
    q: &Tensor,
    k: &Tensor,
    v: &Tensor,
    opts: &AttentionOptions,
    dropout: f32,
) -> Result<(Tensor, Tensor)> {
    let probs = attention_probs(q, k, v, opts)?;
    let dropped = if dropout > 0.0 {
        candle_nn::ops::dropout(&probs, dropout)?
    } else {
        probs.clone()
    };
    let v = repeat_kv(v, q.dim(1)? / k.dim(1)?)?;
    Ok((dropped.matmul(&v.contiguous()?)?, probs))
}

impl Module for MultiHeadAttention {
    /// Self-attention without masks: `forward(x, x, x)` in evaluation mode.
    fn forward(&self, xs: &Tensor) -> Result<Tensor> {
        Ok(MultiHeadAttention::forward(self, xs, xs, xs, &MhaArgs::default())?.output)
    }
}
