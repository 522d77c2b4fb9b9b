//! TLS to PostgreSQL, with libpq's connection parameters: `sslmode` (`disable`, `prefer` — the
//! default —, `require`, `verify-ca`, `verify-full`), `sslrootcert` (the CA file that verifies
//! the server), and `sslcert` / `sslkey` (a client certificate, for `cert` authentication).
//!
//! As libpq: `prefer` and `require` encrypt without verifying the server (unless `sslrootcert`
//! is given, when `require` verifies the chain as `verify-ca` does); `verify-ca` checks the
//! chain, `verify-full` also the host name (or IP address) the URL names. A Unix-socket host is
//! never encrypted (the server does not offer TLS there).
//!
//! In: the URL as the operator wrote it. Out: a [`Target`]: the driver's settings (without the
//! parameters it does not know) and a rustls connector for every connection the store opens.

use std::future::Future;
use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::{CertificateError, DigitallySignedStruct, SignatureScheme};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio_postgres::config::SslMode;
use tokio_postgres::tls::{ChannelBinding, MakeTlsConnect, TlsConnect, TlsStream};

use crate::error::StoreError;
use crate::pg_store::redact;

/// The parameters handled here rather than by the driver.
const OURS: [&str; 4] = ["sslmode", "sslrootcert", "sslcert", "sslkey"];

/// Where and how to connect.
pub(crate) struct Target {
    /// The driver's settings; its `ssl_mode` is `disable`, `prefer` or `require`.
    pub config: tokio_postgres::Config,
    /// Makes the TLS session of each connection.
    pub tls: Connector,
}

/// Reads `url` (libpq's URL or key-value form).
pub(crate) fn target(url: &str) -> Result<Target, StoreError> {
    let bad = |what: String| StoreError::Backend(format!("the PostgreSQL URL {}: {what}", redact(url)));
    let (rest, params) = split(url).map_err(bad)?;
    let value = |key: &str| params.iter().rev().find(|(k, _)| k == key).map(|(_, v)| v.as_str());
    let sslmode = value("sslmode").unwrap_or("prefer");
    let mode = match sslmode {
        "disable" => SslMode::Disable,
        "allow" | "prefer" => SslMode::Prefer,
        "require" | "verify-ca" | "verify-full" => SslMode::Require,
        other => return Err(bad(format!("sslmode={other} is not one of disable, allow, prefer, require, verify-ca, verify-full"))),
    };
    let verify = match (sslmode, value("sslrootcert")) {
        ("verify-full", Some(ca)) => Verify::Full(roots(ca).map_err(bad)?),
        ("verify-ca", Some(ca)) | ("require", Some(ca)) => Verify::Chain(roots(ca).map_err(bad)?),
        (mode @ ("verify-full" | "verify-ca"), None) => {
            return Err(bad(format!("sslmode={mode} needs sslrootcert=<file of the CA certificates that sign the server's>")))
        }
        _ => Verify::Nothing,
    };
    let client_cert = match (value("sslcert"), value("sslkey")) {
        (Some(cert), Some(key)) => Some(client_identity(cert, key).map_err(bad)?),
        (None, None) => None,
        (Some(_), None) => return Err(bad("sslcert is given without sslkey".into())),
        (None, Some(_)) => return Err(bad("sslkey is given without sslcert".into())),
    };
    let mut config: tokio_postgres::Config = rest.parse().map_err(|e: tokio_postgres::Error| bad(e.to_string()))?;
    config.ssl_mode(mode);
    let tls = match mode {
        SslMode::Disable => Connector { config: None },
        _ => Connector { config: Some(Arc::new(client_config(verify, client_cert).map_err(bad)?)) },
    };
    Ok(Target { config, tls })
}

