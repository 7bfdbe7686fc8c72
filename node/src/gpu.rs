//! GPU capacity: the GPUs a node reports in its capacity advert.
//!
//! Minimal version (MESH-GOSSIP): the `--gpus` declaration only. RUNNERS extends this file with a
//! `GpuProbe` (NVML when a driver is present, the declaration otherwise).

/// One GPU.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct GpuInfo {
    pub name: String,
    pub memory_total_mb: u64,
    pub memory_free_mb: u64,
    pub utilization_pct: u8,
}

/// Most GPUs one declaration may list.
pub const GPUS_MAX: usize = 64;
/// Largest memory one declared GPU may have, in GB (a typo guard).
pub const GPU_MEMORY_GB_MAX: u64 = 16 * 1024;

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum GpuSpecError {
    #[error("GPU entry {0:?}: expected NAME:MEMORY_GB, e.g. H100:80")]
    Entry(String),
    #[error("GPU entry {0:?}: memory must be a whole number of GB in 1..={GPU_MEMORY_GB_MAX}")]
    Memory(String),
    #[error("more than {GPUS_MAX} GPUs declared")]
    TooMany,
}

/// Parses a `--gpus` declaration: comma-separated `NAME:MEMORY_GB` entries (`"H100:80,H100:80"`),
/// or an empty string / `none` for a node without GPUs. Declared GPUs start fully free and idle.
pub fn parse_gpu_spec(s: &str) -> Result<Vec<GpuInfo>, GpuSpecError> {
    let s = s.trim();
    if s.is_empty() || s.eq_ignore_ascii_case("none") {
        return Ok(Vec::new());
    }
    let mut out = Vec::new();
    for entry in s.split(',').map(str::trim) {
        let (name, mem) = entry
            .rsplit_once(':')
            .ok_or_else(|| GpuSpecError::Entry(entry.to_string()))?;
        let name = name.trim();
        if name.is_empty() || name.len() > 64 || name.chars().any(char::is_control) {
            return Err(GpuSpecError::Entry(entry.to_string()));
        }
        let gb: u64 = mem
            .trim()
            .parse()
            .ok()
            .filter(|gb| (1..=GPU_MEMORY_GB_MAX).contains(gb))
            .ok_or_else(|| GpuSpecError::Memory(entry.to_string()))?;
        if out.len() == GPUS_MAX {
            return Err(GpuSpecError::TooMany);
        }
        out.push(GpuInfo {
            name: name.to_string(),
            memory_total_mb: gb * 1024,
            memory_free_mb: gb * 1024,
            utilization_pct: 0,
        });
    }
    Ok(out)
}

// ---------------------------------------------------------------------------------------------
// Probing (RUNNERS): NVML where a driver exists, else the declaration, else CPU only.
// ---------------------------------------------------------------------------------------------

/// Where a node's GPU figures come from.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum GpuSource {
    /// Read from the driver (live free memory and utilisation).
    Nvml,
    /// Declared with `--gpus` (no driver to ask; free = total, idle).
    Declared,
    /// No GPU: the node runs models on CPU.
    None,
}

/// Reads the GPUs of this machine. Behind a trait so the advert, the scheduler's memory fit and
/// tests see the same shape whether the figures come from a driver, a declaration or a fake.
pub trait GpuProbe: Send + Sync {
    fn source(&self) -> GpuSource;
    /// The GPUs now (NVML values change between calls).
    fn gpus(&self) -> Vec<GpuInfo>;
}

/// A fixed list: the `--gpus` declaration, or none at all.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DeclaredGpus(pub Vec<GpuInfo>);

impl GpuProbe for DeclaredGpus {
    fn source(&self) -> GpuSource {
        if self.0.is_empty() {
            GpuSource::None
        } else {
            GpuSource::Declared
        }
    }

    fn gpus(&self) -> Vec<GpuInfo> {
        self.0.clone()
    }
}

/// The NVIDIA driver through NVML. `nvml-wrapper` loads `libnvidia-ml` when asked, so this builds
/// everywhere and [`NvmlProbe::init`] fails cleanly on a machine without a driver.
pub struct NvmlProbe {
    nvml: std::sync::Mutex<nvml_wrapper::Nvml>,
}

