//! The etcd client against a real etcd (see `strata_testkit::etcd`).

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::time::Duration;

use strata_core::ErrorKind;
use strata_net::etcd::{ETCD_CALL_TIMEOUT, Etcd, Versioned};
use strata_testkit::etcd::EtcdServer;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_key_is_written_only_from_the_version_its_writer_read() {
    let Some(server) = EtcdServer::start() else {
        return;
    };
    let etcd = Etcd::connect(&[server.endpoint()]).unwrap();
    let key = b"/test/swap";
    let held = |v: Option<Versioned>| v.map(|v| (v.value, v.version));
    assert_eq!(etcd.get(key).await.unwrap(), None);
    // Version 0 means "does not exist": the first writer creates it.
    assert_eq!(
        etcd.put_if_version(key, 0, b"one".to_vec(), 0)
            .await
            .unwrap(),
        Ok(1)
    );
    let one = etcd.get(key).await.unwrap().unwrap();
    assert_eq!((one.value.as_slice(), one.version), (&b"one"[..], 1));
    assert!(one.mod_revision > 0);
    // A second writer that also read "absent" loses, and is told what is there.
    let lost = etcd
        .put_if_version(key, 0, b"other".to_vec(), 0)
        .await
        .unwrap();
    assert_eq!(lost, Err(Some(one.clone())));
    // So does one from a version that never was.
    let lost = etcd
        .put_if_version(key, 5, b"other".to_vec(), 0)
        .await
        .unwrap();
    assert_eq!(lost, Err(Some(one.clone())));
    assert_eq!(
        etcd.put_if_version(key, 1, b"two".to_vec(), 0)
            .await
            .unwrap(),
        Ok(2)
    );
    assert_eq!(
        held(etcd.get(key).await.unwrap()),
        Some((b"two".to_vec(), 2))
    );
    // A swap on a key that does not exist, from a version it would have: lost, told "absent".
    assert_eq!(
        etcd.put_if_version(b"/test/none", 3, b"x".to_vec(), 0)
            .await
            .unwrap(),
        Err(None)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_key_is_written_only_over_the_write_its_writer_read() {
    let Some(server) = EtcdServer::start() else {
        return;
    };
    let etcd = Etcd::connect(&[server.endpoint()]).unwrap();
    let key = b"/test/revision";
    // Revision 0 means "does not exist".
    assert_eq!(
        etcd.put_if_mod_revision(key, 0, b"one".to_vec(), 0)
            .await
            .unwrap(),
        Ok(())
    );
    let one = etcd.get(key).await.unwrap().unwrap();
    assert_eq!(
        etcd.put_if_mod_revision(key, 0, b"x".to_vec(), 0)
            .await
            .unwrap(),
        Err(Some(one.clone()))
    );
    // Another key's write moves the store's revision, not this key's last write.
    etcd.put_if_version(b"/test/elsewhere", 0, b"y".to_vec(), 0)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(
        etcd.put_if_mod_revision(key, one.mod_revision, b"two".to_vec(), 0)
            .await
            .unwrap(),
        Ok(())
    );
    let two = etcd.get(key).await.unwrap().unwrap();
    assert!(two.mod_revision > one.mod_revision);
    // A writer that read "one" loses now.
    assert_eq!(
        etcd.put_if_mod_revision(key, one.mod_revision, b"three".to_vec(), 0)
            .await
            .unwrap(),
        Err(Some(two))
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_swaps_from_one_version_have_one_winner() {
    let Some(server) = EtcdServer::start() else {
        return;
    };
    let etcd = Etcd::connect(&[server.endpoint()]).unwrap();
    for round in 0..20_i64 {
        let racers: Vec<_> = (0..8)
            .map(|i| {
                let etcd = etcd.clone();
                tokio::spawn(async move {
                    etcd.put_if_version(b"/test/race", round, vec![i], 0)
                        .await
                        .unwrap()
                })
            })
            .collect();
        let mut won = 0;
        for racer in racers {
            if racer.await.unwrap().is_ok() {
                won += 1;
            }
        }
        assert_eq!(won, 1, "round {round}");
    }
    assert_eq!(etcd.get(b"/test/race").await.unwrap().unwrap().version, 20);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_key_on_a_lease_lives_while_it_is_renewed_and_goes_with_it() {
    let Some(server) = EtcdServer::start() else {
        return;
    };
    let etcd = Etcd::connect(&[server.endpoint()]).unwrap();
    let lease = etcd.grant(Duration::from_secs(2)).await.unwrap();
    assert_eq!(
        etcd.put_if_version(b"/test/held", 0, b"me".to_vec(), lease)
            .await
            .unwrap(),
        Ok(1)
    );
    let mut keeper = etcd.keeper(lease).await.unwrap();
    // Renewed past twice its time to live: still there.
    for _ in 0..5 {
        tokio::time::sleep(Duration::from_millis(1000)).await;
        let ttl = keeper.renew().await.unwrap();
        assert!(
            ttl > Duration::ZERO && ttl <= Duration::from_secs(2),
            "{ttl:?}"
        );
    }
    assert!(etcd.get(b"/test/held").await.unwrap().is_some());
    // Not renewed: gone once it runs out, and a renewal then says it expired.
    tokio::time::sleep(Duration::from_millis(3500)).await;
    assert_eq!(etcd.get(b"/test/held").await.unwrap(), None);
    let e = keeper.renew().await.unwrap_err();
    assert!(e.to_string().contains("expired"), "{e}");
    // Revoked: gone at once.
    let lease = etcd.grant(Duration::from_secs(60)).await.unwrap();
    etcd.put_if_version(b"/test/held", 0, b"again".to_vec(), lease)
        .await
        .unwrap()
        .unwrap();
    etcd.revoke(lease).await.unwrap();
    assert_eq!(etcd.get(b"/test/held").await.unwrap(), None);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_etcd_that_is_down_is_unavailable_and_comes_back() {
    let Some(mut server) = EtcdServer::start() else {
        return;
    };
    let etcd = Etcd::connect(&[server.endpoint()]).unwrap();
    etcd.put_if_version(b"/test/kept", 0, b"v".to_vec(), 0)
        .await
        .unwrap()
        .unwrap();
    server.kill();
    let started = std::time::Instant::now();
    let e = etcd.get(b"/test/kept").await.unwrap_err();
    assert!(matches!(e.kind, ErrorKind::Unavailable(_)), "{e}");
    assert!(e.to_string().contains(&server.endpoint()), "{e}");
    assert!(started.elapsed() < ETCD_CALL_TIMEOUT + Duration::from_secs(2));
    // The same client reaches it again once it is back, and what it stored is there.
    server.restart();
    let mut read = etcd.get(b"/test/kept").await;
    for _ in 0..50 {
        if read.is_ok() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
        read = etcd.get(b"/test/kept").await;
    }
    assert_eq!(read.unwrap().unwrap().value, b"v");
}

#[tokio::test]
async fn endpoints_that_are_not_host_port_are_refused() {
    let e = Etcd::connect(&[]).unwrap_err();
    assert!(matches!(e.kind, ErrorKind::InvalidRequest(_)), "{e}");
    let e = Etcd::connect(&["not a host".into()]).unwrap_err();
    assert!(matches!(e.kind, ErrorKind::InvalidRequest(_)), "{e}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_list_holds_the_keys_of_its_prefix_and_a_revoked_lease_takes_its_own() {
    let Some(server) = EtcdServer::start() else {
        return;
    };
    let etcd = Etcd::connect(&[server.endpoint()]).unwrap();
    // Neighbours on both sides of the prefix, and a prefix ending in 0xff, stay out.
    for key in [
        &b"/w/"[..],
        b"/w0",
        b"/v/a",
        b"/w/\xff\xff",
        b"/w/a",
        b"/w/b",
    ] {
        etcd.put(key, key.to_vec(), 0).await.unwrap();
    }
    let listed = |l: Vec<(Vec<u8>, Versioned)>| {
        l.into_iter()
            .map(|(k, v)| {
                assert_eq!(k, v.value);
                k
            })
            .collect::<Vec<_>>()
    };
    assert_eq!(
        listed(etcd.list(b"/w/").await.unwrap()),
        vec![
            b"/w/".to_vec(),
            b"/w/a".to_vec(),
            b"/w/b".to_vec(),
            b"/w/\xff\xff".to_vec()
        ]
    );
    assert_eq!(
        listed(etcd.list(b"/w/\xff").await.unwrap()),
        vec![b"/w/\xff\xff".to_vec()]
    );
    assert!(etcd.list(b"/none/").await.unwrap().is_empty());
    // A put overwrites whatever is there, and can attach a key to a lease; revoking the lease
    // removes that key and no other.
    let lease = etcd.grant(Duration::from_secs(30)).await.unwrap();
    etcd.put(b"/w/a", b"leased".to_vec(), lease).await.unwrap();
    assert_eq!(etcd.get(b"/w/a").await.unwrap().unwrap().value, b"leased");
    etcd.revoke(lease).await.unwrap();
    assert_eq!(etcd.get(b"/w/a").await.unwrap(), None);
    assert_eq!(etcd.list(b"/w/").await.unwrap().len(), 3);
}
