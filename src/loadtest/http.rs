//! The load generator's client side of the gateway's HTTPS API and signaling
//! WebSocket: one TLS connection per request (HTTP/1.1, `Connection: close`),
//! the session cookie and CSRF token kept as a browser would.
//!
//! Deliberately minimal: the generator talks to one known server, and a
//! general HTTP client would add a second TLS stack to the build.

use std::sync::Arc;
use std::time::Duration;

use rustls::pki_types::ServerName;
use serde_json::Value;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;
use tokio_rustls::client::TlsStream;

use super::LoadError;

/// A request or handshake that takes longer than this is a failed one.
const IO_TIMEOUT: Duration = Duration::from_secs(20);
/// Responses of this API are small JSON documents.
const MAX_RESPONSE: usize = 4 << 20;

#[derive(Clone)]
pub struct Endpoint {
    pub host: String,
    pub port: u16,
    tls: TlsConnector,
}

impl Endpoint {
    /// `server`: `https://HOST:PORT`; `ca_pem`: the certificate(s) to trust
    /// (the gateway's own dev certificate, or the CA that issued its
    /// certificate).
    pub fn new(server: &str, ca_pem: &[u8]) -> Result<Endpoint, LoadError> {
        let rest = server
            .strip_prefix("https://")
            .ok_or_else(|| LoadError::Usage(format!("--server must be https://HOST:PORT, not {server}")))?;
        let rest = rest.trim_end_matches('/');
        let (host, port) = rest
            .rsplit_once(':')
            .and_then(|(h, p)| Some((h.to_string(), p.parse::<u16>().ok()?)))
            .ok_or_else(|| LoadError::Usage(format!("--server must be https://HOST:PORT, not {server}")))?;
        let mut roots = rustls::RootCertStore::empty();
        for cert in rustls_pemfile_certs(ca_pem)? {
            roots.add(cert).map_err(|e| LoadError::Usage(format!("--ca: {e}")))?;
        }
        if roots.is_empty() {
            return Err(LoadError::Usage("--ca holds no certificate".into()));
        }
        let cfg = rustls::ClientConfig::builder_with_provider(crate::tls::provider())
            .with_safe_default_protocol_versions()
            .map_err(|e| LoadError::Usage(format!("TLS: {e}")))?
            .with_root_certificates(roots)
            .with_no_client_auth();
        Ok(Endpoint {
            host,
            port,
            tls: TlsConnector::from(Arc::new(cfg)),
        })
    }

    async fn connect(&self) -> Result<TlsStream<TcpStream>, LoadError> {
        let tcp = tokio::time::timeout(IO_TIMEOUT, TcpStream::connect((self.host.as_str(), self.port)))
            .await
            .map_err(|_| LoadError::Net("connect timed out".into()))?
            .map_err(|e| LoadError::Net(format!("connect {}:{}: {e}", self.host, self.port)))?;
        let _ = tcp.set_nodelay(true);
        let name =
            ServerName::try_from(self.host.clone()).map_err(|e| LoadError::Usage(format!("server name: {e}")))?;
        tokio::time::timeout(IO_TIMEOUT, self.tls.connect(name, tcp))
            .await
            .map_err(|_| LoadError::Net("TLS handshake timed out".into()))?
            .map_err(|e| LoadError::Net(format!("TLS: {e}")))
    }

    /// The signaling WebSocket (`/ws/consult`), opened with the session
    /// cookie (`Session::cookie`) of the account whose join tokens it uses,
    /// as a browser sends it.
    pub async fn websocket(
        &self,
        cookie: &str,
    ) -> Result<tokio_tungstenite::WebSocketStream<TlsStream<TcpStream>>, LoadError> {
        use tokio_tungstenite::tungstenite::client::IntoClientRequest;
        let stream = self.connect().await?;
        let url = format!("wss://{}:{}/ws/consult", self.host, self.port);
        let mut req = url
            .into_client_request()
            .map_err(|e| LoadError::Usage(format!("WebSocket request: {e}")))?;
        let value = cookie
            .parse()
            .map_err(|_| LoadError::Usage("session cookie is not a valid header value".into()))?;
        req.headers_mut().insert("cookie", value);
        let (ws, _) = tokio::time::timeout(IO_TIMEOUT, tokio_tungstenite::client_async(req, stream))
            .await
            .map_err(|_| LoadError::Net("WebSocket handshake timed out".into()))?
            .map_err(|e| LoadError::Net(format!("WebSocket: {e}")))?;
        Ok(ws)
    }
}

fn rustls_pemfile_certs(pem: &[u8]) -> Result<Vec<rustls::pki_types::CertificateDer<'static>>, LoadError> {
    use rustls::pki_types::pem::PemObject;
    rustls::pki_types::CertificateDer::pem_slice_iter(pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| LoadError::Usage(format!("--ca: {e}")))
}

/// A logged-in API session.
pub struct Session {
    ep: Endpoint,
    cookies: Vec<(String, String)>,
    csrf: String,
}

impl Session {
    pub async fn login(ep: &Endpoint, user: &str, password: &str) -> Result<Session, LoadError> {
        let mut s = Session {
            ep: ep.clone(),
            cookies: Vec::new(),
            csrf: String::new(),
        };
        let body = serde_json::json!({ "username": user, "password": password });
        let (code, v) = s.request("POST", "/api/login", Some(&body)).await?;
        if code != 200 {
            return Err(LoadError::Api(format!("login as {user}: HTTP {code} {v}")));
        }
        s.csrf = v["csrf"].as_str().unwrap_or_default().to_string();
        Ok(s)
    }

