//! TLS settings for `wss://` (rustls with the ring provider).

use crate::error::{Error, Result};
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName, UnixTime};
use std::sync::Arc;

/// Where a client finds the certificates it trusts.
#[derive(Clone, Debug, Default)]
pub struct TlsOptions {
    /// Extra CA certificates (PEM) to trust, e.g. a development CA.
    pub ca_pem: Option<Vec<u8>>,
    /// Also trust the operating system's certificate store (in addition to
    /// the bundled webpki roots).
    pub native_roots: bool,
    /// Accept any server certificate. For development only: it removes the
    /// protection TLS gives against a man in the middle.
    pub insecure: bool,
}

fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// Build a rustls client configuration from `opts`.
pub fn client_config(opts: &TlsOptions) -> Result<Arc<rustls::ClientConfig>> {
    let builder = rustls::ClientConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .map_err(|e| Error::Tls(e.to_string()))?;
    let config = if opts.insecure {
        builder.dangerous().with_custom_certificate_verifier(Arc::new(AcceptAnyCert)).with_no_client_auth()
    } else {
        let mut roots = rustls::RootCertStore::empty();
        roots.extend(webpki_roots::TLS_SERVER_ROOTS.iter().cloned());
        if opts.native_roots {
            for cert in rustls_native_certs::load_native_certs().certs {
                let _ = roots.add(cert);
            }
        }
        if let Some(pem) = &opts.ca_pem {
            let certs = parse_certs(pem)?;
            if certs.is_empty() {
                return Err(Error::Tls("the CA file holds no PEM certificate".into()));
            }
            for cert in certs {
                roots.add(cert).map_err(|e| Error::Tls(format!("bad CA certificate: {e}")))?;
            }
        }
        builder.with_root_certificates(roots).with_no_client_auth()
    };
    Ok(Arc::new(config))
}

/// Build a rustls server configuration from a PEM certificate chain and a
/// PEM private key (PKCS#8, PKCS#1 or SEC1).
pub fn server_config(cert_pem: &[u8], key_pem: &[u8]) -> Result<Arc<rustls::ServerConfig>> {
    let certs = parse_certs(cert_pem)?;
    if certs.is_empty() {
        return Err(Error::Tls("the certificate file holds no PEM certificate".into()));
    }
    let key: PrivateKeyDer<'static> = rustls_pemfile::private_key(&mut &key_pem[..])
        .map_err(|e| Error::Tls(format!("cannot read private key: {e}")))?
        .ok_or_else(|| Error::Tls("the key file holds no PEM private key".into()))?;
    let mut config = rustls::ServerConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .map_err(|e| Error::Tls(e.to_string()))?
        .with_no_client_auth()
        .with_single_cert(certs, key)
        .map_err(|e| Error::Tls(format!("certificate and key do not match: {e}")))?;
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(Arc::new(config))
}

/// A TLS acceptor for servers, from PEM files' contents.
pub fn acceptor(cert_pem: &[u8], key_pem: &[u8]) -> Result<tokio_rustls::TlsAcceptor> {
    Ok(tokio_rustls::TlsAcceptor::from(server_config(cert_pem, key_pem)?))
}

/// A TLS acceptor that offers HTTP/2 before HTTP/1.1 by ALPN (RFC 9113
/// §3.2), for a server that serves WebSockets over both (RFC 8441).
#[cfg(feature = "http2")]
pub fn acceptor_h2(cert_pem: &[u8], key_pem: &[u8]) -> Result<tokio_rustls::TlsAcceptor> {
    let mut config = (*server_config(cert_pem, key_pem)?).clone();
    config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    Ok(tokio_rustls::TlsAcceptor::from(Arc::new(config)))
}

fn parse_certs(pem: &[u8]) -> Result<Vec<CertificateDer<'static>>> {
    rustls_pemfile::certs(&mut &pem[..]).collect::<std::result::Result<Vec<_>, _>>().map_err(|e| Error::Tls(format!("cannot read PEM certificates: {e}")))
}

#[derive(Debug)]
struct AcceptAnyCert;

impl rustls::client::danger::ServerCertVerifier for AcceptAnyCert {
    fn verify_server_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: UnixTime,
    ) -> std::result::Result<rustls::client::danger::ServerCertVerified, rustls::Error> {
        Ok(rustls::client::danger::ServerCertVerified::assertion())
    }
    fn verify_tls12_signature(
        &self,
        _message: &[u8],
        _cert: &CertificateDer<'_>,
        _dss: &rustls::DigitallySignedStruct,
    ) -> std::result::Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        Ok(rustls::client::danger::HandshakeSignatureValid::assertion())
    }
    fn verify_tls13_signature(
        &self,
        _message: &[u8],
        _cert: &CertificateDer<'_>,
        _dss: &rustls::DigitallySignedStruct,
    ) -> std::result::Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        Ok(rustls::client::danger::HandshakeSignatureValid::assertion())
    }
    fn supported_verify_schemes(&self) -> Vec<rustls::SignatureScheme> {
        rustls::crypto::ring::default_provider().signature_verification_algorithms.supported_schemes()
    }
}
