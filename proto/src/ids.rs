//! Identifiers: request ids, node ids and fal model ids (`owner/alias[/subpath]`).

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

use crate::ProtoError;

/// Raft node id. Derived from the node identity later; a plain number is what openraft wants.
pub type NodeId = u64;

/// A fal request id: a lowercase hyphenated UUID, as fal hands out.
#[derive(Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct RequestId(String);

impl RequestId {
    /// A fresh random (v4) request id.
    pub fn new_random() -> Self {
        Self(uuid::Uuid::new_v4().to_string())
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl FromStr for RequestId {
    type Err = ProtoError;

    /// Accepts any UUID spelling and normalises it, so lookups never miss on case.
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        uuid::Uuid::parse_str(s)
            .map(|u| Self(u.to_string()))
            .map_err(|_| ProtoError::InvalidRequestId(s.chars().take(64).collect()))
    }
}

impl fmt::Display for RequestId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl fmt::Debug for RequestId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "RequestId({})", self.0)
    }
}

/// Namespaces that fal clients put before `owner/alias` (`workflows/owner/alias`).
pub const APP_NAMESPACES: [&str; 2] = ["workflows", "comfy"];

const SEGMENT_MAX_LEN: usize = 128;
const SUBPATH_MAX_LEN: usize = 512;

/// The app part of a fal endpoint id: optional namespace, owner and alias. Status, result and cancel
/// URLs are built from this alone (the subpath is dropped, as fal does).
#[derive(Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct AppId {
    pub namespace: Option<String>,
    pub owner: String,
    pub alias: String,
}

impl AppId {
    pub fn new(owner: &str, alias: &str) -> Result<Self, ProtoError> {
        validate_segment(owner)?;
        validate_segment(alias)?;
        Ok(Self {
            namespace: None,
            owner: owner.to_string(),
            alias: alias.to_string(),
        })
    }

    /// `[namespace/]owner/alias`, the path prefix of status/result/cancel URLs.
    pub fn path(&self) -> String {
        match &self.namespace {
            Some(ns) => format!("{ns}/{}/{}", self.owner, self.alias),
            None => format!("{}/{}", self.owner, self.alias),
        }
    }
}

impl fmt::Display for AppId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.path())
    }
}

impl fmt::Debug for AppId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "AppId({})", self.path())
    }
}

/// A full fal endpoint id: app plus an optional subpath (`owner/alias/sub/path`).
#[derive(Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct ModelId {
    pub app: AppId,
    /// Subpath without leading or trailing slash; `None` when absent.
    pub subpath: Option<String>,
}

impl ModelId {
    /// Parses an endpoint id the way fal clients form them: `owner/alias[/subpath...]`,
    /// `workflows/owner/alias[...]`, or a legacy numeric `1714827-joke` (rewritten to `1714827/joke`).
    pub fn parse(id: &str) -> Result<Self, ProtoError> {
        let trimmed = id.trim_matches('/');
        let segments: Vec<&str> = trimmed.split('/').collect();
        Self::from_segments(&segments).map_err(|e| match e {
            ProtoError::InvalidModelId(_) => ProtoError::InvalidModelId(truncate(id)),
            other => other,
        })
    }

    /// Builds an endpoint id from path segments, as the HTTP router sees them.
    pub fn from_segments(segments: &[&str]) -> Result<Self, ProtoError> {
        let (namespace, rest) = match segments.first() {
            Some(first) if APP_NAMESPACES.contains(first) && segments.len() >= 3 => {
                (Some(first.to_string()), &segments[1..])
            }
            _ => (None, segments),
        };
        let (owner, alias, sub) = match rest {
            [single] => {
                let (owner, alias) = split_legacy_numeric(single)
                    .ok_or_else(|| ProtoError::InvalidModelId(truncate(single)))?;
                (owner, alias, &rest[1..])
            }
            [owner, alias, sub @ ..] => (owner.to_string(), alias.to_string(), sub),
            [] => return Err(ProtoError::InvalidModelId(String::new())),
        };
        validate_segment(&owner)?;
        validate_segment(&alias)?;
        let subpath = if sub.is_empty() {
            None
        } else {
            for s in sub {
                validate_segment(s)?;
            }
            let joined = sub.join("/");
            if joined.len() > SUBPATH_MAX_LEN {
                return Err(ProtoError::InvalidModelId(truncate(&joined)));
            }
            Some(joined)
        };
        Ok(Self {
            app: AppId {
                namespace,
                owner,
                alias,
            },
            subpath,
        })
    }

    pub fn app(&self) -> &AppId {
        &self.app
    }
}

impl fmt::Display for ModelId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.subpath {
            Some(sub) => write!(f, "{}/{sub}", self.app),
            None => write!(f, "{}", self.app),
        }
    }
}

impl fmt::Debug for ModelId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "ModelId({self})")
    }
}

fn split_legacy_numeric(s: &str) -> Option<(String, String)> {
    let (num, name) = s.split_once('-')?;
    let numeric = !num.is_empty() && num.bytes().all(|b| b.is_ascii_digit());
    let named = !name.is_empty() && name.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-');
    (numeric && named).then(|| (num.to_string(), name.to_string()))
}

/// A path segment of an endpoint id: 1..=128 of `[A-Za-z0-9._-]`, not `.` or `..`.
fn validate_segment(s: &str) -> Result<(), ProtoError> {
    let ok = !s.is_empty()
        && s.len() <= SEGMENT_MAX_LEN
        && s != "."
        && s != ".."
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'));
    if ok {
        Ok(())
    } else {
        Err(ProtoError::InvalidModelId(truncate(s)))
    }
}

fn truncate(s: &str) -> String {
    s.chars().take(SEGMENT_MAX_LEN).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_owner_alias_and_subpath() {
        let m = ModelId::parse("fal-ai/flux/dev/fast").unwrap();
        assert_eq!(m.app.owner, "fal-ai");
        assert_eq!(m.app.alias, "flux");
        assert_eq!(m.subpath.as_deref(), Some("dev/fast"));
        assert_eq!(m.to_string(), "fal-ai/flux/dev/fast");
        assert_eq!(m.app.path(), "fal-ai/flux");
    }

    #[test]
    fn parses_namespace_and_legacy_ids() {
        let m = ModelId::parse("workflows/me/wf").unwrap();
        assert_eq!(m.app.namespace.as_deref(), Some("workflows"));
        assert_eq!(m.app.path(), "workflows/me/wf");
        let legacy = ModelId::parse("1714827-joke").unwrap();
        assert_eq!(legacy.app.path(), "1714827/joke");
    }

    #[test]
    fn rejects_bad_ids() {
        for bad in ["", "solo", "a//b", "a/..", "a/b c", "a/b/<x>"] {
            assert!(ModelId::parse(bad).is_err(), "{bad:?} should be rejected");
        }
    }

    #[test]
    fn request_ids_normalise() {
        let id: RequestId = "80E732AF-660E-45CD-BD63-580E4F2A94CC".parse().unwrap();
        assert_eq!(id.as_str(), "80e732af-660e-45cd-bd63-580e4f2a94cc");
        assert!("nope".parse::<RequestId>().is_err());
    }
}
