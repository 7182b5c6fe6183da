//! MNIST loading on the real files: counts, labels, every bad-input case, the hub path.

mod common;

use candle_zoo::data::idx::encode_idx;
use candle_zoo::data::{DataOrigin, Dataset, HubOptions, MnistLoader};
use std::io::Write;
use std::path::Path;

fn gz(bytes: &[u8]) -> Vec<u8> {
    let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    e.write_all(bytes).unwrap();
    e.finish().unwrap()
}

/// Writes a tiny MNIST-shaped set (n train, m test) to `dir`, optionally gzipped.
fn write_tiny(dir: &Path, n: usize, m: usize, gzip: bool) {
    let files = [
        (
            "train-images-idx3-ubyte",
            encode_idx(&[n, 28, 28], &vec![7u8; n * 784]),
        ),
        (
            "train-labels-idx1-ubyte",
            encode_idx(&[n], &(0..n).map(|i| (i % 10) as u8).collect::<Vec<_>>()),
        ),
        (
            "t10k-images-idx3-ubyte",
            encode_idx(&[m, 28, 28], &vec![9u8; m * 784]),
        ),
        ("t10k-labels-idx1-ubyte", encode_idx(&[m], &vec![3u8; m])),
    ];
    for (stem, bytes) in files {
        if gzip {
            std::fs::write(dir.join(format!("{stem}.gz")), gz(&bytes)).unwrap();
        } else {
            std::fs::write(dir.join(stem), bytes).unwrap();
        }
    }
}

fn isolated(dataset: Dataset) -> MnistLoader {
    MnistLoader::new(dataset)
        .use_env(false)
        .repository_dir(None)
        .hub(None)
}

#[test]
fn real_mnist_files_parse_with_the_published_counts() {
    let data = isolated(Dataset::Mnist)
        .data_dir(common::repo_mnist())
        .load()
        .unwrap();
    assert_eq!(data.train.len(), 60_000);
    assert_eq!(data.test.len(), 10_000);
    assert_eq!((data.train.rows, data.train.cols), (28, 28));
    assert_eq!(data.train.images.len(), 60_000 * 784);
    assert_eq!(data.test.label_counts(10), common::MNIST_TEST_COUNTS);
    assert_eq!(data.train.label_counts(10), common::MNIST_TRAIN_COUNTS);
    // Pixel statistics from the data set's README: train mean 0.130660 (of 255).
    let mean =
        data.train.images.iter().map(|&p| p as f64).sum::<f64>() / data.train.images.len() as f64 / 255.0;
    assert!((mean - 0.130660).abs() < 1e-5, "train pixel mean {mean}");
    assert_eq!(data.origin, DataOrigin::Directory(common::repo_mnist()));
}

#[test]
fn default_search_finds_the_repository_copy() {
    let data = MnistLoader::new(Dataset::Mnist)
        .use_env(false)
        .hub(None)
        .load()
        .unwrap();
    assert_eq!(data.test.len(), 10_000);
    assert!(matches!(data.origin, DataOrigin::Directory(ref d) if d.ends_with("mnist")));
}

#[test]
fn raw_and_gzip_files_and_subfolders_are_found() {
    for gzip in [false, true] {
        let root = tempfile::tempdir().unwrap();
        let sub = root.path().join("mnist");
        std::fs::create_dir(&sub).unwrap();
        write_tiny(&sub, 12, 5, gzip);
        // The root is given; the files sit in its `mnist/` sub-folder.
        let data = isolated(Dataset::Mnist).data_dir(root.path()).load().unwrap();
        assert_eq!((data.train.len(), data.test.len()), (12, 5));
        assert_eq!(data.test.labels, vec![3; 5]);
    }
}

