//! Tokenizers for the zoo's text models, built with the `tokenizers` crate and saved as the
//! standard `tokenizer.json`, so a run directory can be reloaded by Rust or by Python's
//! `tokenizers` / `transformers`.
//!
//! - [`char_tokenizer`]: one token per character (a `WordLevel` model over the characters of the
//!   training text, a fixed-length-1 pre-tokenizer and a `Fuse` decoder), plus `<unk>`.
//! - [`train_bpe`]: byte-level BPE trained on the training split, with the special tokens a
//!   sequence model needs.

use crate::error::{DataError, Result};
use std::collections::{BTreeSet, HashMap};
use std::path::Path;
use tokenizers::decoders::fuse::Fuse;
use tokenizers::models::bpe::{BpeTrainerBuilder, BPE};
use tokenizers::models::wordlevel::WordLevel;
use tokenizers::normalizers::NormalizerWrapper;
use tokenizers::pre_tokenizers::byte_level::ByteLevel;
use tokenizers::pre_tokenizers::fixed_length::FixedLength;
use tokenizers::processors::PostProcessorWrapper;
use tokenizers::{AddedToken, Tokenizer, TokenizerBuilder, TokenizerImpl};

pub use tokenizers::Tokenizer as HfTokenizer;

fn tok_err(e: impl std::fmt::Display) -> DataError {
    DataError::Tokenizer(e.to_string())
}

/// The unknown-character token of [`char_tokenizer`] (id 0).
pub const UNK: &str = "<unk>";

/// A character-level tokenizer over the characters of `text` (sorted by code point, after
/// `<unk>` at id 0): what nanoGPT's Shakespeare model uses, but as a real `tokenizer.json`.
pub fn char_tokenizer(text: &str) -> Result<Tokenizer> {
    let chars: BTreeSet<char> = text.chars().collect();
    let mut vocab: HashMap<String, u32> = HashMap::new();
    vocab.insert(UNK.to_string(), 0);
    for (i, c) in chars.into_iter().enumerate() {
        vocab.insert(c.to_string(), i as u32 + 1);
    }
    let model = WordLevel::builder()
        .vocab(vocab.into_iter().collect())
        .unk_token(UNK.to_string())
        .build()
        .map_err(tok_err)?;
    let mut tok = Tokenizer::new(model);
    tok.with_pre_tokenizer(Some(FixedLength::new(1)));
    tok.with_decoder(Some(Fuse::new()));
    Ok(tok)
}

/// Trains a byte-level BPE tokenizer of about `vocab_size` tokens on `files` (the training
/// split only), with `special` tokens added first (e.g. `<pad>`, `<bos>`, `<eos>`, `<unk>`).
pub fn train_bpe(files: &[impl AsRef<Path>], vocab_size: usize, special: &[&str]) -> Result<Tokenizer> {
    let mut trainer = BpeTrainerBuilder::new()
        .vocab_size(vocab_size)
        .min_frequency(2)
        .show_progress(false)
        .special_tokens(
            special
                .iter()
                .map(|s| AddedToken::from(s.to_string(), true))
                .collect(),
        )
        .initial_alphabet(ByteLevel::alphabet().into_iter().collect())
        .build();
    let mut tok: TokenizerImpl<BPE, NormalizerWrapper, ByteLevel, PostProcessorWrapper, ByteLevel> =
        TokenizerBuilder::new()
            .with_model(BPE::default())
            .with_pre_tokenizer(Some(ByteLevel::default().add_prefix_space(false)))
            .with_decoder(Some(ByteLevel::default()))
            .with_normalizer(None)
            .with_post_processor(None)
            .build()
            .map_err(tok_err)?;
    let names: Vec<String> = files
        .iter()
        .map(|f| f.as_ref().to_string_lossy().into_owned())
        .collect();
    tok.train_from_files(&mut trainer, names).map_err(tok_err)?;
    Ok(Tokenizer::from(tok))
}

