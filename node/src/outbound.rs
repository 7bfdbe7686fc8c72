//! The HTTP client for every request a node makes on a caller's behalf (webhook deliveries, input
//! URLs an app fetches). It enforces the node's [`FetchPolicy`] at each step a request can go
//! somewhere else than the caller's URL seemed to say: the URL itself, each address its host name
//! resolves to (the client's own resolver, so the addresses checked are the ones connected to),
//! and each redirect. No proxy from the environment is used: a proxy would resolve names itself.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt;
use reqwest::dns::{Addrs, Name, Resolve, Resolving};
use reqwest::redirect;
pub use runmesh_gateway_node::outbound::{FetchPolicy, Refused};

/// Redirects followed before a fetch gives up.
pub const REDIRECTS_MAX: usize = 5;

/// A policy-bound client; cheap to clone.
#[derive(Clone)]
pub struct Outbound {
    policy: Arc<FetchPolicy>,
    client: reqwest::Client,
}

/// Why a fetch failed. Only [`FetchError::caller_message`] reaches the caller: never the target's
/// status, headers or connection errors, which would map the inside of the operator's network.
#[derive(Debug, thiserror::Error)]
pub enum FetchError {
    #[error("refused by the outbound policy: {0}")]
    Refused(Refused),
    #[error("larger than {0} bytes")]
    TooLarge(usize),
    #[error("{0}")]
    Failed(String),
}

impl FetchError {
    /// What a caller is told (after "<field> ").
    pub fn caller_message(&self) -> String {
        match self {
            Self::Refused(r) => r.to_string(),
            Self::TooLarge(n) => format!("is larger than {} MiB", n >> 20),
            Self::Failed(_) => "could not be downloaded".to_string(),
        }
    }
}

struct PolicyResolver(Arc<FetchPolicy>);

impl Resolve for PolicyResolver {
    fn resolve(&self, name: Name) -> Resolving {
        let policy = self.0.clone();
        let host = name.as_str().to_string();
        Box::pin(async move {
            let listed = policy.host_listed(&host);
            let addrs: Vec<SocketAddr> = tokio::net::lookup_host((host.as_str(), 0))
                .await?
                .filter(|a| listed || policy.addr_allowed(a.ip()))
                .collect();
            if addrs.is_empty() {
                return Err(
                    Box::new(Refused::Destination) as Box<dyn std::error::Error + Send + Sync>
                );
            }
            Ok(Box::new(addrs.into_iter()) as Addrs)
        })
    }
}

impl Outbound {
    /// `follow_redirects`: up to [`REDIRECTS_MAX`], each target checked (webhooks follow none).
    pub fn new(
        policy: FetchPolicy,
        timeout: Duration,
        follow_redirects: bool,
    ) -> Result<Self, reqwest::Error> {
        let policy = Arc::new(policy);
        let redirects = if follow_redirects {
            let p = policy.clone();
            redirect::Policy::custom(move |attempt| {
                if attempt.previous().len() > REDIRECTS_MAX {
                    attempt.error("too many redirects")
                } else if let Err(e) = p.check_url(attempt.url().as_str()) {
                    attempt.error(e)
                } else {
                    attempt.follow()
                }
            })
        } else {
            redirect::Policy::none()
        };
        let client = reqwest::Client::builder()
            .timeout(timeout)
            .redirect(redirects)
            .no_proxy()
            .dns_resolver(Arc::new(PolicyResolver(policy.clone())))
            .user_agent(concat!("runmesh/", env!("CARGO_PKG_VERSION")))
            .build()?;
        Ok(Self { policy, client })
    }

    pub fn policy(&self) -> &FetchPolicy {
        &self.policy
    }

    /// A request to `url` once the URL passes the policy (its addresses are checked on connect).
    pub fn request(
        &self,
        method: reqwest::Method,
        url: &str,
    ) -> Result<reqwest::RequestBuilder, FetchError> {
        let url = self.policy.check_url(url).map_err(FetchError::Refused)?;
        Ok(self.client.request(method, url))
    }

    /// A GET of at most `max_bytes` (refused by Content-Length, then while reading).
    pub async fn get_bounded(&self, url: &str, max_bytes: usize) -> Result<Vec<u8>, FetchError> {
        let resp = self
            .request(reqwest::Method::GET, url)?
            .send()
            .await
            .map_err(classify)?;
        if !resp.status().is_success() {
            return Err(FetchError::Failed(format!("HTTP {}", resp.status())));
        }
        if resp.content_length().is_some_and(|n| n > max_bytes as u64) {
            return Err(FetchError::TooLarge(max_bytes));
        }
        let mut body = Vec::new();
        let mut stream = resp.bytes_stream();
        while let Some(chunk) = stream.next().await {
            let chunk = chunk.map_err(classify)?;
            if body.len() + chunk.len() > max_bytes {
                return Err(FetchError::TooLarge(max_bytes));
            }
            body.extend_from_slice(&chunk);
        }
        Ok(body)
    }
}

