//! Files over HTTP: `GET /files/{hash}[/{file_name}]` (any node serves any blob, fetching it from a
//! peer while it streams to the client), uploads (`POST /storage/upload`, fal's `POST /files/upload`)
//! and fal's "delete IO" (`DELETE /admin/requests/{id}/io`).
//!
//! The blob store itself is behind [`FileStore`] (the node implements it over iroh-blobs), so this
//! crate never links the transfer stack. What a file is (size, type, name, who made it) comes from
//! the job table: the completion entry of the job that produced it.

use std::sync::Arc;

use axum::body::Body;
use axum::body::Bytes;
use axum::extract::Request;
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use futures::future::BoxFuture;
use futures::stream::BoxStream;
use futures::StreamExt;
use runmesh_proto::{CommandResult, FileRef, JobCommand, NodeId, Rejection, RequestId};
use runmesh_raft::JobTable;
use serde_json::json;

use crate::auth::{Caller, TokenAudience, TokenClaims, ANONYMOUS};
use crate::errors::{json_response, ApiError};
use crate::routing::RequestContext;
use crate::AppState;

/// Longest file name kept in a URL or a header.
pub const FILE_NAME_MAX: usize = 255;

/// Bytes of a blob, in pieces, verified before they are handed out.
pub type ByteStream = BoxStream<'static, std::io::Result<Bytes>>;

#[derive(Debug, thiserror::Error)]
pub enum FileError {
    #[error("file not found")]
    NotFound,
    #[error("file unavailable: {0}")]
    Unavailable(String),
    #[error("{0}")]
    BadRequest(String),
    #[error("file store: {0}")]
    Internal(String),
    /// The node is short of disk: 507 Insufficient Storage.
    #[error("{0}")]
    Full(String),
}

/// Where a file is and what it is, as the job table knows it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FileMeta {
    pub file: FileRef,
    /// Nodes known to hold it, best first (the worker that made it).
    pub providers: Vec<NodeId>,
}

/// The node's blob store, as the HTTP API needs it.
pub trait FileStore: Send + Sync + 'static {
    /// Size of a blob this node holds whole, or (for blobs no job names, e.g. uploads made on
    /// another node) one it could fetch whole from a peer now; `None`: nobody has it.
    fn size_of(&self, hash: &str) -> BoxFuture<'_, Result<Option<u64>, FileError>>;
    /// Bytes `start..end` of a blob of `size` bytes, from here or streamed from `providers` (then
    /// any peer) as they arrive. The first piece is awaited before this returns, so a blob that
    /// nobody can deliver is an error here and not a truncated body.
    fn open(
        &self,
        hash: &str,
        size: u64,
        start: u64,
        end: u64,
        providers: Vec<NodeId>,
    ) -> BoxFuture<'_, Result<ByteStream, FileError>>;
    /// Stores an upload; returns the file as stored (hash, size, type, name).
    fn upload(
        &self,
        body: ByteStream,
        content_type: String,
        file_name: String,
    ) -> BoxFuture<'_, Result<FileRef, FileError>>;
    /// The URL of a stored file as handed to clients, when the node has a configured public base
    /// (else the request's own base is used).
    fn public_url(&self, _file: &FileRef) -> Option<String> {
        None
    }
    /// How long artifacts are kept after their job finished (`None`: forever).
    fn ttl_ms(&self) -> Option<u64> {
        None
    }
}

/// A [`FileStore`] in the gateway config.
#[derive(Clone)]
pub struct FilesHandle(pub Arc<dyn FileStore>);

impl std::fmt::Debug for FilesHandle {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("FilesHandle")
    }
}

/// Whether `s` is a blob hash as URLs carry it (64 hex digits).
pub fn is_hash(s: &str) -> bool {
    s.len() == 64 && s.bytes().all(|b| b.is_ascii_hexdigit())
}

/// The path of a file under a node's base URL.
pub fn file_path(file: &FileRef) -> String {
    format!("/files/{}/{}", file.hash, url_name(&file.file_name))
}

