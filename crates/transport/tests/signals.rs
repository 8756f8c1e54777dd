//! `closing_masters` ends the work on SIGTERM/SIGINT (its own process: the
//! signal handlers it installs stay for the life of the test binary).
#![allow(clippy::unwrap_used)]

use kubeforge_transport::{closing_masters, Interrupted};
use std::time::{Duration, Instant};

fn signal_self(name: &str) {
    let ok = std::process::Command::new("kill")
        .arg(format!("-{name}"))
        .arg(std::process::id().to_string())
        .status()
        .unwrap()
        .success();
    assert!(ok, "kill -{name}");
}

#[tokio::test]
async fn finished_work_is_returned_then_a_signal_stops_the_work() {
    // Work that finishes: its output comes back.
    assert_eq!(closing_masters(async { 42 }).await, Ok(42));

    for (name, signal) in [("TERM", 15), ("INT", 2)] {
        let started = Instant::now();
        let out = closing_masters(async {
            // Signalled in the middle of long work.
            tokio::time::sleep(Duration::from_millis(100)).await;
            signal_self(name);
            tokio::time::sleep(Duration::from_secs(60)).await;
            "finished"
        })
        .await;
        let err = out.unwrap_err();
        assert_eq!(err.signal, signal);
        assert_eq!(err.name, format!("SIG{name}"));
        assert_eq!(err.exit_code(), 128 + signal as u8);
        assert!(started.elapsed() < Duration::from_secs(20));
        let msg = err.to_string();
        assert!(msg.contains("SSH connections"), "{msg}");
        assert!(matches!(err, Interrupted { .. }));
    }
}
