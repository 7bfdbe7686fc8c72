//! The JS client's `proxyUrl` mode (contract §1.4): `@fal-ai/client` configured with
//! `proxyUrl: {url, when: "always"}` sends every request to one URL, with the URL it meant to call
//! in `x-fal-target-url` and its method, body and `Authorization` unchanged. The node serves that
//! endpoint itself: a target on `fal.run`, `queue.fal.run` or `rest.fal.ai` is answered as if the
//! request had been made to this node's sync, queue or REST route. Anything else is refused, as
//! fal's own server proxy does, so the endpoint cannot reach the node's admin routes.
//!
//! Pure function of the target URL; [`crate::envelope`] applies it before routing, so auth, rate
//! limits and handlers see an ordinary request.

use axum::http::{Method, Uri};

use crate::routing::{parse_route, Route, Surface, QUEUE_PATH_PREFIX};

/// Where the endpoint is served unless configured otherwise (the path fal's docs and
/// `@fal-ai/server-proxy` use).
pub const PROXY_PATH_DEFAULT: &str = "/api/fal/proxy";
pub const TARGET_URL_HEADER: &str = "x-fal-target-url";
/// Longest target URL read (the whole request line of a GET with its input must fit).
const TARGET_LEN_MAX: usize = 16 * 1024;

/// A target URL mapped onto this node.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LocalTarget {
    pub surface: Surface,
    /// Kept in URLs handed back (`/queue` for queue targets), so they reach this node directly.
    pub prefix: &'static str,
    /// Path and query as the node serves them, without the prefix.
    pub uri: Uri,
    /// A `rest.fal.ai` target (token, storage), not the model API.
    pub rest: bool,
}

/// Why a proxied request is refused (each a fal-shaped 4xx).
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum ProxyError {
    #[error("Missing the x-fal-target-url header")]
    MissingTarget,
    #[error("Invalid x-fal-target-url header")]
    InvalidTarget,
}

/// The methods the JS client sends (and `@fal-ai/server-proxy` forwards).
pub fn method_allowed(method: &Method) -> bool {
    method == Method::GET || method == Method::POST || method == Method::PUT
}

/// Maps `x-fal-target-url` onto this node: `https://fal.run/X` → the sync route `X`,
/// `https://queue.fal.run/X` → the queue route `X`, `https://rest.fal.ai/tokens/` and
/// `https://rest.fal.ai/storage/...` → the same path here. Any other host, a port, user info, or a
/// malformed URL is [`ProxyError::InvalidTarget`].
pub fn resolve(target: Option<&str>) -> Result<LocalTarget, ProxyError> {
    let target = target.ok_or(ProxyError::MissingTarget)?.trim();
    if target.is_empty() {
        return Err(ProxyError::MissingTarget);
    }
    if target.len() > TARGET_LEN_MAX {
        return Err(ProxyError::InvalidTarget);
    }
    let uri: Uri = target.parse().map_err(|_| ProxyError::InvalidTarget)?;
    if !matches!(uri.scheme_str(), Some("https") | Some("http")) {
        return Err(ProxyError::InvalidTarget);
    }
    let authority = uri.authority().ok_or(ProxyError::InvalidTarget)?;
    if authority.as_str().contains('@') || authority.port().is_some() {
        return Err(ProxyError::InvalidTarget);
    }
    let host = authority.host().to_ascii_lowercase();
    let path = uri.path();
    let (surface, prefix, rest) = match host.as_str() {
        "fal.run" => (Surface::Sync, "", false),
        "queue.fal.run" => (Surface::Queue, QUEUE_PATH_PREFIX, false),
        "rest.fal.ai" if is_rest_path(path) => (Surface::Sync, "", true),
        _ => return Err(ProxyError::InvalidTarget),
    };
    let local = match uri.query() {
        Some(q) => format!("{path}?{q}"),
        None => path.to_string(),
    };
    let uri: Uri = local.parse().map_err(|_| ProxyError::InvalidTarget)?;
    Ok(LocalTarget {
        surface,
        prefix,
        uri,
        rest,
    })
}

/// The REST paths the clients call: the realtime token and storage uploads.
fn is_rest_path(path: &str) -> bool {
    let p = path.trim_end_matches('/');
    p == "/tokens" || p.starts_with("/storage/")
}

/// Whether the route a target resolved to is one fal's hosts have: the fal API, never the node's
/// own admin, health or key routes reached through the proxy.
pub fn route_allowed(route: &Route, target: &LocalTarget) -> bool {
    if target.rest {
        // `resolve` let only the token and storage paths through; storage is served by the
        // storage routes where a node has them (a 404 otherwise).
        return target.uri.path().starts_with("/storage/")
            || matches!(route, Route::Tokens | Route::MethodNotAllowed { .. });
    }
    match route {
        // A wrong method on a fal route (405), not on one of the node's own.
        Route::MethodNotAllowed { .. } => [Method::GET, Method::POST, Method::PUT]
            .iter()
            .any(|m| is_fal_api(&parse_route(m, target.surface, target.uri.path()))),
        other => is_fal_api(other),
    }
}