/// `url` without [`OURS`], and their values (percent-decoded in the URL form).
fn split(url: &str) -> Result<(String, Vec<(String, String)>), String> {
    let mut ours = Vec::new();
    if url.starts_with("postgres://") || url.starts_with("postgresql://") {
        let Some((base, query)) = url.split_once('?') else { return Ok((url.to_string(), ours)) };
        let mut kept = Vec::new();
        for pair in query.split('&').filter(|p| !p.is_empty()) {
            let (key, value) = pair.split_once('=').unwrap_or((pair, ""));
            let key = decode(key)?;
            if OURS.contains(&key.as_str()) {
                ours.push((key, decode(value)?));
            } else {
                kept.push(pair);
            }
        }
        let rest = if kept.is_empty() { base.to_string() } else { format!("{base}?{}", kept.join("&")) };
        return Ok((rest, ours));
    }
    // key=value pairs separated by spaces; a value may be quoted ('...', with \' and \\).
    let mut kept = String::new();
    let mut chars = url.char_indices().peekable();
    while let Some(&(start, c)) = chars.peek() {
        if c.is_whitespace() {
            chars.next();
            continue;
        }
        let mut key = String::new();
        while let Some(&(_, c)) = chars.peek() {
            if c == '=' || c.is_whitespace() {
                break;
            }
            key.push(c);
            chars.next();
        }
        while chars.peek().is_some_and(|(_, c)| c.is_whitespace()) {
            chars.next();
        }
        if chars.next().map(|(_, c)| c) != Some('=') {
            return Err(format!("`{key}` has no value (expected key=value)"));
        }
        while chars.peek().is_some_and(|(_, c)| c.is_whitespace()) {
            chars.next();
        }
        let mut value = String::new();
        if chars.peek().is_some_and(|(_, c)| *c == '\'') {
            chars.next();
            loop {
                match chars.next() {
                    Some((_, '\\')) => value.extend(chars.next().map(|(_, c)| c)),
                    Some((_, '\'')) => break,
                    Some((_, c)) => value.push(c),
                    None => return Err(format!("the value of `{key}` has no closing quote")),
                }
            }
        } else {
            while let Some(&(_, c)) = chars.peek() {
                if c.is_whitespace() {
                    break;
                }
                if c == '\\' {
                    chars.next();
                }
                value.extend(chars.next().map(|(_, c)| c));
            }
        }
        let end = chars.peek().map_or(url.len(), |(i, _)| *i);
        if OURS.contains(&key.as_str()) {
            ours.push((key, value));
        } else {
            kept.push_str(&url[start..end]);
            kept.push(' ');
        }
    }
    Ok((kept.trim_end().to_string(), ours))
}

fn decode(text: &str) -> Result<String, String> {
    let bytes = text.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' {
            let hex = text.get(i + 1..i + 3).ok_or_else(|| format!("`{text}` has a % without two hex digits"))?;
            out.push(u8::from_str_radix(hex, 16).map_err(|_| format!("`{text}` has a % without two hex digits"))?);
            i += 3;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    String::from_utf8(out).map_err(|_| format!("`{text}` is not UTF-8 once decoded"))
}

enum Verify {
    /// Encrypt only (`prefer`, `require`).
    Nothing,
    /// The chain, not the name (`verify-ca`; `require` with `sslrootcert`).
    Chain(rustls::RootCertStore),
    /// The chain and the name (`verify-full`).
    Full(rustls::RootCertStore),
}

fn roots(path: &str) -> Result<rustls::RootCertStore, String> {
    if path == "system" {
        return Err("sslrootcert=system is not supported: give the file of the CA certificates".into());
    }
    let bad = |reason: String| format!("sslrootcert {path}: {reason}");
    let pem = std::fs::read(path).map_err(|e| bad(e.to_string()))?;
    let mut roots = rustls::RootCertStore::empty();
    for cert in rustls_pemfile::certs(&mut pem.as_slice()) {
        roots.add(cert.map_err(|e| bad(e.to_string()))?).map_err(|e| bad(e.to_string()))?;
    }
    if roots.is_empty() {
        return Err(bad("no PEM certificate in it".into()));
    }
    Ok(roots)
}

type Identity = (Vec<CertificateDer<'static>>, rustls::pki_types::PrivateKeyDer<'static>);

