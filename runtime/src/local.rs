//! The in-process transport: every worker node is a [`Worker`] in this process, served by
//! its own threads, reached over crossbeam channels. What `adcnn-run --local` and the tests
//! use; the coordinator cannot tell it from the network.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use adcnn_core::format::{DecodedPlan, PlanHeader};
use adcnn_core::plan::Segment;
use adcnn_core::program::Program;
use crossbeam::channel::{Receiver, RecvTimeoutError, Sender, unbounded};
use ndarray::Array3;

use crate::coordinator::{Coordinator, RunError, RunReport};
use crate::transport::{Event, TileJob, Transport, TransportError};
use crate::worker::{Fault, Kernels, Worker, guarded};

/// Worker threads in this process, one channel per node.
#[derive(Debug)]
pub struct LocalTransport {
    senders: Vec<Option<Sender<TileJob>>>,
    workers: Vec<Option<Arc<Worker>>>,
    /// Where results, losses and prepared layouts are reported.
    report: Sender<Event>,
    /// Per node: set when it is lost (a failpoint in tests); it takes no more jobs.
    lost: Vec<Arc<AtomicBool>>,
    events: Receiver<Event>,
    handles: Vec<JoinHandle<()>>,
    epoch: Instant,
}

impl LocalTransport {
    /// Starts `threads` threads for each worker (`workers[node]`, `None` for nodes that are
    /// not workers). Workers must report times against `epoch`.
    pub fn start(workers: &[Option<Arc<Worker>>], threads: usize, epoch: Instant) -> Self {
        let (done_tx, events) = unbounded::<Event>();
        let mut senders = Vec::with_capacity(workers.len());
        let mut handles = Vec::new();
        let lost: Vec<Arc<AtomicBool>> = workers.iter().map(|_| Arc::default()).collect();
        for (node, worker) in workers.iter().enumerate() {
            let Some(worker) = worker else {
                senders.push(None);
                continue;
            };
            let (tx, rx) = unbounded::<TileJob>();
            senders.push(Some(tx));
            for t in 0..threads.max(1) {
                let (worker, rx, done) = (Arc::clone(worker), rx.clone(), done_tx.clone());
                let lost = Arc::clone(&lost[node]);
                let spawned = std::thread::Builder::new()
                    .name(format!("adcnn-node{node}-{t}"))
                    .spawn(move || serve(&worker, &rx, &done, &lost));
                match spawned {
                    Ok(h) => handles.push(h),
                    Err(e) => {
                        let _ = done_tx.send(Event::Lost {
                            node,
                            reason: format!("cannot start a thread: {e}"),
                        });
                    }
                }
            }
        }
        LocalTransport {
            senders,
            workers: workers.to_vec(),
            report: done_tx,
            lost,
            events,
            handles,
            epoch,
        }
    }
}

/// A worker thread. A node that is lost (a test's failpoint) stops answering: its threads
/// drop the jobs they get, and the first to notice reports the loss.
fn serve(worker: &Worker, jobs: &Receiver<TileJob>, done: &Sender<Event>, lost: &AtomicBool) {
    while let Ok(job) = jobs.recv() {
        if lost.load(Ordering::Acquire) {
            return;
        }
        if worker.injected(Fault::Lose, &job) {
            if !lost.swap(true, Ordering::AcqRel) {
                let _ = done.send(Event::Lost {
                    node: worker.node(),
                    reason: format!("failpoint at frame {}", job.frame),
                });
            }
            return;
        }
        if worker.injected(Fault::Stall, &job) {
            continue; // never answered
        }
        if done.send(Event::Done(worker.run(&job))).is_err() {
            return;
        }
    }
}

impl Transport for LocalTransport {
    fn send(&mut self, node: usize, job: TileJob) -> Result<(), TransportError> {
        let tx = self
            .senders
            .get(node)
            .and_then(Option::as_ref)
            .ok_or(TransportError::NotAWorker(node))?;
        if self
            .lost
            .get(node)
            .is_some_and(|l| l.load(Ordering::Acquire))
        {
            return Err(TransportError::Unreachable {
                node: format!("#{node}"),
                reason: "it was lost".into(),
            });
        }
        tx.send(job).map_err(|_| TransportError::Unreachable {
            node: format!("#{node}"),
            reason: "its threads stopped".into(),
        })
    }

    fn retile(
        &mut self,
        node: usize,
        layout: u32,
        segments: Arc<Vec<Segment>>,
        keep: &[u32],
    ) -> Result<(), TransportError> {
        let keep = keep.to_vec();
        let worker = self
            .workers
            .get(node)
            .and_then(Option::as_ref)
            .ok_or(TransportError::NotAWorker(node))?;
        let (worker, report) = (Arc::clone(worker), self.report.clone());
        // Compiled beside the node's tile threads, as a node does it in the background.
        let spawned = std::thread::Builder::new()
            .name(format!("adcnn-node{node}-retile"))
            .spawn(move || {
                let result = guarded(|| worker.retile(layout, &segments, &keep));
                let _ = report.send(Event::Retiled {
                    node,
                    layout,
                    result,
                });
            });
        match spawned {
            Ok(h) => {
                self.handles.push(h);
                Ok(())
            }
            Err(e) => Err(TransportError::Unreachable {
                node: format!("#{node}"),
                reason: format!("cannot start a thread: {e}"),
            }),
        }
    }

    fn recv(&mut self) -> Result<Event, TransportError> {
        self.events.recv().map_err(|_| TransportError::Closed)
    }

