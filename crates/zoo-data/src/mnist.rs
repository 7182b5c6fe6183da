//! MNIST and Fashion-MNIST: 28×28 grayscale images in 10 classes, 60,000 train / 10,000 test.
//!
//! [`MnistLoader`] finds the files in this order, the first that applies wins:
//! 1. an explicit directory ([`MnistLoader::data_dir`]),
//! 2. the `CANDLE_ZOO_DATA` environment variable,
//! 3. the repository's own `data/` folder (MNIST ships there),
//! 4. the Hugging Face hub (parquet), through hf-hub's cache, honouring `HF_HUB_OFFLINE`.
//!
//! A directory may hold the four IDX files directly or in a sub-folder named after the data
//! set (`mnist/`, `fashion-mnist/`); each file may be gzip-compressed (`.gz`) or raw.
//! An explicitly chosen directory (1, 2) that lacks a file is an error, never a silent fallback.

use crate::error::{DataError, Result};
use crate::hub::{self, HubOptions};
use crate::idx;
use std::path::{Path, PathBuf};

/// Environment variable naming a data root (`$CANDLE_ZOO_DATA/mnist/...`).
pub const DATA_ENV_VAR: &str = "CANDLE_ZOO_DATA";

/// Side length of an image in pixels.
pub const IMAGE_SIDE: usize = 28;
/// Number of classes of both data sets.
pub const NUM_CLASSES: usize = 10;

/// One of the MNIST-format data sets.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Dataset {
    /// LeCun et al.'s handwritten digits.
    Mnist,
    /// Zalando's Fashion-MNIST: clothing in the same format.
    FashionMnist,
}

impl Dataset {
    /// Name of the folder that holds the files (`mnist`, `fashion-mnist`).
    pub fn dir_name(self) -> &'static str {
        match self {
            Dataset::Mnist => "mnist",
            Dataset::FashionMnist => "fashion-mnist",
        }
    }

    /// The Hugging Face dataset repository of the parquet copy.
    pub fn hub_repo(self) -> &'static str {
        match self {
            Dataset::Mnist => "ylecun/mnist",
            Dataset::FashionMnist => "zalando-datasets/fashion_mnist",
        }
    }

    /// Paths of the (train, test) parquet files inside [`Dataset::hub_repo`].
    pub fn hub_files(self) -> (&'static str, &'static str) {
        match self {
            Dataset::Mnist => (
                "mnist/train-00000-of-00001.parquet",
                "mnist/test-00000-of-00001.parquet",
            ),
            Dataset::FashionMnist => (
                "fashion_mnist/train-00000-of-00001.parquet",
                "fashion_mnist/test-00000-of-00001.parquet",
            ),
        }
    }

    /// Human-readable class names, indexed by label.
    pub fn class_names(self) -> [&'static str; NUM_CLASSES] {
        match self {
            Dataset::Mnist => ["0", "1", "2", "3", "4", "5", "6", "7", "8", "9"],
            Dataset::FashionMnist => [
                "T-shirt/top",
                "Trouser",
                "Pullover",
                "Dress",
                "Coat",
                "Sandal",
                "Shirt",
                "Sneaker",
                "Bag",
                "Ankle boot",
            ],
        }
    }

    /// Mean and standard deviation of the training pixels scaled to `[0, 1]`, used to
    /// normalize inputs (MNIST: the customary 0.1307 / 0.3081).
    pub fn mean_std(self) -> (f32, f32) {
        match self {
            Dataset::Mnist => (0.1307, 0.3081),
            Dataset::FashionMnist => (0.2860, 0.3530),
        }
    }
}

impl std::str::FromStr for Dataset {
    type Err = DataError;
    fn from_str(s: &str) -> Result<Self> {
        match s.to_ascii_lowercase().as_str() {
            "mnist" => Ok(Dataset::Mnist),
            "fashion" | "fashion-mnist" | "fashion_mnist" | "fashionmnist" => Ok(Dataset::FashionMnist),
            other => Err(DataError::InvalidArgument(format!(
                "unknown data set `{other}`: expected `mnist` or `fashion`"
            ))),
        }
    }
}

impl std::fmt::Display for Dataset {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.dir_name())
    }
}

/// One split (train or test) of grayscale images with their labels, held as raw bytes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ImageSplit {
    /// Pixels, `len() * rows * cols` bytes, image after image, row-major, 0..=255.
    pub images: Vec<u8>,
    /// One label per image.
    pub labels: Vec<u8>,
    /// Rows per image.
    pub rows: usize,
    /// Columns per image.
    pub cols: usize,
}

