//! Keys, scopes, rate limits, idempotency, webhooks and HTTPS on a real node (issue 5), below the
//! client libraries: exact status codes, bodies and headers.

use std::time::Duration;

use reqwest::Method;
use runmesh_tests::{free_port, parse_submitted, runmesh_bin, Api, Node, NodeOpts, Resp};
use serde_json::{json, Value};
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};

const WAIT: Duration = Duration::from_secs(20);

fn node_with(args: &[&str]) -> Node {
    Node::start(NodeOpts {
        slots: Some(2),
        extra_args: args.iter().map(|s| s.to_string()).collect(),
        ..NodeOpts::default()
    })
}

fn admin_key(node: &Node) -> String {
    let path = node.data_dir().join("admin.key");
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt as _;
        let mode = std::fs::metadata(&path)
            .expect("admin.key exists")
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600, "admin.key must be private");
    }
    node.admin_key()
}

async fn as_key(api: &Api, key: &str, method: Method, path: &str, body: Option<Value>) -> Resp {
    let auth = format!("Key {key}");
    let mut headers = vec![("Authorization", auth.as_str())];
    if body.is_some() {
        headers.push(("Content-Type", "application/json"));
    }
    api.send(
        method,
        path,
        &headers,
        body.map(|b| b.to_string().into_bytes()),
    )
    .await
}

/// POSTs `body` to `path` with `token` as its `fal_jwt_token` query parameter.
async fn with_token(api: &Api, token: &str, path: &str, body: &Value) -> Resp {
    api.post_json(&format!("{path}?fal_jwt_token={token}"), body, &[])
        .await
}

async fn create_key(api: &Api, admin: &str, scope: &str) -> String {
    let r = as_key(
        api,
        admin,
        Method::POST,
        "/admin/keys",
        Some(json!({"scope": scope, "name": "t"})),
    )
    .await;
    assert_eq!(r.status, 201, "{}", r.text());
    let v = r.json();
    assert_eq!(v["scope"], scope);
    v["key"].as_str().expect("key").to_string()
}

