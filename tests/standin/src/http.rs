//! Just enough HTTP/1.1: one request per connection (`Connection: close`),
//! request line, headers and a Content-Length body in, status, headers and
//! body out; and a client request over TLS.

use std::sync::Arc;
use std::time::Duration;

use rustls::ClientConfig;
use rustls_pki_types::ServerName;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpStream;

const MAX_HEAD: usize = 16 * 1024;
const MAX_BODY: usize = 8 * 1024 * 1024;

/// `https://host:port[/path]`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Url {
    pub host: String,
    pub port: u16,
}

impl Url {
    pub fn parse(s: &str) -> Result<Url, String> {
        let rest = s
            .strip_prefix("https://")
            .ok_or_else(|| format!("{s:?} is not an https:// URL"))?;
        let authority = rest.split('/').next().unwrap_or_default();
        let (host, port) = if let Some(v6) = authority.strip_prefix('[') {
            let (h, p) = v6
                .split_once(']')
                .ok_or_else(|| format!("{s:?}: unclosed '['"))?;
            (h, p.strip_prefix(':'))
        } else {
            match authority.rsplit_once(':') {
                Some((h, p)) => (h, Some(p)),
                None => (authority, None),
            }
        };
        if host.is_empty() {
            return Err(format!("{s:?}: no host"));
        }
        let port = match port {
            Some(p) => p.parse().map_err(|_| format!("{s:?}: bad port {p:?}"))?,
            None => 443,
        };
        Ok(Url {
            host: host.to_string(),
            port,
        })
    }

    fn authority(&self) -> String {
        if self.host.contains(':') {
            format!("[{}]:{}", self.host, self.port)
        } else {
            format!("{}:{}", self.host, self.port)
        }
    }
}

/// A request read from a client.
#[derive(Debug, PartialEq, Eq)]
pub struct Request {
    pub method: String,
    pub target: String,
    /// The whole request line, for logs.
    pub line: String,
    pub body: Vec<u8>,
}

impl Request {
    /// The path without the query.
    pub fn path(&self) -> &str {
        self.target.split('?').next().unwrap_or_default()
    }

    /// The value of a query parameter.
    pub fn query(&self, key: &str) -> Option<&str> {
        let (_, q) = self.target.split_once('?')?;
        q.split('&')
            .filter_map(|kv| kv.split_once('='))
            .find(|(k, _)| *k == key)
            .map(|(_, v)| v)
    }
}

/// Reads a request: its head and the body its Content-Length announces.
pub async fn read_request<S: AsyncRead + Unpin>(stream: &mut S) -> Result<Request, String> {
    let mut buf = Vec::with_capacity(1024);
    let mut chunk = [0u8; 1024];
    while find(&buf, b"\r\n\r\n").is_none() && find(&buf, b"\n\n").is_none() {
        if buf.len() > MAX_HEAD {
            return Err("request head too large".into());
        }
        let n = stream
            .read(&mut chunk)
            .await
            .map_err(|e| format!("reading request: {e}"))?;
        if n == 0 {
            return Err("connection closed before a full request head".into());
        }
        buf.extend_from_slice(&chunk[..n]);
    }
    let mut req = parse_request_head(&buf)?;
    let (end, sep) = match find(&buf, b"\r\n\r\n") {
        Some(i) => (i, 4),
        None => (find(&buf, b"\n\n").unwrap_or(buf.len()), 2),
    };
    let head = String::from_utf8_lossy(&buf[..end]).to_ascii_lowercase();
    let len = head
        .lines()
        .find_map(|l| l.strip_prefix("content-length:"))
        .map(|v| {
            v.trim()
                .parse::<usize>()
                .map_err(|_| format!("bad Content-Length {v:?}"))
        })
        .transpose()?
        .unwrap_or(0);
    if len > MAX_BODY {
        return Err(format!("request body of {len} bytes is too large"));
    }
    let mut body = buf.get(end + sep..).unwrap_or_default().to_vec();
    while body.len() < len {
        let n = stream
            .read(&mut chunk)
            .await
            .map_err(|e| format!("reading request body: {e}"))?;
        if n == 0 {
            return Err("connection closed before the whole body".into());
        }
        body.extend_from_slice(&chunk[..n]);
    }
    body.truncate(len);
    req.body = body;
    Ok(req)
}

pub fn parse_request_head(buf: &[u8]) -> Result<Request, String> {
    let text = String::from_utf8_lossy(buf);
    let line = text.lines().next().unwrap_or_default();
    let mut parts = line.split(' ');
    let (Some(method), Some(target), Some(version), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return Err(format!("bad request line {line:?}"));
    };
    if !version.starts_with("HTTP/1.") || method.is_empty() || !target.starts_with('/') {
        return Err(format!("bad request line {line:?}"));
    }
    Ok(Request {
        method: method.to_string(),
        target: target.to_string(),
        line: line.to_string(),
        body: Vec::new(),
    })
}