impl ImageSplit {
    /// Number of samples.
    pub fn len(&self) -> usize {
        self.labels.len()
    }

    /// True when the split holds no sample.
    pub fn is_empty(&self) -> bool {
        self.labels.is_empty()
    }

    /// Number of samples per label, `counts[label]`.
    pub fn label_counts(&self, num_classes: usize) -> Vec<usize> {
        let mut counts = vec![0; num_classes];
        for &l in &self.labels {
            if let Some(c) = counts.get_mut(l as usize) {
                *c += 1;
            }
        }
        counts
    }

    /// The first `n` samples (all of them when `n >= len()`).
    pub fn truncate(mut self, n: usize) -> Self {
        let n = n.min(self.len());
        self.labels.truncate(n);
        self.images.truncate(n * self.rows * self.cols);
        self
    }
}

/// Where a loaded data set came from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DataOrigin {
    /// IDX files in this directory.
    Directory(PathBuf),
    /// Parquet files from the hub cache.
    Hub(Vec<PathBuf>),
}

impl std::fmt::Display for DataOrigin {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            DataOrigin::Directory(d) => write!(f, "IDX files in {}", d.display()),
            DataOrigin::Hub(files) => {
                let names: Vec<String> = files.iter().map(|p| p.display().to_string()).collect();
                write!(f, "hub parquet {}", names.join(", "))
            }
        }
    }
}

/// A loaded MNIST-format data set.
#[derive(Debug, Clone)]
pub struct MnistData {
    /// Which data set this is.
    pub dataset: Dataset,
    /// The 60,000 training samples.
    pub train: ImageSplit,
    /// The 10,000 test samples.
    pub test: ImageSplit,
    /// Where the files were found.
    pub origin: DataOrigin,
}

/// The IDX file stems of the four files, in (train images, train labels, test images, test labels) order.
const IDX_STEMS: [&str; 4] = [
    "train-images-idx3-ubyte",
    "train-labels-idx1-ubyte",
    "t10k-images-idx3-ubyte",
    "t10k-labels-idx1-ubyte",
];

/// Finds and loads an MNIST-format data set; see the module docs for the search order.
#[derive(Debug, Clone)]
pub struct MnistLoader {
    dataset: Dataset,
    data_dir: Option<PathBuf>,
    use_env: bool,
    repo_data_dir: Option<PathBuf>,
    hub: Option<HubOptions>,
}

impl MnistLoader {
    /// A loader with the default search order.
    pub fn new(dataset: Dataset) -> Self {
        Self {
            dataset,
            data_dir: None,
            use_env: true,
            repo_data_dir: Some(Self::repository_data_dir()),
            hub: Some(HubOptions::default()),
        }
    }

    /// The repository's `data/` folder, where `data/mnist` ships.
    pub fn repository_data_dir() -> PathBuf {
        let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../data");
        dir.canonicalize().unwrap_or(dir)
    }

    /// Reads from this directory and nowhere else (the files, or a `mnist/`-style sub-folder).
    pub fn data_dir(mut self, dir: impl Into<PathBuf>) -> Self {
        self.data_dir = Some(dir.into());
        self
    }

    /// Whether `CANDLE_ZOO_DATA` is consulted (default true).
    pub fn use_env(mut self, yes: bool) -> Self {
        self.use_env = yes;
        self
    }

    /// Replaces the repository data folder (`None`: skip that step).
    pub fn repository_dir(mut self, dir: Option<PathBuf>) -> Self {
        self.repo_data_dir = dir;
        self
    }

    /// Hub options (`None`: never use the hub).
    pub fn hub(mut self, opts: Option<HubOptions>) -> Self {
        self.hub = opts;
        self
    }

