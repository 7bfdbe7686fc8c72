//! Where a request goes: queue or sync surface, which fal operation, and the URLs handed back.
//!
//! Pure functions of method, path and headers; no state. fal endpoint ids have a variable number of
//! segments (namespace, subpath), so the router is this hand-written parser rather than axum routes.

use std::collections::HashMap;

use axum::http::{HeaderMap, Method, Uri};
use runmesh_proto::{AppId, ModelId, RequestId};

/// Path prefix that selects the queue surface on a shared host (kept in URLs handed back).
pub const QUEUE_PATH_PREFIX: &str = "/queue";

/// Longest `Host` value echoed into URLs; anything longer or odd falls back to `localhost`.
const HOST_LEN_MAX: usize = 255;

/// Which fal API a request speaks.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Surface {
    /// `queue.fal.run`: submit, then poll status/result.
    Queue,
    /// `fal.run`: the response is the output (or an SSE stream of it).
    Sync,
    /// `ws.fal.run`: HTTP over WebSocket (a `ws.` host; the `/ws/` path prefix works on any host).
    Ws,
}

/// Splits a request into its surface, the path prefix that selected it (`""` or `/queue`), and the
/// rest of the path. A `/queue/` path prefix wins; otherwise a Host whose first label is `queue`.
pub fn split_surface<'a>(host: Option<&str>, path: &'a str) -> (Surface, &'static str, &'a str) {
    if let Some(rest) = path.strip_prefix(QUEUE_PATH_PREFIX) {
        if rest.is_empty() || rest.starts_with('/') {
            return (Surface::Queue, QUEUE_PATH_PREFIX, rest);
        }
    }
    let first_label = host
        .map(|h| h.split(':').next().unwrap_or(h))
        .and_then(|h| h.split('.').next())
        .unwrap_or("");
    if first_label.eq_ignore_ascii_case("queue") {
        (Surface::Queue, "", path)
    } else if first_label.eq_ignore_ascii_case("ws") {
        (Surface::Ws, "", path)
    } else {
        (Surface::Sync, "", path)
    }
}

/// `scheme://host[/prefix]`: the root that URLs handed back to clients start with.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BaseUrl(String);

impl BaseUrl {
    /// Scheme from `X-Forwarded-Proto` (http or https, else http), host from `Host` (else the URI
    /// authority, else `localhost`), then the surface prefix.
    pub fn from_request(headers: &HeaderMap, uri: &Uri, prefix: &str) -> Self {
        Self::from_request_default(headers, uri, prefix, "http")
    }

    /// As [`Self::from_request`], with the scheme used when no `X-Forwarded-Proto` says otherwise
    /// (`https` on a TLS listener).
    pub fn from_request_default(
        headers: &HeaderMap,
        uri: &Uri,
        prefix: &str,
        default_scheme: &'static str,
    ) -> Self {
        let scheme = headers
            .get("x-forwarded-proto")
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.split(',').next())
            .map(|v| v.trim().to_ascii_lowercase())
            .filter(|v| v == "https" || v == "http")
            .unwrap_or_else(|| default_scheme.to_string());
        let host = host_of(headers, uri)
            .filter(|h| is_plausible_host(h))
            .unwrap_or("localhost");
        Self(format!("{scheme}://{host}{prefix}"))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// The response/status/cancel URLs of a job: subpath dropped, namespace kept, as fal does.
    pub fn job_urls(&self, app: &AppId, id: &RequestId) -> JobUrls {
        let response_url = format!("{}/{}/requests/{id}", self.0, app.path());
        JobUrls {
            status_url: format!("{response_url}/status"),
            cancel_url: format!("{response_url}/cancel"),
            response_url,
        }
    }
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct JobUrls {
    pub response_url: String,
    pub status_url: String,
    pub cancel_url: String,
}

/// The `Host` header, or the authority of an absolute-form URI (HTTP/2).
pub fn host_of<'a>(headers: &'a HeaderMap, uri: &'a Uri) -> Option<&'a str> {
    headers
        .get(axum::http::header::HOST)
        .and_then(|v| v.to_str().ok())
        .or_else(|| uri.authority().map(|a| a.as_str()))
}

/// Only host[:port] characters: a Host header is echoed into URLs clients follow.
fn is_plausible_host(h: &str) -> bool {
    !h.is_empty()
        && h.len() <= HOST_LEN_MAX
        && h.bytes().all(|b| {
            b.is_ascii_alphanumeric() || matches!(b, b'.' | b'-' | b'_' | b':' | b'[' | b']')
        })
}

/// What an operator does to a member (`/admin/nodes/...`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum NodeAction {
    Drain,
    Undrain,
    Remove,
    Readmit,
}

