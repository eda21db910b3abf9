//! Chrome trace-event JSON (opens in Perfetto or chrome://tracing): one track per node.

/// One timed span on a node's track.
#[derive(Clone, Debug, PartialEq)]
pub struct Event {
    pub node: usize,
    pub name: String,
    pub start_us: f64,
    pub dur_us: f64,
}

#[derive(Clone, Debug, Default, PartialEq)]
pub struct Trace {
    pub nodes: Vec<String>,
    pub events: Vec<Event>,
}

impl Trace {
    pub fn new(nodes: Vec<String>) -> Self {
        Trace {
            nodes,
            events: Vec::new(),
        }
    }

    pub fn push(&mut self, e: Event) {
        self.events.push(e);
    }

    /// The trace-event JSON: complete events (`ph: X`), one thread per node, named.
    pub fn to_json(&self) -> String {
        let t0 = self
            .events
            .iter()
            .map(|e| e.start_us)
            .fold(f64::INFINITY, f64::min);
        let t0 = if t0.is_finite() { t0 } else { 0.0 };
        let mut events: Vec<serde_json::Value> = self
            .nodes
            .iter()
            .enumerate()
            .map(|(i, n)| {
                serde_json::json!({"name": "thread_name", "ph": "M", "pid": 1, "tid": i, "args": {"name": n}})
            })
            .collect();
        for e in &self.events {
            events.push(serde_json::json!({
                "name": e.name, "ph": "X", "pid": 1, "tid": e.node,
                "ts": e.start_us - t0, "dur": e.dur_us,
            }));
        }
        serde_json::json!({ "traceEvents": events, "displayTimeUnit": "ms" }).to_string()
    }
}
