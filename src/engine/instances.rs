//! Instances: pinned OS threads that each run their own session of the model with their own
//! intra-op thread count on their own share of a batch.
//!
//! Order inside a new thread matters (DESIGN §2): pin first, so that the engine's worker
//! threads inherit the mask, then open the session (which sets the thread count once). A
//! thread is never re-pinned by the runtime; a new layout gets new threads.

use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::mpsc;
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context, Result};
use nix::sched::{sched_setaffinity, CpuSet};
use nix::unistd::Pid;
use tch::Tensor;

use super::{concat_outputs, Model, Outputs, Specialized};

/// What one instance is: how many intra-op threads and which cores.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct InstanceSpec {
    pub threads: usize,
    pub cores: Vec<usize>,
}

/// What an instance thread reports about itself once it has set up (for status and tests).
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
pub struct InstanceInfo {
    pub tid: i32,
    pub threads: usize,
    pub cores: Vec<usize>,
    /// `tch::get_num_threads()` as seen from inside the instance thread after set-up.
    pub observed_threads: i32,
}

/// An instance's reply: its slot, its outputs, and how long its forward pass took.
type Reply = (usize, Result<Outputs>, Duration);

enum Task {
    /// A forward pass on this instance's share.
    Run {
        inputs: Vec<Tensor>,
        reply: mpsc::Sender<Reply>,
        slot: usize,
        /// When the batch was handed out (before the first share was sent).
        dispatched: Instant,
    },
    /// [`super::Session::specialize`] for this share's shape.
    Specialize {
        inputs: Vec<Tensor>,
        reply: mpsc::Sender<Result<Option<Specialized>>>,
    },
}

struct Worker {
    tx: Option<mpsc::Sender<Task>>,
    handle: Option<JoinHandle<()>>,
    info: InstanceInfo,
}

/// A set of instance threads for one layout (a list of `InstanceSpec`), sharing one model.
pub struct InstanceSet {
    pub layout: Vec<InstanceSpec>,
    workers: Vec<Worker>,
}

fn pin(spec: &InstanceSpec) -> Result<()> {
    let mut set = CpuSet::new();
    for &c in &spec.cores {
        set.set(c)
            .with_context(|| format!("core {c} is beyond what this kernel supports"))?;
    }
    sched_setaffinity(Pid::from_raw(0), &set).with_context(|| {
        format!(
            "cannot pin an instance to cores {:?}: are they online and in the agent's CPU mask (systemd CPUAffinity=, taskset)?",
            spec.cores
        )
    })?;
    Ok(())
}

impl InstanceSet {
    /// Starts one pinned thread per instance; returns once all are set up (or the first error).
    pub fn start(model: Arc<Model>, layout: Vec<InstanceSpec>, label: &str) -> Result<InstanceSet> {
        let mut workers = Vec::with_capacity(layout.len());
        for (i, spec) in layout.iter().enumerate() {
            let (tx, rx) = mpsc::channel::<Task>();
            let (ready_tx, ready_rx) = mpsc::channel::<Result<InstanceInfo, String>>();
            let model = model.clone();
            let spec2 = spec.clone();
            // Thread names show in /proc/<pid>/task/*/comm (15 bytes max).
            let name: String = format!("pr-{label}-{i}").chars().take(15).collect();
            let handle = std::thread::Builder::new()
                .name(name)
                .spawn(move || {
                    // A replayed model's cores are virtual: nothing to pin to.
                    let pinned = if model.pins() { pin(&spec2) } else { Ok(()) };
                    let mut session = match pinned.and_then(|()| model.open(&spec2)) {
                        Ok(s) => s,
                        Err(e) => {
                            let _ = ready_tx.send(Err(format!("{e:#}")));
                            return;
                        }
                    };
                    let info = InstanceInfo {
                        tid: nix::unistd::gettid().as_raw(),
                        threads: spec2.threads,
                        cores: spec2.cores.clone(),
                        observed_threads: session.observed_threads(),
                    };
                    let _ = ready_tx.send(Ok(info));
                    let panicked = || anyhow!("the model panicked in an instance thread");
                    while let Ok(task) = rx.recv() {
                        match task {
                            Task::Run {
                                inputs,
                                reply,
                                slot,
                                dispatched,
                            } => {
                                let t0 = Instant::now();
                                let res = catch_unwind(AssertUnwindSafe(|| {
                                    session.run_dispatched(&inputs, dispatched)
                                }))
                                .unwrap_or_else(|_| Err(panicked()));
                                let _ = reply.send((slot, res, t0.elapsed()));
                            }
                            Task::Specialize { inputs, reply } => {
                                let res =
                                    catch_unwind(AssertUnwindSafe(|| session.specialize(&inputs)))
                                        .unwrap_or_else(|_| Err(panicked()));
                                let _ = reply.send(res);
                            }
                        }
                    }
                })
                .context("cannot spawn an instance thread")?;
            let info = ready_rx
                .recv()
                .map_err(|_| anyhow!("instance thread {i} died during set-up"))?
                .map_err(|e| anyhow!(e))?;
            workers.push(Worker {
                tx: Some(tx),
                handle: Some(handle),
                info,
            });
        }
        Ok(InstanceSet { layout, workers })
    }

