//! API keys from the node's side: the admin key a cluster starts with (`<data-dir>/admin.key`),
//! the cluster secret the webhook/token signing key derives from, and `runmesh keys
//! create|list|revoke`, which talks to a node's `/admin/keys` with the admin key.

use std::path::{Path, PathBuf};
use std::time::Duration;

use runmesh_gateway_node::auth::{key_from_parts, new_key, random_bytes, split_key};
use runmesh_proto::auth::{KeyCommand, KeyResult, KeyScope};
use runmesh_proto::{Command, CommandOutput};
use runmesh_raft::JobLog;
use serde_json::Value;

/// File name of the admin key under the data dir.
pub const ADMIN_KEY_FILE: &str = "admin.key";

#[derive(Debug, thiserror::Error)]
pub enum KeysError {
    #[error("{0}")]
    Io(String),
    #[error("the admin key must look like <key_id>:<key_secret>")]
    BadKey,
    #[error("could not record it in the cluster: {0}")]
    Raft(String),
    #[error("{0}")]
    Http(String),
}

pub fn admin_key_path(data_dir: &Path) -> PathBuf {
    data_dir.join(ADMIN_KEY_FILE)
}

async fn propose(joblog: &JobLog, cmd: KeyCommand) -> Result<KeyResult, KeysError> {
    match joblog.propose_command(Command::Keys(cmd)).await {
        Ok(CommandOutput::Keys(r)) => Ok(r),
        Ok(other) => Err(KeysError::Raft(format!("unexpected output {other:?}"))),
        Err(e) => Err(KeysError::Raft(e.to_string())),
    }
}

/// What a node does with keys at start.
///
/// - A node that starts a cluster commits the cluster secret (32 random bytes; the first one
///   committed wins, so this is safe to repeat).
/// - An admin key given by the operator (`--admin-key`, `RUNMESH_ADMIN_KEY`) is committed if the
///   cluster does not know its id yet.
/// - Otherwise a node that starts a cluster uses `<data-dir>/admin.key`, generating it (0600)
///   on first start, and commits it. Joining nodes get every key through replication.
///
/// Returns the admin key file when one was written or used.
pub async fn bootstrap(
    joblog: &JobLog,
    data_dir: &Path,
    configured: Option<&str>,
    starts_cluster: bool,
) -> Result<Option<PathBuf>, KeysError> {
    let now_ms = joblog.now_ms();
    if starts_cluster && joblog.read_state(|s| s.keys.cluster_secret().is_none()) {
        let secret = random_bytes::<32>().to_vec();
        propose(joblog, KeyCommand::InitClusterSecret { secret }).await?;
    }
    if let Some(key) = configured {
        let (id, secret) = split_key(key).ok_or(KeysError::BadKey)?;
        if joblog.read_state(|s| s.keys.get(id).is_none()) {
            let key = key_from_parts(
                id,
                secret,
                KeyScope::Admin,
                Some("admin (configured)".into()),
                now_ms,
            );
            propose(joblog, KeyCommand::Create { key }).await?;
            tracing::info!(key_id = id, "configured admin key recorded");
        }
        return Ok(None);
    }
    if !starts_cluster {
        return Ok(None);
    }
    let path = admin_key_path(data_dir);
    let text = match std::fs::read_to_string(&path) {
        Ok(t) => Some(t),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => None,
        Err(e) => return Err(KeysError::Io(format!("{}: {e}", path.display()))),
    };
    let (id, secret) = match text.as_deref().and_then(|t| split_key(t.trim())) {
        Some((id, secret)) => (id.to_string(), secret.to_string()),
        None => {
            let (key, secret) = new_key(KeyScope::Admin, Some("admin".into()), now_ms);
            let line = format!("{}:{secret}\n", key.key_id);
            // Written before it is committed: a crash in between commits it on the next start.
            crate::tls::write_private(&path, line.as_bytes())
                .map_err(|e| KeysError::Io(e.to_string()))?;
            tracing::info!(path = %path.display(), "wrote a new admin key");
            (key.key_id, secret)
        }
    };
    if joblog.read_state(|s| s.keys.get(&id).is_none()) {
        let key = key_from_parts(&id, &secret, KeyScope::Admin, Some("admin".into()), now_ms);
        propose(joblog, KeyCommand::Create { key }).await?;
    }
    Ok(Some(path))
}

