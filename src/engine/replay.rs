//! The replay backend (`engine = "replay"`): a model whose forward pass takes the time a
//! measured latency profile gives for (the instance's threads, its sub-batch), for evaluating
//! the whole agent — spool, dispatcher, planner, adapter, deadlines — as it would run on a
//! machine much larger than this one. Its cores are virtual (0..the profile's cores): instance
//! threads are not pinned, and they sleep rather than compute, so 16 "cores" of work fit on 2.
//!
//! It reads the planner's profile format (the one leaf crate below the engine that knows it)
//! rather than a format of its own, so a replay runs exactly the numbers `packrat plan` plans
//! with. Co-location effects within a model are the profile's (its instances never share a
//! core). Passes that do share a virtual core — two models overlapping on the same cores —
//! share it as the kernel's scheduler would, by processor sharing: while `n` running threads
//! are on one of its cores, a pass advances at `1/n` of its speed (its slowest thread sets
//! its pace). So overlap costs in a replay what it costs on a real machine, to a first order.
//!
//! The outputs are real and cheap: per item, the sum of each input over its features, so that
//! a replayed job's output can be checked like any other.

use std::path::Path;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use tch::{Kind, Tensor};

use super::{Backend, InputSpec, InstanceSpec, Outputs, Precision, Session};
use crate::planner::profile::{Curve, ProfileFile};

pub(super) struct Replay {
    curve: std::sync::Arc<Curve>,
    cores: usize,
}

/// The virtual core count of a replay profile: what its `cores` says, or its widest instance.
pub fn replay_cores(path: &Path) -> Result<usize> {
    let (_, cores) = read(path)?;
    Ok(cores)
}

fn read(path: &Path) -> Result<(Curve, usize)> {
    let pf = ProfileFile::load(path)?;
    let curve = pf
        .curve()
        .with_context(|| format!("profile {}", path.display()))?;
    let cores = pf.cores.max(curve.max_threads());
    if cores == 0 {
        bail!("profile {} names no cores", path.display());
    }
    Ok((curve, cores))
}

impl Replay {
    pub(super) fn load(path: &Path, inputs: &[InputSpec]) -> Result<Replay> {
        if let Some(i) = inputs.iter().find(|i| i.dtype != Kind::Float) {
            bail!(
                "the replay engine takes float32 inputs; input '{}' is {:?}",
                i.name,
                i.dtype
            );
        }
        let (curve, cores) = read(path)?;
        Ok(Replay {
            curve: std::sync::Arc::new(curve),
            cores,
        })
    }
}

impl Backend for Replay {
    fn computes_in(&self) -> (Precision, Option<String>) {
        (Precision::F32, None)
    }

    fn pins(&self) -> bool {
        false
    }

    fn open(&self, spec: &InstanceSpec) -> Result<Box<dyn Session>> {
        let Ok(ti) = self.curve.threads.binary_search(&spec.threads) else {
            bail!(
                "the replayed profile has no {}-thread latencies (it has {:?})",
                spec.threads,
                self.curve.threads
            );
        };
        if let Some(c) = spec.cores.iter().find(|&&c| c >= self.cores) {
            bail!(
                "virtual core {c} is beyond the replayed machine's {} cores",
                self.cores
            );
        }
        // The sums below are the only real work: one thread, whatever the instance claims.
        let _ = tch::get_num_threads();
        tch::set_num_threads(1);
        // Wake on time: the default 50 µs timer slack would add to every replayed pass.
        // SAFETY: prctl on the calling thread with an integer argument.
        unsafe { nix::libc::prctl(nix::libc::PR_SET_TIMERSLACK, 1u64, 0u64, 0u64, 0u64) };
        Ok(Box::new(ReplaySession {
            curve: self.curve.clone(),
            ti,
            threads: spec.threads,
            cores: spec.cores.clone(),
        }))
    }
}

struct ReplaySession {
    curve: std::sync::Arc<Curve>,
    ti: usize,
    threads: usize,
    cores: Vec<usize>,
}

/// Running replayed threads per virtual core, over every replayed model of the process.
static RUNNING: Mutex<Vec<u32>> = Mutex::new(Vec::new());

/// The longest a pass sleeps before it looks again at who shares its cores.
const LOOK_EVERY: Duration = Duration::from_millis(4);

/// A pass on `cores` while it runs: counted in [`RUNNING`].
struct Running<'a>(&'a [usize]);

impl<'a> Running<'a> {
    fn start(cores: &'a [usize]) -> Running<'a> {
        let mut r = RUNNING.lock().unwrap_or_else(|p| p.into_inner());
        for &c in cores {
            if r.len() <= c {
                r.resize(c + 1, 0);
            }
            r[c] += 1;
        }
        Running(cores)
    }

    /// How many times slower than alone it runs now: the most threads on one of its cores.
    fn slowdown(&self) -> f64 {
        let r = RUNNING.lock().unwrap_or_else(|p| p.into_inner());
        let n = self.0.iter().filter_map(|&c| r.get(c)).max().copied();
        f64::from(n.unwrap_or(1).max(1))
    }
}

impl Drop for Running<'_> {
    fn drop(&mut self) {
        let mut r = RUNNING.lock().unwrap_or_else(|p| p.into_inner());
        for &c in self.0 {
            if let Some(n) = r.get_mut(c) {
                *n = n.saturating_sub(1);
            }
        }
    }
}

