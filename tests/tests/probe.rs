//! A probe loop through the lab's VIP: GET /readyz every 50 ms with the
//! admin's client credentials until it is finished. Every lab test that
//! counts failed requests during a change uses it.

use crate::lab_apply::Kf;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// The API through the lab's VIP.
pub(crate) const VIP_API: &str = "https://10.77.0.100:8443";

/// The longest a probe runs if it is never finished.
const LONGEST: Duration = Duration::from_secs(1800);

/// Each request: the time since the start, and its failure (if it failed).
type Results = Arc<Mutex<Vec<(f64, Option<String>)>>>;

pub(crate) struct Probe {
    stop: Arc<AtomicBool>,
    results: Results,
    thread: std::thread::JoinHandle<()>,
}

/// What a probe saw.
#[derive(Debug)]
pub(crate) struct Probed {
    pub ok: usize,
    /// What each failed request printed.
    pub failures: Vec<String>,
    /// Seconds from the first failed request to the last one (plus one
    /// interval); 0 without failures.
    pub window: f64,
}

impl Probed {
    pub(crate) fn failed(&self) -> usize {
        self.failures.len()
    }
}

impl Probe {
    /// With a copy of the admin credentials in `dir` (what the state
    /// directory holds later does not change what the probe presents).
    pub(crate) fn admin(kf: &Kf, dir: &Path) -> Probe {
        std::fs::create_dir_all(dir).expect("probe dir");
        for f in ["ca.crt", "admin.crt", "admin.key"] {
            std::fs::copy(kf.pki(f), dir.join(f)).expect("copy of the admin credentials");
        }
        Probe::with(dir)
    }

    /// With the credentials in `dir` (`ca.crt`, `admin.crt`, `admin.key`),
    /// read again for every request.
    pub(crate) fn with(dir: &Path) -> Probe {
        let stop = Arc::new(AtomicBool::new(false));
        let results: Results = Arc::new(Mutex::new(Vec::new()));
        let (s, r, dir): (_, _, PathBuf) = (Arc::clone(&stop), Arc::clone(&results), dir.into());
        let thread = std::thread::spawn(move || {
            let t0 = Instant::now();
            while !s.load(Ordering::Relaxed) && t0.elapsed() < LONGEST {
                let o = Command::new("curl")
                    .args(["-sS", "--max-time", "3", "--cacert"])
                    .arg(dir.join("ca.crt"))
                    .arg("--cert")
                    .arg(dir.join("admin.crt"))
                    .arg("--key")
                    .arg(dir.join("admin.key"))
                    .arg(format!("{VIP_API}/readyz"))
                    .output();
                let failure = match o {
                    Ok(o) if o.status.success() && o.stdout == b"ok" => None,
                    Ok(o) => Some(format!(
                        "{}{}",
                        String::from_utf8_lossy(&o.stdout),
                        String::from_utf8_lossy(&o.stderr)
                    )),
                    Err(e) => Some(e.to_string()),
                };
                if let Ok(mut v) = r.lock() {
                    v.push((t0.elapsed().as_secs_f64(), failure));
                }
                std::thread::sleep(Duration::from_millis(50));
            }
        });
        Probe {
            stop,
            results,
            thread,
        }
    }

    pub(crate) fn finish(self) -> Probed {
        self.stop.store(true, Ordering::Relaxed);
        let _ = self.thread.join();
        let v = self.results.lock().map(|v| v.clone()).unwrap_or_default();
        let failed: Vec<f64> = v
            .iter()
            .filter(|(_, f)| f.is_some())
            .map(|(t, _)| *t)
            .collect();
        let window = match (failed.first(), failed.last()) {
            (Some(a), Some(b)) => b - a + 0.05,
            _ => 0.0,
        };
        Probed {
            ok: v.len() - failed.len(),
            failures: v.into_iter().filter_map(|(_, f)| f).collect(),
            window,
        }
    }
}