/// The admin key a `runmesh keys` command uses: the flag/env value, else `<data-dir>/admin.key`.
pub fn resolve_admin_key(given: Option<&str>, data_dir: &Path) -> Result<String, KeysError> {
    if let Some(k) = given {
        return Ok(k.trim().to_string());
    }
    let path = admin_key_path(data_dir);
    std::fs::read_to_string(&path)
        .map(|t| t.trim().to_string())
        .map_err(|e| {
            KeysError::Io(format!(
                "no admin key given (--admin-key or RUNMESH_ADMIN_KEY) and {} unreadable: {e}",
                path.display()
            ))
        })
}

/// A node's base URL from `--http`: `host:port` (http) or a full `http(s)://` URL.
pub fn base_url(http: &str) -> String {
    let h = http.trim().trim_end_matches('/');
    if h.starts_with("http://") || h.starts_with("https://") {
        h.to_string()
    } else {
        format!("http://{h}")
    }
}

/// An HTTP client that trusts `ca` (PEM) in addition to the system roots.
pub fn client(ca: Option<&Path>) -> Result<reqwest::Client, KeysError> {
    let mut b = reqwest::Client::builder()
        .timeout(Duration::from_secs(30))
        .no_proxy();
    if let Some(ca) = ca {
        let pem = std::fs::read(ca).map_err(|e| KeysError::Io(format!("{}: {e}", ca.display())))?;
        let cert = reqwest::Certificate::from_pem(&pem)
            .map_err(|e| KeysError::Io(format!("{}: {e}", ca.display())))?;
        b = b.add_root_certificate(cert);
    }
    b.build().map_err(|e| KeysError::Http(e.to_string()))
}

/// One admin call; the JSON answer, or the node's `detail` as the error.
pub async fn admin_call(
    client: &reqwest::Client,
    base: &str,
    admin_key: &str,
    method: reqwest::Method,
    path: &str,
    body: Option<Value>,
) -> Result<Value, KeysError> {
    let mut req = client
        .request(method, format!("{base}{path}"))
        .header("authorization", format!("Key {admin_key}"));
    if let Some(b) = body {
        req = req
            .header("content-type", "application/json")
            .body(b.to_string());
    }
    let resp = req
        .send()
        .await
        .map_err(|e| KeysError::Http(format!("{base}: {e}")))?;
    let status = resp.status();
    let text = resp
        .text()
        .await
        .map_err(|e| KeysError::Http(e.to_string()))?;
    let v: Value = serde_json::from_str(&text).unwrap_or(Value::String(text));
    if status.is_success() {
        Ok(v)
    } else {
        let detail = v.get("detail").map_or_else(
            || v.to_string(),
            |d| match d {
                Value::String(s) => s.clone(),
                other => other.to_string(),
            },
        );
        Err(KeysError::Http(format!(
            "HTTP {}: {detail}",
            status.as_u16()
        )))
    }
}

/// `runmesh keys ...`: manage a node's API keys with its admin key.
#[derive(Debug, clap::Args)]
pub struct KeysArgs {
    #[command(subcommand)]
    pub action: KeysAction,
    #[command(flatten)]
    pub conn: AdminConn,
}

/// How an admin command reaches a node: its address and the admin key.
#[derive(Debug, clap::Args)]
pub struct AdminConn {
    /// The node: `host:port` (plain HTTP) or a base URL (`https://localhost:8443`).
    #[arg(
        long,
        value_name = "ADDR",
        env = "RUNMESH_HTTP",
        default_value = "127.0.0.1:8080",
        global = true
    )]
    pub http: String,
    /// The admin key (`<key_id>:<key_secret>`) [default: the contents of <data-dir>/admin.key].
    #[arg(
        long,
        value_name = "KEY",
        env = "RUNMESH_ADMIN_KEY",
        hide_env_values = true,
        global = true
    )]
    pub admin_key: Option<String>,
    /// Data dir whose admin.key (and tls/cert.pem) to use.
    #[arg(
        long,
        value_name = "DIR",
        env = "RUNMESH_DATA_DIR",
        default_value = "./runmesh-data",
        global = true
    )]
    pub data_dir: PathBuf,
    /// CA certificate (PEM) to trust for an https node [default: <data-dir>/tls/cert.pem if present].
    #[arg(long, value_name = "FILE", global = true)]
    pub ca_cert: Option<PathBuf>,
}

