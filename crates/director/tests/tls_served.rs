//! A cluster served over TLS (`strata serve --listen --tls-ca --tls-cert --tls-key`): clients
//! with a certificate of its authority run Cycle through it while it is killed with SIGKILL
//! and restarted, and keep every acknowledged commit; a client without TLS, or with a
//! certificate of another authority, is refused in one line that says why.

// Test helpers may unwrap: a panic there is a failed test.
#![allow(clippy::unwrap_used, clippy::expect_used, unreachable_pub)]

use std::path::Path;
use std::time::Duration;

use strata_director::cluster_file::CLUSTER_FILE_NAME;
use strata_testkit::certs::{self, CA, NODE_CERT, NODE_KEY, ROGUE_CERT, ROGUE_KEY};

#[path = "common/served.rs"]
mod served;

use served::{
    check_through_the_network_with, collect_acks, cycle_client_with, serve_with, stop_client,
    strata,
};

fn flags(files: &certs::Files) -> Vec<String> {
    vec![
        "--tls-ca".into(),
        files.ca.display().to_string(),
        "--tls-cert".into(),
        files.cert.display().to_string(),
        "--tls-key".into(),
        files.key.display().to_string(),
    ]
}

fn check(cluster_file: &Path, flags: &[String]) -> std::process::Output {
    strata()
        .args(["workload", "check", "--cluster-file"])
        .arg(cluster_file)
        .args(flags)
        .output()
        .unwrap()
}

#[test]
fn a_cluster_served_over_tls_takes_only_clients_with_its_certificate() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let node = certs::write(dir.path(), "node", CA, NODE_CERT, NODE_KEY).unwrap();
    // Signed by another authority, presented with the right one as its own.
    let rogue = certs::write(dir.path(), "rogue", CA, ROGUE_CERT, ROGUE_KEY).unwrap();
    let ours = flags(&node);
    let ours: Vec<&str> = ours.iter().map(String::as_str).collect();

    let (mut server, address, _) = serve_with(&data, "127.0.0.1:0", &ours);
    let cluster_file = data.join(CLUSTER_FILE_NAME);

    // Cycle over TLS; the server is killed in the middle and restarted over TLS, twice, and
    // the client follows each recovery over TLS.
    let mut acked = Vec::new();
    let (client, acks) = cycle_client_with(&cluster_file, &ours);
    for _ in 0..2 {
        collect_acks(&acks, &mut acked, Duration::from_secs(3), 100);
        server.kill().unwrap(); // SIGKILL
        server.wait().unwrap();
        let restarted;
        (server, restarted, _) = serve_with(&data, &address, &ours);
        assert_eq!(restarted, address);
    }
    collect_acks(&acks, &mut acked, Duration::from_secs(1), 100);
    stop_client(client, &acks, &mut acked);
    let tls = strata_net::Tls::from_files(&node.ca, &node.cert, &node.key).unwrap();
    check_through_the_network_with(&cluster_file, &acked, Some(&tls));
    let checked = check(&cluster_file, &flags(&node));
    assert!(checked.status.success(), "{checked:?}");

    // Without TLS: refused, in one line that says TLS is what is missing.
    let plain = check(&cluster_file, &[]);
    assert_eq!(plain.status.code(), Some(1), "{plain:?}");
    let text = String::from_utf8_lossy(&plain.stderr);
    assert!(text.contains("TLS"), "{text}");
    assert_eq!(text.lines().count(), 1, "{text}");

    // A certificate of another authority: refused, in one line that names the certificate.
    let refused = check(&cluster_file, &flags(&rogue));
    assert_eq!(refused.status.code(), Some(1), "{refused:?}");
    let text = String::from_utf8_lossy(&refused.stderr);
    assert!(text.contains("certificate"), "{text}");
    assert_eq!(text.lines().count(), 1, "{text}");

    server.kill().unwrap();
    server.wait().unwrap();
}

#[test]
fn tls_options_are_checked_before_anything_starts() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let node = certs::write(dir.path(), "node", CA, NODE_CERT, NODE_KEY).unwrap();

    // One of the three alone: a usage error.
    let alone = strata()
        .args(["serve", "--listen", "127.0.0.1:0", "--data-dir"])
        .arg(&data)
        .arg("--tls-ca")
        .arg(&node.ca)
        .output()
        .unwrap();
    assert_eq!(alone.status.code(), Some(2), "{alone:?}");

    // TLS without a network to serve.
    let unlistened = strata()
        .args(["serve", "--data-dir"])
        .arg(&data)
        .args(flags(&node))
        .output()
        .unwrap();
    assert_eq!(unlistened.status.code(), Some(1), "{unlistened:?}");
    assert!(
        String::from_utf8_lossy(&unlistened.stderr).contains("--listen"),
        "{unlistened:?}"
    );

    // On a client command, TLS without a cluster file: refused, not ignored.
    let unused = strata()
        .args(["workload", "check", "--data-dir"])
        .arg(&data)
        .args(flags(&node))
        .output()
        .unwrap();
    assert_eq!(unused.status.code(), Some(1), "{unused:?}");
    assert!(
        String::from_utf8_lossy(&unused.stderr).contains("--cluster-file"),
        "{unused:?}"
    );

    // A key that is not the certificate's: refused before the directory is touched.
    let mut mismatched = flags(&node);
    mismatched[5] = dir.path().join("rogue.key").display().to_string();
    std::fs::write(&mismatched[5], ROGUE_KEY).unwrap();
    let refused = strata()
        .args(["serve", "--listen", "127.0.0.1:0", "--data-dir"])
        .arg(&data)
        .args(&mismatched)
        .output()
        .unwrap();
    assert_eq!(refused.status.code(), Some(1), "{refused:?}");
    let text = String::from_utf8_lossy(&refused.stderr);
    assert!(text.contains("rogue.key"), "{text}");
    assert!(!data.exists(), "the data directory was created");
}