/// A fal operation, decided from method and path.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Route {
    Health,
    ListApps,
    /// `GET /admin/cluster` (served by its own axum route; named here for auth).
    AdminCluster,
    /// `GET /.well-known/jwks.json`: the public key webhooks are signed with.
    Jwks,
    /// `POST /tokens/`: a short-lived realtime token (fal's `rest.fal.ai/tokens/`).
    Tokens,
    /// `GET|POST /admin/keys`.
    AdminKeys,
    /// `DELETE /admin/keys/{key_id}`.
    AdminKeyRevoke {
        key_id: String,
    },
    /// `GET /admin/webhooks/failed`.
    AdminWebhooksFailed,
    /// `GET /admin/backup`: a consistent copy of the replicated state (`runmesh backup`).
    AdminBackup,
    /// `POST /admin/nodes/{id}/drain|undrain|readmit`, `DELETE /admin/nodes/{id}` (remove).
    AdminNode {
        id: String,
        action: NodeAction,
    },
    /// `POST /admin/webhooks/{request_id}/retry`.
    AdminWebhookRetry {
        id: String,
    },
    /// Sync `GET /{endpoint}/realtime` (WebSocket).
    Realtime {
        model: ModelId,
    },
    /// `GET /ws/{endpoint}` (or a `ws.` host): fal's HTTP-over-WebSocket (`wss://ws.fal.run/...`).
    HttpOverWs {
        model: ModelId,
    },
    /// Queue `POST /{endpoint}`.
    Submit {
        model: ModelId,
    },
    /// Queue `GET …/requests/{id}/status[/stream]`. `id` is raw: a malformed id is a 404, not a route miss.
    Status {
        app: AppId,
        id: String,
        stream: bool,
    },
    /// Queue `GET …/requests/{id}`.
    Result {
        app: AppId,
        id: String,
    },
    /// Queue `PUT …/requests/{id}/cancel`.
    Cancel {
        app: AppId,
        id: String,
    },
    /// Sync `POST /{endpoint}`.
    Run {
        model: ModelId,
    },
    /// Sync `POST /{endpoint}/stream`.
    RunStream {
        model: ModelId,
    },
    /// A submit/run path that is no valid endpoint id.
    UnknownModel {
        path: String,
    },
    MethodNotAllowed {
        allow: &'static str,
    },
    NotFound,
    /// `GET|HEAD /files/{hash}[/{file_name}]`: a blob, from this node or fetched from a peer.
    File {
        hash: String,
        file_name: Option<String>,
    },
    /// `POST /storage/upload` (and fal's CDN shape `POST /files/upload`): raw bytes in, a URL out.
    Upload,
    /// `POST /storage/upload/initiate`: the JS client's first upload step (a PUT URL and the
    /// file's URL to be).
    UploadInitiate,
    /// `PUT /storage/upload/put/{token}[/{file_name}]`: the bytes of an initiated upload.
    UploadPut {
        token: String,
        file_name: Option<String>,
    },
    /// `GET|HEAD /files/t/{token}[/{file_name}]`: an initiated upload's file.
    UploadedFile {
        token: String,
        file_name: Option<String>,
    },
    /// `POST /storage/auth/token`: the upload token the Python client asks for before it POSTs to
    /// `<base_url>/files/upload`.
    StorageToken,
    /// `DELETE /admin/requests/{id}/io`: fal's "delete IO" (inputs and outputs of a finished job).
    DeleteIo {
        id: String,
    },
}

impl Route {
    /// The request id named in the path, when it is a well-formed one.
    pub fn request_id(&self) -> Option<RequestId> {
        match self {
            Self::Status { id, .. } | Self::Result { id, .. } | Self::Cancel { id, .. } => {
                id.parse().ok()
            }
            _ => None,
        }
    }
}