    fn recv_timeout(&mut self, timeout: Duration) -> Result<Option<Event>, TransportError> {
        match self.events.recv_timeout(timeout) {
            Ok(e) => Ok(Some(e)),
            Err(RecvTimeoutError::Timeout) => Ok(None),
            Err(RecvTimeoutError::Disconnected) => Err(TransportError::Closed),
        }
    }

    fn now_us(&self) -> f64 {
        self.epoch.elapsed().as_secs_f64() * 1e6
    }
}

impl Drop for LocalTransport {
    fn drop(&mut self) {
        // Closing the job channels ends the threads.
        self.senders.clear();
        for h in self.handles.drain(..) {
            let _ = h.join();
        }
    }
}

/// A whole plan run in this process: a [`Worker`] per worker node (threads of its own) and
/// the coordinator on the calling thread, over a [`LocalTransport`]. Each program is held
/// once, shared by the workers that run its tiles.
#[derive(Debug)]
pub struct LocalCluster {
    header: Arc<PlanHeader>,
    segments: Vec<Arc<Program>>,
    tail: Arc<Program>,
    coordinator: Coordinator<LocalTransport>,
    workers: Vec<Option<Arc<Worker>>>,
    compile_error: Option<String>,
}

impl LocalCluster {
    /// Loads `plan` with compiled kernels, one thread per node.
    pub fn new(plan: DecodedPlan) -> Self {
        LocalCluster::with_kernels(plan, Kernels::Jit, None)
    }

    /// Loads `plan` with `kernels`: a thread per node that takes its tiles, each tile's
    /// layers split over `threads` kernel threads of the node's own (`None`: as many as the
    /// plan's cluster gives the node). A node whose kernels fail to compile runs the
    /// reference kernels ([`Self::compile_error`] says why), one whose threads do not start
    /// runs on its tile thread alone.
    pub fn with_kernels(plan: DecodedPlan, kernels: Kernels, threads: Option<usize>) -> Self {
        let hash = plan.hash;
        let header = Arc::new(plan.header);
        let tail = Arc::new(plan.tail);
        let segments: Vec<Arc<Program>> = plan.segments.into_iter().map(Arc::new).collect();
        let programs: HashMap<usize, Arc<Program>> = segments.iter().cloned().enumerate().collect();
        let epoch = Instant::now();
        let mut compile_error = None;
        let workers: Vec<Option<Arc<Worker>>> = header
            .plan
            .cluster
            .nodes
            .iter()
            .enumerate()
            .map(|(i, node)| {
                if !node.worker {
                    return None;
                }
                let w = Worker::new(i, &header, hash, &programs, kernels, epoch).or_else(|e| {
                    compile_error = Some(format!("node {}: {e}", node.name));
                    Worker::new(i, &header, hash, &programs, Kernels::Reference, epoch)
                });
                let mut w = w.ok()?;
                if let Err(e) = w.set_threads(threads.unwrap_or(node.threads)) {
                    compile_error.get_or_insert_with(|| format!("node {}: {e}", node.name));
                }
                Some(Arc::new(w))
            })
            .collect();
        let transport = LocalTransport::start(&workers, 1, epoch);
        let mut coordinator = Coordinator::new(Arc::clone(&header), Arc::clone(&tail), transport);
        if let Some(opts) = kernels.compile_options()
            && let Err(e) = coordinator.compile_tail(&opts)
        {
            compile_error.get_or_insert_with(|| format!("the tail: {e}"));
        }
        LocalCluster {
            header,
            segments,
            tail,
            coordinator,
            workers,
            compile_error,
        }
    }

    pub fn header(&self) -> &PlanHeader {
        &self.header
    }

    /// The segments' programs, in order.
    pub fn segments(&self) -> &[Arc<Program>] {
        &self.segments
    }

    pub fn tail(&self) -> &Program {
        &self.tail
    }

    /// Per node: the worker (`None` for nodes that only coordinate).
    pub fn workers(&self) -> &[Option<Arc<Worker>>] {
        &self.workers
    }

    /// Per node: milliseconds its kernels took to compile (0 for reference kernels, or
    /// kernels from the cache).
    pub fn compile_ms(&self) -> Vec<f64> {
        self.per_worker(|w| w.compile_ms, 0.0)
    }

    /// Per node: bytes of weights its compiled kernels prepared.
    pub fn weight_bytes(&self) -> Vec<usize> {
        self.per_worker(Worker::weight_bytes, 0)
    }

    /// Per node: whether its kernels came from the process's cache.
    pub fn kernels_cached(&self) -> Vec<bool> {
        self.per_worker(|w| w.cached, false)
    }

    fn per_worker<V>(&self, f: impl Fn(&Worker) -> V, none: V) -> Vec<V>
    where
        V: Clone,
    {
        self.workers
            .iter()
            .map(|w| w.as_deref().map_or_else(|| none.clone(), &f))
            .collect()
    }

    /// Set when some node's kernels failed to compile (that node runs the reference).
    pub fn compile_error(&self) -> Option<&str> {
        self.compile_error.as_deref()
    }

    pub fn coordinator(&mut self) -> &mut Coordinator<LocalTransport> {
        &mut self.coordinator
    }

    /// Runs one input through the plan.
    pub fn run(&mut self, input: &Array3<f32>) -> Result<RunReport, RunError> {
        self.coordinator.run(input)
    }

    /// Runs one frame (an image's pixels travel to the first segment's tiles).
    pub fn run_frame(&mut self, input: adcnn_core::input::Frame) -> Result<RunReport, RunError> {
        self.coordinator.run_frame(input)
    }
}
