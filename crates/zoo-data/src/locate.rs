//! Finding a data set on disk: `$CANDLE_ZOO_DATA` first, then the caller's fallback folders.

use crate::error::{DataError, Result};
use std::path::{Path, PathBuf};

/// The first of `$CANDLE_ZOO_DATA/<relative>` and `<root>/<relative>` (for each of `roots`) that
/// exists; the error lists every place that was tried.
pub fn find_data(relative: impl AsRef<Path>, roots: &[PathBuf]) -> Result<PathBuf> {
    let relative = relative.as_ref();
    let candidates: Vec<PathBuf> = std::env::var_os("CANDLE_ZOO_DATA")
        .map(PathBuf::from)
        .into_iter()
        .chain(roots.iter().cloned())
        .map(|r| r.join(relative))
        .collect();
    candidates.iter().find(|p| p.exists()).cloned().ok_or_else(|| {
        DataError::NotFound(format!(
            "{} not found in {:?}: set CANDLE_ZOO_DATA to the folder holding it, or pass its path",
            relative.display(),
            candidates
        ))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_the_first_existing_place_and_lists_the_tried_ones() -> Result<()> {
        let dir = tempfile::tempdir().map_err(|e| DataError::io("tempdir", e))?;
        std::fs::create_dir_all(dir.path().join("b/set")).map_err(|e| DataError::io("mkdir", e))?;
        let roots = [dir.path().join("a"), dir.path().join("b")];
        assert_eq!(find_data("set", &roots)?, dir.path().join("b/set"));
        let e = find_data("missing", &roots).unwrap_err().to_string();
        assert!(
            e.contains("missing not found") && e.contains("CANDLE_ZOO_DATA"),
            "{e}"
        );
        Ok(())
    }
}
