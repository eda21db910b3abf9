//! Emulated link latency, for the testbed (`tests/testbed/run.sh`): its kernel can shape a
//! link's rate (tbf) but has no netem to delay packets, so the runtime delays messages itself
//! when told to — an emulation, never on unless these variables are set. A worker delays
//! every message it sends by `ADCNN_EMULATED_LATENCY_MS`; the coordinator delays what it sends
//! to node NAME by `ADCNN_EMULATED_LATENCY_MS_<NAME>` (upper case, `.` as `_`). Each direction
//! then takes the link's one-way latency, in order.

use std::time::Duration;

use tokio::sync::mpsc;

/// The variable holding the one-way latency the coordinator adds towards node `name`.
pub fn variable_for(name: &str) -> String {
    let upper: String = name
        .chars()
        .map(|c| {
            if c == '.' {
                '_'
            } else {
                c.to_ascii_uppercase()
            }
        })
        .collect();
    format!("ADCNN_EMULATED_LATENCY_MS_{upper}")
}

/// The latency in `var`, if set to a positive number of milliseconds (at most a minute).
pub fn latency(var: &str) -> Option<Duration> {
    let ms: f64 = std::env::var(var).ok()?.trim().parse().ok()?;
    (ms > 0.0 && ms <= 60_000.0).then(|| Duration::from_secs_f64(ms / 1e3))
}

/// What `rx` yields, each item `delay` after it arrived, in order.
pub fn delayed<T: Send + 'static>(mut rx: mpsc::Receiver<T>, delay: Duration) -> mpsc::Receiver<T> {
    let (tx, out) = mpsc::channel::<T>(1024);
    let (due_tx, mut due_rx) = mpsc::unbounded_channel::<(tokio::time::Instant, T)>();
    // One task stamps arrivals, another releases them when due: a constant delay keeps the
    // deadlines in arrival order.
    tokio::spawn(async move {
        while let Some(item) = rx.recv().await {
            if due_tx
                .send((tokio::time::Instant::now() + delay, item))
                .is_err()
            {
                return;
            }
        }
    });
    tokio::spawn(async move {
        while let Some((due, item)) = due_rx.recv().await {
            tokio::time::sleep_until(due).await;
            if tx.send(item).await.is_err() {
                return;
            }
        }
    });
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_map_to_variables() {
        assert_eq!(variable_for("edge1"), "ADCNN_EMULATED_LATENCY_MS_EDGE1");
        assert_eq!(variable_for("a.b-c"), "ADCNN_EMULATED_LATENCY_MS_A_B-C");
    }

    #[test]
    fn delayed_items_keep_their_order_and_wait() {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .start_paused(true)
            .build()
            .expect("a runtime");
        rt.block_on(async {
            let (tx, rx) = mpsc::channel(16);
            let mut out = delayed(rx, Duration::from_millis(5));
            let t0 = tokio::time::Instant::now();
            for i in 0..4 {
                tx.send(i).await.expect("sends");
            }
            for i in 0..4 {
                assert_eq!(out.recv().await, Some(i));
            }
            // Virtual time: exactly the delay, however long the machine took.
            assert!(t0.elapsed() >= Duration::from_millis(5));
            drop(tx);
            assert_eq!(out.recv().await, None);
        });
    }
}
