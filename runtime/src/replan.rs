//! Drift: when the nodes' measured speeds have moved far enough from what the running
//! layout assumed, for long enough, that re-planning is worth a look (book: "Adaptivity").
//!
//! Per finished frame, each node's speed in it is its tiles' FLOPs over their compute time.
//! Divided by the speed the layout assumed and by the median of that ratio over the other
//! nodes (so that the whole cluster running faster or slower than the cluster file says is
//! no drift), a node *drifts* when it is more than `threshold` times off. A node that drifts
//! the same way in `window` frames in a row triggers a re-plan with every node's speed the
//! median of its last `window` frames (a node faster than expected: half way there, the
//! geometric mean); after a re-plan, `cooldown` frames pass before the next. A node that is
//! slow every other frame (flapping) never drifts `window` frames in a row, so it causes no
//! re-plans.
//!
//! Links the same way: a node's *slowness* in a frame is its tiles' time on the wire (the
//! union of their transfers) over what the cluster file's rate and latency predict for the
//! same bytes, at least 1; it drifts when, over what the layout assumed and relative to the
//! other links, it is more than `link_threshold` times off. A re-plan plans every link at
//! the file's rate divided by its measured slowness.

use std::collections::VecDeque;

use crate::telemetry::Telemetry;

/// When to re-plan.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct ReplanConfig {
    /// A node drifts when its speed relative to the others is this many times off what the
    /// layout assumed (> 1).
    pub threshold: f64,
    /// Frames in a row a node must drift (the same way) before a re-plan.
    pub window: usize,
    /// Frames after a re-plan (or a decision not to) before drift is looked at again.
    pub cooldown: usize,
    /// A new layout is taken only if it is predicted this many times faster than the
    /// current one at the measured speeds (≥ 1).
    pub min_gain: f64,
    /// A node's link drifts when its tiles' time on the wire, against what the cluster
    /// file's rate and latency predict and relative to the other links, is this many times
    /// off what the layout assumed (> 1). Lower than `threshold`: a link's time is part
    /// latency and overhead, so a halved rate shows as less than twice the time.
    pub link_threshold: f64,
}

impl Default for ReplanConfig {
    fn default() -> Self {
        ReplanConfig {
            threshold: 2.0,
            window: 3,
            cooldown: 10,
            min_gain: 1.1,
            link_threshold: 1.5,
        }
    }
}

/// A node's link as the cluster file gives it: what a link's drift is measured against.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Link {
    pub mbps: f64,
    pub latency_ms: f64,
}

impl Link {
    /// Milliseconds a message of `bytes` takes on the link, latency included.
    fn ms(&self, bytes: u64) -> f64 {
        bytes as f64 * 8.0 / (self.mbps * 1e3) + self.latency_ms
    }
}

/// Per-node speed history against what the layout assumed.
#[derive(Clone, Debug)]
pub struct Drift {
    config: ReplanConfig,
    /// GFLOP/s per node the running layout was made for (0: it was lost then).
    assumed: Vec<f64>,
    /// GFLOP/s per node the plan assumed: for a node back after it was lost.
    nominal: Vec<f64>,
    /// Per node: its speed in each of the last `window` frames it computed in.
    history: Vec<VecDeque<f64>>,
    /// Per node: frames in a row it drifted, signed (+ faster, − slower).
    streak: Vec<i64>,
    /// Frames to wait before looking again.
    quiet: usize,
    /// Per node: its link as the cluster file gives it (`None`: not measured, e.g. the
    /// coordinator's own).
    links: Vec<Option<Link>>,
    /// Per node: how many times slower than the cluster file says the running layout
    /// assumed its link (1: as it says).
    link_assumed: Vec<f64>,
    /// Per node: its link's slowness in each of the last `window` frames it carried tiles
    /// in, relative to the other links.
    link_history: Vec<VecDeque<f64>>,
    /// Per node: frames in a row its link drifted, signed (+ slower, − faster).
    link_streak: Vec<i64>,
}