/// A file name made safe for one URL path segment (and a header).
pub fn url_name(name: &str) -> String {
    let cleaned: String = name
        .chars()
        .filter(|c| !c.is_control())
        .map(|c| match c {
            'a'..='z' | 'A'..='Z' | '0'..='9' | '.' | '-' | '_' => c,
            _ => '_',
        })
        .take(FILE_NAME_MAX)
        .collect();
    let trimmed = cleaned.trim_start_matches('.');
    if trimmed.is_empty() {
        "file".to_string()
    } else {
        trimmed.to_string()
    }
}

/// The File object of fal's outputs for a stored file.
pub fn fal_file(file: &FileRef, url: String) -> serde_json::Value {
    json!({
        "url": url,
        "content_type": file.content_type,
        "file_name": file.file_name,
        "file_size": file.size,
    })
}

/// What the job table says about a hash.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Lookup {
    /// Made by a job that is neither deleted nor past the retention time.
    Live(FileMeta),
    /// Named only by deleted or expired jobs: gone (404), wherever copies still linger.
    Dead,
    /// No job names it (an upload, or nothing at all).
    Unknown,
}

/// One job's naming of its output files: a job record, or the kept list of a job whose result
/// expired (files outlive results).
struct Naming<'a> {
    seq: u64,
    files: &'a [FileRef],
    worker: Option<runmesh_proto::NodeId>,
    /// When the job ended (a running job's files are not final yet: `None`).
    finished_at_ms: Option<u64>,
    deleted: bool,
    /// Hashes of a job whose payloads were deleted (its `files` are gone).
    deleted_hashes: &'a [String],
}

fn namings(table: &JobTable) -> impl Iterator<Item = Naming<'_>> + '_ {
    let jobs = table.iter().map(|r| Naming {
        seq: r.seq,
        files: &r.files,
        worker: r.last_worker,
        finished_at_ms: match &r.state {
            runmesh_proto::JobState::Completed {
                completed_at_ms, ..
            } => Some(*completed_at_ms),
            _ => None,
        },
        deleted: r.io_deleted_at_ms.is_some(),
        deleted_hashes: &r.deleted_hashes,
    });
    let kept = table.kept_files().map(|k| Naming {
        seq: k.seq,
        files: &k.files,
        worker: k.worker,
        finished_at_ms: Some(k.finished_at_ms),
        deleted: k.io_deleted_at_ms.is_some(),
        deleted_hashes: &[],
    });
    // Uploads rank below jobs: a job's own type and name for the same bytes win.
    let uploads = table.uploads().map(|u| Naming {
        seq: 0,
        files: std::slice::from_ref(&u.file),
        worker: Some(u.holder),
        finished_at_ms: Some(u.named_at_ms),
        deleted: false,
        deleted_hashes: &[],
    });
    jobs.chain(kept).chain(uploads)
}

/// [`Lookup`] of `hash` at `now_ms`, artifacts kept `ttl_ms` after their job finished (`None`:
/// no expiry).
pub fn lookup_file(table: &JobTable, hash: &str, now_ms: u64, ttl_ms: Option<u64>) -> Lookup {
    let hash = hash.to_ascii_lowercase();
    let mut named = false;
    let mut best: Option<(u64, FileMeta)> = None;
    for n in namings(table) {
        if n.deleted_hashes.contains(&hash) {
            named = true;
        }
        let Some(f) = n.files.iter().find(|f| f.hash == hash) else {
            continue;
        };
        named = true;
        let expired = match (n.finished_at_ms, ttl_ms) {
            (Some(at), Some(ttl)) => at.saturating_add(ttl) <= now_ms,
            _ => false,
        };
        if n.deleted || expired {
            continue;
        }
        if best.as_ref().is_none_or(|(seq, _)| n.seq > *seq) {
            let meta = FileMeta {
                file: f.clone(),
                providers: n.worker.into_iter().collect(),
            };
            best = Some((n.seq, meta));
        }
    }
    match best {
        Some((_, meta)) => Lookup::Live(meta),
        None if named => Lookup::Dead,
        None => Lookup::Unknown,
    }
}

