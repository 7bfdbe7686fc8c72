//! Who is calling: fal's `Authorization: Key <id>:<secret>` checked against the hashed keys in the
//! replicated state, realtime tokens (`fal_jwt_token`), scopes, and per-key rate limits.
//!
//! Keys are verified by recomputing `sha256(salt || secret)` and comparing in constant time; the
//! secret is never stored. Tokens are short-lived JWTs (EdDSA) signed with the cluster key
//! ([`ClusterKey`]), which every node derives from the cluster secret in the replicated state, so a
//! token issued by one node is accepted by all.

use std::collections::HashMap;
use std::sync::Mutex;

use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine as _;
use ed25519_dalek::{Signature, Signer as _, SigningKey, Verifier as _};
use runmesh_proto::auth::{ApiKey, KeyScope};
use serde::{Deserialize, Serialize};
use serde_json::json;
use sha2::{Digest as _, Sha256};

use crate::errors::json_response;
use crate::routing::{RequestContext, Route};

/// fal's body for an unknown key (quoted from the live API by third parties).
pub const NO_USER_MESSAGE: &str = "No user found for Key ID and Secret";
/// fal's message for a `Key` header without the colon.
pub const MALFORMED_MESSAGE: &str =
    "Invalid Key Authorization header format. Expected '<key_id>:<key_secret>'.";
/// Owner name of requests and idempotency keys of unauthenticated callers.
pub const ANONYMOUS: &str = "anonymous";
/// Longest token lifetime `/tokens/` issues.
pub const TOKEN_TTL_MAX_S: u64 = 24 * 3600;
/// Longest key id or secret looked at (a longer one is simply unknown).
const KEY_PART_LEN_MAX: usize = 256;
/// Rate-limit buckets kept before idle full ones are dropped.
const BUCKETS_SOFT_MAX: usize = 10_000;

/// Authentication and rate limits of the gateway.
#[derive(Clone, Debug, PartialEq)]
pub struct AuthConfig {
    /// Requests without a valid key (or token) are refused with 401. When false (`runmesh dev`),
    /// they run as `anonymous`, and credentials that do not check out are ignored rather than
    /// refused; admin endpoints always need an ADMIN key.
    pub require_auth: bool,
    /// Sustained requests per second per key.
    pub rate_per_s: f64,
    /// Requests a key may send in a burst.
    pub rate_burst: u32,
}

impl Default for AuthConfig {
    fn default() -> Self {
        Self {
            require_auth: false,
            rate_per_s: 200.0,
            rate_burst: 400,
        }
    }
}

/// What an endpoint needs from the caller.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Need {
    /// Anyone (health, JWKS).
    Public,
    /// A DEFAULT key (or anonymous when allowed); tokens are not enough.
    Key,
    /// A DEFAULT key or a realtime token for the app (realtime, streams).
    KeyOrToken,
    /// A DEFAULT key or an upload token (`/storage/auth/token`): the Python client's uploads.
    KeyOrUploadToken,
    /// An ADMIN key, always.
    Admin,
}

/// The caller of a request, once authenticated.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Caller {
    Anonymous,
    Key { key_id: String, scope: KeyScope },
    Token(TokenClaims),
}

impl Caller {
    /// The owner recorded on jobs (`JobSpec::submitted_by`), `None` for anonymous.
    pub fn owner(&self) -> Option<String> {
        match self {
            Self::Anonymous => None,
            Self::Key { key_id, .. } => Some(key_id.clone()),
            Self::Token(c) => (c.sub != ANONYMOUS).then(|| c.sub.clone()),
        }
    }

    /// May this caller read a job submitted by `submitted_by`? Admins and anonymous callers of an
    /// open node see everything; a key sees its own jobs.
    pub fn may_see(&self, submitted_by: Option<&str>, require_auth: bool) -> bool {
        match self {
            Self::Key {
                scope: KeyScope::Admin,
                ..
            } => true,
            Self::Key { key_id, .. } => {
                submitted_by == Some(key_id.as_str()) || (!require_auth && submitted_by.is_none())
            }
            Self::Token(c) => submitted_by == Some(c.sub.as_str()),
            Self::Anonymous => !require_auth,
        }
    }
}