/// A re-plan worth trying: why, the speeds to plan with (GFLOP/s per node; 0 for nodes
/// never measured and not assumed) and the links (per node, how many times slower than the
/// cluster file says; at least 1).
#[derive(Clone, Debug, PartialEq)]
pub struct Trigger {
    pub reason: String,
    pub speeds: Vec<f64>,
    pub links: Vec<f64>,
}

/// Frames in a row `rel` has been off by more than `threshold`, the same way: `streak`
/// updated.
fn step(streak: &mut i64, rel: f64, threshold: f64) {
    let dir = if rel > threshold {
        1
    } else if rel < 1.0 / threshold {
        -1
    } else {
        0
    };
    *streak = match dir {
        0 => 0,
        d if streak.signum() == d => *streak + d,
        d => d,
    };
}

/// Keeps the last `window` values.
fn remember(h: &mut VecDeque<f64>, x: f64, window: usize) {
    h.push_back(x);
    while h.len() > window.max(1) {
        h.pop_front();
    }
}

/// Total length of the union of intervals.
fn covered(mut spans: Vec<(f64, f64)>) -> f64 {
    spans.sort_by(|a, b| a.0.total_cmp(&b.0));
    let (mut total, mut end) = (0.0, f64::NEG_INFINITY);
    for (a, b) in spans {
        if b > end {
            total += b - a.max(end);
            end = b;
        }
    }
    total
}

impl Drift {
    /// `assumed`: GFLOP/s per node (0 for none); `links`: per node, its link to the
    /// coordinator.
    pub fn new(config: ReplanConfig, assumed: Vec<f64>, links: Vec<Option<Link>>) -> Drift {
        let n = assumed.len();
        Drift {
            config,
            nominal: assumed.clone(),
            assumed,
            history: vec![VecDeque::new(); n],
            streak: vec![0; n],
            quiet: 0,
            links: (0..n).map(|i| links.get(i).copied().flatten()).collect(),
            link_assumed: vec![1.0; n],
            link_history: vec![VecDeque::new(); n],
            link_streak: vec![0; n],
        }
    }

    /// Per node, its link's *slowness* in a frame: its time on the wire against the time its
    /// cluster-file rate and latency predict for the same bytes (at least 1: a link is never
    /// planned faster than the file says). `None` for nodes that carried no tile in the
    /// frame, or have no link in the file.
    fn link_slowness(&self, telemetry: &[Telemetry]) -> Vec<Option<f64>> {
        let n = self.assumed.len();
        let mut spans: Vec<Vec<(f64, f64)>> = vec![Vec::new(); n];
        let mut model_ms = vec![0.0; n];
        for e in telemetry {
            if let Telemetry::Tile {
                node,
                sent_us,
                round_trip_us,
                wire_us,
                bytes_in,
                bytes_out,
                ..
            } = *e
                && let Some(Some(link)) = self.links.get(node)
            {
                // Half the time on the wire each way: the job, then its result.
                let half = wire_us / 2.0;
                spans[node].push((sent_us, sent_us + half));
                spans[node].push((sent_us + round_trip_us - half, sent_us + round_trip_us));
                model_ms[node] += link.ms(bytes_in) + link.ms(bytes_out);
            }
        }
        // Overlapping transfers (jobs sent back to back) share the link: their union counts.
        (0..n)
            .map(|i| {
                let measured_ms = covered(std::mem::take(&mut spans[i])) / 1e3;
                // In process no time is on a wire: as fast as the file says.
                (model_ms[i] > 0.0).then(|| (measured_ms / model_ms[i]).max(1.0))
            })
            .collect()
    }

    /// The links to plan with now: each one's median slowness lately, as assumed where not
    /// measured.
    pub fn current_links(&self) -> Vec<f64> {
        (0..self.assumed.len())
            .map(|i| {
                median(&self.link_history[i].iter().copied().collect::<Vec<_>>())
                    .unwrap_or(self.link_assumed[i])
                    .max(1.0)
            })
            .collect()
    }

