//! Instances: pinned OS threads that each run the shared model with their own intra-op thread
//! count on their own share of a batch.
//!
//! Order inside a new thread matters (DESIGN §2): pin first so libgomp's workers inherit the
//! mask, then `get_num_threads()` (dodges the "last value any thread set" trap), then
//! `set_num_threads(t)` once. A thread is never re-pinned; a new layout gets new threads.

use std::sync::mpsc;
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context, Result};
use nix::sched::{sched_setaffinity, CpuSet};
use nix::unistd::Pid;
use tch::Tensor;

use crate::model::Model;

/// What one instance is: how many intra-op threads and which cores.
#[derive(Debug, Clone, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
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

type Outputs = Vec<(String, Tensor)>;

struct Task {
    inputs: Vec<Tensor>,
    reply: mpsc::Sender<(usize, Result<Outputs>, Duration)>,
    slot: usize,
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

fn pin_and_set_threads(spec: &InstanceSpec) -> Result<()> {
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
    let _ = tch::get_num_threads();
    tch::set_num_threads(spec.threads as i32);
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
                    if let Err(e) = pin_and_set_threads(&spec2) {
                        let _ = ready_tx.send(Err(format!("{e:#}")));
                        return;
                    }
                    let info = InstanceInfo {
                        tid: nix::unistd::gettid().as_raw(),
                        threads: spec2.threads,
                        cores: spec2.cores.clone(),
                        observed_threads: tch::get_num_threads(),
                    };
                    let _ = ready_tx.send(Ok(info));
                    while let Ok(task) = rx.recv() {
                        let t0 = Instant::now();
                        let res = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                            model.forward(&task.inputs)
                        }))
                        .unwrap_or_else(|_| {
                            Err(anyhow!("the model panicked in an instance thread"))
                        });
                        let _ = task.reply.send((task.slot, res, t0.elapsed()));
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
    /// skipped) and returns the outputs concatenated in order, plus each instance's wall time.
    pub fn run(&self, inputs: &[Tensor], shares: &[usize]) -> Result<(Outputs, Vec<Duration>)> {
        if shares.len() != self.workers.len() {
            bail!(
                "plan has {} shares for {} instances",
                shares.len(),
                self.workers.len()
            );
        }
        let (reply_tx, reply_rx) = mpsc::channel();
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
            tx.send(Task {
                inputs: part,
                reply: reply_tx.clone(),
                slot,
            })
            .map_err(|_| anyhow!("instance {slot} has exited"))?;
            sent += 1;
        }
        drop(reply_tx);
        let mut parts: Vec<Option<Outputs>> = (0..shares.len()).map(|_| None).collect();
        let mut times = vec![Duration::ZERO; shares.len()];
        let mut first_err = None;
        for _ in 0..sent {
            let (slot, res, dt) = reply_rx
                .recv()
                .map_err(|_| anyhow!("an instance thread died mid-batch"))?;
            times[slot] = dt;
            match res {
                Ok(o) => parts[slot] = Some(o),
                Err(e) => first_err = first_err.or(Some(e)),
            }
        }
        if let Some(e) = first_err {
            return Err(e);
        }
        let parts: Vec<Outputs> = parts.into_iter().flatten().collect();
        Ok((concat_outputs(parts)?, times))
    }
}

/// Concatenates per-instance outputs along the batch dimension, output by output.
fn concat_outputs(mut parts: Vec<Outputs>) -> Result<Outputs> {
    if parts.len() == 1 {
        return Ok(parts.remove(0));
    }
    let first = parts
        .first()
        .ok_or_else(|| anyhow!("no instance produced output"))?;
    let names: Vec<String> = first.iter().map(|(n, _)| n.clone()).collect();
    names
        .iter()
        .enumerate()
        .map(|(k, name)| {
            let ts: Vec<&Tensor> = parts.iter().map(|p| &p[k].1).collect();
            let t = Tensor::f_cat(&ts, 0)
                .context("instance outputs do not concatenate along dimension 0")?;
            Ok((name.clone(), t))
        })
        .collect()
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

/// Splits `batch` items over instances in proportion to `weights` (largest remainder, ties to
/// the earlier instance), so an explicit plan made for one batch size serves any other.
pub fn scale_shares(weights: &[usize], batch: usize) -> Vec<usize> {
    let total: usize = weights.iter().sum();
    if total == 0 || weights.is_empty() {
        return vec![0; weights.len()];
    }
    let mut shares: Vec<usize> = weights.iter().map(|w| w * batch / total).collect();
    let mut rest = batch - shares.iter().sum::<usize>();
    let mut order: Vec<usize> = (0..weights.len()).collect();
    order.sort_by_key(|&i| (std::cmp::Reverse((weights[i] * batch) % total), i));
    for &i in order.iter().cycle() {
        if rest == 0 {
            break;
        }
        shares[i] += 1;
        rest -= 1;
    }
    shares
}

#[cfg(test)]
mod tests {
    use super::scale_shares;

    #[test]
    fn shares_scale_and_sum_to_the_batch() {
        assert_eq!(scale_shares(&[4, 4], 8), vec![4, 4]);
        assert_eq!(scale_shares(&[4, 4], 3), vec![2, 1]);
        assert_eq!(scale_shares(&[3, 1], 8), vec![6, 2]);
        assert_eq!(scale_shares(&[1, 1, 1], 1), vec![1, 0, 0]);
        for b in 0..50 {
            assert_eq!(scale_shares(&[5, 2, 9], b).iter().sum::<usize>(), b);
        }
    }
}