/// Why a request was refused.
#[derive(Clone, Debug, PartialEq)]
pub enum AuthError {
    Missing,
    Malformed,
    UnknownKey,
    BadToken(&'static str),
    Forbidden(&'static str),
    RateLimited { retry_after_s: u64, key_id: String },
}

impl IntoResponse for AuthError {
    fn into_response(self) -> Response {
        let (status, detail) = match &self {
            Self::Missing => (
                StatusCode::UNAUTHORIZED,
                "Missing Authorization header: send 'Authorization: Key <key_id>:<key_secret>'"
                    .to_string(),
            ),
            Self::Malformed => (StatusCode::UNAUTHORIZED, MALFORMED_MESSAGE.to_string()),
            Self::UnknownKey => (StatusCode::UNAUTHORIZED, NO_USER_MESSAGE.to_string()),
            Self::BadToken(why) => (StatusCode::UNAUTHORIZED, (*why).to_string()),
            Self::Forbidden(why) => (StatusCode::FORBIDDEN, (*why).to_string()),
            Self::RateLimited { key_id, .. } => (
                StatusCode::TOO_MANY_REQUESTS,
                format!("Rate limit exceeded for key {key_id}"),
            ),
        };
        let mut resp = json_response(status, &json!({ "detail": detail }));
        if let Self::RateLimited { retry_after_s, .. } = self {
            if let Ok(v) = HeaderValue::from_str(&retry_after_s.to_string()) {
                resp.headers_mut().insert(header::RETRY_AFTER, v);
            }
        }
        if status == StatusCode::UNAUTHORIZED {
            resp.headers_mut()
                .insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Key"));
        }
        resp
    }
}

/// `sha256(salt || secret)`.
pub fn hash_secret(salt: &[u8], secret: &str) -> Vec<u8> {
    let mut h = Sha256::new();
    h.update(salt);
    h.update(secret.as_bytes());
    h.finalize().to_vec()
}

/// A new key: random id and secret, the record to replicate, and the secret to show once.
pub fn new_key(scope: KeyScope, name: Option<String>, now_ms: u64) -> (ApiKey, String) {
    let key_id = uuid::Uuid::new_v4().to_string();
    let secret = hex(&random_bytes::<32>());
    let salt = random_bytes::<16>().to_vec();
    let secret_hash = hash_secret(&salt, &secret);
    (
        ApiKey {
            key_id,
            name,
            scope,
            salt,
            secret_hash,
            created_at_ms: now_ms,
        },
        secret,
    )
}

/// The record of a key whose id and secret are given (an operator-configured admin key).
pub fn key_from_parts(
    key_id: &str,
    secret: &str,
    scope: KeyScope,
    name: Option<String>,
    now_ms: u64,
) -> ApiKey {
    let salt = random_bytes::<16>().to_vec();
    ApiKey {
        key_id: key_id.to_string(),
        name,
        scope,
        secret_hash: hash_secret(&salt, secret),
        salt,
        created_at_ms: now_ms,
    }
}

/// Does `secret` match `key`? Constant time in the hash comparison.
pub fn verify_secret(key: &ApiKey, secret: &str) -> bool {
    let h = hash_secret(&key.salt, secret);
    h.len() == key.secret_hash.len()
        && h.iter()
            .zip(&key.secret_hash)
            .fold(0u8, |acc, (a, b)| acc | (a ^ b))
            == 0
}

/// Splits `id:secret` (fal's key format); `None` when it is not of that shape.
pub fn split_key(credentials: &str) -> Option<(&str, &str)> {
    let (id, secret) = credentials.trim().split_once(':')?;
    (!id.is_empty()
        && !secret.is_empty()
        && id.len() <= KEY_PART_LEN_MAX
        && secret.len() <= KEY_PART_LEN_MAX)
        .then_some((id, secret))
}

/// What the `Authorization` header says.
#[derive(Debug, PartialEq, Eq)]
pub enum Presented<'a> {
    None,
    Key { key_id: &'a str, secret: &'a str },
    Malformed,
    Bearer(&'a str),
}

pub fn presented(headers: &HeaderMap) -> Presented<'_> {
    let Some(v) = headers.get(header::AUTHORIZATION) else {
        return Presented::None;
    };
    let Ok(v) = v.to_str() else {
        return Presented::Malformed;
    };
    let v = v.trim();
    let (scheme, rest) = v.split_once(' ').unwrap_or((v, ""));
    if scheme.eq_ignore_ascii_case("key") {
        match split_key(rest) {
            Some((key_id, secret)) => Presented::Key { key_id, secret },
            None => Presented::Malformed,
        }
    } else if scheme.eq_ignore_ascii_case("bearer") && !rest.trim().is_empty() {
        Presented::Bearer(rest.trim())
    } else {
        Presented::Malformed
    }
}

// ---------------------------------------------------------------------------------------------
// Cluster key: webhook signatures, JWKS and realtime tokens
// ---------------------------------------------------------------------------------------------

/// The cluster's Ed25519 key, derived from the cluster secret in the replicated state: every node
/// derives the same key, so webhooks signed by any node verify against one JWKS.
#[derive(Clone)]
pub struct ClusterKey {
    signing: SigningKey,
}

impl ClusterKey {
    pub fn from_cluster_secret(secret: &[u8]) -> Self {
        let mut h = Sha256::new();
        h.update(b"runmesh/cluster-signing-key/v1\0");
        h.update(secret);
        let seed: [u8; 32] = h.finalize().into();
        Self {
            signing: SigningKey::from_bytes(&seed),
        }
    }