const MB: u64 = 1024 * 1024;

impl NvmlProbe {
    pub fn init() -> Result<Self, String> {
        // Driver installs without the dev symlink only have the versioned name.
        let nvml = nvml_wrapper::Nvml::init()
            .or_else(|_| {
                nvml_wrapper::Nvml::builder()
                    .lib_path(std::ffi::OsStr::new("libnvidia-ml.so.1"))
                    .init()
            })
            .map_err(|e| e.to_string())?;
        Ok(Self {
            nvml: std::sync::Mutex::new(nvml),
        })
    }

    /// Reads every device; a device that fails to answer is left out (and logged).
    pub fn read(&self) -> Result<Vec<GpuInfo>, String> {
        let nvml = self.nvml.lock().unwrap_or_else(|p| p.into_inner());
        let count = nvml.device_count().map_err(|e| e.to_string())?;
        let mut out = Vec::new();
        for i in 0..count.min(GPUS_MAX as u32) {
            let dev = match nvml.device_by_index(i) {
                Ok(d) => d,
                Err(e) => {
                    tracing::warn!(index = i, error = %e, "NVML: device unreadable");
                    continue;
                }
            };
            let name = dev.name().unwrap_or_else(|_| format!("GPU{i}"));
            let (total, free) = match dev.memory_info() {
                Ok(m) => (m.total / MB, m.free / MB),
                Err(e) => {
                    tracing::warn!(index = i, error = %e, "NVML: memory info unreadable");
                    continue;
                }
            };
            let util = dev
                .utilization_rates()
                .map(|u| u.gpu.min(100) as u8)
                .unwrap_or(0);
            out.push(GpuInfo {
                name,
                memory_total_mb: total,
                memory_free_mb: free,
                utilization_pct: util,
            });
        }
        Ok(out)
    }
}

impl GpuProbe for NvmlProbe {
    fn source(&self) -> GpuSource {
        GpuSource::Nvml
    }

    fn gpus(&self) -> Vec<GpuInfo> {
        self.read().unwrap_or_else(|e| {
            tracing::warn!(error = %e, "NVML read failed");
            Vec::new()
        })
    }
}

/// Picks the probe: the driver when it answers with at least one GPU, else the declaration (empty:
/// CPU only). `nvml` is the outcome of trying the driver, so the choice is testable without one.
pub fn choose_probe(
    nvml: Result<Box<dyn GpuProbe>, String>,
    declared: Vec<GpuInfo>,
) -> (Box<dyn GpuProbe>, String) {
    match nvml {
        Ok(p) if !p.gpus().is_empty() => {
            let why = if declared.is_empty() {
                "GPUs read from the NVIDIA driver (NVML)".to_string()
            } else {
                "GPUs read from the NVIDIA driver (NVML); the --gpus declaration is ignored"
                    .to_string()
            };
            (p, why)
        }
        other => {
            let cause = match other {
                Ok(_) => "NVML found no GPU".to_string(),
                Err(e) => format!("no NVIDIA driver ({e})"),
            };
            let why = if declared.is_empty() {
                format!("{cause}: CPU only")
            } else {
                format!("{cause}: using the --gpus declaration")
            };
            (Box::new(DeclaredGpus(declared)), why)
        }
    }
}

/// The node's probe: NVML if a driver is there, else `declared` (a `--gpus` spec, parsed).
pub fn detect(declared: Option<&str>) -> Result<(Box<dyn GpuProbe>, String), GpuSpecError> {
    let declared = parse_gpu_spec(declared.unwrap_or(""))?;
    let nvml = NvmlProbe::init().map(|p| Box::new(p) as Box<dyn GpuProbe>);
    Ok(choose_probe(nvml, declared))
}

/// Total free GPU memory in MB (what the scheduler's memory fit compares a manifest's need with).
pub fn free_memory_mb(gpus: &[GpuInfo]) -> u64 {
    gpus.iter().map(|g| g.memory_free_mb).sum()
}

