//! rustls configurations (ring provider), server and client side.

use std::sync::Arc;

use rustls::crypto::CryptoProvider;
use rustls::server::WebPkiClientVerifier;
use rustls::{ClientConfig, RootCertStore, ServerConfig};
use rustls_pki_types::CertificateDer;

use crate::files::Pair;

pub fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

fn roots(what: &str, certs: &[CertificateDer<'static>]) -> Result<RootCertStore, String> {
    let mut store = RootCertStore::empty();
    for c in certs {
        store
            .add(c.clone())
            .map_err(|e| format!("{what}: not usable as a trust anchor: {e}"))?;
    }
    Ok(store)
}

/// A server that presents `pair` and, with `client_cas`, asks for (but does
/// not require) a client certificate issued by one of them.
pub fn server_config(
    what: &str,
    pair: &Pair,
    client_cas: Option<&[CertificateDer<'static>]>,
) -> Result<Arc<ServerConfig>, String> {
    build_server_config(what, pair, client_cas, false)
}

/// A server that presents `pair` and requires a client certificate issued by
/// one of `client_cas` (the handshake fails without one), like the kubelet
/// API with anonymous authentication off.
pub fn server_config_requiring_client(
    what: &str,
    pair: &Pair,
    client_cas: &[CertificateDer<'static>],
) -> Result<Arc<ServerConfig>, String> {
    build_server_config(what, pair, Some(client_cas), true)
}

fn build_server_config(
    what: &str,
    pair: &Pair,
    client_cas: Option<&[CertificateDer<'static>]>,
    require_client: bool,
) -> Result<Arc<ServerConfig>, String> {
    let provider = provider();
    let builder = ServerConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .map_err(|e| format!("{what}: {e}"))?;
    let builder = match client_cas {
        Some(cas) => {
            let verifier = WebPkiClientVerifier::builder_with_provider(
                Arc::new(roots(what, cas)?),
                provider.clone(),
            );
            let verifier = if require_client {
                verifier
            } else {
                verifier.allow_unauthenticated()
            }
            .build()
            .map_err(|e| format!("{what}: client CA: {e}"))?;
            builder.with_client_cert_verifier(verifier)
        }
        None => builder.with_no_client_auth(),
    };
    let mut config = builder
        .with_single_cert(pair.chain.clone(), pair.key.clone_key())
        .map_err(|e| format!("{what}: {e}"))?;
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(Arc::new(config))
}

/// A client that trusts `cas` and presents `client`.
pub fn client_config(
    what: &str,
    cas: &[CertificateDer<'static>],
    client: &Pair,
) -> Result<Arc<ClientConfig>, String> {
    let mut config = ClientConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .map_err(|e| format!("{what}: {e}"))?
        .with_root_certificates(roots(what, cas)?)
        .with_client_auth_cert(client.chain.clone(), client.key.clone_key())
        .map_err(|e| format!("{what}: client certificate: {e}"))?;
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(Arc::new(config))
}