    pub fn sign(&self, msg: &[u8]) -> [u8; 64] {
        self.signing.sign(msg).to_bytes()
    }

    pub fn public_key(&self) -> [u8; 32] {
        self.signing.verifying_key().to_bytes()
    }

    pub fn verify(&self, msg: &[u8], sig: &[u8]) -> bool {
        let Ok(sig) = Signature::from_slice(sig) else {
            return false;
        };
        self.signing.verifying_key().verify(msg, &sig).is_ok()
    }

    /// Key id: the first 16 hex digits of sha256 of the public key.
    pub fn kid(&self) -> String {
        let digest = Sha256::digest(self.public_key());
        hex(&digest[..8])
    }

    /// The JWKS document (`/.well-known/jwks.json`): one OKP/Ed25519 key, `x` base64url.
    pub fn jwks(&self) -> serde_json::Value {
        json!({
            "keys": [{
                "kty": "OKP",
                "crv": "Ed25519",
                "x": URL_SAFE_NO_PAD.encode(self.public_key()),
                "kid": self.kid(),
                "use": "sig",
                "alg": "EdDSA",
            }]
        })
    }

    /// A signed token (JWT, EdDSA) carrying `claims`.
    pub fn issue_token(&self, claims: &TokenClaims) -> String {
        let header = json!({ "alg": "EdDSA", "typ": "JWT", "kid": self.kid() });
        let signing_input = format!(
            "{}.{}",
            URL_SAFE_NO_PAD.encode(header.to_string()),
            URL_SAFE_NO_PAD.encode(serde_json::to_string(claims).unwrap_or_default())
        );
        let sig = self.sign(signing_input.as_bytes());
        format!("{signing_input}.{}", URL_SAFE_NO_PAD.encode(sig))
    }

    /// The claims of a token this cluster signed that has not expired at `now_s`.
    pub fn check_token(&self, token: &str, now_s: u64) -> Result<TokenClaims, AuthError> {
        let bad = AuthError::BadToken("Invalid token");
        let mut parts = token.trim().split('.');
        let (Some(h), Some(c), Some(s), None) =
            (parts.next(), parts.next(), parts.next(), parts.next())
        else {
            return Err(bad);
        };
        let sig = URL_SAFE_NO_PAD.decode(s).map_err(|_| bad.clone())?;
        if !self.verify(format!("{h}.{c}").as_bytes(), &sig) {
            return Err(bad);
        }
        let claims: TokenClaims = URL_SAFE_NO_PAD
            .decode(c)
            .ok()
            .and_then(|b| serde_json::from_slice(&b).ok())
            .ok_or(bad)?;
        if claims.exp <= now_s {
            return Err(AuthError::BadToken("Token expired"));
        }
        Ok(claims)
    }
}

/// What a token is for; each route takes one kind, so a leaked upload token opens no app and a
/// realtime token uploads nothing.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum TokenAudience {
    /// Realtime sockets, streams and runs of its apps (`POST /tokens/`); tokens issued before
    /// audiences existed are these.
    #[default]
    Realtime,
    /// `POST /files/upload` and `/storage/upload` only (`POST /storage/auth/token`).
    Upload,
}

/// What a token grants.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct TokenClaims {
    /// The key id that asked for it (or `anonymous`).
    pub sub: String,
    /// App names (alias, or owner/alias) it may open; empty = any.
    pub apps: Vec<String>,
    pub iat: u64,
    pub exp: u64,
    #[serde(default, rename = "aud")]
    pub audience: TokenAudience,
}

