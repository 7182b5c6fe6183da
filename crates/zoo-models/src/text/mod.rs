//! Text models: decoder-only language models and the sampling they generate with.

pub mod gpt;
pub mod sampling;

pub use gpt::{Gpt, GptConfig, PositionKind};
pub use sampling::{Sampler, SamplingConfig};