/// Decides the route for `path` (already stripped of the surface prefix).
pub fn parse_route(method: &Method, surface: Surface, path: &str) -> Route {
    // A trailing slash is tolerated everywhere (`fal.apps` sends `/status/`).
    let trimmed = path.trim_start_matches('/').trim_end_matches('/');
    let segments: Vec<&str> = if trimmed.is_empty() {
        Vec::new()
    } else {
        trimmed.split('/').collect()
    };
    match segments.as_slice() {
        ["healthz"] => return only(method, &Method::GET, "GET", Route::Health),
        ["admin", "apps"] if method == Method::GET => return Route::ListApps,
        ["admin", "cluster"] => return Route::AdminCluster,
        [".well-known", "jwks.json"] => return only(method, &Method::GET, "GET", Route::Jwks),
        ["tokens"] => return only(method, &Method::POST, "POST", Route::Tokens),
        ["admin", "keys"] => {
            return if method == Method::GET || method == Method::POST {
                Route::AdminKeys
            } else {
                Route::MethodNotAllowed { allow: "GET, POST" }
            }
        }
        ["admin", "keys", key_id] => {
            return only(
                method,
                &Method::DELETE,
                "DELETE",
                Route::AdminKeyRevoke {
                    key_id: key_id.to_string(),
                },
            )
        }
        ["admin", "backup"] => return only(method, &Method::GET, "GET", Route::AdminBackup),
        ["admin", "nodes", id] => {
            return only(
                method,
                &Method::DELETE,
                "DELETE",
                Route::AdminNode {
                    id: id.to_string(),
                    action: NodeAction::Remove,
                },
            )
        }
        ["admin", "nodes", id, verb @ ("drain" | "undrain" | "readmit")] => {
            let action = match *verb {
                "drain" => NodeAction::Drain,
                "undrain" => NodeAction::Undrain,
                _ => NodeAction::Readmit,
            };
            return only(
                method,
                &Method::POST,
                "POST",
                Route::AdminNode {
                    id: id.to_string(),
                    action,
                },
            );
        }
        ["admin", "webhooks", "failed"] => {
            return only(method, &Method::GET, "GET", Route::AdminWebhooksFailed)
        }
        ["admin", "webhooks", id, "retry"] => {
            return only(
                method,
                &Method::POST,
                "POST",
                Route::AdminWebhookRetry { id: id.to_string() },
            )
        }
        ["storage", "upload", "initiate"] => {
            return only(method, &Method::POST, "POST", Route::UploadInitiate)
        }
        ["storage", "upload", "put", token] | ["storage", "upload", "put", token, _] => {
            let route = Route::UploadPut {
                token: token.to_string(),
                file_name: segments.get(4).map(|n| n.to_string()),
            };
            return only(method, &Method::PUT, "PUT", route);
        }
        ["files", "t", token] | ["files", "t", token, _] => {
            let route = Route::UploadedFile {
                token: token.to_string(),
                file_name: segments.get(3).map(|n| n.to_string()),
            };
            return if method == Method::GET || method == Method::HEAD {
                route
            } else {
                Route::MethodNotAllowed { allow: "GET, HEAD" }
            };
        }
        ["storage", "auth", "token"] => {
            return only(method, &Method::POST, "POST", Route::StorageToken)
        }
        ["files", "upload"] | ["storage", "upload"] => {
            return only(method, &Method::POST, "POST", Route::Upload)
        }
        ["files", hash] | ["files", hash, _] => {
            let file_name = segments.get(2).map(|n| n.to_string());
            let route = Route::File {
                hash: hash.to_string(),
                file_name,
            };
            return if method == Method::GET || method == Method::HEAD {
                route
            } else {
                Route::MethodNotAllowed { allow: "GET, HEAD" }
            };
        }
        ["admin", "requests", id, "io"] => {
            return only(
                method,
                &Method::DELETE,
                "DELETE",
                Route::DeleteIo { id: id.to_string() },
            )
        }
        [] => return Route::NotFound,
        _ => {}
    }
    match surface {
        Surface::Queue => parse_requests_route(method, &segments)
            .unwrap_or_else(|| submit_route(method, &segments)),
        Surface::Ws => ws_route(method, &segments),
        Surface::Sync => match segments.split_first() {
            Some((&"ws", rest)) if rest.len() >= 2 => ws_route(method, rest),
            _ => run_route(method, &segments),
        },
    }
}