    pub fn config(&self) -> ReplanConfig {
        self.config
    }

    /// The speeds the running layout assumed.
    pub fn assumed(&self) -> &[f64] {
        &self.assumed
    }

    /// Takes a finished frame's telemetry; says whether to re-plan, naming each node by
    /// `name`.
    pub fn frame(
        &mut self,
        telemetry: &[Telemetry],
        name: impl Fn(usize) -> String,
    ) -> Option<Trigger> {
        let n = self.assumed.len();
        let (mut flops, mut us) = (vec![0.0; n], vec![0.0; n]);
        for e in telemetry {
            if let Telemetry::Tile {
                node,
                compute_us,
                flops: f,
                ..
            } = *e
                && node < n
                && compute_us > 0.0
            {
                flops[node] += f as f64;
                us[node] += compute_us;
            }
        }
        let speed: Vec<Option<f64>> = (0..n)
            .map(|i| (us[i] > 0.0 && self.assumed[i] > 0.0).then(|| flops[i] / us[i] / 1e3))
            .collect();
        let window = self.config.window.max(1);
        for (i, s) in speed.iter().enumerate() {
            if let Some(s) = s {
                remember(&mut self.history[i], *s, window);
            }
        }
        // Links: the worst one drifting for a window, as (node, its slowness against what
        // the layout assumed, relative to the other links').
        let slowness = self.link_slowness(telemetry);
        let link_ratio: Vec<Option<f64>> = (0..n)
            .map(|i| slowness[i].map(|s| s / self.link_assumed[i]))
            .collect();
        let mut worst_link: Option<(usize, f64)> = None;
        for i in 0..n {
            let (Some(slow), Some(ratio)) = (slowness[i], link_ratio[i]) else {
                self.link_streak[i] = 0;
                continue;
            };
            remember(&mut self.link_history[i], slow, window);
            let others: Vec<f64> = (0..n)
                .filter(|&j| j != i)
                .filter_map(|j| link_ratio[j])
                .collect();
            let Some(theirs) = median(&others) else {
                continue;
            };
            let rel = ratio / theirs;
            step(&mut self.link_streak[i], rel, self.config.link_threshold);
            if self.link_streak[i].unsigned_abs() as usize >= window
                && worst_link.is_none_or(|(_, r)| rel.ln().abs() > r.ln().abs())
            {
                worst_link = Some((i, rel));
            }
        }
        // Nothing measured in this frame: nothing to compare.
        if speed.iter().all(Option::is_none) {
            return None;
        }
        let mut worst: Option<(usize, f64)> = None;
        for i in 0..n {
            let Some(s) = speed[i] else {
                // Not measured in this frame: a run of drifting frames is broken.
                self.streak[i] = 0;
                continue;
            };
            // Relative to the others (the node itself left out of their median).
            let others: Vec<f64> = (0..n)
                .filter(|&j| j != i)
                .filter_map(|j| speed[j].map(|s| s / self.assumed[j]))
                .collect();
            let Some(theirs) = median(&others) else {
                continue;
            };
            let rel = s / self.assumed[i] / theirs;
            step(&mut self.streak[i], rel, self.config.threshold);
            if self.streak[i].unsigned_abs() as usize >= window
                && worst.is_none_or(|(_, r)| rel.ln().abs() > r.ln().abs())
            {
                worst = Some((i, rel));
            }
        }
        if self.quiet > 0 {
            self.quiet -= 1;
            return None;
        }
        let reason = match (worst, worst_link) {
            (Some((node, rel)), _) => format!(
                "node {} runs at {:.2}× the speed the layout assumed (relative to the others) for {window} frames",
                name(node),
                rel,
            ),
            (None, Some((node, rel))) => format!(
                "node {}'s link takes {:.2}× the time the layout assumed (relative to the others) for {window} frames",
                name(node),
                rel,
            ),
            (None, None) => return None,
        };
        let speeds = (0..n)
            .map(|i| {
                // Not measured lately: as assumed, at the cluster's measured scale.
                let expected = self.expected(i, &speed);
                match median(&self.history[i].iter().copied().collect::<Vec<_>>()) {
                    // Faster than expected: half way there (geometric mean). A node given
                    // too much work holds up every frame, one given too little costs a
                    // little; and a node short of CPU time (a quota) looks fast while its
                    // share is small, then slow once it is raised.
                    Some(s) if s > expected && expected > 0.0 => (s * expected).sqrt(),
                    Some(s) => s,
                    None => expected,
                }
            })
            .collect();
        Some(Trigger {
            reason,
            speeds,
            links: self.current_links(),
        })
    }

