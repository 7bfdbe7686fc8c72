//! Node configuration: built-in defaults, overlaid by a TOML file, overlaid by command-line flags.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use serde::Deserialize;

use crate::worker::WorkerConfig;

pub const DEFAULT_DATA_DIR: &str = "./runmesh-data";
pub const DEFAULT_HTTP: &str = "127.0.0.1:8080";
pub const DEFAULT_SLOTS: usize = 4;
pub const DEFAULT_LEASE_MS: u64 = 5_000;
pub const DEFAULT_BODY_LIMIT_BYTES: usize = 10 * 1024 * 1024;

pub const SLOTS_MAX: usize = 1024;
/// Leases are renewed every third; below this the renewals would flood the log.
pub const LEASE_MS_MIN: u64 = 300;
pub const LEASE_MS_MAX: u64 = 10 * 60 * 1000;
pub const BODY_LIMIT_BYTES_MAX: usize = 1024 * 1024 * 1024;

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    #[default]
    Text,
    Json,
}

impl std::str::FromStr for LogFormat {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "text" => Ok(Self::Text),
            "json" => Ok(Self::Json),
            other => Err(format!("unknown log format {other:?} (text or json)")),
        }
    }
}

/// The config file: every key optional, unknown keys rejected (a typo must not pass silently).
#[derive(Clone, Debug, Default, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ConfigFile {
    pub data_dir: Option<PathBuf>,
    pub http: Option<SocketAddr>,
    pub slots: Option<usize>,
    pub lease_ms: Option<u64>,
    pub body_limit_bytes: Option<usize>,
    pub log_format: Option<LogFormat>,
    pub region: Option<String>,
}

impl ConfigFile {
    pub fn parse(text: &str) -> Result<Self, ConfigError> {
        toml::from_str(text).map_err(|e| ConfigError::Parse(e.to_string()))
    }

    pub fn load(path: &Path) -> Result<Self, ConfigError> {
        let text = std::fs::read_to_string(path)
            .map_err(|e| ConfigError::Read(path.display().to_string(), e.to_string()))?;
        Self::parse(&text)
    }

    /// `other`'s keys win over `self`'s.
    pub fn overlay(self, other: ConfigFile) -> ConfigFile {
        ConfigFile {
            data_dir: other.data_dir.or(self.data_dir),
            http: other.http.or(self.http),
            slots: other.slots.or(self.slots),
            lease_ms: other.lease_ms.or(self.lease_ms),
            body_limit_bytes: other.body_limit_bytes.or(self.body_limit_bytes),
            log_format: other.log_format.or(self.log_format),
            region: other.region.or(self.region),
        }
    }
}

