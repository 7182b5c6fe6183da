//! Multi30k (English–German image captions), read from its `.gz` files as distributed:
//! `{train,val,test_2016_flickr}.{en,de}.gz`, one sentence per line, line i of one language
//! parallel to line i of the other.

use crate::error::{DataError, Result};
use flate2::read::GzDecoder;
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};

/// A split of Multi30k.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Multi30kSplit {
    /// 29,000 pairs.
    Train,
    /// 1,014 pairs.
    Val,
    /// The 2016 Flickr test set, 1,000 pairs.
    Test2016,
}

impl Multi30kSplit {
    /// The file stem of the split.
    pub fn stem(self) -> &'static str {
        match self {
            Self::Train => "train",
            Self::Val => "val",
            Self::Test2016 => "test_2016_flickr",
        }
    }
}

/// Parallel sentences: `src[i]` translates to `tgt[i]`.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct ParallelCorpus {
    /// Source sentences.
    pub src: Vec<String>,
    /// Target sentences.
    pub tgt: Vec<String>,
}

impl ParallelCorpus {
    /// Number of pairs.
    pub fn len(&self) -> usize {
        self.src.len()
    }

    /// Whether there are no pairs.
    pub fn is_empty(&self) -> bool {
        self.src.is_empty()
    }
}

fn read_gz_lines(path: &Path) -> Result<Vec<String>> {
    let f = std::fs::File::open(path).map_err(|e| DataError::io(path, e))?;
    BufReader::new(GzDecoder::new(f))
        .lines()
        .map(|l| {
            l.map(|s| s.trim_end_matches('\r').to_string())
                .map_err(|e| DataError::io(path, e))
        })
        .collect()
}

/// Reads `split` from `dir` (the folder holding the `.gz` files) for languages `src` → `tgt`
/// (`"en"`, `"de"`). The two files must have the same number of lines.
pub fn read_multi30k(
    dir: impl AsRef<Path>,
    split: Multi30kSplit,
    src: &str,
    tgt: &str,
) -> Result<ParallelCorpus> {
    let dir = dir.as_ref();
    let file = |lang: &str| -> PathBuf { dir.join(format!("{}.{lang}.gz", split.stem())) };
    let (sp, tp) = (file(src), file(tgt));
    let (s, t) = (read_gz_lines(&sp)?, read_gz_lines(&tp)?);
    if s.len() != t.len() {
        return Err(DataError::format(
            &tp,
            format!(
                "{} lines, but {} has {}: the files must be parallel",
                t.len(),
                sp.display(),
                s.len()
            ),
        ));
    }
    Ok(ParallelCorpus { src: s, tgt: t })
}

#[cfg(test)]
mod tests {
    use super::*;
    use flate2::write::GzEncoder;
    use std::io::Write;

    fn write_gz(path: &Path, text: &str) {
        let mut e = GzEncoder::new(
            std::fs::File::create(path).expect("create"),
            flate2::Compression::default(),
        );
        e.write_all(text.as_bytes()).expect("write");
        e.finish().expect("finish");
    }

    #[test]
    fn reads_parallel_files_and_rejects_mismatched_ones() -> Result<()> {
        let dir = tempfile::tempdir().map_err(|e| DataError::io("tempdir", e))?;
        write_gz(&dir.path().join("val.en.gz"), "A man sleeps.\nTwo dogs play.\n");
        write_gz(
            &dir.path().join("val.de.gz"),
            "Ein Mann schläft.\r\nZwei Hunde spielen.\n",
        );
        let c = read_multi30k(dir.path(), Multi30kSplit::Val, "en", "de")?;
        assert_eq!(c.len(), 2);
        assert_eq!(c.tgt[0], "Ein Mann schläft.");
        write_gz(&dir.path().join("train.en.gz"), "one\ntwo\n");
        write_gz(&dir.path().join("train.de.gz"), "eins\n");
        let e = read_multi30k(dir.path(), Multi30kSplit::Train, "en", "de")
            .unwrap_err()
            .to_string();
        assert!(e.contains("must be parallel"), "{e}");
        assert!(read_multi30k(dir.path(), Multi30kSplit::Test2016, "en", "de").is_err());
        Ok(())
    }

    /// The real data, when ../shared/data is present.
    #[test]
    fn reads_the_real_multi30k_when_available() -> Result<()> {
        let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../../shared/data/multi30k");
        if !dir.exists() {
            eprintln!("SKIP: {} not found", dir.display());
            return Ok(());
        }
        for (split, n) in [
            (Multi30kSplit::Train, 29_000),
            (Multi30kSplit::Val, 1_014),
            (Multi30kSplit::Test2016, 1_000),
        ] {
            assert_eq!(read_multi30k(&dir, split, "en", "de")?.len(), n, "{split:?}");
        }
        Ok(())
    }
}