impl TokenClaims {
    pub fn allows_app(&self, app: &runmesh_proto::AppId) -> bool {
        self.apps.is_empty()
            || self
                .apps
                .iter()
                .any(|a| *a == app.alias || *a == app.path())
    }
}

// ---------------------------------------------------------------------------------------------
// Rate limits
// ---------------------------------------------------------------------------------------------

struct Bucket {
    tokens: f64,
    last_ms: u64,
}

/// Token buckets per key id.
#[derive(Default)]
pub struct RateLimiter {
    buckets: Mutex<HashMap<String, Bucket>>,
}

impl RateLimiter {
    /// Takes one token for `key_id` at `now_ms`; `Err(retry_after_s)` when the bucket is empty.
    pub fn take(&self, key_id: &str, now_ms: u64, rate_per_s: f64, burst: u32) -> Result<(), u64> {
        // Zero, negative or NaN: no limit.
        if rate_per_s.is_nan() || rate_per_s <= 0.0 {
            return Ok(());
        }
        let burst = f64::from(burst.max(1));
        let mut buckets = self.buckets.lock().unwrap_or_else(|e| e.into_inner());
        if buckets.len() > BUCKETS_SOFT_MAX {
            // Drop buckets idle long enough to be full again: they carry no state worth keeping.
            let full_after_ms = (burst / rate_per_s * 1000.0) as u64;
            buckets.retain(|_, b| now_ms.saturating_sub(b.last_ms) < full_after_ms);
        }
        let b = buckets.entry(key_id.to_string()).or_insert(Bucket {
            tokens: burst,
            last_ms: now_ms,
        });
        let elapsed_s = now_ms.saturating_sub(b.last_ms) as f64 / 1000.0;
        b.tokens = (b.tokens + elapsed_s * rate_per_s).min(burst);
        b.last_ms = b.last_ms.max(now_ms);
        if b.tokens >= 1.0 {
            b.tokens -= 1.0;
            Ok(())
        } else {
            Err(((1.0 - b.tokens) / rate_per_s).ceil().max(1.0) as u64)
        }
    }
}

// ---------------------------------------------------------------------------------------------
// The middleware
// ---------------------------------------------------------------------------------------------

/// What `route` needs from its caller.
pub fn need_of(route: &Route) -> Need {
    match route {
        // A blob's URL is its hash: whoever holds the URL may read it (as with fal's CDN URLs).
        Route::Health | Route::Jwks | Route::File { .. } | Route::UploadedFile { .. } => {
            Need::Public
        }
        // The JS client PUTs without credentials; the URL's token is this node's MAC instead.
        Route::UploadPut { .. } => Need::Public,
        // The view names every node's addresses: an operator's, not a caller's.
        Route::AdminCluster
        | Route::DeleteIo { .. }
        | Route::AdminKeys
        | Route::AdminKeyRevoke { .. }
        | Route::AdminWebhooksFailed
        | Route::AdminWebhookRetry { .. }
        | Route::AdminNode { .. }
        | Route::AdminBackup => Need::Admin,
        Route::Realtime { .. }
        | Route::RunStream { .. }
        | Route::Run { .. }
        | Route::HttpOverWs { .. } => Need::KeyOrToken,
        Route::Upload => Need::KeyOrUploadToken,
        // A route miss reveals nothing, so it needs no key.
        Route::NotFound | Route::MethodNotAllowed { .. } => Need::Public,
        _ => Need::Key,
    }
}

/// Authenticates every request (the envelope already decided its route) and puts the [`Caller`]
/// into the request extensions; refused requests get fal's 401/403/429 shapes.
pub(crate) async fn middleware(
    axum::extract::State(state): axum::extract::State<crate::AppState>,
    mut req: axum::extract::Request,
    next: axum::middleware::Next,
) -> Response {
    let route = match req.extensions().get::<RequestContext>() {
        Some(ctx) => ctx.route.clone(),
        None => RequestContext::new(req.method(), req.uri(), req.headers()).route,
    };
    match authenticate(&state, &route, req.headers(), req.uri()) {
        Ok(caller) => {
            req.extensions_mut().insert(caller);
            next.run(req).await
        }
        Err(e) => {
            tracing::info!(reason = ?e, "request refused");
            e.into_response()
        }
    }
}

