//! Every bench scenario in a small configuration: its JSON has the expected
//! fields and nothing was lost. Speed is never asserted here.

mod common;

use std::process::Command;

#[test]
fn every_scenario_runs_small_and_loses_nothing() {
    let cache = tempfile::tempdir().unwrap();
    let out_dir = tempfile::tempdir().unwrap();
    let out = out_dir.path().join("results.json");
    let output = Command::new(common::bin())
        .args([
            "bench",
            "all",
            "--local",
            "--clients",
            "3",
            "--messages",
            "20",
            "--size",
            "300000",
            "--rate",
            "200",
            "--duration",
            "1",
            "--json",
            "--out",
        ])
        .arg(&out)
        .env("FASTCHAT_BENCH_CACHE", cache.path())
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        output.status.success(),
        "stdout: {stdout}\nstderr: {stderr}"
    );

    let results: Vec<serde_json::Value> = stdout
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    let names: Vec<&str> = results
        .iter()
        .map(|r| r["scenario"].as_str().unwrap())
        .collect();
    assert_eq!(
        names,
        [
            "raw-quic",
            "ring",
            "cross-node",
            "latency",
            "image",
            "fanout",
            "drain",
            "connect"
        ]
    );
    // The cross-node load ran on three nodes and is read against the ring.
    let cross = results
        .iter()
        .find(|r| r["scenario"] == "cross-node")
        .unwrap();
    let notes = cross["notes"].to_string();
    assert!(
        notes.contains("3 nodes") && notes.contains("of the single-node ring"),
        "{notes}"
    );
    for r in &results {
        let name = r["scenario"].as_str().unwrap();
        assert_eq!(r["lost"], 0, "{name}: {r}");
        assert_eq!(r["errors"], 0, "{name}: {r}");
        assert!(r["throughput"].as_f64().unwrap() > 0.0, "{name}: {r}");
        assert!(r["operations"].as_u64().unwrap() > 0, "{name}: {r}");
        assert!(r["node_peak_rss_kib"].as_u64().unwrap() > 0, "{name}: {r}");
        for field in [
            "clients",
            "seconds",
            "unit",
            "notes",
            "ratio_to_raw",
            "latency",
        ] {
            assert!(r.get(field).is_some(), "{name} lacks {field}");
        }
    }
    let by = |n: &str| results.iter().find(|r| r["scenario"] == n).unwrap();
    assert_eq!(by("ring")["operations"], 60);
    assert_eq!(by("fanout")["operations"], 60);
    assert_eq!(by("image")["operations"], 300000);
    assert_eq!(by("connect")["operations"], 3);
    let latency = &by("latency")["latency"];
    for p in ["p50_us", "p90_us", "p99_us", "p999_us", "max_us"] {
        assert!(latency[p].as_u64().unwrap() > 0, "{p}");
    }
    assert!(by("raw-quic")["raw"].is_array());
    assert!(by("image")["ratio_to_raw"].as_f64().unwrap() > 0.0);
    assert!(by("ring")["ratio_to_raw"].as_f64().unwrap() > 0.0);

    // The file holds the same, and a plot was drawn per scenario.
    let saved: Vec<serde_json::Value> =
        serde_json::from_str(&std::fs::read_to_string(&out).unwrap()).unwrap();
    assert_eq!(saved.len(), 8);
    let svg = std::fs::read_to_string(out_dir.path().join("results.latency.svg")).unwrap();
    assert!(svg.contains("<svg"));
}
