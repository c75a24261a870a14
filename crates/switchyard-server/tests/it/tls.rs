//! TLS for outgoing connections: the upstream mirror against a real HTTPS server whose
//! certificate comes from a CA the test creates; refused without that CA; plain http refused
//! unless allowed.

use std::sync::Arc;

use axum::routing::get;
use serde_json::{json, Value};
use tokio_rustls::rustls;

use crate::{TestServer, SECRET, TOKEN};

/// A CA made for the test, and a certificate it signed for `localhost` and `127.0.0.1`.
pub struct TestPki {
    pub ca_pem: String,
    pub server: Arc<rustls::ServerConfig>,
}

pub fn test_pki() -> TestPki {
    use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, KeyPair, KeyUsagePurpose};
    let ca_key = KeyPair::generate().unwrap();
    let mut ca_params = CertificateParams::new(Vec::<String>::new()).unwrap();
    ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    ca_params.distinguished_name.push(DnType::CommonName, "Switchyard test CA");
    ca_params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign, KeyUsagePurpose::DigitalSignature];
    let ca = ca_params.self_signed(&ca_key).unwrap();
    let leaf_key = KeyPair::generate().unwrap();
    let leaf = CertificateParams::new(vec!["localhost".to_owned(), "127.0.0.1".to_owned()]).unwrap().signed_by(&leaf_key, &ca, &ca_key).unwrap();
    let key = rustls::pki_types::PrivateKeyDer::Pkcs8(leaf_key.serialize_der().into());
    let server = rustls::ServerConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_no_client_auth()
        .with_single_cert(vec![leaf.der().clone()], key)
        .unwrap();
    TestPki { ca_pem: ca.pem(), server: Arc::new(server) }
}

/// Serves `router` over HTTPS on a random loopback port; returns the port.
pub async fn serve_https(router: axum::Router, tls: Arc<rustls::ServerConfig>) -> u16 {
    use tower::Service as _;
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let acceptor = tokio_rustls::TlsAcceptor::from(tls);
    tokio::spawn(async move {
        loop {
            let Ok((stream, _)) = listener.accept().await else { continue };
            let (acceptor, router) = (acceptor.clone(), router.clone());
            tokio::spawn(async move {
                // A client that does not trust the CA ends the handshake: nothing to serve.
                let Ok(stream) = acceptor.accept(stream).await else { return };
                let service = hyper::service::service_fn(move |request: hyper::Request<hyper::body::Incoming>| {
                    let mut router = router.clone();
                    async move { router.call(request.map(axum::body::Body::new)).await }
                });
                let _ = hyper::server::conn::http1::Builder::new().serve_connection(hyper_util::rt::TokioIo::new(stream), service).await;
            });
        }
    });
    port
}

#[tokio::test]
async fn upstream_mirror_over_https_with_a_private_ca() {
    let pki = test_pki();
    let example: Value = serde_json::from_str(include_str!("../../../../examples/platform-flags.json")).unwrap();
    let upstream = axum::Router::new().route(
        "/api/feature_flag/local_evaluation/",
        get(move |headers: axum::http::HeaderMap| {
            let example = example.clone();
            async move {
                assert_eq!(headers["authorization"], format!("Bearer {SECRET}"), "the personal key goes with the poll");
                axum::Json(example)
            }
        }),
    );
    let port = serve_https(upstream, pki.server.clone()).await;
    let dir = tempfile::tempdir().unwrap();
    let ca_file = dir.path().join("ca.pem");
    std::fs::write(&ca_file, &pki.ca_pem).unwrap();
    let mirror_of = |ca_file: Option<std::path::PathBuf>| {
        move |c: &mut switchyard_server::Config| {
            c.upstream.url = Some(format!("https://localhost:{port}"));
            c.upstream.personal_api_key = Some(SECRET.into());
            c.upstream.project_token = Some(TOKEN.into());
            c.upstream.poll_interval_secs = 1;
            c.upstream.timeout_secs = 2;
            c.tls.ca_file = ca_file;
        }
    };

    // Trusting the test's CA: the snapshot is fetched and served.
    let mirror = TestServer::start_with(mirror_of(Some(ca_file.clone()))).await;
    crate::wait_until("the mirror fetched the snapshot over https", async || {
        mirror.client.get(format!("{}/_readiness/flags", mirror.url)).send().await.unwrap().status() == 200
    })
    .await;
    let answer: Value = mirror
        .client
        .post(format!("{}/flags/?v=2", mirror.url))
        .json(&json!({"token": TOKEN, "distinct_id": "user_42", "groups": {"workspace": "ws_1"}}))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(answer["flags"]["agent_debugger_ui"]["enabled"], true, "{answer}");

    // Without it the certificate is refused: no snapshot, intake still ready.
    let untrusting = TestServer::start_with(mirror_of(None)).await;
    crate::wait_until("a failed poll is counted", async || {
        !untrusting.metrics().await.contains("switchyard_flags_upstream_failures_total 0")
    })
    .await;
    assert_eq!(untrusting.client.get(format!("{}/_readiness/flags", untrusting.url)).send().await.unwrap().status(), 503);
    assert_eq!(untrusting.client.get(format!("{}/_readiness", untrusting.url)).send().await.unwrap().status(), 200);
}

#[test]
fn plain_http_upstream_is_refused_unless_allowed() {
    let dir = tempfile::tempdir().unwrap();
    let mut config = switchyard_server::Config {
        data_dir: dir.path().to_owned(),
        secret_key: Some(SECRET.into()),
        ..Default::default()
    };
    config.upstream.url = Some("http://flags.example.internal".into());
    config.upstream.personal_api_key = Some("phx_personal".into());
    let error = switchyard_server::AppState::open(config.clone()).err().expect("plain http refused");
    assert!(error.to_string().contains("allow_insecure_http"), "{error}");
    config.upstream.allow_insecure_http = true;
    assert!(switchyard_server::AppState::open(config).is_ok());

    let mut bad_ca = switchyard_server::Config { data_dir: dir.path().to_owned(), ..Default::default() };
    let not_pem = dir.path().join("not.pem");
    std::fs::write(&not_pem, "not a certificate").unwrap();
    bad_ca.tls.ca_file = Some(not_pem);
    assert!(switchyard_server::outbound::client(bad_ca.tls.ca_file.as_deref()).is_err(), "a CA file without certificates is refused");
}