/// The newest live (not deleted) completion naming `hash`, with who holds it.
pub fn find_file(table: &JobTable, hash: &str) -> Option<FileMeta> {
    match lookup_file(table, hash, 0, None) {
        Lookup::Live(meta) => Some(meta),
        Lookup::Dead | Lookup::Unknown => None,
    }
}

/// A content type from a file name's extension (uploads without a declared type).
pub fn guess_content_type(name: &str) -> &'static str {
    let ext = name.rsplit_once('.').map(|(_, e)| e.to_ascii_lowercase());
    match ext.as_deref() {
        Some("png") => "image/png",
        Some("jpg" | "jpeg") => "image/jpeg",
        Some("webp") => "image/webp",
        Some("gif") => "image/gif",
        Some("wav") => "audio/wav",
        Some("mp3") => "audio/mpeg",
        Some("mp4") => "video/mp4",
        Some("json") => "application/json",
        Some("txt") => "text/plain",
        _ => "application/octet-stream",
    }
}

/// A `Range` header against a file of `size` bytes: `Ok(None)` for the whole file, `Ok(Some(a..b))`
/// for one satisfiable range, `Err(())` for an unsatisfiable one (416). Several ranges, or a header
/// we do not understand, read as the whole file (RFC 9110 lets a server ignore Range).
#[allow(clippy::result_unit_err)]
pub fn parse_range(header: Option<&str>, size: u64) -> Result<Option<(u64, u64)>, ()> {
    let Some(spec) = header.and_then(|h| h.trim().strip_prefix("bytes=")) else {
        return Ok(None);
    };
    if spec.contains(',') {
        return Ok(None);
    }
    let Some((a, b)) = spec.trim().split_once('-') else {
        return Ok(None);
    };
    let (a, b) = (a.trim(), b.trim());
    let range = if a.is_empty() {
        // Suffix: the last `b` bytes.
        let Ok(n) = b.parse::<u64>() else {
            return Ok(None);
        };
        if n == 0 {
            return Err(());
        }
        (size.saturating_sub(n), size)
    } else {
        let Ok(start) = a.parse::<u64>() else {
            return Ok(None);
        };
        let end = if b.is_empty() {
            size
        } else {
            match b.parse::<u64>() {
                Ok(last) if last >= start => last.saturating_add(1).min(size),
                _ => return Ok(None),
            }
        };
        (start, end)
    };
    if range.0 >= size || range.0 >= range.1 {
        return Err(());
    }
    Ok(Some(range))
}

fn store(state: &AppState) -> Option<Arc<dyn FileStore>> {
    state.config.files.as_ref().map(|h| h.0.clone())
}

fn file_error(e: FileError) -> Response {
    match e {
        FileError::NotFound => ApiError::NotFound.into_response(),
        FileError::BadRequest(m) => ApiError::BadRequest(m).into_response(),
        FileError::Unavailable(m) => json_response(
            StatusCode::BAD_GATEWAY,
            &json!({ "detail": format!("File not available from any node: {m}") }),
        ),
        FileError::Internal(m) => ApiError::Internal(m).into_response(),
        FileError::Full(m) => {
            json_response(StatusCode::INSUFFICIENT_STORAGE, &json!({ "detail": m }))
        }
    }
}