/// A node's admin API, ready to call.
pub struct AdminApi {
    client: reqwest::Client,
    base: String,
    key: String,
}

impl AdminConn {
    pub fn connect(&self) -> Result<AdminApi, KeysError> {
        let key = resolve_admin_key(self.admin_key.as_deref(), &self.data_dir)?;
        let base = base_url(&self.http);
        let ca = self.ca_cert.clone().or_else(|| {
            let (cert, _) = crate::tls::dev_cert_paths(&self.data_dir);
            (base.starts_with("https://") && cert.exists()).then_some(cert)
        });
        Ok(AdminApi {
            client: client(ca.as_deref())?,
            base,
            key,
        })
    }
}

impl AdminApi {
    pub async fn call(
        &self,
        method: reqwest::Method,
        path: &str,
        body: Option<Value>,
    ) -> Result<Value, KeysError> {
        admin_call(&self.client, &self.base, &self.key, method, path, body).await
    }

    /// A GET whose answer is not JSON (a backup file): large, so it may take up to 10 minutes.
    pub async fn get_bytes(&self, path: &str) -> Result<Vec<u8>, KeysError> {
        let resp = self
            .client
            .get(format!("{}{path}", self.base))
            .timeout(Duration::from_secs(600))
            .header("authorization", format!("Key {}", self.key))
            .send()
            .await
            .map_err(|e| KeysError::Http(format!("{}: {e}", self.base)))?;
        let status = resp.status();
        let bytes = resp
            .bytes()
            .await
            .map_err(|e| KeysError::Http(e.to_string()))?;
        if !status.is_success() {
            return Err(KeysError::Http(format!(
                "HTTP {}: {}",
                status.as_u16(),
                String::from_utf8_lossy(&bytes)
            )));
        }
        Ok(bytes.to_vec())
    }
}

#[derive(Debug, clap::Subcommand)]
pub enum KeysAction {
    /// Create a key; prints `<key_id>:<key_secret>` (the secret is shown only now).
    Create {
        /// DEFAULT (run models) or ADMIN (also manage keys).
        #[arg(long, default_value = "DEFAULT")]
        scope: String,
        /// A label for the key.
        #[arg(long)]
        name: Option<String>,
        /// Print the node's whole JSON answer instead of the key.
        #[arg(long)]
        json: bool,
    },
    /// List keys (ids, scopes, names; never secrets).
    List {
        #[arg(long)]
        json: bool,
    },
    /// Revoke a key: requests with it fail from now on.
    Revoke {
        /// The key id (the part before the colon).
        key_id: String,
    },
}

/// Runs a `runmesh keys` command; prints its result on stdout.
pub async fn run(args: KeysArgs) -> Result<(), KeysError> {
    let api = args.conn.connect()?;
    match args.action {
        KeysAction::Create { scope, name, json } => {
            let scope = KeyScope::parse(&scope).ok_or_else(|| {
                KeysError::Http(format!("unknown scope {scope:?} (DEFAULT or ADMIN)"))
            })?;
            let body = serde_json::json!({ "scope": scope.as_str(), "name": name });
            let v = api
                .call(reqwest::Method::POST, "/admin/keys", Some(body))
                .await?;
            if json {
                println!("{v}");
            } else {
                println!("{}", v["key"].as_str().unwrap_or_default());
            }
        }
        KeysAction::List { json } => {
            let v = api.call(reqwest::Method::GET, "/admin/keys", None).await?;
            if json {
                println!("{v}");
            } else {
                println!("{:<38} {:<8} {:<28} NAME", "KEY_ID", "SCOPE", "CREATED");
                for k in v["keys"].as_array().into_iter().flatten() {
                    println!(
                        "{:<38} {:<8} {:<28} {}",
                        k["key_id"].as_str().unwrap_or_default(),
                        k["scope"].as_str().unwrap_or_default(),
                        k["created_at"].as_str().unwrap_or_default(),
                        k["name"].as_str().unwrap_or_default()
                    );
                }
            }
        }
        KeysAction::Revoke { key_id } => {
            let path = format!("/admin/keys/{key_id}");
            api.call(reqwest::Method::DELETE, &path, None).await?;
            println!("revoked {key_id}");
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn base_urls() {
        assert_eq!(base_url("127.0.0.1:8080"), "http://127.0.0.1:8080");
        assert_eq!(
            base_url("https://localhost:8443/"),
            "https://localhost:8443"
        );
    }
}
