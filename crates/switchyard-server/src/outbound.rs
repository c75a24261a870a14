//! Outgoing HTTP, built one way for every client (the upstream mirror, the CLI, destinations to
//! come): TLS by rustls with the webpki roots plus the CA certificates of `tls.ca_file` (private
//! PKI); redirects followed only within the same origin (a credential never follows a redirect
//! to another host); answers read up to a size limit.

use std::path::Path;

use reqwest::redirect::Policy;
use reqwest::Certificate;

/// Most redirects followed within one origin.
const MAX_REDIRECTS: usize = 5;

/// The CA certificates of a PEM file (one or more `CERTIFICATE` blocks).
pub fn extra_roots(ca_file: &Path) -> anyhow::Result<Vec<Certificate>> {
    let pem = std::fs::read(ca_file).map_err(|e| anyhow::anyhow!("cannot read tls.ca_file {}: {e}", ca_file.display()))?;
    let roots = Certificate::from_pem_bundle(&pem)
        .map_err(|e| anyhow::anyhow!("tls.ca_file {} holds no valid PEM certificate: {e}", ca_file.display()))?;
    if roots.is_empty() {
        anyhow::bail!("tls.ca_file {} holds no PEM certificate", ca_file.display());
    }
    Ok(roots)
}

/// Follows redirects only to the same scheme, host and port.
pub fn same_origin_redirects() -> Policy {
    Policy::custom(|attempt| {
        if attempt.previous().len() > MAX_REDIRECTS {
            return attempt.error(format!("more than {MAX_REDIRECTS} redirects"));
        }
        let first = &attempt.previous()[0];
        let next = attempt.url();
        if first.scheme() == next.scheme() && first.host_str() == next.host_str() && first.port_or_known_default() == next.port_or_known_default() {
            attempt.follow()
        } else {
            attempt.stop()
        }
    })
}

/// An async client: rustls, the built-in roots and `ca_file`'s, same-origin redirects.
pub fn client(ca_file: Option<&Path>) -> anyhow::Result<reqwest::ClientBuilder> {
    let mut builder = reqwest::Client::builder().use_rustls_tls().https_only(false).redirect(same_origin_redirects());
    if let Some(ca_file) = ca_file {
        for root in extra_roots(ca_file)? {
            builder = builder.add_root_certificate(root);
        }
    }
    Ok(builder)
}

/// The same, blocking (the CLI).
pub fn blocking_client(ca_file: Option<&Path>) -> anyhow::Result<reqwest::blocking::Client> {
    let mut builder = reqwest::blocking::Client::builder().use_rustls_tls().redirect(same_origin_redirects());
    if let Some(ca_file) = ca_file {
        for root in extra_roots(ca_file)? {
            builder = builder.add_root_certificate(root);
        }
    }
    Ok(builder.build()?)
}

/// Reads an answer's body, refusing one longer than `limit` bytes without reading it whole.
pub async fn read_limited(mut response: reqwest::Response, limit: usize) -> anyhow::Result<Vec<u8>> {
    if response.content_length().is_some_and(|length| length > limit as u64) {
        anyhow::bail!("the answer is larger than {limit} bytes");
    }
    let mut body = Vec::new();
    while let Some(chunk) = response.chunk().await? {
        if body.len() + chunk.len() > limit {
            anyhow::bail!("the answer is larger than {limit} bytes");
        }
        body.extend_from_slice(&chunk);
    }
    Ok(body)
}
