//! Helpers shared by the integration tests.
#![allow(dead_code)]

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