    pub fn infos(&self) -> Vec<InstanceInfo> {
        self.workers.iter().map(|w| w.info.clone()).collect()
    }

    /// Sends each instance its slice of the batch (`shares[i]` items, in order; zero shares are
    /// skipped) and returns the outputs concatenated in order.
    pub fn run(&self, inputs: &[Tensor], shares: &[usize]) -> Result<Outputs> {
        self.run_timed(inputs, shares).map(|(out, _)| out)
    }

    /// [`InstanceSet::run`], plus each instance's forward time (None where its share was 0):
    /// the co-located measurements the live profile learns from.
    pub fn run_timed(
        &self,
        inputs: &[Tensor],
        shares: &[usize],
    ) -> Result<(Outputs, Vec<Option<Duration>>)> {
        let (reply_tx, reply_rx) = mpsc::channel();
        let dispatched = Instant::now();
        let sent = self.send_shares(inputs, shares, |inputs, slot| Task::Run {
            inputs,
            reply: reply_tx.clone(),
            slot,
            dispatched,
        })?;
        drop(reply_tx);
        let mut parts: Vec<Option<Outputs>> = (0..shares.len()).map(|_| None).collect();
        let mut first_err = None;
        let mut took = vec![None; shares.len()];
        for _ in 0..sent {
            let (slot, res, dt) = reply_rx
                .recv()
                .map_err(|_| anyhow!("an instance thread died mid-batch"))?;
            took[slot] = Some(dt);
            match res {
                Ok(o) => parts[slot] = Some(o),
                Err(e) => first_err = first_err.or(Some(e)),
            }
        }
        if let Some(e) = first_err {
            return Err(e);
        }
        let parts: Vec<Outputs> = parts.into_iter().flatten().collect();
        Ok((concat_outputs(parts)?, took))
    }

    /// Sends each instance with a non-zero share its slice of `inputs`, as `task(slice, slot)`;
    /// returns how many were sent.
    fn send_shares(
        &self,
        inputs: &[Tensor],
        shares: &[usize],
        task: impl Fn(Vec<Tensor>, usize) -> Task,
    ) -> Result<usize> {
        if shares.len() != self.workers.len() {
            bail!(
                "plan has {} shares for {} instances",
                shares.len(),
                self.workers.len()
            );
        }
        let mut offset = 0i64;
        let mut sent = 0;
        for (slot, (&n, w)) in shares.iter().zip(&self.workers).enumerate() {
            if n == 0 {
                continue;
            }
            let part: Vec<Tensor> = inputs
                .iter()
                .map(|t| t.narrow(0, offset, n as i64))
                .collect();
            offset += n as i64;
            let tx =
                w.tx.as_ref()
                    .ok_or_else(|| anyhow!("instance {slot} is shut down"))?;
            tx.send(task(part, slot))
                .map_err(|_| anyhow!("instance {slot} has exited"))?;
            sent += 1;
        }
        Ok(sent)
    }

    /// Has each instance prepare for its share's shape ([`super::Session::specialize`]);
    /// returns what the engine found, instance by instance.
    pub fn specialize(&self, inputs: &[Tensor], shares: &[usize]) -> Result<Vec<Specialized>> {
        let (reply_tx, reply_rx) = mpsc::channel();
        let sent = self.send_shares(inputs, shares, |inputs, _| Task::Specialize {
            inputs,
            reply: reply_tx.clone(),
        })?;
        drop(reply_tx);
        let mut found = Vec::new();
        for _ in 0..sent {
            let res = reply_rx
                .recv()
                .map_err(|_| anyhow!("an instance thread died while specializing"))?;
            found.extend(res?);
        }
        Ok(found)
    }
}

impl Drop for InstanceSet {
    fn drop(&mut self) {
        for w in &mut self.workers {
            w.tx.take();
        }
        for w in &mut self.workers {
            if let Some(h) = w.handle.take() {
                let _ = h.join();
            }
        }
    }
}