    /// The speeds to plan with now, for a re-plan triggered by something else (a node lost
    /// or back): measured where known, as assumed elsewhere.
    pub fn current_speeds(&self) -> Vec<f64> {
        let measured: Vec<Option<f64>> = self
            .history
            .iter()
            .map(|h| median(&h.iter().copied().collect::<Vec<_>>()))
            .collect();
        (0..self.assumed.len())
            .map(|i| measured[i].unwrap_or_else(|| self.expected(i, &measured)))
            .collect()
    }

    /// What to expect of node `i`, not measured lately, when the nodes measured `measured`:
    /// what the layout assumed of it, scaled as the measured nodes ran against what it
    /// assumed of them; for a node the layout was made without (it was lost then), the
    /// plan's speed, scaled as the measured nodes ran against the plan's speeds. (A layout
    /// made after a measurement assumes measured speeds; the plan, the cluster file's.)
    fn expected(&self, i: usize, measured: &[Option<f64>]) -> f64 {
        let against = |base: &[f64]| {
            let ratios: Vec<f64> = measured
                .iter()
                .zip(base)
                .filter_map(|(m, &b)| Some((*m)? / b).filter(|_| b > 0.0))
                .collect();
            median(&ratios).unwrap_or(1.0)
        };
        if self.assumed[i] > 0.0 {
            self.assumed[i] * against(&self.assumed)
        } else {
            self.nominal[i] * against(&self.nominal)
        }
    }

    /// A re-plan was decided (taken or not): the new layout assumes `(speeds, links)` (the
    /// measurements start over) when `Some`; in either case `cooldown` frames pass before
    /// drift is looked at again.
    pub fn replanned(&mut self, planned: Option<(Vec<f64>, Vec<f64>)>) {
        if let Some((speeds, links)) = planned {
            self.assumed = speeds;
            self.link_assumed = links;
            for h in self.history.iter_mut().chain(&mut self.link_history) {
                h.clear();
            }
        }
        self.streak.iter_mut().for_each(|s| *s = 0);
        self.link_streak.iter_mut().for_each(|s| *s = 0);
        self.quiet = self.config.cooldown;
    }
}

