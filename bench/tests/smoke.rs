//! The benchmark runs end to end on a tiny setting and reports sane counts
//! (its timings are not checked: speed is for the benchmark, not for tests).

#[test]
fn tiny_run_reports_every_delivery() {
    let output = std::process::Command::new(env!("CARGO_BIN_EXE_streamer-bench"))
        .args([
            "--connections",
            "20",
            "--broadcast-sizes",
            "20",
            "--repeats",
            "2",
            "--echo-connections",
            "2",
            "--duration",
            "1",
            "--history-recipients",
            "20",
            "--recoveries",
            "3",
            "--json",
        ])
        .output()
        .expect("run streamer-bench");
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let report: serde_json::Value = serde_json::from_slice(&output.stdout).expect("json report");
    assert_eq!(report["connect"]["connections"], 20);
    assert!(
        report["echo"]["requests_per_sec"]
            .as_f64()
            .is_some_and(|r| r > 0.0)
    );
    assert!(
        report["echo"]["bare_requests_per_sec"]
            .as_f64()
            .is_some_and(|r| r > 0.0)
    );
    let broadcast = &report["broadcast"][0];
    assert_eq!(broadcast["recipients"], 20);
    for key in ["streamer", "baseline_http", "baseline_websocket"] {
        assert!(
            broadcast[key]["last_frame"]["p50_ms"]
                .as_f64()
                .is_some_and(|ms| ms > 0.0),
            "{key}"
        );
    }
    assert!(
        broadcast["control_plane_cpu_us_per_recipient"]
            .as_f64()
            .is_some_and(|us| us > 0.0)
    );
    let history = &report["history"];
    assert_eq!(history["recipients"], 20);
    for key in ["with_history", "without_history", "recovery"] {
        assert!(
            history[key]["p50_ms"].as_f64().is_some_and(|ms| ms > 0.0),
            "{key}"
        );
    }
    let memory = &report["memory"][0];
    for key in [
        "control_plane_bytes_per_connection",
        "gateway_bytes_per_connection",
    ] {
        assert!(memory[key].as_f64().is_some(), "{key}");
    }
}