fn find(hay: &[u8], needle: &[u8]) -> Option<usize> {
    hay.windows(needle.len()).position(|w| w == needle)
}

pub fn reason(status: u16) -> &'static str {
    match status {
        200 => "OK",
        201 => "Created",
        400 => "Bad Request",
        401 => "Unauthorized",
        404 => "Not Found",
        405 => "Method Not Allowed",
        500 => "Internal Server Error",
        _ => "",
    }
}

/// Writes a complete response and closes the write side.
pub async fn write_response<S: AsyncWrite + Unpin>(
    stream: &mut S,
    status: u16,
    content_type: &str,
    body: &str,
    head_only: bool,
) -> Result<(), String> {
    let head = format!(
        "HTTP/1.1 {status} {}\r\nContent-Type: {content_type}\r\nContent-Length: {}\r\nX-Kubeforge-Standin: true\r\nConnection: close\r\n\r\n",
        reason(status),
        body.len()
    );
    let mut out = head.into_bytes();
    if !head_only {
        out.extend_from_slice(body.as_bytes());
    }
    stream
        .write_all(&out)
        .await
        .map_err(|e| format!("writing response: {e}"))?;
    stream.shutdown().await.map_err(|e| format!("closing: {e}"))
}

/// A response as a client got it.
#[derive(Debug)]
pub struct Response {
    pub status: u16,
    pub body: String,
}

/// Splits a raw response into status and body (Content-Length or chunked or
/// to the end).
pub fn parse_response(raw: &[u8]) -> Result<Response, String> {
    let split = find(raw, b"\r\n\r\n").ok_or("no complete response head")?;
    let head = String::from_utf8_lossy(&raw[..split]);
    let mut body = &raw[split + 4..];
    let mut lines = head.split("\r\n");
    let status_line = lines.next().unwrap_or_default();
    let status: u16 = status_line
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .filter(|_| status_line.starts_with("HTTP/1."))
        .ok_or_else(|| format!("bad status line {status_line:?}"))?;
    let mut chunked = false;
    for l in lines {
        if let Some((k, v)) = l.split_once(':') {
            let (k, v) = (k.trim().to_ascii_lowercase(), v.trim());
            if k == "content-length" {
                let n: usize = v.parse().map_err(|_| format!("bad Content-Length {v:?}"))?;
                body = body.get(..n).ok_or("truncated body")?;
            } else if k == "transfer-encoding" && v.eq_ignore_ascii_case("chunked") {
                chunked = true;
            }
        }
    }
    let body = if chunked {
        dechunk(body)?
    } else {
        body.to_vec()
    };
    Ok(Response {
        status,
        body: String::from_utf8_lossy(&body).into_owned(),
    })
}

fn dechunk(mut data: &[u8]) -> Result<Vec<u8>, String> {
    let mut out = Vec::new();
    loop {
        let eol = find(data, b"\r\n").ok_or("truncated chunk size")?;
        let size_text = String::from_utf8_lossy(&data[..eol]);
        let size_text = size_text.split(';').next().unwrap_or_default().trim();
        let size = usize::from_str_radix(size_text, 16)
            .map_err(|_| format!("bad chunk size {size_text:?}"))?;
        data = &data[eol + 2..];
        if size == 0 {
            return Ok(out);
        }
        out.extend_from_slice(data.get(..size).ok_or("truncated chunk")?);
        data = data.get(size + 2..).ok_or("truncated chunk")?;
    }
}

/// `GET path` on `url` over TLS with `config`; the whole exchange within
/// `timeout`.
pub async fn get(
    url: &Url,
    config: Arc<ClientConfig>,
    path: &str,
    timeout: Duration,
) -> Result<Response, String> {
    send(url, config, "GET", path, None, timeout).await
}

/// `method path` on `url` over TLS with `config`, with an optional body
/// (content type, bytes); the whole exchange within `timeout`.
pub async fn send(
    url: &Url,
    config: Arc<ClientConfig>,
    method: &str,
    path: &str,
    body: Option<(&str, &[u8])>,
    timeout: Duration,
) -> Result<Response, String> {
    tokio::time::timeout(timeout, send_inner(url, config, method, path, body))
        .await
        .map_err(|_| format!("no answer within {timeout:?}"))?
}

