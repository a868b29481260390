//! The listener's default address, as Lambda has it: the bridge binds `sandbox.localdomain` (the
//! other tests have the simulator inject 127.0.0.1) and subscribes with that name, and nothing
//! listens on any other interface.
//!
//! Needs `sandbox.localdomain` to resolve to 127.0.0.1 (`.ci/run` adds it to /etc/hosts), hence
//! ignored by default: `cargo test --test sandbox_host -- --ignored`.

mod common;

use common::*;
use lambda_sim::{Behaviour, RecordingEndpoint};

/// The local addresses (hex `ADDR:PORT`, as /proc/net/tcp writes them) of the sockets of process
/// `pid` listening on `port`.
fn listening_addresses(pid: u32, port: u16) -> Vec<String> {
    let mut out = Vec::new();
    for table in ["tcp", "tcp6"] {
        let Ok(text) = std::fs::read_to_string(format!("/proc/{pid}/net/{table}")) else {
            continue;
        };
        for line in text.lines().skip(1) {
            let fields: Vec<&str> = line.split_whitespace().collect();
            // local_address is fields[1]; st 0A is LISTEN.
            if fields.len() > 3 && fields[3] == "0A" && fields[1].ends_with(&format!(":{port:04X}"))
            {
                out.push(fields[1].to_string());
            }
        }
    }
    out
}

#[test]
#[ignore = "needs sandbox.localdomain in /etc/hosts (.ci/run adds it)"]
fn the_listener_binds_the_sandbox_name_and_only_it() {
    use std::net::ToSocketAddrs;
    let resolved: Vec<_> = ("sandbox.localdomain", 0)
        .to_socket_addrs()
        .expect("sandbox.localdomain resolves (add `127.0.0.1 sandbox.localdomain` to /etc/hosts)")
        .collect();
    assert!(
        resolved.iter().all(|a| a.ip().is_loopback()),
        "{resolved:?}"
    );
    block_on(async {
        let sink = RecordingEndpoint::start(Behaviour::ok())
            .await
            .expect("sink");
        let found = std::sync::Arc::new(std::sync::Mutex::new((0u16, Vec::new())));
        let into = found.clone();
        let tag = "BRIDGE_TEST_TAG=sandbox-host";
        let mut cfg = config(
            3,
            &[
                ("DISPATCH_POST_URI", sink.url()),
                // Blank is unset: the bridge's own default, not the simulator's 127.0.0.1.
                ("BRIDGE_LISTENER_ADDR", String::new()),
                ("BRIDGE_TEST_TAG", "sandbox-host".into()),
            ],
        );
        cfg.progress = Some(Box::new(move |inv| {
            if inv.index == 1 {
                let port = inv.listener_port.expect("the listener subscribed");
                let pid = pid_of_tagged(tag)
                    .and_then(|p| u32::try_from(p).ok())
                    .expect("the bridge's pid");
                *into.lock().expect("lock") = (port, listening_addresses(pid, port));
            }
        }));
        let report = run(cfg).await;
        assert_clean(&report);
        let uri = report.subscription_body.as_ref().expect("subscribed")["destination"]["URI"]
            .as_str()
            .expect("URI")
            .to_string();
        let (port, addresses) = found.lock().expect("lock").clone();
        assert_eq!(uri, format!("http://sandbox.localdomain:{port}/"));
        // Bound to the loopback address the name resolves to, not to every interface.
        assert_eq!(addresses, vec![format!("0100007F:{port:04X}")]);
        assert_eq!(received_raw(&sink), report.events_sent_raw);
    });
}
