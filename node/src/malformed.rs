//! hyper answers a request it cannot parse (a control character in a header, a broken request
//! line) by itself, before the app sees it: `400 Bad Request` with an empty body. fal's API answers
//! every error with a JSON `detail`, so the connection's writes are watched for exactly that
//! canned response and it goes out with a fal-shaped body instead.
//!
//! Only a write that is that whole response, byte for byte (status line, `connection: close`,
//! `content-length: 0`, a `date` header, nothing after), is rewritten: the app's own 400s always
//! carry a JSON body, and hyper closes the connection after this one, so nothing follows it.

use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

const CANNED_HEAD: &[u8] =
    b"HTTP/1.1 400 Bad Request\r\nconnection: close\r\ncontent-length: 0\r\ndate: ";
/// An HTTP date (`Tue, 08 Dec 2026 00:56:23 GMT`) is always this long.
const DATE_LEN: usize = 29;
const BODY: &str = "{\"detail\":\"Bad request: the request line or a header could not be parsed \
                    (for example a control character in a header value)\",\
                    \"error_type\":\"bad_request\"}";

/// The fal-shaped response for hyper's canned 400 in `buf`, when `buf` is exactly that.
pub fn rewrite(buf: &[u8]) -> Option<Vec<u8>> {
    let date = buf.strip_prefix(CANNED_HEAD)?.strip_suffix(b"\r\n\r\n")?;
    if date.len() != DATE_LEN || date.contains(&b'\r') {
        return None;
    }
    let mut out = Vec::with_capacity(buf.len() + BODY.len() + 64);
    out.extend_from_slice(
        b"HTTP/1.1 400 Bad Request\r\nconnection: close\r\ncontent-type: application/json\r\n",
    );
    out.extend_from_slice(format!("content-length: {}\r\ndate: ", BODY.len()).as_bytes());
    out.extend_from_slice(date);
    out.extend_from_slice(b"\r\n\r\n");
    out.extend_from_slice(BODY.as_bytes());
    Some(out)
}

/// A connection whose canned 400 goes out fal-shaped ([`rewrite`]).
pub struct FalShapedIo<T> {
    inner: T,
    /// A rewritten response being written: its bytes, how many went out, and the length of the
    /// write it replaces (reported once all went out).
    pending: Option<(Vec<u8>, usize, usize)>,
}

impl<T> FalShapedIo<T> {
    pub fn new(inner: T) -> Self {
        Self {
            inner,
            pending: None,
        }
    }
}

impl<T: AsyncWrite + Unpin> FalShapedIo<T> {
    /// Writes what is pending; `Ready(Ok(n))` with the replaced write's length once all is out.
    fn drive_pending(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<usize>> {
        while let Some((bytes, done, replaced)) = self.pending.as_mut() {
            if *done == bytes.len() {
                let n = *replaced;
                self.pending = None;
                return Poll::Ready(Ok(n));
            }
            match Pin::new(&mut self.inner).poll_write(cx, &bytes[*done..]) {
                Poll::Ready(Ok(0)) => {
                    self.pending = None;
                    return Poll::Ready(Err(io::ErrorKind::WriteZero.into()));
                }
                Poll::Ready(Ok(n)) => *done += n,
                Poll::Ready(Err(e)) => {
                    self.pending = None;
                    return Poll::Ready(Err(e));
                }
                Poll::Pending => return Poll::Pending,
            }
        }
        Poll::Ready(Ok(0))
    }
}

impl<T: AsyncRead + Unpin> AsyncRead for FalShapedIo<T> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_read(cx, buf)
    }
}

impl<T: AsyncWrite + Unpin> AsyncWrite for FalShapedIo<T> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this = &mut *self;
        if this.pending.is_none() {
            match rewrite(buf) {
                Some(bytes) => this.pending = Some((bytes, 0, buf.len())),
                None => return Pin::new(&mut this.inner).poll_write(cx, buf),
            }
        }
        this.drive_pending(cx)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let this = &mut *self;
        if this.pending.is_none() {
            let mut parts = bufs.iter().filter(|b| !b.is_empty());
            let canned = match (parts.next(), parts.next()) {
                (Some(only), None) => rewrite(only).map(|bytes| (bytes, only.len())),
                _ => None,
            };
            match canned {
                Some((bytes, replaced)) => this.pending = Some((bytes, 0, replaced)),
                None => return Pin::new(&mut this.inner).poll_write_vectored(cx, bufs),
            }
        }
        this.drive_pending(cx)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        if self.pending.is_some() {
            if let Poll::Ready(Err(e)) = self.drive_pending(cx) {
                return Poll::Ready(Err(e));
            }
            if self.pending.is_some() {
                return Poll::Pending;
            }
        }
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

/// A listener whose connections are [`FalShapedIo`].
pub struct FalShaped<L>(pub L);

impl<L> axum::serve::Listener for FalShaped<L>
where
    L: axum::serve::Listener,
    L::Io: Unpin,
{
    type Io = FalShapedIo<L::Io>;
    type Addr = L::Addr;

    async fn accept(&mut self) -> (Self::Io, Self::Addr) {
        let (io, addr) = self.0.accept().await;
        (FalShapedIo::new(io), addr)
    }

    fn local_addr(&self) -> io::Result<Self::Addr> {
        self.0.local_addr()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_hypers_whole_canned_400_is_rewritten() {
        let canned = b"HTTP/1.1 400 Bad Request\r\nconnection: close\r\ncontent-length: 0\r\ndate: Tue, 08 Dec 2026 00:56:23 GMT\r\n\r\n";
        let out = rewrite(canned).map(String::from_utf8);
        let Some(Ok(out)) = out else {
            panic!("not rewritten");
        };
        let (head, body) = out.split_once("\r\n\r\n").unwrap_or_default();
        assert!(head.contains("content-type: application/json"), "{head}");
        assert!(
            head.contains(&format!("content-length: {}", body.len())),
            "{head}"
        );
        assert!(
            head.ends_with("date: Tue, 08 Dec 2026 00:56:23 GMT"),
            "{head}"
        );
        let v: serde_json::Value = serde_json::from_str(body).unwrap_or_default();
        assert!(
            v["detail"].as_str().is_some_and(|d| d.contains("header")),
            "{body}"
        );
        // Anything else passes untouched: more after it, another status, a body.
        let mut more = canned.to_vec();
        more.extend_from_slice(b"x");
        assert_eq!(rewrite(&more), None);
        assert_eq!(rewrite(&canned[..canned.len() - 1]), None);
        assert_eq!(
            rewrite(b"HTTP/1.1 400 Bad Request\r\ncontent-length: 2\r\n\r\n{}"),
            None
        );
    }
}