async fn send_inner(
    url: &Url,
    config: Arc<ClientConfig>,
    method: &str,
    path: &str,
    body: Option<(&str, &[u8])>,
) -> Result<Response, String> {
    let tcp = TcpStream::connect((url.host.as_str(), url.port))
        .await
        .map_err(|e| format!("connect: {e}"))?;
    let name = ServerName::try_from(url.host.clone())
        .map_err(|e| format!("server name {:?}: {e}", url.host))?;
    let mut tls = tokio_rustls::TlsConnector::from(config)
        .connect(name, tcp)
        .await
        .map_err(|e| format!("TLS: {e}"))?;
    let mut request = format!(
        "{method} {path} HTTP/1.1\r\nHost: {}\r\nUser-Agent: kubeforge-standin\r\nAccept: */*\r\nConnection: close\r\n",
        url.authority()
    )
    .into_bytes();
    match body {
        Some((content_type, bytes)) => {
            request.extend_from_slice(
                format!(
                    "Content-Type: {content_type}\r\nContent-Length: {}\r\n\r\n",
                    bytes.len()
                )
                .as_bytes(),
            );
            request.extend_from_slice(bytes);
        }
        None => request.extend_from_slice(b"\r\n"),
    }
    tls.write_all(&request)
        .await
        .map_err(|e| format!("sending request: {e}"))?;
    let mut raw = Vec::new();
    let mut chunk = [0u8; 4096];
    loop {
        match tls.read(&mut chunk).await {
            Ok(0) => break,
            Ok(n) => raw.extend_from_slice(&chunk[..n]),
            // A peer that closes without close_notify: keep what arrived.
            Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof && !raw.is_empty() => break,
            Err(e) => return Err(format!("reading response: {e}")),
        }
        if let Ok(r) = parse_complete(&raw) {
            return Ok(r);
        }
    }
    parse_response(&raw)
}

/// A response whose body has fully arrived (by Content-Length).
fn parse_complete(raw: &[u8]) -> Result<Response, String> {
    let split = find(raw, b"\r\n\r\n").ok_or("incomplete")?;
    let head = String::from_utf8_lossy(&raw[..split]).to_ascii_lowercase();
    let len = head
        .split("\r\n")
        .find_map(|l| l.strip_prefix("content-length:"))
        .and_then(|v| v.trim().parse::<usize>().ok())
        .ok_or("no content-length")?;
    if raw.len() - split - 4 < len {
        return Err("incomplete".into());
    }
    parse_response(raw)
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn urls() {
        assert_eq!(
            Url::parse("https://127.0.0.1:2379").unwrap(),
            Url {
                host: "127.0.0.1".into(),
                port: 2379
            }
        );
        assert_eq!(Url::parse("https://k8s.example/x").unwrap().port, 443);
        let v6 = Url::parse("https://[::1]:6443/").unwrap();
        assert_eq!((v6.host.as_str(), v6.port), ("::1", 6443));
        assert_eq!(v6.authority(), "[::1]:6443");
        assert!(Url::parse("http://127.0.0.1:2379").is_err());
        assert!(Url::parse("https://:1").is_err());
        assert!(Url::parse("https://h:x").is_err());
    }

    #[test]
    fn request_heads() {
        let r = parse_request_head(b"GET /readyz?verbose HTTP/1.1\r\nHost: x\r\n\r\n").unwrap();
        assert_eq!(r.method, "GET");
        assert_eq!(r.path(), "/readyz");
        let r =
            parse_request_head(b"PATCH /api/v1/nodes/w1?dryRun=All&force=true HTTP/1.1\r\n\r\n")
                .unwrap();
        assert_eq!(r.method, "PATCH");
        assert_eq!(r.query("dryRun"), Some("All"));
        assert_eq!(r.query("fieldManager"), None);
        assert!(parse_request_head(b"GARBAGE\r\n\r\n").is_err());
        assert!(parse_request_head(b"GET readyz HTTP/1.1\r\n\r\n").is_err());
    }

    #[test]
    fn responses() {
        let r = parse_response(
            b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: 31\r\n\r\n{\"health\":\"true\",\"reason\":\"\"}\n\nEXTRA",
        )
        .unwrap();
        assert_eq!(r.status, 200);
        assert_eq!(r.body, "{\"health\":\"true\",\"reason\":\"\"}\n\n");
        let r = parse_response(
            b"HTTP/1.1 500 Internal Server Error\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n2;x=y\r\nde\r\n0\r\n\r\n",
        )
        .unwrap();
        assert_eq!((r.status, r.body.as_str()), (500, "abcde"));
        assert!(parse_response(b"HTTP/1.1 200 OK\r\n").is_err());
        assert!(parse_complete(b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nab").is_err());
    }

    #[tokio::test]
    async fn writes_whole_responses() {
        let (mut a, mut b) = tokio::io::duplex(4096);
        write_response(&mut a, 404, "text/plain", "nope", false)
            .await
            .unwrap();
        let mut raw = Vec::new();
        b.read_to_end(&mut raw).await.unwrap();
        let r = parse_response(&raw).unwrap();
        assert_eq!((r.status, r.body.as_str()), (404, "nope"));
        assert!(String::from_utf8_lossy(&raw).contains("Connection: close\r\n"));
    }
}
