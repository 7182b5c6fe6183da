//! Helpers shared by the integration tests.
#![allow(dead_code)]

use candle_zoo::candle_core::Tensor;
use std::path::PathBuf;

/// `../shared/<sub>` beside the checkout, or `None` after printing why the test is skipped.
/// A user's clone has no `../shared`; tests that need it must skip, not fail.
pub fn shared(sub: &str) -> Option<PathBuf> {
    let base = std::env::var_os("CANDLE_ZOO_SHARED")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../shared"));
    let path = base.join(sub);
    if path.exists() {
        Some(path)
    } else {
        eprintln!(
            "SKIPPED: {} is absent (set CANDLE_ZOO_SHARED to the shared folder to run this test)",
            path.display()
        );
        None
    }
}

/// The repository's `data/mnist`, which ships with the code.
pub fn repo_mnist() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("data/mnist")
}

/// The MNIST test-set label histogram published with the data set.
pub const MNIST_TEST_COUNTS: [usize; 10] = [980, 1135, 1032, 1010, 982, 892, 958, 1028, 974, 1009];
/// The MNIST training-set label histogram.
pub const MNIST_TRAIN_COUNTS: [usize; 10] = [5923, 6742, 5958, 6131, 5842, 5421, 5918, 6265, 5851, 5949];

/// The `.safetensors` fixtures in `tests/fixtures/<sub>`, sorted; at least `min` of them (made by
/// `tools/<script>`).
pub fn fixtures(sub: &str, min: usize, script: &str) -> Vec<PathBuf> {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures")
        .join(sub);
    let mut files: Vec<PathBuf> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
        .map(|e| e.expect("entry").path())
        .filter(|p| p.extension().is_some_and(|e| e == "safetensors"))
        .collect();
    files.sort();
    assert!(
        files.len() >= min,
        "expected the fixtures of tools/{script} in {dir:?}"
    );
    files
}

/// `max |a − b| / max |b|`, in f64: a relative error that stays meaningful where single entries
/// are near zero.
pub fn rel_err(a: &candle_zoo::candle_core::Tensor, b: &candle_zoo::candle_core::Tensor) -> f64 {
    use candle_zoo::candle_core::DType;
    let flat = |t: &candle_zoo::candle_core::Tensor| {
        t.to_dtype(DType::F64)
            .and_then(|t| t.flatten_all())
            .and_then(|t| t.to_vec1::<f64>())
            .expect("f64 values")
    };
    let (a, b) = (flat(a), flat(b));
    assert_eq!(a.len(), b.len());
    let scale = b.iter().fold(0f64, |m, x| m.max(x.abs())).max(1e-12);
    a.iter().zip(&b).fold(0f64, |m, (x, y)| m.max((x - y).abs())) / scale
}

/// `max |a − b|` over all elements (f32 tensors of one shape).
pub fn max_abs_diff(a: &Tensor, b: &Tensor) -> f32 {
    (a - b)
        .and_then(|d| d.abs())
        .and_then(|d| d.max_all())
        .and_then(|d| d.to_scalar::<f32>())
        .expect("max_abs_diff: tensors of one shape and dtype f32")
}