    /// Loads the data set from the first location that applies.
    pub fn load(&self) -> Result<MnistData> {
        if let Some(dir) = &self.data_dir {
            return self.load_required_dir(dir, "the data directory given");
        }
        if self.use_env {
            if let Some(root) = std::env::var_os(DATA_ENV_VAR).filter(|v| !v.is_empty()) {
                return self.load_required_dir(Path::new(&root), DATA_ENV_VAR);
            }
        }
        let mut looked = Vec::new();
        if let Some(repo) = &self.repo_data_dir {
            if let Some(dir) = self.locate(repo) {
                return load_idx_dir(self.dataset, &dir);
            }
            looked.push(format!("{}", repo.join(self.dataset.dir_name()).display()));
        }
        if let Some(opts) = &self.hub {
            return load_hub(self.dataset, opts).map_err(|e| {
                DataError::NotFound(format!(
                    "{} not found: no IDX files in {} and the hub failed: {e}. \
                     Pass a directory holding {} (or set {DATA_ENV_VAR}).",
                    self.dataset,
                    if looked.is_empty() {
                        "-".into()
                    } else {
                        looked.join(", ")
                    },
                    IDX_STEMS.join(".gz, ") + ".gz",
                ))
            });
        }
        Err(DataError::NotFound(format!(
            "{} not found in {} and the hub is disabled",
            self.dataset,
            looked.join(", ")
        )))
    }

    /// The directory holding the files: `dir` itself or `dir/<dataset>`, if either has any.
    fn locate(&self, dir: &Path) -> Option<PathBuf> {
        [dir.to_path_buf(), dir.join(self.dataset.dir_name())]
            .into_iter()
            .find(|d| IDX_STEMS.iter().any(|s| find_idx_file(d, s).is_some()))
    }

    fn load_required_dir(&self, dir: &Path, what: &str) -> Result<MnistData> {
        match self.locate(dir) {
            Some(found) => load_idx_dir(self.dataset, &found),
            None => Err(DataError::NotFound(format!(
                "{what} ({}) holds no {} IDX files: expected {} (or raw, without .gz) there or in {}/",
                dir.display(),
                self.dataset,
                IDX_STEMS.join(".gz, ") + ".gz",
                dir.join(self.dataset.dir_name()).display()
            ))),
        }
    }
}

/// `dir/stem.gz` or `dir/stem`, whichever exists.
fn find_idx_file(dir: &Path, stem: &str) -> Option<PathBuf> {
    let gz = dir.join(format!("{stem}.gz"));
    let raw = dir.join(stem);
    [gz, raw].into_iter().find(|p| p.is_file())
}

/// Loads the four IDX files of `dataset` from `dir` and checks they agree.
pub fn load_idx_dir(dataset: Dataset, dir: &Path) -> Result<MnistData> {
    let path = |stem: &str| {
        find_idx_file(dir, stem).ok_or_else(|| DataError::Io {
            path: dir.join(format!("{stem}.gz")),
            source: std::io::Error::new(
                std::io::ErrorKind::NotFound,
                format!("missing (neither {stem}.gz nor {stem} exists in this directory)"),
            ),
        })
    };
    let [tri, trl, tei, tel] = IDX_STEMS.map(path);
    let train = read_split(&tri?, &trl?)?;
    let test = read_split(&tei?, &tel?)?;
    Ok(MnistData {
        dataset,
        train,
        test,
        origin: DataOrigin::Directory(dir.to_path_buf()),
    })
}

fn read_split(images_path: &Path, labels_path: &Path) -> Result<ImageSplit> {
    let images = idx::read_images(images_path)?;
    if (images.rows, images.cols) != (IMAGE_SIDE, IMAGE_SIDE) {
        return Err(DataError::format(
            images_path,
            format!(
                "images are {}x{}, expected {IMAGE_SIDE}x{IMAGE_SIDE}",
                images.rows, images.cols
            ),
        ));
    }
    let labels = idx::read_labels(labels_path, NUM_CLASSES)?;
    if labels.len() != images.count {
        return Err(DataError::format(
            labels_path,
            format!(
                "{} labels, but {} holds {} images: the files do not belong together",
                labels.len(),
                images_path.display(),
                images.count
            ),
        ));
    }
    Ok(ImageSplit {
        images: images.pixels,
        labels,
        rows: images.rows,
        cols: images.cols,
    })
}

/// Loads `dataset` from the hub's parquet files (cache first, then network unless offline).
pub fn load_hub(dataset: Dataset, opts: &HubOptions) -> Result<MnistData> {
    let (train_file, test_file) = dataset.hub_files();
    let train_path = hub::dataset_file(dataset.hub_repo(), train_file, opts)?;
    let test_path = hub::dataset_file(dataset.hub_repo(), test_file, opts)?;
    let read = |p: &Path| crate::parquet::read_image_parquet(p, IMAGE_SIDE, IMAGE_SIDE, NUM_CLASSES);
    Ok(MnistData {
        dataset,
        train: read(&train_path)?,
        test: read(&test_path)?,
        origin: DataOrigin::Hub(vec![train_path, test_path]),
    })
}