/// Whether one GPU has `need_mb` free (a model is not split across GPUs here).
pub fn fits(gpus: &[GpuInfo], need_mb: u64) -> bool {
    need_mb == 0 || gpus.iter().any(|g| g.memory_free_mb >= need_mb)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    struct FakeNvml(Vec<GpuInfo>);
    impl GpuProbe for FakeNvml {
        fn source(&self) -> GpuSource {
            GpuSource::Nvml
        }
        fn gpus(&self) -> Vec<GpuInfo> {
            self.0.clone()
        }
    }

    fn gpu(name: &str, total: u64, free: u64) -> GpuInfo {
        GpuInfo {
            name: name.into(),
            memory_total_mb: total,
            memory_free_mb: free,
            utilization_pct: 7,
        }
    }

    #[test]
    fn driver_wins_when_it_reports_gpus() {
        let nvml: Box<dyn GpuProbe> = Box::new(FakeNvml(vec![gpu("NVIDIA H100", 81_559, 80_000)]));
        let (p, why) = choose_probe(Ok(nvml), parse_gpu_spec("T4:16").unwrap());
        assert_eq!(p.source(), GpuSource::Nvml);
        assert_eq!(p.gpus()[0].memory_free_mb, 80_000);
        assert!(why.contains("ignored"), "{why}");
    }

    #[test]
    fn falls_back_to_the_declaration_then_to_cpu() {
        let (p, why) = choose_probe(
            Err("libnvidia-ml.so: cannot open".into()),
            parse_gpu_spec("H100:80,H100:80").unwrap(),
        );
        assert_eq!(p.source(), GpuSource::Declared);
        assert_eq!(p.gpus().len(), 2);
        assert_eq!(free_memory_mb(&p.gpus()), 2 * 80 * 1024);
        assert!(why.contains("no NVIDIA driver"), "{why}");
        let (p, why) = choose_probe(Err("x".into()), Vec::new());
        assert_eq!(p.source(), GpuSource::None);
        assert!(p.gpus().is_empty());
        assert!(why.ends_with("CPU only"), "{why}");
        // A driver with no device is no better than none.
        let empty: Box<dyn GpuProbe> = Box::new(FakeNvml(Vec::new()));
        let (p, _) = choose_probe(Ok(empty), parse_gpu_spec("A10G:24").unwrap());
        assert_eq!(p.source(), GpuSource::Declared);
    }

    #[test]
    fn detect_runs_without_a_driver_and_rejects_bad_specs() {
        // Here there is no driver (CI); on a GPU machine this reads it. Either way: no panic.
        let (p, _) = detect(Some("H100:80")).unwrap();
        assert!(!p.gpus().is_empty());
        assert!(detect(Some("H100")).is_err());
    }

    #[test]
    fn memory_fit_is_per_gpu() {
        let g = vec![gpu("a", 24_000, 10_000), gpu("b", 24_000, 20_000)];
        assert!(fits(&g, 0) && fits(&g, 20_000));
        assert!(!fits(&g, 25_000));
        assert!(fits(&[], 0) && !fits(&[], 1));
    }
}

#[cfg(test)]
mod spec_tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn parses_declarations() {
        let g = parse_gpu_spec("H100:80, A10G:24").unwrap();
        assert_eq!(g.len(), 2);
        assert_eq!(g[0].name, "H100");
        assert_eq!(
            (g[0].memory_total_mb, g[0].memory_free_mb),
            (81_920, 81_920)
        );
        assert_eq!(g[1].memory_total_mb, 24 * 1024);
        assert!(parse_gpu_spec("").unwrap().is_empty());
        assert!(parse_gpu_spec("none").unwrap().is_empty());
        assert!(matches!(
            parse_gpu_spec("H100"),
            Err(GpuSpecError::Entry(_))
        ));
        assert!(matches!(parse_gpu_spec(":80"), Err(GpuSpecError::Entry(_))));
        assert!(matches!(
            parse_gpu_spec("H100:0"),
            Err(GpuSpecError::Memory(_))
        ));
        assert!(matches!(
            parse_gpu_spec("H100:8x"),
            Err(GpuSpecError::Memory(_))
        ));
        assert!(matches!(
            parse_gpu_spec("H100:80,"),
            Err(GpuSpecError::Entry(_))
        ));
        let many = vec!["T4:16"; GPUS_MAX + 1].join(",");
        assert_eq!(parse_gpu_spec(&many), Err(GpuSpecError::TooMany));
    }
}
