//! The Garage cluster harness itself, on real garage processes: three healthy nodes, the bucket
//! with the key allowed on it, every node's S3 endpoint answering, and a node killed and
//! restarted.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::{Duration, Instant};

use strata_tests::GarageCluster;
use strata_tests::garage::NODES;

/// An unsigned `GET /BUCKET` to `endpoint` (`http://IP:PORT`): the status line and body.
fn anonymous_get(endpoint: &str, bucket: &str) -> String {
    let authority = endpoint.strip_prefix("http://").unwrap();
    let mut stream = TcpStream::connect(authority).unwrap();
    stream
        .set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    write!(
        stream,
        "GET /{bucket} HTTP/1.1\r\nHost: {authority}\r\nConnection: close\r\n\r\n"
    )
    .unwrap();
    let mut response = String::new();
    stream.read_to_string(&mut response).unwrap();
    response
}

#[test]
fn three_nodes_survive_one_killed_and_restarted() {
    let t = Instant::now();
    let mut cluster = GarageCluster::start().expect("garage cluster");
    eprintln!("cluster started in {:?}", t.elapsed());

    // All three nodes healthy, as each of them sees it.
    for i in 0..NODES {
        let health = cluster.health(i).unwrap();
        assert!(health.is_fully_healthy(), "node {i}: {health:?}");
        assert_eq!(health.storage_nodes_up, 3, "node {i}: {health:?}");
        let status = cluster.status(i).unwrap();
        assert!(!status.contains("FAILED NODES"), "node {i}:\n{status}");
        for j in 0..NODES {
            assert!(
                status.contains(cluster.short_node_id(j)),
                "node {j} missing in node {i}'s status:\n{status}"
            );
        }
    }

    // The bucket exists, the key may read, write and own it.
    let info = cluster
        .garage(1, ["bucket", "info", cluster.bucket()])
        .unwrap();
    let key_line = info
        .lines()
        .find(|l| l.contains(cluster.access_key_id()))
        .unwrap_or_else(|| panic!("key not allowed on the bucket:\n{info}"));
    assert!(key_line.trim_start().starts_with("RWO"), "{info}");
    let credentials = std::fs::read_to_string(cluster.credentials_file()).unwrap();
    assert_eq!(
        credentials,
        format!(
            "[default]\naws_access_key_id = {}\naws_secret_access_key = {}\n",
            cluster.access_key_id(),
            cluster.secret_access_key()
        )
    );
    assert!(cluster.access_key_id().starts_with("GK"));

    // Every node's S3 API answers path-style requests, in our region, and wants a signature.
    for i in 0..NODES {
        let endpoint = cluster.endpoint(i);
        assert_eq!(
            endpoint,
            format!("http://127.0.0.{}:", i + 1) + endpoint.rsplit(':').next().unwrap()
        );
        let response = anonymous_get(&endpoint, cluster.bucket());
        assert!(
            response.starts_with("HTTP/1.1 403"),
            "{endpoint}: {response}"
        );
        assert!(
            response.contains("<Region>garage</Region>"),
            "{endpoint}: {response}"
        );
    }

    // Kill node 3: the others notice (each on its own, after a ping timeout) and keep quorum.
    let t = Instant::now();
    cluster.kill(2).unwrap();
    assert!(!cluster.is_running(2));
    for i in [0, 1] {
        let health = cluster
            .wait_health(i, Duration::from_secs(30), "2 storage nodes up", |h| {
                h.storage_nodes_up == 2
            })
            .unwrap();
        eprintln!(
            "node 3's death noticed by node {} after {:?}",
            i + 1,
            t.elapsed()
        );
        assert_eq!(health.status, "degraded", "{health:?}");
        assert_eq!(health.partitions_quorum, health.partitions, "{health:?}");
        let status = cluster.status(i).unwrap();
        let failed = status
            .split_once("FAILED NODES")
            .unwrap_or_else(|| panic!("no failed nodes:\n{status}"))
            .1;
        assert!(failed.contains(cluster.short_node_id(2)), "{status}");
    }
    assert!(cluster.status(2).is_err());

    // Restart it: healthy again, as every node sees it.
    let t = Instant::now();
    cluster.start_node(2).unwrap();
    cluster.wait_healthy(Duration::from_secs(30)).unwrap();
    eprintln!("node 3 restarted and cluster healthy in {:?}", t.elapsed());
    assert!(cluster.start_node(2).is_err(), "already running");
    let response = anonymous_get(&cluster.endpoint(2), cluster.bucket());
    assert!(response.starts_with("HTTP/1.1 403"), "{response}");

    cluster.stop();
}