#[tokio::test(flavor = "multi_thread")]
async fn keys_scopes_and_fal_auth_errors() {
    let node = node_with(&["--require-auth"]);
    let api = node.api();
    let admin = admin_key(&node);

    // Public: health and the JWKS.
    assert_eq!(api.healthz().await.status, 200);
    let jwks = api.get("/.well-known/jwks.json").await;
    assert_eq!(jwks.status, 200);
    assert_eq!(jwks.json()["keys"][0]["kty"], "OKP");

    // No key, a wrong key, a malformed key: fal's 401 shapes.
    let r = api.submit_raw("runmesh/echo", &json!({}), &[]).await;
    assert_eq!(r.status, 401, "{}", r.text());
    r.assert_fal_json("no key");
    let r = api
        .submit_raw(
            "runmesh/echo",
            &json!({}),
            &[("Authorization", "Key nobody:nothing")],
        )
        .await;
    assert_eq!(r.status, 401);
    assert_eq!(
        r.json(),
        json!({"detail": "No user found for Key ID and Secret"})
    );
    let r = api
        .submit_raw(
            "runmesh/echo",
            &json!({}),
            &[("Authorization", "Bearer some.jwt.token")],
        )
        .await;
    assert_eq!(r.status, 401, "Bearer is no key: {}", r.text());
    let r = api
        .submit_raw(
            "runmesh/echo",
            &json!({}),
            &[("Authorization", "Key no-colon")],
        )
        .await;
    assert_eq!(r.status, 401);
    assert_eq!(
        r.json()["detail"],
        "Invalid Key Authorization header format. Expected '<key_id>:<key_secret>'."
    );

    // A DEFAULT key runs models but is refused admin endpoints with 403.
    let user = create_key(&api, &admin, "DEFAULT").await;
    let other = create_key(&api, &admin, "DEFAULT").await;
    let r = as_key(&api, &user, Method::GET, "/admin/keys", None).await;
    assert_eq!(r.status, 403, "{}", r.text());
    r.assert_fal_json("403");
    let r = as_key(
        &api,
        &user,
        Method::POST,
        "/queue/runmesh/echo",
        Some(json!({"a": 1})),
    )
    .await;
    assert_eq!(r.status, 200, "{}", r.text());
    let sub = parse_submitted(&r.json()).expect("submit shape");
    let path = format!("/queue/runmesh/echo/requests/{}", sub.request_id);
    let mut done = false;
    for _ in 0..400 {
        let s = as_key(&api, &user, Method::GET, &format!("{path}/status"), None).await;
        if s.json()["status"] == "COMPLETED" {
            done = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(done, "job did not complete");
    assert_eq!(
        as_key(&api, &user, Method::GET, &path, None).await.json(),
        json!({"a": 1})
    );
    // Another key does not see it; the admin does.
    let r = as_key(&api, &other, Method::GET, &path, None).await;
    assert_eq!(r.status, 404, "{}", r.text());
    assert_eq!(
        as_key(&api, &admin, Method::GET, &path, None).await.status,
        200
    );

    // The list shows ids and scopes, never secrets; `runmesh keys list` reads the same.
    let list = as_key(&api, &admin, Method::GET, "/admin/keys", None)
        .await
        .json();
    let ids: Vec<&str> = list["keys"]
        .as_array()
        .expect("keys")
        .iter()
        .filter_map(|k| k["key_id"].as_str())
        .collect();
    let user_id = user.split(':').next().expect("id");
    assert!(ids.contains(&user_id), "{list}");
    assert!(!list
        .to_string()
        .contains(user.split(':').nth(1).expect("secret")));
    let out = std::process::Command::new(runmesh_bin())
        .args(["keys", "list", "--http"])
        .arg(&node.base)
        .arg("--data-dir")
        .arg(node.data_dir())
        .env_remove("RUNMESH_ADMIN_KEY")
        .output()
        .expect("runmesh keys list");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(String::from_utf8_lossy(&out.stdout).contains(user_id));

    // Revoked: the key stops working at once.
    let out = std::process::Command::new(runmesh_bin())
        .args(["keys", "revoke", user_id, "--http"])
        .arg(&node.base)
        .arg("--data-dir")
        .arg(node.data_dir())
        .env_remove("RUNMESH_ADMIN_KEY")
        .output()
        .expect("runmesh keys revoke");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let r = as_key(&api, &user, Method::POST, "/runmesh/echo", Some(json!({}))).await;
    assert_eq!(r.status, 401, "{}", r.text());
    let r = as_key(
        &api,
        &admin,
        Method::DELETE,
        &format!("/admin/keys/{user_id}"),
        None,
    )
    .await;
    assert_eq!(r.status, 404);

    // Tokens: a JSON string; accepted as fal_jwt_token for its app only.
    let r = as_key(
        &api,
        &other,
        Method::POST,
        "/tokens/",
        Some(json!({"allowed_apps": ["echo"], "token_expiration": 120})),
    )
    .await;
    assert_eq!(r.status, 201, "{}", r.text());
    let token = r.json().as_str().expect("token string").to_string();
    let r = with_token(&api, &token, "/runmesh/echo", &json!({"t": 1})).await;
    assert_eq!(r.status, 200, "{}", r.text());
    let r = with_token(&api, &token, "/runmesh/fail", &json!({})).await;
    assert_eq!(r.status, 403, "{}", r.text());
    let r = with_token(&api, "not.a.token", "/runmesh/echo", &json!({})).await;
    assert_eq!(r.status, 401);
    // A token is no key for the queue.
    let r = with_token(&api, &token, "/queue/runmesh/echo", &json!({})).await;
    assert_eq!(r.status, 401);

    // Revoking the key that asked for a token ends the token at once, in both of its forms.
    let bearer = format!("Bearer {token}");
    let as_bearer = [("Authorization", bearer.as_str())];
    let r = api.post_json("/runmesh/echo", &json!({}), &as_bearer).await;
    assert_eq!(
        r.status,
        200,
        "Bearer token before the revoke: {}",
        r.text()
    );
    let other_id = other.split(':').next().expect("id");
    let r = as_key(
        &api,
        &admin,
        Method::DELETE,
        &format!("/admin/keys/{other_id}"),
        None,
    )
    .await;
    assert!(
        (200..300).contains(&r.status),
        "revoke: {} {}",
        r.status,
        r.text()
    );
    let r = with_token(&api, &token, "/runmesh/echo", &json!({})).await;
    assert_eq!(
        r.status,
        401,
        "fal_jwt_token of a revoked key: {}",
        r.text()
    );
    r.assert_fal_json("revoked token");
    let r = api.post_json("/runmesh/echo", &json!({}), &as_bearer).await;
    assert_eq!(r.status, 401, "Bearer token of a revoked key: {}", r.text());
}

/// POSTs `body` to `path` with `Authorization: <authorization>`.
async fn upload_as(api: &Api, authorization: &str, path: &str, body: &[u8]) -> Resp {
    api.send(
        Method::POST,
        path,
        &[
            ("Authorization", authorization),
            ("content-type", "text/plain"),
        ],
        Some(body.to_vec()),
    )
    .await
}

#[tokio::test(flavor = "multi_thread")]
async fn storage_tokens_are_upload_tokens_not_the_callers_key() {
    let node = node_with(&["--require-auth"]);
    let api = node.api();
    let admin = admin_key(&node);
    let user = create_key(&api, &admin, "DEFAULT").await;
    let (user_id, user_secret) = user.split_once(':').expect("key_id:secret");

    let r = as_key(
        &api,
        &user,
        Method::POST,
        "/storage/auth/token?storage_type=fal-cdn-v3",
        Some(json!({})),
    )
    .await;
    assert_eq!(r.status, 200, "{}", r.text());
    let v = r.json();
    let token = v["token"].as_str().expect("token").to_string();
    assert_eq!(v["token_type"], "Bearer", "{v}");
    assert!(
        !token.contains(user_secret) && !token.contains(user_id),
        "the key's secret is handed out: {v}"
    );
    assert!(v["base_url"]
        .as_str()
        .is_some_and(|b| b.starts_with("http")));
    let bearer = format!("Bearer {token}");

    // What the Python client does with it: `<token_type> <token>` on `<base_url>/files/upload`.
    let r = upload_as(&api, &bearer, "/files/upload", b"hello").await;
    assert_eq!(r.status, 200, "{}", r.text());
    let url = r.json()["url"].as_str().expect("url").to_string();
    assert_eq!(
        api.get(&url[url.find("/files/").expect("path")..])
            .await
            .body,
        b"hello"
    );

    // Uploads only: no queue, no run, no key management.
    let r = api
        .submit_raw(
            "runmesh/echo",
            &json!({}),
            &[("Authorization", bearer.as_str())],
        )
        .await;
    assert_eq!(
        r.status,
        401,
        "an upload token submitted a job: {}",
        r.text()
    );
    let r = api
        .post_json(
            "/runmesh/echo",
            &json!({}),
            &[("Authorization", bearer.as_str())],
        )
        .await;
    assert_eq!(r.status, 403, "an upload token ran an app: {}", r.text());
    let r = with_token(&api, &token, "/runmesh/echo", &json!({})).await;
    assert_eq!(r.status, 403, "{}", r.text());
    // And a realtime token uploads nothing.
    let r = as_key(
        &api,
        &user,
        Method::POST,
        "/tokens/",
        Some(json!({"allowed_apps": ["echo"]})),
    )
    .await;
    assert_eq!(r.status, 201, "{}", r.text());
    let realtime = format!("Bearer {}", r.json().as_str().expect("token"));
    let r = upload_as(&api, &realtime, "/files/upload", b"x").await;
    assert_eq!(r.status, 403, "a realtime token uploaded: {}", r.text());

    // The cluster view names every node's addresses: ADMIN only, also for `runmesh status`.
    let r = as_key(&api, &user, Method::GET, "/admin/cluster", None).await;
    assert_eq!(
        r.status,
        403,
        "a DEFAULT key read the cluster view: {}",
        r.text()
    );
    r.assert_fal_json("cluster view as DEFAULT");
    let r = as_key(&api, &admin, Method::GET, "/admin/cluster", None).await;
    assert_eq!(r.status, 200, "{}", r.text());
    let status = |args: &[&str]| {
        std::process::Command::new(runmesh_bin())
            .args(["status", "--http", &node.addr().to_string()])
            .args(args)
            .env_remove("FAL_KEY")
            .env_remove("RUNMESH_DATA_DIR")
            .output()
            .expect("runmesh status")
    };
    let out = status(&["--key", &user]);
    assert!(!out.status.success(), "runmesh status with a DEFAULT key");
    assert!(String::from_utf8_lossy(&out.stderr).contains("403"));
    let data_dir = node.data_dir().display().to_string();
    let out = status(&["--data-dir", &data_dir]);
    assert!(
        out.status.success(),
        "runmesh status with the founding node's data dir: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(String::from_utf8_lossy(&out.stdout).contains("ROLE"));

    // The token speaks for the key: revoking the key ends it.
    let r = as_key(
        &api,
        &admin,
        Method::DELETE,
        &format!("/admin/keys/{user_id}"),
        None,
    )
    .await;
    assert!((200..300).contains(&r.status), "revoke: {}", r.text());
    let r = upload_as(&api, &bearer, "/files/upload", b"late").await;
    assert_eq!(r.status, 401, "upload token of a revoked key: {}", r.text());
}

#[tokio::test(flavor = "multi_thread")]
async fn dev_is_anonymous_but_admin_needs_the_admin_key() {
    let node = node_with(&[]);
    let api = node.api();
    assert_eq!(
        api.run_sync("runmesh/echo", &json!({"x": 1})).await.status,
        200
    );
    // An unknown key is ignored on an open node (fal clients always send one).
    let r = api
        .post_json("/runmesh/echo", &json!({}), &[("Authorization", "Key a:b")])
        .await;
    assert_eq!(r.status, 200);
    assert_eq!(api.get("/admin/keys").await.status, 401);
    let admin = admin_key(&node);
    assert_eq!(
        as_key(&api, &admin, Method::GET, "/admin/keys", None)
            .await
            .status,
        200
    );
    // GET runs: the query string is the input (strings), `fal_*` parameters left out.
    let r = api
        .get("/runmesh/echo?x=1&name=a%20b&fal_max_queue_length=100")
        .await;
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.json(), json!({"x": "1", "name": "a b"}));
}

#[tokio::test(flavor = "multi_thread")]
async fn rate_limits_answer_429_with_retry_after() {
    let node = node_with(&["--require-auth", "--rate-limit", "1", "--rate-burst", "3"]);
    let api = node.api();
    let admin = admin_key(&node);
    let key = create_key(&api, &admin, "DEFAULT").await;
    let mut statuses = Vec::new();
    let mut limited = None;
    for _ in 0..6 {
        let r = as_key(&api, &key, Method::GET, "/admin/apps", None).await;
        statuses.push(r.status);
        if r.status == 429 {
            limited = Some(r);
        }
    }
    let r = limited.unwrap_or_else(|| panic!("no 429 in {statuses:?}"));
    r.assert_fal_json("429");
    let retry: u64 = r
        .header("retry-after")
        .and_then(|v| v.parse().ok())
        .expect("Retry-After seconds");
    assert!((1..=5).contains(&retry), "{retry}");
    // Buckets are per key: the admin key is not limited by the other one's use.
    assert_eq!(
        as_key(&api, &admin, Method::GET, "/admin/keys", None)
            .await
            .status,
        200
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn idempotency_key_returns_the_first_submission_even_after_a_crash() {
    let mut node = node_with(&[]);
    let api = node.api();
    let h = [("Idempotency-Key", "order-42")];
    let first = api.submit_raw("runmesh/echo", &json!({"n": 1}), &h).await;
    assert_eq!(first.status, 200, "{}", first.text());
    let first = parse_submitted(&first.json()).expect("shape");
    let again = api.submit_raw("runmesh/echo", &json!({"n": 2}), &h).await;
    assert_eq!(again.status, 200);
    let again_body = again.json();
    assert_eq!(again_body["request_id"], first.request_id.as_str());
    assert!(again_body["status_url"].is_string(), "{again_body}");
    let other = api
        .submit_raw(
            "runmesh/echo",
            &json!({}),
            &[("Idempotency-Key", "order-43")],
        )
        .await;
    assert_ne!(other.json()["request_id"], first.request_id.as_str());
    let bad = api
        .submit_raw("runmesh/echo", &json!({}), &[("Idempotency-Key", "")])
        .await;
    assert_eq!(bad.status, 422, "{}", bad.text());

    // The claim is in the replicated state: a crash does not forget it.
    node.restart_same_dir();
    let api = node.api();
    let after = api.submit_raw("runmesh/echo", &json!({"n": 3}), &h).await;
    assert_eq!(after.status, 200, "{}", after.text());
    assert_eq!(after.json()["request_id"], first.request_id.as_str());
    assert_eq!(
        api.result("runmesh/echo", &first.request_id).await.json(),
        json!({"n": 1})
    );
}

/// A minimal webhook receiver: answers 200 and keeps the bodies.
async fn receiver(port: u16) -> tokio::sync::mpsc::Receiver<Vec<u8>> {
    let listener = tokio::net::TcpListener::bind(("127.0.0.1", port))
        .await
        .expect("bind receiver");
    let (tx, rx) = tokio::sync::mpsc::channel(16);
    tokio::spawn(async move {
        while let Ok((mut s, _)) = listener.accept().await {
            let tx = tx.clone();
            tokio::spawn(async move {
                let mut buf = Vec::new();
                let mut chunk = [0u8; 4096];
                // Headers, then Content-Length bytes of body.
                let body = loop {
                    let Ok(n) = s.read(&mut chunk).await else {
                        return;
                    };
                    if n == 0 {
                        return;
                    }
                    buf.extend_from_slice(&chunk[..n]);
                    let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") else {
                        continue;
                    };
                    let head = String::from_utf8_lossy(&buf[..end]).to_ascii_lowercase();
                    let len: usize = head
                        .lines()
                        .find_map(|l| l.strip_prefix("content-length:"))
                        .and_then(|v| v.trim().parse().ok())
                        .unwrap_or(0);
                    if buf.len() >= end + 4 + len {
                        break buf[end + 4..end + 4 + len].to_vec();
                    }
                };
                let _ = s
                    .write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 0\r\nconnection: close\r\n\r\n")
                    .await;
                let _ = tx.send(body).await;
            });
        }
    });
    rx
}

#[tokio::test(flavor = "multi_thread")]
async fn webhooks_retry_give_up_and_survive_a_crash() {
    let mut node = node_with(&["--webhook-attempts", "2", "--webhook-backoff-ms", "100"]);
    let api = node.api();
    let admin = admin_key(&node);

    // Nobody listens: two attempts, then the delivery is listed as failed.
    let dead = free_port();
    let r = api
        .post_json(
            &format!("/queue/runmesh/echo?fal_webhook=http://127.0.0.1:{dead}/hook"),
            &json!({}),
            &[],
        )
        .await;
    let failed_id = parse_submitted(&r.json()).expect("shape").request_id;
    let listed = api.wait_failed_webhooks(&admin).await;
    let entry = &listed["failed"][0];
    assert_eq!(entry["request_id"], failed_id.as_str(), "{listed}");
    assert_eq!(entry["attempts"], 2, "{listed}");
    assert!(entry["last_error"].is_string());

    // Pending when the node dies: delivered after the restart (tracked in the replicated log).
    let port = free_port();
    let mut node2 = node_with(&["--webhook-attempts", "50", "--webhook-backoff-ms", "1500"]);
    let api2 = node2.api();
    let r = api2
        .post_json(
            &format!("/queue/runmesh/echo?fal_webhook=http://127.0.0.1:{port}/hook"),
            &json!({"crash": true}),
            &[],
        )
        .await;
    let id = parse_submitted(&r.json()).expect("shape").request_id;
    api2.wait_completed("runmesh/echo", &id, WAIT).await;
    // Let the first attempt fail (nothing listens yet), then crash.
    tokio::time::sleep(Duration::from_millis(300)).await;
    node2.kill9();
    let mut rx = receiver(port).await;
    node2.restart_same_dir();
    let body = tokio::time::timeout(Duration::from_secs(30), rx.recv())
        .await
        .expect("webhook after restart")
        .expect("body");
    let v: Value = serde_json::from_slice(&body).expect("json body");
    assert_eq!(v["request_id"], id.as_str());
    assert_eq!(v["payload"], json!({"crash": true}));
    node.kill9();

    // The failed one can be retried by an admin: it is owed again (and fails again here).
    let _ = failed_id;
}

#[tokio::test(flavor = "multi_thread")]
async fn operator_certificate_and_retryable_header() {
    // One node's dev certificate serves as an operator's certificate for another.
    let dev = node_with(&["--tls"]);
    let cert = dev.data_dir().join("tls/cert.pem");
    let key = dev.data_dir().join("tls/key.pem");
    let node = Node::start(NodeOpts {
        extra_args: vec![
            "--tls-cert".into(),
            cert.display().to_string(),
            "--tls-key".into(),
            key.display().to_string(),
        ],
        ..NodeOpts::default()
    });
    assert!(node.base.starts_with("https://"), "{}", node.base);
    let pem = std::fs::read(&cert).expect("cert");
    let client = reqwest::Client::builder()
        .add_root_certificate(reqwest::Certificate::from_pem(&pem).expect("pem"))
        .no_proxy()
        .build()
        .expect("client");
    let url = format!("https://localhost:{}/runmesh/fail", node.port());
    let r = client
        .post(&url)
        .header("content-type", "application/json")
        .body(r#"{"message":"nope"}"#)
        .send()
        .await
        .expect("https request");
    assert_eq!(r.status().as_u16(), 500);
    assert_eq!(
        r.headers()
            .get("x-fal-retryable")
            .and_then(|v| v.to_str().ok()),
        Some("false")
    );
    // Plain HTTP to the TLS port is refused, not served.
    let plain = reqwest::Client::new()
        .get(format!("http://127.0.0.1:{}/healthz", node.port()))
        .timeout(Duration::from_secs(5))
        .send()
        .await;
    assert!(plain.is_err() || !plain.expect("resp").status().is_success());
}