fn only(method: &Method, want: &Method, allow: &'static str, route: Route) -> Route {
    if method == want {
        route
    } else {
        Route::MethodNotAllowed { allow }
    }
}

/// `[ns/]owner/alias[/sub]/requests/{id}[/status[/stream] | /cancel]`, or `None` if not of that shape.
fn parse_requests_route(method: &Method, segments: &[&str]) -> Option<Route> {
    let (i, tail) = segments
        .iter()
        .enumerate()
        .skip(1)
        .filter(|(_, s)| **s == "requests")
        .map(|(i, _)| (i, &segments[i + 1..]))
        .find(|(_, tail)| {
            matches!(
                tail,
                [_] | [_, "status"] | [_, "status", "stream"] | [_, "cancel"]
            )
        })?;
    let app = match ModelId::from_segments(&segments[..i]) {
        Ok(model) => model.app,
        Err(_) => return Some(Route::NotFound),
    };
    let route = match tail {
        [id] => only(
            method,
            &Method::GET,
            "GET",
            Route::Result {
                app,
                id: id.to_string(),
            },
        ),
        [id, "status"] => only(
            method,
            &Method::GET,
            "GET",
            Route::Status {
                app,
                id: id.to_string(),
                stream: false,
            },
        ),
        [id, "status", "stream"] => only(
            method,
            &Method::GET,
            "GET",
            Route::Status {
                app,
                id: id.to_string(),
                stream: true,
            },
        ),
        [id, "cancel"] => only(
            method,
            &Method::PUT,
            "PUT",
            Route::Cancel {
                app,
                id: id.to_string(),
            },
        ),
        _ => Route::NotFound,
    };
    Some(route)
}

fn submit_route(method: &Method, segments: &[&str]) -> Route {
    match ModelId::from_segments(segments) {
        Ok(model) if method == Method::POST => Route::Submit { model },
        Ok(_) => Route::MethodNotAllowed { allow: "POST" },
        Err(_) if method == Method::POST => Route::UnknownModel {
            path: segments.join("/"),
        },
        Err(_) => Route::NotFound,
    }
}

fn ws_route(method: &Method, segments: &[&str]) -> Route {
    match ModelId::from_segments(segments) {
        Ok(model) if method == Method::GET => Route::HttpOverWs { model },
        Ok(_) => Route::MethodNotAllowed { allow: "GET" },
        Err(_) => Route::UnknownModel {
            path: segments.join("/"),
        },
    }
}

fn run_route(method: &Method, segments: &[&str]) -> Route {
    // `owner/alias/stream` is the stream endpoint of `owner/alias` (as fal clients build it), never
    // a subpath `stream`; a bare `owner/stream` is the app called `stream`. `/realtime` likewise.
    let (model_segments, suffix) = match segments.split_last() {
        Some((&"stream", rest)) if rest.len() >= 2 => (rest, Some("stream")),
        Some((&"realtime", rest)) if rest.len() >= 2 => (rest, Some("realtime")),
        _ => (segments, None),
    };
    let model = match ModelId::from_segments(model_segments) {
        Ok(model) => model,
        Err(_) if method == Method::POST || method == Method::GET => {
            return Route::UnknownModel {
                path: segments.join("/"),
            }
        }
        Err(_) => return Route::NotFound,
    };
    match (suffix, method) {
        (Some("stream"), &Method::POST) => Route::RunStream { model },
        (Some("stream"), _) => Route::MethodNotAllowed { allow: "POST" },
        (Some(_), &Method::GET) => Route::Realtime { model },
        (Some(_), _) => Route::MethodNotAllowed { allow: "GET" },
        // GET runs too: JS puts the input in the query string, PY `run(method="GET")` sends none.
        (None, &Method::POST | &Method::GET) => Route::Run { model },
        (None, _) => Route::MethodNotAllowed { allow: "GET, POST" },
    }
}