    /// The `Cookie` header value of this session (the signaling WebSocket
    /// needs it).
    pub fn cookie(&self) -> String {
        let c: Vec<String> = self.cookies.iter().map(|(k, v)| format!("{k}={v}")).collect();
        c.join("; ")
    }

    /// One request; the body parsed as JSON (Null when empty or not JSON).
    pub async fn request(&mut self, method: &str, path: &str, body: Option<&Value>) -> Result<(u16, Value), LoadError> {
        let mut stream = self.ep.connect().await?;
        let payload = body.map(|b| b.to_string()).unwrap_or_default();
        let mut req = format!(
            "{method} {path} HTTP/1.1\r\nHost: {}:{}\r\nConnection: close\r\nAccept: application/json\r\n",
            self.ep.host, self.ep.port
        );
        if !self.cookies.is_empty() {
            req.push_str(&format!("Cookie: {}\r\n", self.cookie()));
        }
        if !self.csrf.is_empty() {
            req.push_str(&format!("X-CSRF-Token: {}\r\n", self.csrf));
        }
        if body.is_some() {
            req.push_str(&format!(
                "Content-Type: application/json\r\nContent-Length: {}\r\n",
                payload.len()
            ));
        } else if method != "GET" {
            req.push_str("Content-Length: 0\r\n");
        }
        req.push_str("\r\n");
        req.push_str(&payload);
        let io = async {
            stream.write_all(req.as_bytes()).await?;
            stream.flush().await?;
            let mut buf = Vec::new();
            let mut chunk = [0u8; 16 * 1024];
            loop {
                let n = match stream.read(&mut chunk).await {
                    Ok(0) => break,
                    Ok(n) => n,
                    // Servers commonly close without close_notify after
                    // `Connection: close`; what arrived is the response.
                    Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => break,
                    Err(e) => return Err(e),
                };
                if buf.len() + n > MAX_RESPONSE {
                    return Err(std::io::Error::other("response too large"));
                }
                buf.extend_from_slice(&chunk[..n]);
            }
            Ok(buf)
        };
        let raw = tokio::time::timeout(IO_TIMEOUT, io)
            .await
            .map_err(|_| LoadError::Net(format!("{method} {path}: timed out")))?
            .map_err(|e| LoadError::Net(format!("{method} {path}: {e}")))?;
        let (code, headers, body) =
            parse_response(&raw).ok_or_else(|| LoadError::Api(format!("{method} {path}: malformed response")))?;
        for (k, v) in headers {
            if k.eq_ignore_ascii_case("set-cookie")
                && let Some((name, rest)) = v.split_once('=')
            {
                let value = rest.split(';').next().unwrap_or_default().to_string();
                self.cookies.retain(|(n, _)| n != name);
                self.cookies.push((name.to_string(), value));
            }
        }
        Ok((code, serde_json::from_slice(&body).unwrap_or(Value::Null)))
    }
}

/// Status, headers and (de-chunked) body of one HTTP/1.1 response.
type Response = (u16, Vec<(String, String)>, Vec<u8>);

fn parse_response(raw: &[u8]) -> Option<Response> {
    let end = raw.windows(4).position(|w| w == b"\r\n\r\n")?;
    let head = std::str::from_utf8(&raw[..end]).ok()?;
    let mut lines = head.split("\r\n");
    let status = lines.next()?.split(' ').nth(1)?.parse().ok()?;
    let headers: Vec<(String, String)> = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(k, v)| (k.trim().to_string(), v.trim().to_string()))
        .collect();
    let mut body = raw[end + 4..].to_vec();
    let chunked = headers
        .iter()
        .any(|(k, v)| k.eq_ignore_ascii_case("transfer-encoding") && v.eq_ignore_ascii_case("chunked"));
    if chunked {
        let mut out = Vec::new();
        let mut rest = &body[..];
        loop {
            let nl = rest.windows(2).position(|w| w == b"\r\n")?;
            let size =
                usize::from_str_radix(std::str::from_utf8(&rest[..nl]).ok()?.split(';').next()?.trim(), 16).ok()?;
            rest = &rest[nl + 2..];
            if size == 0 {
                break;
            }
            out.extend_from_slice(rest.get(..size)?);
            rest = rest.get(size + 2..)?;
        }
        body = out;
    }
    Some((status, headers, body))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn responses_plain_and_chunked() {
        let (code, h, b) =
            parse_response(b"HTTP/1.1 201 Created\r\nSet-Cookie: s=abc; Path=/\r\nContent-Length: 2\r\n\r\n{}")
                .unwrap();
        assert_eq!(code, 201);
        assert_eq!(h[0], ("Set-Cookie".to_string(), "s=abc; Path=/".to_string()));
        assert_eq!(b, b"{}");
        let (_, _, b) =
            parse_response(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n2\r\nde\r\n0\r\n\r\n")
                .unwrap();
        assert_eq!(b, b"abcde");
        assert!(parse_response(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n").is_none());
        assert!(parse_response(b"garbage").is_none());
    }
}
