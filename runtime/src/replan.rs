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
}

impl Default for ReplanConfig {
    fn default() -> Self {
        ReplanConfig {
            threshold: 2.0,
            window: 3,
            cooldown: 10,
            min_gain: 1.1,
        }
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
}

/// A re-plan worth trying: why, and the speeds to plan with (GFLOP/s per node; 0 for nodes
/// never measured and not assumed).
#[derive(Clone, Debug, PartialEq)]
pub struct Trigger {
    pub reason: String,
    pub speeds: Vec<f64>,
}

impl Drift {
    pub fn new(config: ReplanConfig, assumed: Vec<f64>) -> Drift {
        let n = assumed.len();
        Drift {
            config,
            nominal: assumed.clone(),
            assumed,
            history: vec![VecDeque::new(); n],
            streak: vec![0; n],
            quiet: 0,
        }
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
        for (i, s) in speed.iter().enumerate() {
            if let Some(s) = s {
                let h = &mut self.history[i];
                h.push_back(*s);
                while h.len() > self.config.window.max(1) {
                    h.pop_front();
                }
            }
        }
        let ratios: Vec<f64> = (0..n)
            .filter_map(|i| speed[i].map(|s| s / self.assumed[i]))
            .collect();
        let scale = median(&ratios)?;
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
            let dir = if rel > self.config.threshold {
                1
            } else if rel < 1.0 / self.config.threshold {
                -1
            } else {
                0
            };
            self.streak[i] = match dir {
                0 => 0,
                d if self.streak[i].signum() == d => self.streak[i] + d,
                d => d,
            };
            if self.streak[i].unsigned_abs() as usize >= self.config.window.max(1)
                && worst.is_none_or(|(_, r)| rel.ln().abs() > r.ln().abs())
            {
                worst = Some((i, rel));
            }
        }
        if self.quiet > 0 {
            self.quiet -= 1;
            return None;
        }
        let (node, rel) = worst?;
        let speeds = (0..n)
            .map(|i| {
                // Not measured lately: as assumed, at the cluster's measured scale.
                let expected = self.unmeasured(i) * scale;
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
            reason: format!(
                "node {} runs at {:.2}× the speed the layout assumed (relative to the others) for {} frames",
                name(node),
                rel,
                self.config.window.max(1)
            ),
            speeds,
        })
    }

    /// The speeds to plan with now, for a re-plan triggered by something else (a node lost
    /// or back): measured where known, as assumed elsewhere.
    pub fn current_speeds(&self) -> Vec<f64> {
        let n = self.assumed.len();
        let ratios: Vec<f64> = (0..n)
            .filter_map(|i| {
                let m = median(&self.history[i].iter().copied().collect::<Vec<_>>())?;
                (self.assumed[i] > 0.0).then(|| m / self.assumed[i])
            })
            .collect();
        let scale = median(&ratios).unwrap_or(1.0);
        (0..n)
            .map(|i| {
                median(&self.history[i].iter().copied().collect::<Vec<_>>())
                    .unwrap_or(self.unmeasured(i) * scale)
            })
            .collect()
    }

    /// What to assume of a node not measured lately: what the layout assumed, or the plan
    /// if the layout was made without it (it was lost then).
    fn unmeasured(&self, i: usize) -> f64 {
        if self.assumed[i] > 0.0 {
            self.assumed[i]
        } else {
            self.nominal[i]
        }
    }

    /// A re-plan was decided (taken or not): the new layout assumes `speeds` (the
    /// measurements start over) when `Some`; in either case `cooldown` frames pass before
    /// drift is looked at again.
    pub fn replanned(&mut self, speeds: Option<Vec<f64>>) {
        if let Some(s) = speeds {
            self.assumed = s;
            for h in &mut self.history {
                h.clear();
            }
        }
        self.streak.iter_mut().for_each(|s| *s = 0);
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
                round_trip_us: 1e6 / s,
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
        let mut d = Drift::new(ReplanConfig::default(), vec![40.0, 40.0, 20.0]);
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
        d.replanned(Some(t.speeds));
        // At the new assumed speeds nothing drifts, cooldown or not.
        for _ in 0..20 {
            assert_eq!(d.frame(&frame(&[20.0, 5.0, 10.0]), name), None);
        }
    }

    #[test]
    fn a_node_back_after_a_layout_without_it_is_planned_with_the_plans_speed() {
        let mut d = Drift::new(ReplanConfig::default(), vec![0.0, 40.0, 40.0]);
        let _ = d.frame(&frame(&[1.0, 20.0, 20.0])[1..], name);
        // Lost: the layout was made without node 2.
        d.replanned(Some(vec![0.0, 20.0, 0.0]));
        let _ = d.frame(&frame(&[1.0, 20.0, 1.0])[1..2], name);
        // Back: planned at the plan's 40, at the measured scale (the same here).
        let s = d.current_speeds();
        assert!((s[2] - 40.0).abs() < 1e-9, "{s:?}");
        assert!((s[1] - 20.0).abs() < 1e-9, "{s:?}");
    }

    #[test]
    fn a_node_faster_than_assumed_is_planned_half_way_there() {
        let mut d = Drift::new(ReplanConfig::default(), vec![10.0; 3]);
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
        let mut d = Drift::new(ReplanConfig::default(), vec![10.0; 3]);
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
        let mut d = Drift::new(config, vec![10.0; 2]);
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
}