/// `GET|HEAD /files/{hash}[/{file_name}]`.
pub(crate) async fn get(
    state: &AppState,
    hash: &str,
    file_name: Option<&str>,
    req: Request,
) -> Response {
    let Some(files) = store(state) else {
        return ApiError::NotFound.into_response();
    };
    if !is_hash(hash) {
        return ApiError::NotFound.into_response();
    }
    let hash = hash.to_ascii_lowercase();
    let now_ms = state.joblog.now_ms();
    let ttl_ms = files.ttl_ms();
    let lookup = state.joblog.read(|t| lookup_file(t, &hash, now_ms, ttl_ms));
    let (file, providers) = match lookup {
        Lookup::Live(m) => (m.file, m.providers),
        Lookup::Dead => return ApiError::NotFound.into_response(),
        Lookup::Unknown => match files.size_of(&hash).await {
            Ok(Some(size)) => {
                let name = file_name.map(url_name).unwrap_or_else(|| "file".into());
                let content_type = guess_content_type(&name).to_string();
                let file = FileRef {
                    hash: hash.clone(),
                    size,
                    content_type,
                    file_name: name,
                };
                (file, Vec::new())
            }
            Ok(None) => return ApiError::NotFound.into_response(),
            Err(e) => return file_error(e),
        },
    };
    let etag = format!("\"{hash}\"");
    let headers = req.headers();
    if headers
        .get(header::IF_NONE_MATCH)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.split(',').any(|t| t.trim() == etag || t.trim() == "*"))
    {
        let mut resp = StatusCode::NOT_MODIFIED.into_response();
        set_file_headers(resp.headers_mut(), &file, &etag);
        return resp;
    }
    let range_header = headers.get(header::RANGE).and_then(|v| v.to_str().ok());
    // A Range under If-Range applies only while the file is still the one named (always, for
    // content-addressed files, when the tag matches).
    let if_range_ok = headers
        .get(header::IF_RANGE)
        .and_then(|v| v.to_str().ok())
        .is_none_or(|v| v.trim() == etag);
    let range = match parse_range(range_header.filter(|_| if_range_ok), file.size) {
        Ok(r) => r,
        Err(()) => {
            let mut resp = json_response(
                StatusCode::RANGE_NOT_SATISFIABLE,
                &json!({ "detail": "Range Not Satisfiable" }),
            );
            if let Ok(v) = HeaderValue::from_str(&format!("bytes */{}", file.size)) {
                resp.headers_mut().insert(header::CONTENT_RANGE, v);
            }
            return resp;
        }
    };
    let (start, end) = range.unwrap_or((0, file.size));
    let head = req.method() == axum::http::Method::HEAD;
    let body = if head || start == end {
        Body::empty()
    } else {
        match files.open(&hash, file.size, start, end, providers).await {
            Ok(stream) => Body::from_stream(stream),
            Err(e) => return file_error(e),
        }
    };
    let status = if range.is_some() {
        StatusCode::PARTIAL_CONTENT
    } else {
        StatusCode::OK
    };
    let mut resp = (status, body).into_response();
    let h = resp.headers_mut();
    set_file_headers(h, &file, &etag);
    h.insert(header::CONTENT_LENGTH, HeaderValue::from(end - start));
    if range.is_some() {
        if let Ok(v) = HeaderValue::from_str(&format!(
            "bytes {start}-{}/{}",
            end.saturating_sub(1),
            file.size
        )) {
            h.insert(header::CONTENT_RANGE, v);
        }
    }
    resp
}

fn set_file_headers(h: &mut HeaderMap, file: &FileRef, etag: &str) {
    let ct = HeaderValue::from_str(&file.content_type)
        .unwrap_or_else(|_| HeaderValue::from_static("application/octet-stream"));
    h.insert(header::CONTENT_TYPE, ct);
    if let Ok(v) = HeaderValue::from_str(etag) {
        h.insert(header::ETAG, v);
    }
    h.insert(header::ACCEPT_RANGES, HeaderValue::from_static("bytes"));
    // The bytes behind a hash never change.
    h.insert(
        header::CACHE_CONTROL,
        HeaderValue::from_static("public, max-age=31536000, immutable"),
    );
    if let Ok(v) = HeaderValue::from_str(&format!(
        "inline; filename=\"{}\"",
        url_name(&file.file_name)
    )) {
        h.insert(header::CONTENT_DISPOSITION, v);
    }
}