fn is_fal_api(route: &Route) -> bool {
    matches!(
        route,
        Route::Submit { .. }
            | Route::Status { .. }
            | Route::Result { .. }
            | Route::Cancel { .. }
            | Route::Run { .. }
            | Route::RunStream { .. }
            | Route::UnknownModel { .. }
            | Route::NotFound
    )
}

/// Whether `path` is the proxy endpoint (`configured`, a trailing slash tolerated).
pub fn is_proxy_path(configured: &str, path: &str) -> bool {
    let want = configured.trim_end_matches('/');
    !want.is_empty() && path.trim_end_matches('/') == want
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn ok(t: &str) -> LocalTarget {
        resolve(Some(t)).unwrap()
    }

    #[test]
    fn fal_hosts_map_onto_the_node() {
        let t = ok("https://queue.fal.run/fal-ai/flux/requests/abc/status?logs=0");
        assert_eq!(t.surface, Surface::Queue);
        assert_eq!(t.prefix, "/queue");
        assert_eq!(t.uri, "/fal-ai/flux/requests/abc/status?logs=0");
        let t = ok("https://fal.run/runmesh/echo?x=1&y=%20");
        assert_eq!((t.surface, t.prefix), (Surface::Sync, ""));
        assert_eq!(t.uri, "/runmesh/echo?x=1&y=%20");
        assert_eq!(ok("https://rest.fal.ai/tokens/").uri, "/tokens/");
        assert_eq!(
            ok("https://REST.fal.ai/storage/upload/initiate?storage_type=fal-cdn-v3").uri,
            "/storage/upload/initiate?storage_type=fal-cdn-v3"
        );
        // An owner called `queue` on fal.run stays on the sync surface.
        assert_eq!(ok("https://fal.run/queue/app").surface, Surface::Sync);
    }

    #[test]
    fn other_targets_are_refused() {
        assert_eq!(resolve(None), Err(ProxyError::MissingTarget));
        assert_eq!(resolve(Some(" ")), Err(ProxyError::MissingTarget));
        for bad in [
            "https://evil.com/fal-ai/flux",
            "https://fal.run.evil.com/a/b",
            "https://evilfal.run/a/b",
            "https://fal.run:8443/a/b",
            "https://user@fal.run/a/b",
            "ftp://fal.run/a/b",
            "/runmesh/echo",
            "https://rest.fal.ai/admin/keys",
            "https://rest.fal.ai/applications/me/app/queue",
            "not a url",
        ] {
            assert_eq!(resolve(Some(bad)), Err(ProxyError::InvalidTarget), "{bad}");
        }
        let long = format!("https://fal.run/a/b?x={}", "y".repeat(TARGET_LEN_MAX));
        assert_eq!(resolve(Some(&long)), Err(ProxyError::InvalidTarget));
    }

    #[test]
    fn admin_routes_are_not_reachable_through_the_proxy() {
        let check = |m: Method, t: &str| {
            let lt = ok(t);
            let route = parse_route(&m, lt.surface, lt.uri.path());
            route_allowed(&route, &lt)
        };
        assert!(check(Method::POST, "https://fal.run/runmesh/echo"));
        assert!(check(Method::POST, "https://queue.fal.run/runmesh/echo"));
        assert!(check(
            Method::PUT,
            "https://queue.fal.run/a/b/requests/x/cancel"
        ));
        assert!(check(Method::POST, "https://rest.fal.ai/tokens/"));
        assert!(!check(Method::GET, "https://fal.run/admin/keys"));
        assert!(!check(Method::POST, "https://queue.fal.run/admin/keys"));
        assert!(!check(Method::GET, "https://fal.run/healthz"));
        assert!(!check(Method::GET, "https://fal.run/.well-known/jwks.json"));
        assert!(!check(Method::POST, "https://fal.run/tokens/"));
        assert!(!check(Method::GET, "https://fal.run/runmesh/echo/realtime"));
        // Wrong methods: a 405 on fal's routes, refused on the node's own.
        assert!(check(Method::GET, "https://queue.fal.run/runmesh/echo"));
        assert!(check(Method::PUT, "https://fal.run/runmesh/echo"));
        assert!(!check(Method::POST, "https://queue.fal.run/healthz"));
        assert!(!check(Method::PUT, "https://fal.run/admin/keys"));
    }

    #[test]
    fn proxy_path_match() {
        assert!(is_proxy_path("/api/fal/proxy", "/api/fal/proxy"));
        assert!(is_proxy_path("/api/fal/proxy/", "/api/fal/proxy/"));
        assert!(!is_proxy_path("/api/fal/proxy", "/api/fal/proxy/x"));
        assert!(!is_proxy_path("", "/"));
    }
}