/// Saves `tok` as `tokenizer.json` content at `path`.
pub fn save(tok: &Tokenizer, path: impl AsRef<Path>) -> Result<()> {
    let path = path.as_ref();
    tok.save(path, true)
        .map_err(|e| DataError::Tokenizer(format!("{}: {e}", path.display())))
}

/// Loads a `tokenizer.json`.
pub fn load(path: impl AsRef<Path>) -> Result<Tokenizer> {
    let path = path.as_ref();
    if !path.exists() {
        return Err(DataError::io(
            path,
            std::io::Error::from(std::io::ErrorKind::NotFound),
        ));
    }
    Tokenizer::from_file(path).map_err(|e| DataError::Tokenizer(format!("{}: {e}", path.display())))
}

/// Replaces a tokenizer file's own padding and truncation (all-MiniLM-L6-v2's pads every
/// sentence to a fixed 128): truncate at `max_len` tokens, keeping the special tokens, and pad a
/// batch to its longest sentence when `pad_to_longest` (keeping the file's pad token), else not
/// at all.
pub fn set_batch_lengths(tok: &mut Tokenizer, pad_to_longest: bool, max_len: usize) -> Result<()> {
    let padding = pad_to_longest.then(|| tokenizers::PaddingParams {
        strategy: tokenizers::PaddingStrategy::BatchLongest,
        ..tok.get_padding().cloned().unwrap_or_default()
    });
    tok.with_padding(padding);
    tok.with_truncation(Some(tokenizers::TruncationParams {
        max_length: max_len,
        ..Default::default()
    }))
    .map(|_| ())
    .map_err(|e| DataError::Tokenizer(format!("truncation at {max_len}: {e}")))
}

/// Token ids of `text` (no special tokens added).
pub fn encode(tok: &Tokenizer, text: &str) -> Result<Vec<u32>> {
    Ok(tok.encode(text, false).map_err(tok_err)?.get_ids().to_vec())
}

/// Text of `ids` (special tokens skipped).
pub fn decode(tok: &Tokenizer, ids: &[u32]) -> Result<String> {
    tok.decode(ids, true).map_err(tok_err)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn char_tokenizer_round_trips_and_survives_save_and_load() -> Result<()> {
        let text = "First Citizen:\nBefore we proceed any further, hear me speak.\n";
        let tok = char_tokenizer(text)?;
        let ids = encode(&tok, text)?;
        assert_eq!(ids.len(), text.chars().count(), "one token per character");
        assert_eq!(decode(&tok, &ids)?, text);
        let dir = tempfile::tempdir().map_err(|e| DataError::io("tempdir", e))?;
        let path = dir.path().join("tokenizer.json");
        save(&tok, &path)?;
        let back = load(&path)?;
        assert_eq!(encode(&back, text)?, ids);
        // A character never seen maps to <unk> (id 0) instead of failing.
        assert_eq!(encode(&back, "Z")?, vec![0]);
        assert!(load(dir.path().join("missing.json")).is_err());
        Ok(())
    }

    #[test]
    fn bpe_trains_on_a_file_and_round_trips() -> Result<()> {
        let dir = tempfile::tempdir().map_err(|e| DataError::io("tempdir", e))?;
        let path = dir.path().join("train.txt");
        let line = "a man in a blue shirt is standing on a ladder cleaning windows .\n";
        std::fs::write(&path, line.repeat(50)).map_err(|e| DataError::io(&path, e))?;
        let tok = train_bpe(&[&path], 300, &["<pad>", "<bos>", "<eos>", "<unk>"])?;
        assert_eq!(tok.token_to_id("<pad>"), Some(0));
        let ids = encode(&tok, line.trim_end())?;
        assert!(
            ids.len() < line.len() / 2,
            "BPE merges frequent pieces: {} tokens",
            ids.len()
        );
        assert_eq!(decode(&tok, &ids)?, line.trim_end());
        Ok(())
    }
}
