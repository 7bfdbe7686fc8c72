//! Bad input against every endpoint: malformed JSON, wrong content types, bodies over the limit,
//! very long and odd model and request ids, and header junk. Every answer must be a fal-shaped 4xx
//! (JSON with `detail`, `x-fal-request-id`) or a success, never a 5xx, and the node keeps serving.

use std::net::SocketAddr;
use std::time::Duration;

use runmesh_tests::{Node, NodeOpts};
use serde_json::Value;
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};

const BODY_LIMIT: usize = 64 * 1024;
const IO_TIMEOUT: Duration = Duration::from_secs(10);
const RESPONSE_BYTES_MAX: usize = 4 * 1024 * 1024;

/// Header names and raw values.
type Headers = Vec<(&'static str, Vec<u8>)>;

struct Answer {
    status: u16,
    headers: Vec<(String, String)>,
    body: Vec<u8>,
}

impl Answer {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
    }
}

/// One HTTP/1.1 request from raw bytes (header values may be anything), read to the end.
async fn raw(
    addr: SocketAddr,
    method: &str,
    target: &[u8],
    headers: &[(&str, Vec<u8>)],
    body: &[u8],
) -> Result<Answer, String> {
    let mut req = Vec::new();
    req.extend_from_slice(method.as_bytes());
    req.push(b' ');
    req.extend_from_slice(target);
    req.extend_from_slice(b" HTTP/1.1\r\n");
    req.extend_from_slice(format!("Host: {addr}\r\nConnection: close\r\n").as_bytes());
    let mut has_len = false;
    for (k, v) in headers {
        has_len |=
            k.eq_ignore_ascii_case("content-length") || k.eq_ignore_ascii_case("transfer-encoding");
        req.extend_from_slice(k.as_bytes());
        req.extend_from_slice(b": ");
        req.extend_from_slice(v);
        req.extend_from_slice(b"\r\n");
    }
    if !has_len {
        req.extend_from_slice(format!("Content-Length: {}\r\n", body.len()).as_bytes());
    }
    req.extend_from_slice(b"\r\n");
    req.extend_from_slice(body);
    let io = async {
        let mut s = tokio::net::TcpStream::connect(addr)
            .await
            .map_err(|e| e.to_string())?;
        let _ = s.write_all(&req).await;
        let mut out = Vec::new();
        let mut chunk = [0u8; 16 * 1024];
        loop {
            match s.read(&mut chunk).await {
                Ok(0) => break,
                Ok(n) => {
                    out.extend_from_slice(&chunk[..n]);
                    if out.len() > RESPONSE_BYTES_MAX {
                        return Err("response too large".to_string());
                    }
                }
                Err(e) if out.is_empty() => return Err(e.to_string()),
                Err(_) => break,
            }
        }
        Ok::<_, String>(out)
    };
    let out = tokio::time::timeout(IO_TIMEOUT, io)
        .await
        .map_err(|_| "timed out".to_string())??;
    let end = out
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .ok_or_else(|| {
            format!(
                "no header end in {:?}",
                String::from_utf8_lossy(&out[..out.len().min(200)])
            )
        })?;
    let head = String::from_utf8_lossy(&out[..end]).to_string();
    let mut lines = head.lines();
    let status = lines
        .next()
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|s| s.parse().ok())
        .ok_or("no status")?;
    let headers = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(k, v)| (k.trim().to_ascii_lowercase(), v.trim().to_string()))
        .collect();
    Ok(Answer {
        status,
        headers,
        body: out[end + 4..].to_vec(),
    })
}