/// The query string as a map (percent-decoded); `None` when it does not decode.
pub fn query_map(uri: &Uri) -> Option<HashMap<String, String>> {
    axum::extract::Query::<HashMap<String, String>>::try_from_uri(uri)
        .ok()
        .map(|q| q.0)
}

/// fal's `logs` flag: PY sends `true/false`, JS and the fal SDK `1/0`.
pub fn logs_requested(query: Option<&HashMap<String, String>>) -> bool {
    query
        .and_then(|q| q.get("logs"))
        .is_some_and(|v| matches!(v.trim().to_ascii_lowercase().as_str(), "1" | "true" | "yes"))
}

/// What the gateway knows about a request before any handler runs; the envelope middleware computes
/// it once and hands it on in the request extensions.
#[derive(Clone, Debug)]
pub struct RequestContext {
    /// The id this request goes by when it names no job; a submit's job gets this id.
    pub fresh_id: RequestId,
    pub surface: Surface,
    pub base: BaseUrl,
    pub route: Route,
}

impl RequestContext {
    pub fn new(method: &Method, uri: &Uri, headers: &HeaderMap) -> Self {
        Self::with_scheme(method, uri, headers, "http")
    }

    /// As [`Self::new`] on a listener whose own scheme is `default_scheme`.
    pub fn with_scheme(
        method: &Method,
        uri: &Uri,
        headers: &HeaderMap,
        default_scheme: &'static str,
    ) -> Self {
        let (surface, prefix, rest) = split_surface(host_of(headers, uri), uri.path());
        Self {
            fresh_id: RequestId::new_random(),
            surface,
            base: BaseUrl::from_request_default(headers, uri, prefix, default_scheme),
            route: parse_route(method, surface, rest),
        }
    }

    /// A request the proxy endpoint mapped onto `surface` ([`crate::proxy`]): `uri` is the local
    /// path and query, `prefix` the one URLs handed back keep.
    pub fn for_surface(
        method: &Method,
        uri: &Uri,
        headers: &HeaderMap,
        surface: Surface,
        prefix: &'static str,
        default_scheme: &'static str,
    ) -> Self {
        Self {
            fresh_id: RequestId::new_random(),
            surface,
            base: BaseUrl::from_request_default(headers, uri, prefix, default_scheme),
            route: parse_route(method, surface, uri.path()),
        }
    }

