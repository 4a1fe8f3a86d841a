//! A `Probe` records what fixture tasks did (with the tokio clock time of each event) and
//! how many ran at once. Tests create one per test, so parallel tests never share state.

use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use tokio::time::Instant;

/// What a test observes.
pub struct Probe {
    name: String,
    origin: Instant,
    events: Mutex<Vec<(Duration, String)>>,
    running: AtomicUsize,
    max_running: AtomicUsize,
    /// Closed until [`Probe::open_gate`]; the `gated` fixture waits on it.
    gate: tokio::sync::watch::Sender<bool>,
}

fn probes() -> &'static Mutex<HashMap<String, Arc<Probe>>> {
    static PROBES: OnceLock<Mutex<HashMap<String, Arc<Probe>>>> = OnceLock::new();
    PROBES.get_or_init(Mutex::default)
}

impl Probe {
    /// A fresh probe with a unique name; its clock starts now.
    pub fn new() -> Arc<Probe> {
        static NEXT: AtomicUsize = AtomicUsize::new(0);
        let name = format!("probe-{}", NEXT.fetch_add(1, Ordering::Relaxed));
        let probe = Arc::new(Probe {
            name: name.clone(),
            origin: Instant::now(),
            events: Mutex::default(),
            running: AtomicUsize::new(0),
            max_running: AtomicUsize::new(0),
            gate: tokio::sync::watch::Sender::new(false),
        });
        probes().lock().unwrap().insert(name, probe.clone());
        probe
    }

    /// The probe registered under `name`.
    pub fn get(name: &str) -> Arc<Probe> {
        probes()
            .lock()
            .unwrap()
            .get(name)
            .cloned()
            .unwrap_or_else(|| panic!("no probe named {name}"))
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    /// Records an event at the current tokio time.
    pub fn record(&self, event: String) {
        let at = self.origin.elapsed();
        self.events.lock().unwrap().push((at, event));
    }

    /// Every event, in order.
    pub fn events(&self) -> Vec<String> {
        self.events
            .lock()
            .unwrap()
            .iter()
            .map(|(_, e)| e.clone())
            .collect()
    }

    /// Events starting with `prefix`, with their times.
    pub fn timed(&self, prefix: &str) -> Vec<(Duration, String)> {
        self.events
            .lock()
            .unwrap()
            .iter()
            .filter(|(_, e)| e.starts_with(prefix))
            .cloned()
            .collect()
    }

    /// How many events start with `prefix`.
    pub fn count(&self, prefix: &str) -> usize {
        self.timed(prefix).len()
    }

    /// Marks one run as running until the guard drops (also when its future is dropped).
    pub fn enter(self: &Arc<Self>) -> Running {
        let now = self.running.fetch_add(1, Ordering::SeqCst) + 1;
        self.max_running.fetch_max(now, Ordering::SeqCst);
        Running(self.clone())
    }

    pub fn running(&self) -> usize {
        self.running.load(Ordering::SeqCst)
    }

    /// The most runs that were inside `enter` at once.
    pub fn max_running(&self) -> usize {
        self.max_running.load(Ordering::SeqCst)
    }

    /// Lets every current and later [`Probe::gate`] waiter through.
    pub fn open_gate(&self) {
        self.gate.send_replace(true);
    }

    /// Resolves once the gate is open.
    pub async fn gate(&self) {
        let mut open = self.gate.subscribe();
        // The sender lives as long as the probe, so the wait ends only when it opens.
        let _ = open.wait_for(|open| *open).await;
    }
}

/// Held while a run is running.
pub struct Running(Arc<Probe>);

impl Drop for Running {
    fn drop(&mut self) {
        self.0.running.fetch_sub(1, Ordering::SeqCst);
    }
}
