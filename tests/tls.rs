//! HTTPS endpoints are verified with rustls: a local endpoint whose self-signed certificate the
//! test trusts explicitly (through `SSL_CERT_FILE`) gets the events; one it does not trust never
//! does, and the refusal is logged without breaking the function.

mod common;

use std::sync::{Arc, Mutex};

use common::*;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio_rustls::TlsAcceptor;

fn fixture(name: &str) -> String {
    format!("{}/tests/fixtures/{name}", env!("CARGO_MANIFEST_DIR"))
}

/// A minimal HTTPS endpoint: records POST bodies, answers 200.
async fn https_endpoint(cert: &str, key: &str) -> (u16, Arc<Mutex<Vec<Vec<u8>>>>) {
    let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(fixture(cert))
        .expect("cert file")
        .collect::<Result<_, _>>()
        .expect("certs");
    let key = PrivateKeyDer::from_pem_file(fixture(key)).expect("key");
    let config = rustls::ServerConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .expect("protocols")
    .with_no_client_auth()
    .with_single_cert(certs, key)
    .expect("server config");
    let acceptor = TlsAcceptor::from(Arc::new(config));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let port = listener.local_addr().expect("addr").port();
    let bodies = Arc::new(Mutex::new(Vec::new()));
    let recorded = bodies.clone();
    tokio::spawn(async move {
        while let Ok((tcp, _)) = listener.accept().await {
            let acceptor = acceptor.clone();
            let recorded = recorded.clone();
            tokio::spawn(async move {
                let Ok(mut tls) = acceptor.accept(tcp).await else {
                    return;
                };
                let mut buf = Vec::new();
                loop {
                    // One request: headers, then Content-Length bytes of body.
                    let header_end = loop {
                        if let Some(i) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
                            break i + 4;
                        }
                        let mut chunk = [0u8; 8192];
                        match tls.read(&mut chunk).await {
                            Ok(0) | Err(_) => return,
                            Ok(n) => buf.extend_from_slice(&chunk[..n]),
                        }
                    };
                    let head = String::from_utf8_lossy(&buf[..header_end]).to_ascii_lowercase();
                    let length: usize = head
                        .lines()
                        .find_map(|l| l.strip_prefix("content-length:"))
                        .and_then(|v| v.trim().parse().ok())
                        .unwrap_or(0);
                    while buf.len() < header_end + length {
                        let mut chunk = [0u8; 8192];
                        match tls.read(&mut chunk).await {
                            Ok(0) | Err(_) => return,
                            Ok(n) => buf.extend_from_slice(&chunk[..n]),
                        }
                    }
                    let body = buf[header_end..header_end + length].to_vec();
                    buf.drain(..header_end + length);
                    if let Ok(mut bodies) = recorded.lock() {
                        bodies.push(body);
                    }
                    if tls
                        .write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 0\r\n\r\n")
                        .await
                        .is_err()
                    {
                        return;
                    }
                }
            });
        }
    });
    (port, bodies)
}

fn events_in(bodies: &Arc<Mutex<Vec<Vec<u8>>>>) -> Vec<serde_json::Value> {
    bodies
        .lock()
        .expect("lock")
        .iter()
        .flat_map(|b| serde_json::from_slice::<Vec<serde_json::Value>>(b).expect("a JSON array"))
        .collect()
}

#[test]
fn a_trusted_self_signed_endpoint_gets_the_events() {
    block_on(async {
        let (port, bodies) = https_endpoint("trusted.pem", "trusted.key").await;
        let report = run(config(
            3,
            &[
                (
                    "DISPATCH_POST_URI",
                    format!("https://localhost:{port}/ingest"),
                ),
                ("SSL_CERT_FILE", fixture("trusted.pem")),
            ],
        ))
        .await;
        assert_clean(&report);
        assert_eq!(
            events_in(&bodies),
            report.events_sent,
            "{}",
            report.extension_output
        );
    });
}

#[test]
fn an_untrusted_certificate_is_refused() {
    block_on(async {
        let (port, bodies) = https_endpoint("untrusted.pem", "untrusted.key").await;
        let mut cfg = config(
            2,
            &[
                (
                    "DISPATCH_POST_URI",
                    format!("https://localhost:{port}/ingest"),
                ),
                // Trusts only the other certificate.
                ("SSL_CERT_FILE", fixture("trusted.pem")),
                ("BRIDGE_FLUSH_TIMEOUT_MS", "300".into()),
            ],
        );
        cfg.shutdown_deadline_ms = 1500;
        let report = run(cfg).await;
        assert_eq!(report.exit_code, Some(0), "{}", report.extension_output);
        assert!(
            events_in(&bodies).is_empty(),
            "nothing reaches an untrusted endpoint"
        );
        let out = &report.extension_output;
        assert!(
            out.lines()
                .any(|l| l.contains("WARN") && l.to_lowercase().contains("certificate")),
            "{out}"
        );
    });
}