/// A complete, checked node configuration.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NodeConfig {
    pub data_dir: PathBuf,
    pub http: SocketAddr,
    pub slots: usize,
    pub lease_ms: u64,
    pub body_limit_bytes: usize,
    pub log_format: LogFormat,
    pub region: Option<String>,
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ConfigError {
    #[error("cannot read config file {0}: {1}")]
    Read(String, String),
    #[error("invalid config: {0}")]
    Parse(String),
    #[error("{0} is required (flag or config key)")]
    Missing(&'static str),
    #[error("{key} = {value} is out of range ({range})")]
    OutOfRange {
        key: &'static str,
        value: String,
        range: String,
    },
}

impl NodeConfig {
    /// Fills gaps with the defaults. With `require_paths`, `data_dir` and `http` must be given
    /// (`runmesh run`: a production node should not guess where its data lives).
    pub fn resolve(c: ConfigFile, require_paths: bool) -> Result<Self, ConfigError> {
        let data_dir = match c.data_dir {
            Some(d) => d,
            None if require_paths => return Err(ConfigError::Missing("data_dir")),
            None => PathBuf::from(DEFAULT_DATA_DIR),
        };
        let http = match c.http {
            Some(h) => h,
            None if require_paths => return Err(ConfigError::Missing("http")),
            None => DEFAULT_HTTP
                .parse()
                .map_err(|_| ConfigError::Parse("default http address".into()))?,
        };
        let cfg = Self {
            data_dir,
            http,
            slots: c.slots.unwrap_or(DEFAULT_SLOTS),
            lease_ms: c.lease_ms.unwrap_or(DEFAULT_LEASE_MS),
            body_limit_bytes: c.body_limit_bytes.unwrap_or(DEFAULT_BODY_LIMIT_BYTES),
            log_format: c.log_format.unwrap_or_default(),
            region: c.region.filter(|r| !r.is_empty()),
        };
        cfg.check()?;
        Ok(cfg)
    }

    fn check(&self) -> Result<(), ConfigError> {
        fn range<T: PartialOrd + ToString>(
            key: &'static str,
            v: T,
            min: T,
            max: T,
        ) -> Result<(), ConfigError> {
            if v < min || v > max {
                return Err(ConfigError::OutOfRange {
                    key,
                    value: v.to_string(),
                    range: format!("{}..={}", min.to_string(), max.to_string()),
                });
            }
            Ok(())
        }
        range("slots", self.slots, 1, SLOTS_MAX)?;
        range("lease_ms", self.lease_ms, LEASE_MS_MIN, LEASE_MS_MAX)?;
        range(
            "body_limit_bytes",
            self.body_limit_bytes,
            1024,
            BODY_LIMIT_BYTES_MAX,
        )?;
        Ok(())
    }

    pub fn worker(&self) -> WorkerConfig {
        WorkerConfig {
            slots: self.slots,
            lease_ms: self.lease_ms,
            ..WorkerConfig::default()
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn defaults_fill_an_empty_file() {
        let c = NodeConfig::resolve(ConfigFile::default(), false).unwrap();
        assert_eq!(c.data_dir, PathBuf::from("./runmesh-data"));
        assert_eq!(c.http.to_string(), "127.0.0.1:8080");
        assert_eq!((c.slots, c.lease_ms), (4, 5_000));
        assert_eq!(c.body_limit_bytes, 10 * 1024 * 1024);
        assert_eq!(c.log_format, LogFormat::Text);
        assert_eq!(c.worker().lease_ms, 5_000);
    }

    #[test]
    fn parses_every_key_and_rejects_unknown_ones() {
        let f = ConfigFile::parse(
            r#"
            data_dir = "/var/lib/runmesh"
            http = "0.0.0.0:9000"
            slots = 8
            lease_ms = 3000
            body_limit_bytes = 1048576
            log_format = "json"
            region = "eu"
            "#,
        )
        .unwrap();
        let c = NodeConfig::resolve(f, true).unwrap();
        assert_eq!(c.data_dir, PathBuf::from("/var/lib/runmesh"));
        assert_eq!(c.http.port(), 9000);
        assert_eq!(
            (c.slots, c.lease_ms, c.body_limit_bytes),
            (8, 3000, 1 << 20)
        );
        assert_eq!(c.log_format, LogFormat::Json);
        assert_eq!(c.region.as_deref(), Some("eu"));
        assert!(matches!(
            ConfigFile::parse("slot = 3"),
            Err(ConfigError::Parse(_))
        ));
        assert!(ConfigFile::parse("http = \"not an addr\"").is_err());
        assert!(ConfigFile::parse("log_format = \"xml\"").is_err());
    }

    #[test]
    fn flags_overlay_the_file_and_ranges_are_checked() {
        let file = ConfigFile::parse("slots = 8\nlease_ms = 3000").unwrap();
        let flags = ConfigFile {
            slots: Some(2),
            ..ConfigFile::default()
        };
        let merged = file.overlay(flags);
        assert_eq!((merged.slots, merged.lease_ms), (Some(2), Some(3000)));
        assert_eq!(
            NodeConfig::resolve(merged, true),
            Err(ConfigError::Missing("data_dir"))
        );
        let zero = ConfigFile {
            slots: Some(0),
            ..ConfigFile::default()
        };
        assert!(matches!(
            NodeConfig::resolve(zero, false),
            Err(ConfigError::OutOfRange { key: "slots", .. })
        ));
        let short = ConfigFile {
            lease_ms: Some(10),
            ..ConfigFile::default()
        };
        assert!(NodeConfig::resolve(short, false).is_err());
    }

    #[test]
    fn the_example_config_parses() {
        let text = include_str!("../../configs/dev.toml");
        let c = NodeConfig::resolve(ConfigFile::parse(text).unwrap(), true).unwrap();
        assert_eq!(c.slots, 4);
    }
}