fn client_identity(cert: &str, key: &str) -> Result<Identity, String> {
    let pem = std::fs::read(cert).map_err(|e| format!("sslcert {cert}: {e}"))?;
    let chain: Vec<_> = rustls_pemfile::certs(&mut pem.as_slice()).collect::<Result<_, _>>().map_err(|e| format!("sslcert {cert}: {e}"))?;
    if chain.is_empty() {
        return Err(format!("sslcert {cert}: no PEM certificate in it"));
    }
    let pem = std::fs::read(key).map_err(|e| format!("sslkey {key}: {e}"))?;
    let key = rustls_pemfile::private_key(&mut pem.as_slice())
        .map_err(|e| format!("sslkey {key}: {e}"))?
        .ok_or_else(|| format!("sslkey {key}: no PEM private key in it"))?;
    Ok((chain, key))
}

fn client_config(verify: Verify, identity: Option<Identity>) -> Result<rustls::ClientConfig, String> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let verifier: Arc<dyn ServerCertVerifier> = match verify {
        Verify::Nothing => Arc::new(Lenient { provider: provider.clone(), chain: None }),
        Verify::Chain(roots) => Arc::new(Lenient { provider: provider.clone(), chain: Some(webpki(roots, &provider)?) }),
        Verify::Full(roots) => webpki(roots, &provider)?,
    };
    let builder = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| e.to_string())?
        .dangerous()
        .with_custom_certificate_verifier(verifier);
    match identity {
        Some((chain, key)) => builder.with_client_auth_cert(chain, key).map_err(|e| format!("sslcert/sslkey: {e}")),
        None => Ok(builder.with_no_client_auth()),
    }
}

fn webpki(
    roots: rustls::RootCertStore,
    provider: &Arc<rustls::crypto::CryptoProvider>,
) -> Result<Arc<rustls::client::WebPkiServerVerifier>, String> {
    rustls::client::WebPkiServerVerifier::builder_with_provider(Arc::new(roots), provider.clone())
        .build()
        .map_err(|e| format!("sslrootcert: {e}"))
}

/// How much of the server's certificate is checked: nothing (`prefer`, `require`: encryption
/// against a passive listener only, as libpq), the chain (`verify-ca`), or the chain and the
/// name (`verify-full`, the WebPKI verifier itself). The handshake is always checked to be
/// signed by the certificate's key.
#[derive(Debug)]
struct Lenient {
    provider: Arc<rustls::crypto::CryptoProvider>,
    /// The chain's verifier (`verify-ca`), whose name mismatches are let through; `None`: nothing.
    chain: Option<Arc<rustls::client::WebPkiServerVerifier>>,
}

impl ServerCertVerifier for Lenient {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        ocsp_response: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        let Some(chain) = &self.chain else { return Ok(ServerCertVerified::assertion()) };
        match chain.verify_server_cert(end_entity, intermediates, server_name, ocsp_response, now) {
            Err(rustls::Error::InvalidCertificate(CertificateError::NotValidForName | CertificateError::NotValidForNameContext { .. })) => {
                Ok(ServerCertVerified::assertion())
            }
            other => other,
        }
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(message, cert, dss, &self.provider.signature_verification_algorithms)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(message, cert, dss, &self.provider.signature_verification_algorithms)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.provider.signature_verification_algorithms.supported_schemes()
    }
}

/// The driver's TLS hook: one rustls client session per connection.
#[derive(Clone)]
pub(crate) struct Connector {
    /// `None` with `sslmode=disable` (the driver then never asks for a session).
    config: Option<Arc<rustls::ClientConfig>>,
}

/// A connection's TLS session, for one server name.
pub(crate) struct Connect {
    config: Option<Arc<rustls::ClientConfig>>,
    /// The host as a TLS name, or why it is not one (a Unix socket's is empty: never used).
    name: Result<ServerName<'static>, String>,
}

impl<S: AsyncRead + AsyncWrite + Unpin + Send + 'static> MakeTlsConnect<S> for Connector {
    type Stream = Stream<S>;
    type TlsConnect = Connect;
    type Error = io::Error;

    fn make_tls_connect(&mut self, domain: &str) -> Result<Connect, io::Error> {
        // Asked for every host even with `sslmode=disable`; only `connect` would use it.
        let config = self.config.clone();
        let name = ServerName::try_from(domain.to_string()).map_err(|e| format!("the host `{domain}` as a TLS server name: {e}"));
        Ok(Connect { config, name })
    }
}