/// `POST /storage/upload` and `POST /files/upload`: the body's bytes become a blob; the answer is
/// a fal File object plus `access_url` (what fal's CDN upload answers).
pub(crate) async fn upload(state: &AppState, ctx: &RequestContext, req: Request) -> Response {
    let Some(files) = store(state) else {
        return ApiError::Unavailable("this node stores no files".into()).into_response();
    };
    let headers = req.headers();
    let content_type = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .map(|s| s.trim().to_string())
        .filter(|s| !s.is_empty() && s.len() <= 255);
    let file_name = headers
        .get("x-fal-file-name")
        .and_then(|v| v.to_str().ok())
        .map(url_name)
        .unwrap_or_else(|| "upload".into());
    let content_type = content_type
        .filter(|c| c != "application/x-www-form-urlencoded")
        .unwrap_or_else(|| guess_content_type(&file_name).to_string());
    let body = req
        .into_body()
        .into_data_stream()
        .map(|r| r.map_err(std::io::Error::other))
        .boxed();
    match files.upload(body, content_type, file_name).await {
        Ok(file) => {
            let url = files
                .public_url(&file)
                .unwrap_or_else(|| format!("{}{}", base_root(ctx), file_path(&file)));
            let mut body = fal_file(&file, url.clone());
            body["access_url"] = json!(url);
            body["hash"] = json!(file.hash);
            json_response(StatusCode::OK, &body)
        }
        Err(e) => file_error(e),
    }
}

/// A fresh upload token: 16 random bytes and 8 bytes of SHA-256 over them under this process's
/// secret, in hex. The PUT needs no credentials (the JS client sends none), so only URLs this
/// node handed out are accepted; a restarted node no longer accepts the ones it gave before.
fn new_upload_token() -> String {
    let nonce: [u8; 16] = rand::random();
    let hex = hex_of(&nonce);
    format!("{hex}{}", upload_mac(&hex))
}

fn upload_mac(nonce_hex: &str) -> String {
    use sha2::Digest as _;
    static SECRET: std::sync::OnceLock<[u8; 32]> = std::sync::OnceLock::new();
    let secret = SECRET.get_or_init(rand::random);
    let mut h = sha2::Sha256::new();
    h.update(secret);
    h.update(nonce_hex.as_bytes());
    hex_of(&h.finalize()[..8])
}