impl ReplaySession {
    /// How long the profiled machine takes for `b` items on this instance.
    fn latency(&self, b: usize) -> Duration {
        Duration::from_secs_f64(self.curve.latency(self.ti, b).max(0.0) / 1e3)
    }
}

impl Session for ReplaySession {
    fn run(&mut self, inputs: &[Tensor]) -> Result<Outputs> {
        self.run_dispatched(inputs, Instant::now())
    }

    fn run_dispatched(&mut self, inputs: &[Tensor], t0: Instant) -> Result<Outputs> {
        let first = inputs.first().context("the replay engine needs an input")?;
        let b = first.size().first().copied().unwrap_or(1).max(0) as usize;
        let mut sum = Tensor::zeros([b as i64], (Kind::Float, tch::Device::Cpu));
        for x in inputs {
            sum += x
                .reshape([b as i64, -1])
                .sum_dim_intlist(1, false, Kind::Float);
        }
        let out = vec![("output".to_string(), sum.reshape([b as i64, 1]))];
        if b > 0 {
            // Sleep out the rest of the profiled time: the batch takes what the profile says,
            // slowed while other passes share its cores.
            let running = Running::start(&self.cores);
            let work = self.latency(b).as_secs_f64();
            let mut done = t0.elapsed().as_secs_f64();
            while done < work {
                let f = running.slowdown();
                let step = Duration::from_secs_f64((work - done) * f).min(LOOK_EVERY);
                let t = Instant::now();
                std::thread::sleep(step);
                done += t.elapsed().as_secs_f64() / f;
            }
        }
        Ok(out)
    }

    fn observed_threads(&self) -> i32 {
        self.threads as i32
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn profile(dir: &Path) -> std::path::PathBuf {
        let p = dir.join("p.json");
        std::fs::write(
            &p,
            r#"{"model":"m","cores":4,"points":[
              {"threads":1,"batch":1,"latency_ms":20},{"threads":1,"batch":2,"latency_ms":38},
              {"threads":2,"batch":1,"latency_ms":12},{"threads":2,"batch":2,"latency_ms":22}]}"#,
        )
        .unwrap();
        p
    }

    #[test]
    fn a_replayed_pass_takes_the_profiled_time_and_sums_each_item() {
        let dir = tempfile::tempdir().unwrap();
        let r = Replay::load(&profile(dir.path()), &[InputSpec::float("input", vec![3])]).unwrap();
        assert!(!r.pins());
        let spec = InstanceSpec {
            threads: 1,
            cores: vec![3],
        };
        let mut s = r.open(&spec).unwrap();
        let x = Tensor::from_slice(&[1.0f32, 2.0, 3.0, 4.0, 5.0, 6.0]).reshape([2, 3]);
        let t0 = Instant::now();
        let out = s.run(&[x]).unwrap();
        let took = t0.elapsed().as_secs_f64() * 1e3;
        assert!((38.0..60.0).contains(&took), "{took} ms for a 38 ms point");
        let got: Vec<f32> = Vec::try_from(out[0].1.reshape([-1])).unwrap();
        assert_eq!(got, vec![6.0, 15.0]);
        // No 3-thread row, and no core 4 on a 4-core replay.
        let three = InstanceSpec {
            threads: 3,
            cores: vec![0, 1, 2],
        };
        assert!(r.open(&three).is_err());
        let beyond = InstanceSpec {
            threads: 1,
            cores: vec![4],
        };
        assert!(r.open(&beyond).is_err());
    }

    #[test]
    fn passes_sharing_a_virtual_core_share_its_time() {
        let dir = tempfile::tempdir().unwrap();
        let r = Replay::load(&profile(dir.path()), &[InputSpec::float("input", vec![1])]).unwrap();
        let run_two = |a: usize, b: usize| {
            let ready = std::sync::Barrier::new(2);
            let took = |core: usize| {
                let mut s = r
                    .open(&InstanceSpec {
                        threads: 1,
                        cores: vec![core],
                    })
                    .unwrap();
                let x = Tensor::ones([2, 1], (Kind::Float, tch::Device::Cpu));
                ready.wait();
                let t0 = Instant::now();
                s.run(&[x]).unwrap();
                t0.elapsed().as_secs_f64() * 1e3
            };
            std::thread::scope(|sc| {
                let other = sc.spawn(|| took(b));
                took(a).max(other.join().unwrap())
            })
        };
        // Two 38 ms passes: on two cores side by side, on one core one after the other.
        let apart = run_two(0, 1);
        let shared = run_two(2, 2);
        assert!((38.0..60.0).contains(&apart), "{apart} ms apart");
        assert!((70.0..100.0).contains(&shared), "{shared} ms on one core");
    }
}
