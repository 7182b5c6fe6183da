//! Text models: a decoder-only language model and the sampling it generates with, an
//! encoder-decoder translator with greedy and beam-search decoding, and BERT with pretrained
//! weights from the Hugging Face hub layout (sentence embeddings as sentence-transformers).

pub mod bert;
pub mod bert_tasks;
pub mod classify;
pub mod gpt;
pub mod pretrained;
pub mod sampling;
pub mod sentence;
pub mod seq2seq;

pub use bert::{pool_sentences, Bert, BertConfig, Pooling};
pub use bert_tasks::{BertForQuestionAnswering, BertForTokenClassification};
pub use classify::{
    layer_lr_scale, BertForSequenceClassification, ClassifierInput, FineTuneStrategy, ProblemType,
};
pub use gpt::{Gpt, GptConfig, PositionKind};
pub use pretrained::PretrainedFiles;
pub use sampling::{Sampler, SamplingConfig};
pub use sentence::SentenceEncoder;
pub use seq2seq::{BeamConfig, Seq2SeqConfig, Seq2SeqTransformer};

/// A candle error carrying `e`'s message (file and hub errors of the loaders).
pub(crate) fn msg(e: impl std::fmt::Display) -> candle_core::Error {
    candle_core::Error::Msg(e.to_string())
}