fn median(xs: &[f64]) -> Option<f64> {
    if xs.is_empty() {
        return None;
    }
    let mut v = xs.to_vec();
    v.sort_by(f64::total_cmp);
    let m = v.len() / 2;
    Some(if v.len() % 2 == 1 {
        v[m]
    } else {
        (v[m - 1] + v[m]) / 2.0
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A frame where node `i` computed 1 GFLOP at `speeds[i]` GFLOP/s.
    fn frame(speeds: &[f64]) -> Vec<Telemetry> {
        speeds
            .iter()
            .enumerate()
            .map(|(node, s)| Telemetry::Tile {
                frame: 0,
                node,
                segment: 0,
                tile: node as u32,
                compute_us: 1e6 / s,
                sent_us: 0.0,
                round_trip_us: 1e6 / s,
                wire_us: 0.0,
                bytes_in: 0,
                bytes_out: 0,
                flops: 1_000_000_000,
            })
            .collect()
    }

    fn name(i: usize) -> String {
        format!("n{i}")
    }

    #[test]
    fn a_node_slowed_for_a_window_triggers_one_replan_with_its_measured_speed() {
        let mut d = Drift::new(ReplanConfig::default(), vec![40.0, 40.0, 20.0], Vec::new());
        // The whole cluster at half the assumed speed: no drift.
        for _ in 0..5 {
            assert_eq!(d.frame(&frame(&[20.0, 20.0, 10.0]), name), None);
        }
        // Node 1 four times slower: a re-plan after three frames, not before.
        assert_eq!(d.frame(&frame(&[20.0, 5.0, 10.0]), name), None);
        assert_eq!(d.frame(&frame(&[20.0, 5.0, 10.0]), name), None);
        let t = d
            .frame(&frame(&[20.0, 5.0, 10.0]), name)
            .expect("a re-plan");
        assert!(t.reason.contains("node n1"), "{}", t.reason);
        assert!((t.speeds[1] - 5.0).abs() < 1e-9, "{:?}", t.speeds);
        assert!((t.speeds[0] - 20.0).abs() < 1e-9, "{:?}", t.speeds);
        d.replanned(Some((t.speeds, t.links)));
        // At the new assumed speeds nothing drifts, cooldown or not.
        for _ in 0..20 {
            assert_eq!(d.frame(&frame(&[20.0, 5.0, 10.0]), name), None);
        }
    }

    #[test]
    fn a_node_back_after_a_layout_without_it_is_planned_with_the_plans_speed() {
        let mut d = Drift::new(ReplanConfig::default(), vec![0.0, 40.0, 40.0], Vec::new());
        let _ = d.frame(&frame(&[1.0, 20.0, 20.0])[1..], name);
        // Lost: the layout was made without node 2.
        d.replanned(Some((vec![0.0, 20.0, 0.0], vec![1.0; 3])));
        let _ = d.frame(&frame(&[1.0, 20.0, 1.0])[1..2], name);
        // Back: planned at the plan's 40 at the scale the others ran at against the plan's
        // speeds (node 1: 20 of 40), not against the layout's (20 of 20, measured units).
        let s = d.current_speeds();
        assert!((s[2] - 20.0).abs() < 1e-9, "{s:?}");
        assert!((s[1] - 20.0).abs() < 1e-9, "{s:?}");
    }

    #[test]
    fn a_node_faster_than_assumed_is_planned_half_way_there() {
        let mut d = Drift::new(ReplanConfig::default(), vec![10.0; 3], Vec::new());
        let mut t = None;
        for _ in 0..3 {
            t = d.frame(&frame(&[10.0, 40.0, 10.0]), name);
        }
        let t = t.expect("a re-plan");
        assert!(t.reason.contains("4.00×"), "{}", t.reason);
        // 4× faster than assumed: planned at 2× (the geometric mean of 10 and 40).
        assert!((t.speeds[1] - 20.0).abs() < 1e-9, "{:?}", t.speeds);
        assert!((t.speeds[0] - 10.0).abs() < 1e-9, "{:?}", t.speeds);
    }

    #[test]
    fn a_flapping_node_never_triggers() {
        let mut d = Drift::new(ReplanConfig::default(), vec![10.0; 3], Vec::new());
        for f in 0..100 {
            let slow = if f % 2 == 0 { 1.25 } else { 10.0 };
            assert_eq!(
                d.frame(&frame(&[10.0, slow, 10.0]), name),
                None,
                "frame {f}"
            );
        }
    }

    #[test]
    fn cooldown_holds_back_the_next_trigger() {
        let config = ReplanConfig {
            cooldown: 4,
            ..ReplanConfig::default()
        };
        let mut d = Drift::new(config, vec![10.0; 2], Vec::new());
        let mut triggers = Vec::new();
        for f in 0..12 {
            if d.frame(&frame(&[10.0, 2.0]), name).is_some() {
                triggers.push(f);
                d.replanned(None); // decided against: the assumption stays
            }
        }
        // Two nodes, each relative to the other: 5× apart, both drift. First after
        // the window (frame 2), then every cooldown + 1 frames at most.
        assert_eq!(triggers, vec![2, 7]);
    }

    /// A frame where node `i`'s one tile moved 1 MB each way and spent `wire_ms[i]` on the
    /// wire (computing 1 GFLOP at 10 GFLOP/s).
    fn wired(wire_ms: &[f64]) -> Vec<Telemetry> {
        wire_ms
            .iter()
            .enumerate()
            .map(|(node, &w)| Telemetry::Tile {
                frame: 0,
                node,
                segment: 0,
                tile: node as u32,
                compute_us: 1e5,
                sent_us: 0.0,
                round_trip_us: 1e5 + w * 1e3,
                wire_us: w * 1e3,
                bytes_in: 1_000_000,
                bytes_out: 1_000_000,
                flops: 1_000_000_000,
            })
            .collect()
    }

    /// Three nodes on 100 Mbit/s links with 2 ms latency: 1 MB takes 82 ms each way, 164 ms
    /// both.
    fn links() -> Vec<Option<Link>> {
        vec![
            Some(Link {
                mbps: 100.0,
                latency_ms: 2.0,
            });
            3
        ]
    }

    #[test]
    fn a_slow_link_triggers_a_replan_with_its_measured_slowness() {
        let mut d = Drift::new(ReplanConfig::default(), vec![10.0; 3], links());
        // Every link 1.3× slower than the file says (overheads): no drift.
        for _ in 0..5 {
            assert_eq!(d.frame(&wired(&[213.2, 213.2, 213.2]), name), None);
        }
        // Node 2's takes 1.8× the others' for three frames.
        assert_eq!(d.frame(&wired(&[213.2, 213.2, 383.76]), name), None);
        assert_eq!(d.frame(&wired(&[213.2, 213.2, 383.76]), name), None);
        let t = d
            .frame(&wired(&[213.2, 213.2, 383.76]), name)
            .expect("a re-plan");
        assert!(
            t.reason.contains("node n2's link takes 1.80×"),
            "{}",
            t.reason
        );
        // Planned as measured: every link 1.3× slower than the file says, node 2's 2.34×.
        let slow = 213.2 / 164.0;
        assert!((t.links[2] - 1.8 * slow).abs() < 1e-6, "{:?}", t.links);
        assert!(
            t.links[..2].iter().all(|l| (l - slow).abs() < 1e-9),
            "{:?}",
            t.links
        );
        // Compute did not drift: the speeds stay.
        assert_eq!(t.speeds, vec![10.0; 3]);
        d.replanned(Some((t.speeds, t.links)));
        for _ in 0..20 {
            assert_eq!(d.frame(&wired(&[213.2, 213.2, 383.76]), name), None);
        }
        // Back to its old rate: it drifts the other way, and is planned as the file says.
        let mut back = None;
        for _ in 0..20 {
            back = back.or(d.frame(&wired(&[213.2, 213.2, 213.2]), name));
        }
        let back = back.expect("a re-plan back");
        assert!(
            back.links.iter().all(|l| (l - slow).abs() < 1e-9),
            "{:?}",
            back.links
        );
    }

    #[test]
    fn links_faster_than_the_file_says_or_in_process_never_drift() {
        let mut d = Drift::new(ReplanConfig::default(), vec![10.0; 3], links());
        // No time on the wire (in process), or less than the file predicts: as it says.
        for f in 0..20 {
            let w = if f % 2 == 0 {
                [0.0, 0.0, 0.0]
            } else {
                [10.0, 80.0, 0.0]
            };
            assert_eq!(d.frame(&wired(&w), name), None, "frame {f}");
        }
        assert_eq!(d.current_links(), vec![1.0; 3]);
    }

    #[test]
    fn transfers_that_overlap_count_once() {
        assert_eq!(covered(vec![(0.0, 10.0), (5.0, 20.0), (30.0, 31.0)]), 21.0);
        assert_eq!(covered(vec![(5.0, 6.0), (0.0, 10.0)]), 10.0);
        assert_eq!(covered(Vec::new()), 0.0);
    }
}
