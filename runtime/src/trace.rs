//! Chrome trace-event JSON (opens in Perfetto or chrome://tracing): one track per node,
//! spans for the work each did, and flow arrows for the transfers between them.

/// One timed span on a node's track.
#[derive(Clone, Debug, PartialEq)]
pub struct Event {
    pub node: usize,
    pub name: String,
    pub start_us: f64,
    pub dur_us: f64,
}

/// A transfer: an arrow from one node's track at `from_us` to another's at `to_us`.
#[derive(Clone, Debug, PartialEq)]
pub struct Flow {
    pub name: String,
    pub from_node: usize,
    pub from_us: f64,
    pub to_node: usize,
    pub to_us: f64,
}

#[derive(Clone, Debug, Default, PartialEq)]
pub struct Trace {
    pub nodes: Vec<String>,
    pub events: Vec<Event>,
    pub flows: Vec<Flow>,
}

impl Trace {
    pub fn new(nodes: Vec<String>) -> Self {
        Trace {
            nodes,
            events: Vec::new(),
            flows: Vec::new(),
        }
    }

    /// Adds `other`'s events and flows (a trace of several frames).
    pub fn extend(&mut self, other: Trace) {
        self.events.extend(other.events);
        self.flows.extend(other.flows);
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
        // Each flow is a zero-length slice at either end, bound by a start and a finish
        // event with one id (Perfetto draws the arrow between the slices).
        for (id, f) in self.flows.iter().enumerate() {
            for (node, ts, ph) in [(f.from_node, f.from_us, "s"), (f.to_node, f.to_us, "f")] {
                events.push(serde_json::json!({
                    "name": f.name, "ph": "X", "pid": 1, "tid": node, "ts": ts - t0, "dur": 0,
                    "cat": "transfer",
                }));
                events.push(serde_json::json!({
                    "name": f.name, "ph": ph, "pid": 1, "tid": node, "ts": ts - t0, "id": id,
                    "cat": "transfer", "bp": "e",
                }));
            }
        }
        serde_json::json!({ "traceEvents": events, "displayTimeUnit": "ms" }).to_string()
    }
}