/// A refusal deep in reqwest's error chain (resolver, redirect) is still a refusal.
pub fn classify(e: reqwest::Error) -> FetchError {
    let mut cur: Option<&(dyn std::error::Error + 'static)> = Some(&e);
    // Bounded: error chains are short.
    for _ in 0..16 {
        let Some(err) = cur else { break };
        if let Some(r) = err.downcast_ref::<Refused>() {
            return FetchError::Refused(r.clone());
        }
        cur = err.source();
    }
    FetchError::Failed(error_chain(&e))
}

/// An error and its sources on one line (for the node's log, not the caller).
pub fn error_chain(e: &(dyn std::error::Error + 'static)) -> String {
    let mut out = e.to_string();
    let mut cur = e.source();
    for _ in 0..8 {
        let Some(s) = cur else { break };
        out.push_str(": ");
        out.push_str(&s.to_string());
        cur = s.source();
    }
    out
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    /// A loopback HTTP server answering every request with `response`; counts connections.
    async fn serve(
        bind: &str,
        response: String,
    ) -> (SocketAddr, Arc<std::sync::atomic::AtomicUsize>) {
        let listener = tokio::net::TcpListener::bind(bind).await.unwrap();
        let addr = listener.local_addr().unwrap();
        let hits = Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let counter = hits.clone();
        tokio::spawn(async move {
            while let Ok((mut sock, _)) = listener.accept().await {
                counter.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                let response = response.clone();
                tokio::spawn(async move {
                    let mut buf = [0u8; 4096];
                    let _ = sock.read(&mut buf).await;
                    let _ = sock.write_all(response.as_bytes()).await;
                });
            }
        });
        (addr, hits)
    }

    fn ok_body(n: usize) -> String {
        format!(
            "HTTP/1.1 200 OK\r\ncontent-length: {n}\r\nconnection: close\r\n\r\n{}",
            "x".repeat(n)
        )
    }

    fn outbound(allow: &[&str]) -> Outbound {
        Outbound::new(
            FetchPolicy::parse(allow).unwrap(),
            Duration::from_secs(5),
            true,
        )
        .unwrap()
    }

    #[tokio::test]
    async fn fetches_are_bounded() {
        let (addr, _) = serve("127.0.0.1:0", ok_body(100)).await;
        let o = outbound(&["127.0.0.1"]);
        let url = format!("http://{addr}/a.wav");
        assert_eq!(o.get_bounded(&url, 100).await.unwrap().len(), 100);
        assert!(matches!(
            o.get_bounded(&url, 99).await.unwrap_err(),
            FetchError::TooLarge(99)
        ));
    }

    #[tokio::test]
    async fn internal_targets_are_refused_without_a_connection() {
        let (addr, hits) = serve("127.0.0.1:0", ok_body(1)).await;
        let o = outbound(&[]);
        for url in [
            format!("http://{addr}/"),
            format!("http://localhost:{}/", addr.port()),
            format!("http://[::ffff:127.0.0.1]:{}/", addr.port()),
        ] {
            let e = o.get_bounded(&url, 10).await.unwrap_err();
            assert!(matches!(e, FetchError::Refused(_)), "{url}: {e}");
            assert!(!e.caller_message().contains(&addr.port().to_string()));
        }
        assert_eq!(hits.load(std::sync::atomic::Ordering::SeqCst), 0);
    }

    #[tokio::test]
    async fn a_listed_name_is_allowed_and_resolution_is_checked_for_others() {
        let (addr, _) = serve("127.0.0.1:0", ok_body(3)).await;
        // `localhost` by name: allowed whatever it resolves to.
        let by_name = outbound(&["localhost"]);
        let url = format!("http://localhost:{}/", addr.port());
        assert_eq!(by_name.get_bounded(&url, 10).await.unwrap().len(), 3);
        // The resolver drops what the policy refuses; a name left without addresses fails.
        let resolver = PolicyResolver(Arc::new(FetchPolicy::default()));
        let err = match resolver.resolve("localhost".parse().unwrap()).await {
            Ok(_) => panic!("localhost resolved under the default policy"),
            Err(e) => e,
        };
        assert!(err.downcast_ref::<Refused>().is_some(), "{err}");
    }

    #[tokio::test]
    async fn every_redirect_is_checked() {
        let (inside, inside_hits) = serve("127.0.0.2:0", ok_body(1)).await;
        let to_inside = format!(
            "HTTP/1.1 302 Found\r\nlocation: http://{inside}/secret\r\ncontent-length: 0\r\n\r\n"
        );
        let (front, _) = serve("127.0.0.1:0", to_inside).await;
        let o = outbound(&["127.0.0.1"]);
        let e = o
            .get_bounded(&format!("http://{front}/"), 10)
            .await
            .unwrap_err();
        assert!(matches!(e, FetchError::Refused(_)), "{e}");
        assert_eq!(inside_hits.load(std::sync::atomic::Ordering::SeqCst), 0);
        // Allowed both ways, the redirect is followed.
        let both = outbound(&["127.0.0.1", "127.0.0.2"]);
        assert_eq!(
            both.get_bounded(&format!("http://{front}/"), 10)
                .await
                .unwrap()
                .len(),
            1
        );
    }

    #[tokio::test]
    async fn a_failed_fetch_says_nothing_about_the_target() {
        let (addr, _) = serve(
            "127.0.0.1:0",
            "HTTP/1.1 404 Not Found\r\ncontent-length: 0\r\n\r\n".into(),
        )
        .await;
        let o = outbound(&["127.0.0.1"]);
        let e = o
            .get_bounded(&format!("http://{addr}/missing"), 10)
            .await
            .unwrap_err();
        assert!(matches!(e, FetchError::Failed(_)));
        assert_eq!(e.caller_message(), "could not be downloaded");
    }
}