fn authenticate(
    state: &crate::AppState,
    route: &Route,
    headers: &HeaderMap,
    uri: &axum::http::Uri,
) -> Result<Caller, AuthError> {
    let need = need_of(route);
    if need == Need::Public {
        return Ok(Caller::Anonymous);
    }
    let require = state.config.auth.require_auth || need == Need::Admin;
    let now_ms = state.joblog.now_ms();

    let mut caller = None;
    let mut token = None;
    match presented(headers) {
        Presented::Key { key_id, secret } => {
            let scope = state.joblog.read_state(|s| {
                s.keys
                    .get(key_id)
                    .filter(|k| verify_secret(k, secret))
                    .map(|k| k.scope)
            });
            match scope {
                Some(scope) => {
                    caller = Some(Caller::Key {
                        key_id: key_id.to_string(),
                        scope,
                    })
                }
                None if require => return Err(AuthError::UnknownKey),
                None => {}
            }
        }
        Presented::Malformed if require => return Err(AuthError::Malformed),
        Presented::Bearer(t) if matches!(need, Need::KeyOrToken | Need::KeyOrUploadToken) => {
            token = Some(t.to_string())
        }
        Presented::Bearer(_) if require => return Err(AuthError::UnknownKey),
        _ => {}
    }
    if caller.is_none() && need == Need::KeyOrToken {
        if let Some(t) =
            crate::routing::query_map(uri).and_then(|q| q.get("fal_jwt_token").cloned())
        {
            token = Some(t);
        }
    }
    let caller = match (caller, token) {
        (Some(c), _) => c,
        (None, Some(t)) => match check_token_for(state, route, need, &t, now_ms / 1000) {
            Ok(claims) => Caller::Token(claims),
            Err(e) if require => return Err(e),
            Err(_) => Caller::Anonymous,
        },
        (None, None) if require => return Err(AuthError::Missing),
        (None, None) => Caller::Anonymous,
    };
    if need == Need::Admin
        && !matches!(
            caller,
            Caller::Key {
                scope: KeyScope::Admin,
                ..
            }
        )
    {
        return Err(AuthError::Forbidden(
            "This endpoint needs a key with the ADMIN scope",
        ));
    }
    let limited = match &caller {
        Caller::Key { key_id, .. } => Some(key_id.as_str()),
        Caller::Token(c) if c.sub != ANONYMOUS => Some(c.sub.as_str()),
        _ => None,
    };
    if let Some(key_id) = limited {
        let cfg = &state.config.auth;
        if let Err(retry_after_s) =
            state
                .limiter
                .take(key_id, now_ms, cfg.rate_per_s, cfg.rate_burst)
        {
            return Err(AuthError::RateLimited {
                retry_after_s,
                key_id: key_id.to_string(),
            });
        }
    }
    Ok(caller)
}

fn check_token_for(
    state: &crate::AppState,
    route: &Route,
    need: Need,
    token: &str,
    now_s: u64,
) -> Result<TokenClaims, AuthError> {
    let key = state
        .cluster_key()
        .ok_or(AuthError::BadToken("Tokens are not available yet"))?;
    let claims = key.check_token(token, now_s)?;
    let audience = if need == Need::KeyOrUploadToken {
        TokenAudience::Upload
    } else {
        TokenAudience::Realtime
    };
    if claims.audience != audience {
        return Err(AuthError::Forbidden("Token is not for this endpoint"));
    }
    // A token speaks for the key that asked for it: revoking the key ends its tokens now, not
    // when they expire.
    if claims.sub != ANONYMOUS
        && state
            .joblog
            .read_state(|s| s.keys.get(&claims.sub).is_none())
    {
        return Err(AuthError::BadToken("Token's key was revoked"));
    }
    let app = match route {
        Route::Realtime { model }
        | Route::RunStream { model }
        | Route::Run { model }
        | Route::HttpOverWs { model } => Some(&model.app),
        _ => None,
    };
    if app.is_some_and(|a| !claims.allows_app(a)) {
        return Err(AuthError::Forbidden("Token does not allow this app"));
    }
    Ok(claims)
}

// ---------------------------------------------------------------------------------------------
// Small helpers
// ---------------------------------------------------------------------------------------------

pub fn hex(bytes: &[u8]) -> String {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    let mut s = String::with_capacity(bytes.len() * 2);
    for b in bytes {
        s.push(DIGITS[usize::from(b >> 4)] as char);
        s.push(DIGITS[usize::from(b & 0xf)] as char);
    }
    s
}