fn hex_of(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn upload_token_valid(token: &str) -> bool {
    token.len() == 48
        && token.bytes().all(|b| b.is_ascii_hexdigit())
        && token.is_char_boundary(32)
        && upload_mac(&token[..32]) == token[32..]
}

/// `POST /storage/upload/initiate?storage_type=...` with `{"content_type", "file_name"}`: the JS
/// client's upload, step one. Answers `{"upload_url", "file_url"}`; nothing is stored until the
/// PUT. The file URL names the token (its hash is not known yet); any node resolves it once the
/// PUT has bound it in the job log.
pub(crate) async fn upload_initiate(
    state: &AppState,
    ctx: &RequestContext,
    req: Request,
) -> Response {
    if store(state).is_none() {
        return ApiError::Unavailable("this node stores no files".into()).into_response();
    }
    let body = match crate::admin_keys::json_body(state, req).await {
        Ok(v) => v,
        Err(e) => return e.into_response(),
    };
    let name = url_name(body["file_name"].as_str().unwrap_or("upload"));
    let token = new_upload_token();
    let base = base_root(ctx);
    json_response(
        StatusCode::OK,
        &json!({
            "upload_url": format!("{base}/storage/upload/put/{token}/{name}"),
            "file_url": format!("{base}/files/t/{token}/{name}"),
        }),
    )
}

/// `PUT /storage/upload/put/{token}[/{name}]`: the bytes of an initiated upload become a blob on
/// this node, and `NameUpload` binds the token to it for every node. A token binds once.
pub(crate) async fn upload_put(
    state: &AppState,
    ctx: &RequestContext,
    token: &str,
    file_name: Option<&str>,
    req: Request,
) -> Response {
    let Some(files) = store(state) else {
        return ApiError::Unavailable("this node stores no files".into()).into_response();
    };
    if !upload_token_valid(token) {
        return ApiError::NotFound.into_response();
    }
    if state.joblog.read(|t| t.upload(token).is_some()) {
        return already_uploaded();
    }
    let name = file_name.map(url_name).unwrap_or_else(|| "upload".into());
    let content_type = req
        .headers()
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .map(|s| s.trim().to_string())
        .filter(|s| !s.is_empty() && s.len() <= 255)
        .unwrap_or_else(|| guess_content_type(&name).to_string());
    let body = req
        .into_body()
        .into_data_stream()
        .map(|r| r.map_err(std::io::Error::other))
        .boxed();
    let file = match files.upload(body, content_type, name.clone()).await {
        Ok(f) => f,
        Err(e) => return file_error(e),
    };
    let cmd = JobCommand::NameUpload {
        token: token.to_string(),
        file: file.clone(),
        holder: state.joblog.node_id(),
        now_ms: state.joblog.now_ms(),
    };
    match state.joblog.propose(cmd).await {
        Ok(CommandResult::Applied) => {
            let url = format!("{}/files/t/{token}/{name}", base_root(ctx));
            json_response(StatusCode::OK, &fal_file(&file, url))
        }
        Ok(CommandResult::Duplicate) => already_uploaded(),
        Ok(other) => ApiError::Internal(format!("upload not named: {other:?}")).into_response(),
        Err(e) => ApiError::Unavailable(format!("Could not be recorded: {e}")).into_response(),
    }
}

fn already_uploaded() -> Response {
    json_response(
        StatusCode::CONFLICT,
        &json!({ "detail": "This upload URL was used already; initiate a new upload." }),
    )
}

/// The token of an initiated upload's file URL (`.../files/t/{token}[/name]`), if `url` is one.
pub fn upload_token_in(url: &str) -> Option<&str> {
    let rest = &url[url.find("/files/t/")? + "/files/t/".len()..];
    let token = rest.split(['/', '?', '#']).next()?;
    (!token.is_empty()).then_some(token)
}

/// How long the Python client caches an upload token before asking again.
const STORAGE_TOKEN_TTL_MS: u64 = 3_600_000;

/// `POST /storage/auth/token?storage_type=fal-cdn-v3`: what fal's Python client asks for before
/// `POST <base_url>/files/upload`. The answer is a short-lived token signed by the cluster key, good
/// on any node and for uploads only, in the caller's name (revoking the key ends it): never the
/// caller's own key secret, which would then travel to whatever `base_url` says.
pub(crate) fn storage_token(state: &AppState, ctx: &RequestContext, caller: &Caller) -> Response {
    let Some(key) = state.cluster_key() else {
        return ApiError::Unavailable("The cluster key is not initialized yet".into())
            .into_response();
    };
    let now_ms = state.joblog.now_ms();
    let exp_ms = now_ms.saturating_add(STORAGE_TOKEN_TTL_MS);
    let claims = TokenClaims {
        sub: caller.owner().unwrap_or_else(|| ANONYMOUS.to_string()),
        apps: Vec::new(),
        iat: now_ms / 1000,
        exp: exp_ms / 1000,
        audience: TokenAudience::Upload,
    };
    let expires_at = runmesh_proto::time::format_timestamp_ms(exp_ms);
    json_response(
        StatusCode::OK,
        &json!({
            "token": key.issue_token(&claims),
            "token_type": "Bearer",
            "base_url": base_root(ctx),
            "expires_at": format!("{expires_at}+00:00"),
        }),
    )
}

/// The request's base URL without a surface prefix (`/files/` sits at the root).
fn base_root(ctx: &RequestContext) -> String {
    let base = ctx.base.as_str();
    base.strip_suffix("/queue")
        .unwrap_or(base)
        .trim_end_matches('/')
        .to_string()
}

/// `DELETE /admin/requests/{id}/io`: the job's inputs and outputs are dropped from the table and
/// its blobs from every node at their next collection.
pub(crate) async fn delete_io(state: &AppState, raw_id: &str) -> Response {
    let Ok(id) = raw_id.parse::<RequestId>() else {
        return ApiError::RequestNotFound(raw_id.to_string()).into_response();
    };
    let cmd = JobCommand::DeleteIo {
        request_id: id.clone(),
        now_ms: state.joblog.now_ms(),
    };
    match state.joblog.propose(cmd).await {
        Ok(CommandResult::Applied) => json_response(
            StatusCode::OK,
            &json!({ "request_id": id.to_string(), "status": "DELETED" }),
        ),
        Ok(CommandResult::Rejected(Rejection::NotFound)) => {
            ApiError::RequestNotFound(id.to_string()).into_response()
        }
        Ok(CommandResult::Rejected(_)) => {
            ApiError::BadRequest("The request has not finished; cancel it first".into())
                .into_response()
        }
        Ok(other) => ApiError::Internal(format!("unexpected result {other:?}")).into_response(),
        Err(e) => ApiError::Unavailable(e.to_string()).into_response(),
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn ranges_follow_rfc_9110() {
        assert_eq!(parse_range(None, 100), Ok(None));
        assert_eq!(parse_range(Some("bytes=0-9"), 100), Ok(Some((0, 10))));
        assert_eq!(parse_range(Some("bytes=90-"), 100), Ok(Some((90, 100))));
        assert_eq!(parse_range(Some("bytes=-10"), 100), Ok(Some((90, 100))));
        assert_eq!(parse_range(Some("bytes=-500"), 100), Ok(Some((0, 100))));
        assert_eq!(parse_range(Some("bytes=50-5000"), 100), Ok(Some((50, 100))));
        assert_eq!(parse_range(Some("bytes=100-"), 100), Err(()));
        assert_eq!(parse_range(Some("bytes=-0"), 100), Err(()));
        assert_eq!(parse_range(Some("bytes=0-1,5-6"), 100), Ok(None));
        assert_eq!(parse_range(Some("bytes=9-3"), 100), Ok(None));
        assert_eq!(parse_range(Some("items=0-1"), 100), Ok(None));
        assert_eq!(parse_range(Some("bytes=x-1"), 100), Ok(None));
    }

    #[test]
    fn names_and_hashes_are_checked() {
        assert!(is_hash(&"a".repeat(64)));
        assert!(!is_hash(&"g".repeat(64)));
        assert!(!is_hash("abc"));
        assert_eq!(url_name("../../etc/passwd"), "_.._etc_passwd");
        assert_eq!(url_name("a b?.png"), "a_b_.png");
        assert_eq!(url_name(""), "file");
        assert_eq!(url_name(&"x".repeat(1000)).len(), FILE_NAME_MAX);
        assert_eq!(guess_content_type("x.PNG"), "image/png");
        assert_eq!(guess_content_type("noext"), "application/octet-stream");
    }

    #[test]
    fn upload_tokens_carry_this_nodes_mac() {
        let t = new_upload_token();
        assert!(upload_token_valid(&t), "{t}");
        assert_ne!(t, new_upload_token());
        let mut forged = t.clone().into_bytes();
        forged[0] = if forged[0] == b'0' { b'1' } else { b'0' };
        assert!(!upload_token_valid(std::str::from_utf8(&forged).unwrap()));
        assert!(!upload_token_valid("zz"));
        assert!(!upload_token_valid(&"é".repeat(24)));
        assert_eq!(upload_token_in("https://h/files/t/abc/x.png"), Some("abc"));
        assert_eq!(upload_token_in("https://h/files/t/abc?x=1"), Some("abc"));
        assert_eq!(upload_token_in("https://h/files/abc"), None);
    }
}