#[test]
fn missing_mismatched_and_corrupt_files_are_errors_that_name_the_file() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let load = || {
        isolated(Dataset::Mnist)
            .data_dir(d)
            .load()
            .unwrap_err()
            .to_string()
    };

    let err = load();
    assert!(err.contains("holds no mnist IDX files"), "{err}");

    write_tiny(d, 12, 5, true);
    std::fs::remove_file(d.join("t10k-labels-idx1-ubyte.gz")).unwrap();
    let err = load();
    assert!(
        err.contains("t10k-labels-idx1-ubyte") && err.contains("missing"),
        "{err}"
    );

    write_tiny(d, 12, 5, true);
    std::fs::write(
        d.join("train-labels-idx1-ubyte.gz"),
        gz(&encode_idx(&[11], &[1; 11])),
    )
    .unwrap();
    let err = load();
    assert!(
        err.contains("train-labels-idx1-ubyte.gz") && err.contains("11 labels") && err.contains("12 images"),
        "{err}"
    );

    write_tiny(d, 12, 5, true);
    let bytes = std::fs::read(d.join("train-images-idx3-ubyte.gz")).unwrap();
    std::fs::write(d.join("train-images-idx3-ubyte.gz"), &bytes[..bytes.len() / 2]).unwrap();
    let err = load();
    assert!(
        err.contains("train-images-idx3-ubyte.gz") && err.contains("truncated"),
        "{err}"
    );

    write_tiny(d, 12, 5, true);
    std::fs::write(
        d.join("t10k-images-idx3-ubyte.gz"),
        gz(&encode_idx(&[5, 32, 32], &vec![0; 5 * 1024])),
    )
    .unwrap();
    let err = load();
    assert!(
        err.contains("t10k-images-idx3-ubyte.gz") && err.contains("32x32"),
        "{err}"
    );

    write_tiny(d, 12, 5, true);
    std::fs::write(
        d.join("t10k-labels-idx1-ubyte.gz"),
        gz(&encode_idx(&[5], &[1, 2, 3, 4, 200])),
    )
    .unwrap();
    let err = load();
    assert!(err.contains("label 200 at index 4"), "{err}");

    // Swapped files: labels where images belong.
    write_tiny(d, 12, 5, true);
    std::fs::copy(
        d.join("train-labels-idx1-ubyte.gz"),
        d.join("train-images-idx3-ubyte.gz"),
    )
    .unwrap();
    let err = load();
    assert!(err.contains("labels file; an images file was expected"), "{err}");
}

#[test]
fn no_source_at_all_is_a_clear_error() {
    let empty = tempfile::tempdir().unwrap();
    let err = MnistLoader::new(Dataset::Mnist)
        .use_env(false)
        .repository_dir(Some(empty.path().to_path_buf()))
        .hub(Some(HubOptions {
            cache_dir: Some(empty.path().join("hub")),
            offline: Some(true),
            revision: None,
        }))
        .load()
        .unwrap_err()
        .to_string();
    assert!(err.contains("not found") && err.contains("offline"), "{err}");
}

#[test]
fn fashion_mnist_reads_from_the_shared_folder() {
    let Some(dir) = common::shared("data/fashion-mnist") else {
        return;
    };
    let data = isolated(Dataset::FashionMnist).data_dir(&dir).load().unwrap();
    assert_eq!((data.train.len(), data.test.len()), (60_000, 10_000));
    // Fashion-MNIST is balanced: 6,000 / 1,000 per class.
    assert_eq!(data.train.label_counts(10), vec![6000; 10]);
    assert_eq!(data.test.label_counts(10), vec![1000; 10]);
}

/// The hub path, offline: the shared parquet copy is placed in a private hub cache in
/// hf-hub's layout, and the real hub code (cache lookup, parquet, PNG decoding) reads it.
/// Its pixels and labels must equal the IDX files exactly.
#[test]
fn hub_parquet_path_reads_the_same_data_as_the_idx_files() {
    let Some(parquet_dir) = common::shared("data/mnist-parquet") else {
        return;
    };
    let cache = tempfile::tempdir().unwrap();
    let (train_file, test_file) = Dataset::Mnist.hub_files();
    for file in [train_file, test_file] {
        candle_zoo::data::hub::seed_dataset_cache(
            cache.path(),
            "ylecun/mnist",
            "0123456789abcdef0123456789abcdef01234567",
            file,
            &parquet_dir.join(file),
        )
        .unwrap();
    }
    let opts = HubOptions {
        cache_dir: Some(cache.path().to_path_buf()),
        offline: Some(true),
        revision: None,
    };
    let empty = tempfile::tempdir().unwrap();
    let hub = MnistLoader::new(Dataset::Mnist)
        .use_env(false)
        .repository_dir(Some(empty.path().to_path_buf()))
        .hub(Some(opts))
        .load()
        .unwrap();
    assert!(matches!(hub.origin, DataOrigin::Hub(ref files) if files.len() == 2));
    let idx = isolated(Dataset::Mnist)
        .data_dir(common::repo_mnist())
        .load()
        .unwrap();
    assert_eq!(hub.test.labels, idx.test.labels);
    assert!(
        hub.test.images == idx.test.images,
        "test pixels differ between parquet and IDX"
    );
    assert_eq!(hub.train.labels, idx.train.labels);
    assert!(
        hub.train.images == idx.train.images,
        "train pixels differ between parquet and IDX"
    );
}
