//! Text models: a decoder-only language model and the sampling it generates with, and an
//! encoder-decoder translator with greedy and beam-search decoding.

pub mod gpt;
pub mod sampling;
pub mod seq2seq;

pub use gpt::{Gpt, GptConfig, PositionKind};
pub use sampling::{Sampler, SamplingConfig};
pub use seq2seq::{BeamConfig, Seq2SeqConfig, Seq2SeqTransformer};
