//! `CANDLE_ZOO_DATA` precedence. Alone in its own test binary: it sets an environment
//! variable, which would race with other tests reading it.

mod common;

use candle_zoo::data::{DataOrigin, Dataset, MnistLoader};

#[test]
fn env_var_beats_the_repository_and_explicit_dir_beats_the_env_var() {
    let root = tempfile::tempdir().unwrap();
    // An env root without the files is an error, not a silent fallback to data/mnist.
    std::env::set_var("CANDLE_ZOO_DATA", root.path());
    let err = MnistLoader::new(Dataset::Mnist)
        .hub(None)
        .load()
        .unwrap_err()
        .to_string();
    assert!(err.contains("CANDLE_ZOO_DATA"), "{err}");
    // With the files in $CANDLE_ZOO_DATA/mnist, they are used.
    let sub = root.path().join("mnist");
    std::fs::create_dir(&sub).unwrap();
    for f in std::fs::read_dir(common::repo_mnist()).unwrap() {
        let f = f.unwrap().path();
        if f.extension().is_some_and(|e| e == "gz") {
            std::fs::copy(&f, sub.join(f.file_name().unwrap())).unwrap();
        }
    }
    let data = MnistLoader::new(Dataset::Mnist).hub(None).load().unwrap();
    assert_eq!(data.origin, DataOrigin::Directory(sub.clone()));
    // An explicit directory wins over the variable.
    let data = MnistLoader::new(Dataset::Mnist)
        .hub(None)
        .data_dir(common::repo_mnist())
        .load()
        .unwrap();
    assert_eq!(data.origin, DataOrigin::Directory(common::repo_mnist()));
    std::env::remove_var("CANDLE_ZOO_DATA");
}