    /// The id logs and the `x-fal-request-id` header use: the job's when the path names one.
    pub fn log_id(&self) -> RequestId {
        self.route
            .request_id()
            .unwrap_or_else(|| self.fresh_id.clone())
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    const ID: &str = "80e732af-660e-45cd-bd63-580e4f2a94cc";

    fn app(s: &str) -> AppId {
        ModelId::parse(s).unwrap().app
    }

    fn queue(method: Method, path: &str) -> Route {
        parse_route(&method, Surface::Queue, path)
    }

    fn sync(method: Method, path: &str) -> Route {
        parse_route(&method, Surface::Sync, path)
    }

    #[test]
    fn surface_from_path_prefix_or_host() {
        assert_eq!(
            split_surface(Some("localhost:8080"), "/queue/a/b"),
            (Surface::Queue, "/queue", "/a/b")
        );
        assert_eq!(
            split_surface(Some("queue.localhost:8080"), "/a/b"),
            (Surface::Queue, "", "/a/b")
        );
        assert_eq!(
            split_surface(Some("QUEUE.fal.run"), "/a/b").0,
            Surface::Queue
        );
        assert_eq!(
            split_surface(Some("fal.run"), "/a/b"),
            (Surface::Sync, "", "/a/b")
        );
        // `/queuex/...` is an owner called queuex, not the prefix.
        assert_eq!(split_surface(None, "/queuex/b").0, Surface::Sync);
        assert_eq!(split_surface(Some("queuey.run"), "/a/b").0, Surface::Sync);
    }

    #[test]
    fn base_url_keeps_scheme_host_and_prefix() {
        let mut h = HeaderMap::new();
        h.insert("host", "queue.example.com:8443".parse().unwrap());
        let uri: Uri = "/x/y".parse().unwrap();
        assert_eq!(
            BaseUrl::from_request(&h, &uri, "").as_str(),
            "http://queue.example.com:8443"
        );
        h.insert("x-forwarded-proto", "https, http".parse().unwrap());
        let base = BaseUrl::from_request(&h, &uri, "/queue");
        assert_eq!(base.as_str(), "https://queue.example.com:8443/queue");
        let urls = base.job_urls(&app("workflows/me/wf/sub"), &ID.parse().unwrap());
        assert_eq!(
            urls.status_url,
            format!("https://queue.example.com:8443/queue/workflows/me/wf/requests/{ID}/status")
        );
        assert!(urls.cancel_url.ends_with("/cancel"));
        assert!(urls.response_url.ends_with(ID));
    }

    #[test]
    fn base_url_ignores_odd_hosts_and_schemes() {
        let mut h = HeaderMap::new();
        h.insert("host", "evil.com/path?x".parse().unwrap());
        h.insert("x-forwarded-proto", "javascript".parse().unwrap());
        let uri: Uri = "/".parse().unwrap();
        assert_eq!(
            BaseUrl::from_request(&h, &uri, "").as_str(),
            "http://localhost"
        );
        let abs: Uri = "http://node1:9000/a/b".parse().unwrap();
        assert_eq!(
            BaseUrl::from_request(&HeaderMap::new(), &abs, "").as_str(),
            "http://node1:9000"
        );
    }

    #[test]
    fn queue_routes_accept_subpaths_namespaces_and_trailing_slashes() {
        let status = Route::Status {
            app: app("fal-ai/flux"),
            id: ID.into(),
            stream: false,
        };
        assert_eq!(
            queue(Method::GET, &format!("/fal-ai/flux/requests/{ID}/status")),
            status
        );
        assert_eq!(
            queue(
                Method::GET,
                &format!("/fal-ai/flux/dev/requests/{ID}/status/")
            ),
            status
        );
        assert_eq!(
            queue(
                Method::GET,
                &format!("/fal-ai/flux/requests/{ID}/status/stream")
            ),
            Route::Status {
                app: app("fal-ai/flux"),
                id: ID.into(),
                stream: true
            }
        );
        assert_eq!(
            queue(Method::GET, &format!("/workflows/me/wf/requests/{ID}/")),
            Route::Result {
                app: app("workflows/me/wf"),
                id: ID.into()
            }
        );
        assert_eq!(
            queue(Method::PUT, &format!("/a/b/c/d/requests/{ID}/cancel")),
            Route::Cancel {
                app: app("a/b"),
                id: ID.into()
            }
        );
        // Malformed ids still route (answered 404 by the handler).
        assert_eq!(
            queue(Method::GET, "/a/b/requests/nope"),
            Route::Result {
                app: app("a/b"),
                id: "nope".into()
            }
        );
        assert_eq!(queue(Method::GET, "/a/b/requests/nope").request_id(), None);
    }

    #[test]
    fn queue_submit_and_wrong_methods() {
        assert_eq!(
            queue(Method::POST, "/fal-ai/flux/dev"),
            Route::Submit {
                model: ModelId::parse("fal-ai/flux/dev").unwrap()
            }
        );
        assert_eq!(
            queue(Method::GET, "/fal-ai/flux"),
            Route::MethodNotAllowed { allow: "POST" }
        );
        assert_eq!(
            queue(Method::POST, &format!("/a/b/requests/{ID}/status")),
            Route::MethodNotAllowed { allow: "GET" }
        );
        assert_eq!(
            queue(Method::GET, &format!("/a/b/requests/{ID}/cancel")),
            Route::MethodNotAllowed { allow: "PUT" }
        );
        assert_eq!(
            queue(Method::POST, "/solo"),
            Route::UnknownModel {
                path: "solo".into()
            }
        );
        assert_eq!(queue(Method::GET, "/"), Route::NotFound);
        assert_eq!(
            queue(Method::POST, "/a/b c"),
            Route::UnknownModel {
                path: "a/b c".into()
            }
        );
    }

    #[test]
    fn sync_routes_run_and_stream() {
        assert_eq!(
            sync(Method::POST, "/runmesh/echo"),
            Route::Run {
                model: ModelId::parse("runmesh/echo").unwrap()
            }
        );
        // The app named `stream` runs; `/stream` after it streams it.
        assert_eq!(
            sync(Method::POST, "/runmesh/stream"),
            Route::Run {
                model: ModelId::parse("runmesh/stream").unwrap()
            }
        );
        assert_eq!(
            sync(Method::POST, "/runmesh/stream/stream/"),
            Route::RunStream {
                model: ModelId::parse("runmesh/stream").unwrap()
            }
        );
        assert_eq!(
            sync(Method::POST, "/a/b/sub/stream"),
            Route::RunStream {
                model: ModelId::parse("a/b/sub").unwrap()
            }
        );
        assert_eq!(
            sync(Method::GET, "/a/b"),
            Route::Run {
                model: ModelId::parse("a/b").unwrap()
            }
        );
        assert_eq!(
            sync(Method::PUT, "/a/b"),
            Route::MethodNotAllowed { allow: "GET, POST" }
        );
        assert_eq!(
            sync(Method::GET, "/runmesh/echo/realtime"),
            Route::Realtime {
                model: ModelId::parse("runmesh/echo").unwrap()
            }
        );
        assert_eq!(
            sync(Method::POST, "/runmesh/echo/realtime"),
            Route::MethodNotAllowed { allow: "GET" }
        );
        assert_eq!(queue(Method::GET, "/.well-known/jwks.json"), Route::Jwks);
        assert_eq!(
            sync(Method::GET, "/ws/runmesh/echo/sub"),
            Route::HttpOverWs {
                model: ModelId::parse("runmesh/echo/sub").unwrap()
            }
        );
        assert_eq!(
            parse_route(&Method::GET, Surface::Ws, "/runmesh/echo"),
            Route::HttpOverWs {
                model: ModelId::parse("runmesh/echo").unwrap()
            }
        );
        assert_eq!(split_surface(Some("ws.localhost:1"), "/a/b").0, Surface::Ws);
        assert_eq!(sync(Method::POST, "/tokens/"), Route::Tokens);
        assert_eq!(sync(Method::POST, "/admin/keys"), Route::AdminKeys);
        assert_eq!(
            sync(Method::POST, "/admin/nodes/12/drain"),
            Route::AdminNode {
                id: "12".into(),
                action: NodeAction::Drain
            }
        );
        assert_eq!(
            sync(Method::DELETE, "/admin/nodes/12"),
            Route::AdminNode {
                id: "12".into(),
                action: NodeAction::Remove
            }
        );
        assert_eq!(
            sync(Method::GET, "/admin/nodes/12/readmit"),
            Route::MethodNotAllowed { allow: "POST" }
        );
        assert_eq!(
            sync(Method::DELETE, "/admin/keys/k1"),
            Route::AdminKeyRevoke {
                key_id: "k1".into()
            }
        );
        assert_eq!(
            sync(Method::GET, "/admin/webhooks/failed"),
            Route::AdminWebhooksFailed
        );
        assert_eq!(sync(Method::GET, "/healthz"), Route::Health);
        assert_eq!(
            sync(Method::POST, "/healthz"),
            Route::MethodNotAllowed { allow: "GET" }
        );
        assert_eq!(queue(Method::GET, "/admin/apps/"), Route::ListApps);
    }

    #[test]
    fn logs_flag_accepts_both_spellings() {
        let q = |s: &str| query_map(&format!("/x?{s}").parse::<Uri>().unwrap());
        assert!(logs_requested(q("logs=1").as_ref()));
        assert!(logs_requested(q("logs=true").as_ref()));
        assert!(!logs_requested(q("logs=0").as_ref()));
        assert!(!logs_requested(q("logs=false").as_ref()));
        assert!(!logs_requested(q("").as_ref()));
        assert!(!logs_requested(None));
    }

    #[test]
    fn context_log_id_prefers_the_path_id() {
        let mut h = HeaderMap::new();
        h.insert("host", "queue.x".parse().unwrap());
        let uri: Uri = format!("/a/b/requests/{}/status", ID.to_uppercase())
            .parse()
            .unwrap();
        let ctx = RequestContext::new(&Method::GET, &uri, &h);
        assert_eq!(ctx.log_id().as_str(), ID);
        let submit = RequestContext::new(&Method::POST, &"/a/b".parse().unwrap(), &h);
        assert_eq!(submit.log_id(), submit.fresh_id);
    }
}