/// Dechunks a chunked body well enough to find JSON in it (errors are small).
fn body_text(a: &Answer) -> String {
    let text = String::from_utf8_lossy(&a.body).to_string();
    if a.header("transfer-encoding")
        .is_some_and(|t| t.contains("chunked"))
    {
        text.lines()
            .filter(|l| l.starts_with('{') || l.starts_with('[') || l.starts_with('"'))
            .collect()
    } else {
        text
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn bad_input_on_every_endpoint_gets_fal_shaped_4xx() {
    let node = Node::start(NodeOpts::default().slots(1).body_limit(BODY_LIMIT as u64));
    let addr = node.addr();
    let id = "80e732af-660e-45cd-bd63-580e4f2a94cc";
    let long_id = "f".repeat(5_000);
    let long_model = format!("runmesh/{}", "e".repeat(5_000));
    let endpoints: Vec<(&str, String)> = vec![
        ("POST", "/queue/runmesh/echo".into()),
        ("POST", "/queue/runmesh/sleep/sub".into()),
        ("POST", "/runmesh/echo".into()),
        ("GET", "/runmesh/echo".into()),
        ("POST", "/runmesh/stream/stream".into()),
        ("GET", "/runmesh/echo/realtime".into()),
        ("GET", format!("/queue/runmesh/echo/requests/{id}/status")),
        (
            "GET",
            format!("/queue/runmesh/echo/requests/{id}/status/stream"),
        ),
        ("GET", format!("/queue/runmesh/echo/requests/{id}")),
        ("PUT", format!("/queue/runmesh/echo/requests/{id}/cancel")),
        (
            "GET",
            format!("/queue/runmesh/echo/requests/{long_id}/status"),
        ),
        (
            "GET",
            "/queue/runmesh/echo/requests/%00%ff%2F..%2F/status".into(),
        ),
        (
            "PUT",
            format!("/queue/runmesh/echo/requests/{long_id}/cancel"),
        ),
        ("POST", format!("/queue/{long_model}")),
        ("POST", format!("/{long_model}")),
        ("POST", "/queue/r%C3%BCn/%F0%9F%98%80".into()),
        ("POST", "/tokens/".into()),
        ("GET", "/admin/keys".into()),
        ("POST", "/admin/keys".into()),
        ("DELETE", format!("/admin/keys/{long_id}")),
        ("GET", "/admin/webhooks/failed".into()),
        ("POST", format!("/admin/webhooks/{id}/retry")),
        ("GET", "/.well-known/jwks.json".into()),
        ("GET", "/healthz".into()),
        ("GET", "/admin/apps".into()),
        // The JS `proxyUrl` endpoint: what reaches it depends on `x-fal-target-url` (below).
        ("POST", "/api/fal/proxy".into()),
        ("GET", "/api/fal/proxy".into()),
    ];
    let huge = vec![b'x'; BODY_LIMIT + 1];
    let deep = format!("{}{}", "[".repeat(100_000), "]".repeat(100_000)).into_bytes();
    let json = || ("Content-Type", b"application/json".to_vec());
    let bodies: Vec<(&str, Headers, Vec<u8>)> = vec![
        ("malformed json", vec![json()], b"{\"a\":".to_vec()),
        ("json array", vec![json()], b"[1,2,3]".to_vec()),
        ("json string", vec![json()], b"\"s\"".to_vec()),
        ("non-utf8", vec![json()], b"\xff\xfe\xfd".to_vec()),
        ("deep nesting", vec![json()], deep),
        ("huge number", vec![json()], b"{\"n\": 1e999999}".to_vec()),
        (
            "ms as string",
            vec![json()],
            b"{\"ms\": \"soon\", \"n\": -1}".to_vec(),
        ),
        ("over the limit", vec![json()], huge.clone()),
        (
            "over the limit, declared",
            vec![json(), ("Content-Length", b"999999999".to_vec())],
            Vec::new(),
        ),
        (
            "over the limit, chunked",
            vec![json(), ("Transfer-Encoding", b"chunked".to_vec())],
            {
                let mut b = format!("{:x}\r\n", huge.len()).into_bytes();
                b.extend_from_slice(&huge);
                b.extend_from_slice(b"\r\n0\r\n\r\n");
                b
            },
        ),
        (
            "text/plain",
            vec![("Content-Type", b"text/plain".to_vec())],
            b"hello".to_vec(),
        ),
        (
            "form",
            vec![(
                "Content-Type",
                b"application/x-www-form-urlencoded".to_vec(),
            )],
            b"a=1&b=2".to_vec(),
        ),
        (
            "multipart",
            vec![("Content-Type", b"multipart/form-data; boundary=x".to_vec())],
            b"--x\r\n\r\n--x--".to_vec(),
        ),
        (
            "junk content type",
            vec![("Content-Type", b"a/b/c;;;=\"".to_vec())],
            b"{}".to_vec(),
        ),
        (
            "auth junk",
            vec![json(), ("Authorization", b"Key".to_vec())],
            b"{}".to_vec(),
        ),
        (
            "auth colon",
            vec![json(), ("Authorization", b"Key :".to_vec())],
            b"{}".to_vec(),
        ),
        (
            "auth bearer junk",
            vec![json(), ("Authorization", b"Bearer a.b.c".to_vec())],
            b"{}".to_vec(),
        ),
        (
            "auth non-utf8",
            vec![json(), ("Authorization", b"Key \xff\xfe:\x80".to_vec())],
            b"{}".to_vec(),
        ),
        (
            "auth long",
            vec![
                json(),
                (
                    "Authorization",
                    format!("Key {}:{}", "k".repeat(4000), "s".repeat(4000)).into_bytes(),
                ),
            ],
            b"{}".to_vec(),
        ),
        (
            "fal header junk",
            vec![
                json(),
                ("X-Fal-Request-Timeout", b"-inf".to_vec()),
                ("X-Fal-Queue-Priority", b"\xff\xff".to_vec()),
                ("X-Fal-Runner-Hint", "h".repeat(5000).into_bytes()),
                ("X-Fal-No-Retry", b"\x01".to_vec()),
            ],
            b"{}".to_vec(),
        ),
        (
            "idempotency junk",
            vec![json(), ("Idempotency-Key", "k".repeat(1000).into_bytes())],
            b"{}".to_vec(),
        ),
        (
            "idempotency non-utf8",
            vec![json(), ("Idempotency-Key", b"\xff".to_vec())],
            b"{}".to_vec(),
        ),
        (
            "websocket junk",
            vec![
                ("Upgrade", b"websocket".to_vec()),
                ("Connection", b"Upgrade".to_vec()),
                ("Sec-WebSocket-Version", b"99".to_vec()),
            ],
            Vec::new(),
        ),
        (
            "proxy target junk",
            vec![
                json(),
                ("x-fal-target-url", b"https://fal.run/\xff\x00/%zz".to_vec()),
            ],
            b"{}".to_vec(),
        ),
        (
            "proxy target odd",
            vec![
                json(),
                (
                    "x-fal-target-url",
                    b"https://queue.fal.run/runmesh/sleep/requests/%00%ff/status?logs=%ff&x"
                        .to_vec(),
                ),
            ],
            b"{\"ms\": \"soon\"}".to_vec(),
        ),
        (
            "proxy target to a model",
            vec![
                json(),
                (
                    "x-fal-target-url",
                    b"https://fal.run/runmesh/sleep?ms=x".to_vec(),
                ),
            ],
            b"{\"ms\": -1}".to_vec(),
        ),
        (
            "forwarded junk",
            vec![
                json(),
                ("X-Forwarded-Proto", b"javascript".to_vec()),
                ("Host", b"evil.example/../x".to_vec()),
            ],
            b"{}".to_vec(),
        ),
    ];
    let queries: [&[u8]; 3] = [
        b"",
        b"?fal_webhook=ftp%3A%2F%2Fx&fal_max_queue_length=-1&logs=maybe&fal_jwt_token=junk&max_buffering=999",
        b"?%%%=&&==&fal_webhook=",
    ];
    let mut count = 0usize;
    for (method, path) in &endpoints {
        for (what, headers, body) in &bodies {
            for q in queries {
                let mut target = path.as_bytes().to_vec();
                target.extend_from_slice(q);
                let shown = format!(
                    "{method} {:.60}{} [{what}]",
                    path,
                    String::from_utf8_lossy(q)
                );
                let a = match raw(addr, method, &target, headers, body).await {
                    Ok(a) => a,
                    // The server may close on a body it refuses before reading it all.
                    Err(e) if e.contains("reset") || e.contains("no header end") => continue,
                    Err(e) => panic!("{shown}: {e}"),
                };
                count += 1;
                assert!(
                    a.status < 500,
                    "{shown}: HTTP {} {}",
                    a.status,
                    body_text(&a)
                );
                // hyper's own protocol errors (400/414/431 without our headers) are not ours.
                if a.status >= 400 && a.header("x-fal-request-id").is_some() {
                    assert!(
                        a.header("content-type")
                            .is_some_and(|c| c.starts_with("application/json")),
                        "{shown}: HTTP {} content-type {:?}",
                        a.status,
                        a.header("content-type")
                    );
                    let text = body_text(&a);
                    let v: Value = serde_json::from_str(&text).unwrap_or_else(|e| {
                        panic!(
                            "{shown}: HTTP {} body not JSON ({e}): {text:.200}",
                            a.status
                        )
                    });
                    assert!(
                        v.get("detail").is_some() || v.get("status").is_some(),
                        "{shown}: HTTP {} body without detail: {text:.200}",
                        a.status
                    );
                } else if a.status >= 400 {
                    assert!(
                        [400, 413, 414, 431].contains(&a.status),
                        "{shown}: bare HTTP {}",
                        a.status
                    );
                }
            }
        }
    }
    assert!(count > 1000, "only {count} answers");
    // Still serving, and still correct.
    let api = node.api();
    assert_eq!(api.healthz().await.status, 200);
    let r = api
        .run_sync("runmesh/echo", &serde_json::json!({"still": "here"}))
        .await;
    assert_eq!(r.json(), serde_json::json!({"still": "here"}));
}