pub fn random_bytes<const N: usize>() -> [u8; N] {
    use rand::RngCore as _;
    let mut b = [0u8; N];
    rand::rngs::OsRng.fill_bytes(&mut b);
    b
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn keys_hash_and_verify() {
        let (key, secret) = new_key(KeyScope::Default, Some("ci".into()), 1);
        assert!(verify_secret(&key, &secret));
        assert!(!verify_secret(&key, "nope"));
        assert_eq!(key.secret_hash.len(), 32);
        assert!(!key
            .secret_hash
            .windows(secret.len().min(32))
            .any(|w| w == secret.as_bytes()));
        let k2 = key_from_parts("admin", "s3cret", KeyScope::Admin, None, 1);
        assert!(verify_secret(&k2, "s3cret"));
    }

    #[test]
    fn authorization_header_forms() {
        let h = |v: &str| {
            let mut m = HeaderMap::new();
            m.insert(header::AUTHORIZATION, v.parse().unwrap());
            m
        };
        assert_eq!(presented(&HeaderMap::new()), Presented::None);
        assert_eq!(
            presented(&h("Key kid:ksecret")),
            Presented::Key {
                key_id: "kid",
                secret: "ksecret"
            }
        );
        assert_eq!(
            presented(&h("key  kid:a:b ")),
            Presented::Key {
                key_id: "kid",
                secret: "a:b"
            }
        );
        assert_eq!(presented(&h("Key kid")), Presented::Malformed);
        assert_eq!(presented(&h("Key :x")), Presented::Malformed);
        assert_eq!(presented(&h("Basic abc")), Presented::Malformed);
        assert_eq!(presented(&h("Bearer t.o.k")), Presented::Bearer("t.o.k"));
    }

    #[test]
    fn tokens_round_trip_and_expire() {
        let k = ClusterKey::from_cluster_secret(&[3; 32]);
        let claims = TokenClaims {
            sub: "kid".into(),
            apps: vec!["echo".into()],
            iat: 10,
            exp: 130,
            audience: TokenAudience::Realtime,
        };
        let t = k.issue_token(&claims);
        assert_eq!(t.split('.').count(), 3);
        assert_eq!(k.check_token(&t, 100).unwrap(), claims);
        assert_eq!(
            k.check_token(&t, 130),
            Err(AuthError::BadToken("Token expired"))
        );
        let other = ClusterKey::from_cluster_secret(&[4; 32]);
        assert!(other.check_token(&t, 100).is_err());
        let mut tampered = t.clone();
        tampered.insert(tampered.find('.').unwrap() + 2, 'x');
        assert!(k.check_token(&tampered, 100).is_err());
        assert!(k.check_token("a.b", 100).is_err());
        // A token from before audiences existed is a realtime token.
        let header = URL_SAFE_NO_PAD.encode(r#"{"alg":"EdDSA","typ":"JWT"}"#);
        let body = URL_SAFE_NO_PAD.encode(r#"{"sub":"kid","apps":["echo"],"iat":10,"exp":130}"#);
        let input = format!("{header}.{body}");
        let old = format!(
            "{input}.{}",
            URL_SAFE_NO_PAD.encode(k.sign(input.as_bytes()))
        );
        assert_eq!(k.check_token(&old, 100).unwrap(), claims);
        let app = runmesh_proto::AppId::new("runmesh", "echo").unwrap();
        assert!(claims.allows_app(&app));
        assert!(!TokenClaims {
            apps: vec!["stream".into()],
            ..claims
        }
        .allows_app(&app));
        // Same secret, same key: every node derives it.
        assert_eq!(
            ClusterKey::from_cluster_secret(&[3; 32]).public_key(),
            k.public_key()
        );
        let jwks = k.jwks();
        assert_eq!(jwks["keys"][0]["crv"], "Ed25519");
        assert_eq!(
            URL_SAFE_NO_PAD
                .decode(jwks["keys"][0]["x"].as_str().unwrap())
                .unwrap(),
            k.public_key()
        );
    }

    #[test]
    fn rate_limiter_refills() {
        let r = RateLimiter::default();
        assert!(r.take("k", 0, 1.0, 2).is_ok());
        assert!(r.take("k", 0, 1.0, 2).is_ok());
        assert_eq!(r.take("k", 0, 1.0, 2), Err(1));
        assert!(r.take("other", 0, 1.0, 2).is_ok());
        assert!(r.take("k", 1_000, 1.0, 2).is_ok());
        assert!(r.take("k", 1_000, 1.0, 2).is_err());
        assert!(r.take("k", 5_000, 0.0, 2).is_ok());
    }
}