impl<S: AsyncRead + AsyncWrite + Unpin + Send + 'static> TlsConnect<S> for Connect {
    type Stream = Stream<S>;
    type Error = io::Error;
    type Future = Pin<Box<dyn Future<Output = Result<Stream<S>, io::Error>> + Send>>;

    fn connect(self, stream: S) -> Self::Future {
        Box::pin(async move {
            let config = self.config.ok_or_else(|| io::Error::other("TLS is disabled (sslmode=disable)"))?;
            let name = self.name.map_err(|e| io::Error::new(io::ErrorKind::InvalidInput, e))?;
            Ok(Stream(tokio_rustls::TlsConnector::from(config).connect(name, stream).await?))
        })
    }
}

/// An encrypted connection to the server.
pub(crate) struct Stream<S>(tokio_rustls::client::TlsStream<S>);

impl<S: AsyncRead + AsyncWrite + Unpin> TlsStream for Stream<S> {
    fn channel_binding(&self) -> ChannelBinding {
        // SCRAM without channel binding (the driver's `channel_binding=prefer` accepts it).
        ChannelBinding::none()
    }
}

impl<S: AsyncRead + AsyncWrite + Unpin> AsyncRead for Stream<S> {
    fn poll_read(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.0).poll_read(cx, buf)
    }
}

impl<S: AsyncRead + AsyncWrite + Unpin> AsyncWrite for Stream<S> {
    fn poll_write(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.0).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.0).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.0).poll_shutdown(cx)
    }

    fn poll_write_vectored(mut self: Pin<&mut Self>, cx: &mut Context<'_>, bufs: &[io::IoSlice<'_>]) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.0).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.0.is_write_vectored()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pairs(v: &[(&str, &str)]) -> Vec<(String, String)> {
        v.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect()
    }

    #[test]
    fn our_parameters_are_taken_out_of_both_forms() {
        let (rest, ours) =
            split("postgres://u:p@db:5432/strait?sslmode=verify-full&application_name=g1&sslrootcert=%2Fetc%2Fca.pem").unwrap();
        assert_eq!(rest, "postgres://u:p@db:5432/strait?application_name=g1");
        assert_eq!(ours, pairs(&[("sslmode", "verify-full"), ("sslrootcert", "/etc/ca.pem")]));

        let (rest, ours) = split("postgresql://db/strait?sslmode=require").unwrap();
        assert_eq!((rest.as_str(), ours), ("postgresql://db/strait", pairs(&[("sslmode", "require")])));

        let (rest, ours) = split(r"host=db sslmode = verify-ca dbname=strait sslrootcert='/a dir/c\'a.pem' user=x").unwrap();
        assert_eq!(rest, "host=db dbname=strait user=x");
        assert_eq!(ours, pairs(&[("sslmode", "verify-ca"), ("sslrootcert", "/a dir/c'a.pem")]));
        assert!(split("host=db sslrootcert='/never closed").unwrap_err().contains("sslrootcert"));
    }

    #[test]
    fn a_bad_setting_is_refused_naming_the_parameter() {
        let message = |url: &str| target(url).err().expect(url).to_string();
        assert!(message("postgres://db/s?sslmode=verify").contains("sslmode=verify is not one of"));
        assert!(message("postgres://db/s?sslmode=verify-full").contains("sslmode=verify-full needs sslrootcert"));
        assert!(message("postgres://db/s?sslmode=verify-ca&sslrootcert=/nonexistent/ca.pem").contains("sslrootcert /nonexistent/ca.pem"));
        assert!(message("postgres://db/s?sslcert=/x.pem").contains("sslcert is given without sslkey"));
        assert!(message("postgres://u:secret@db/s?sslmode=bad").contains("u:***@db"), "the password is not shown");
        assert!(message("postgres://db/s?nonsense=1").contains("nonsense"), "the driver's own refusals still name the option");
        assert!(target("postgres://db/s?sslmode=disable").unwrap().tls.config.is_none());
        assert!(target("postgres://db/s").unwrap().tls.config.is_some(), "prefer, as libpq");
    }
}
