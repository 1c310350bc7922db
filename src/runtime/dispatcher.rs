//! The dispatcher thread of one model: it loads queued jobs, coalesces what is waiting into one
//! batch up to `max_batch` (never waiting for more), runs the batch with the plan for its size,
//! splits the outputs back per job and publishes them through the spool.

use std::time::Instant;

use anyhow::Result;
use tch::Tensor;

use super::ModelRuntime;
use crate::engine::{concat_outputs, split_outputs, InputMismatch, MismatchKind, Outputs};
use crate::spool::{ErrorKind, Job, JobError};
use crate::tensorfile::{self, Format, ReadError, ReadErrorKind};

impl From<ReadError> for JobError {
    fn from(e: ReadError) -> JobError {
        let kind = match e.kind {
            ReadErrorKind::BadFile => ErrorKind::BadFile,
            ReadErrorKind::TooLarge => ErrorKind::TooLarge,
            ReadErrorKind::Io => ErrorKind::Io,
        };
        JobError::new(kind, e.message)
    }
}

impl From<InputMismatch> for JobError {
    fn from(e: InputMismatch) -> JobError {
        let kind = match e.kind {
            MismatchKind::Input => ErrorKind::WrongInput,
            MismatchKind::Dtype => ErrorKind::WrongDtype,
            MismatchKind::Shape => ErrorKind::WrongShape,
        };
        JobError::new(kind, e.message)
    }
}

/// A job read and checked, ready to run.
struct Loaded {
    job: Job,
    format: Format,
    inputs: Vec<Tensor>,
    items: usize,
}

/// Runs until the queue is stopped and empty.
pub(super) fn run(rt: &ModelRuntime) {
    let max = rt.cfg.max_batch;
    let mut carry: Option<Loaded> = None;
    loop {
        let first = match carry.take() {
            Some(l) => l,
            None => match rt.queue.pop(true) {
                Some(j) => match load(rt, j) {
                    Some(l) => l,
                    None => continue,
                },
                None => break,
            },
        };
        let mut group = vec![first];
        let mut total = group[0].items;
        // Coalesce what is already waiting; do not wait for more.
        while total < max {
            let Some(j) = rt.queue.pop(false) else { break };
            let Some(l) = load(rt, j) else { continue };
            if total + l.items <= max {
                total += l.items;
                group.push(l);
            } else {
                carry = Some(l);
                break;
            }
        }
        run_group(rt, group);
    }
    log::debug!("model {}: dispatcher drained and stopped", rt.cfg.name);
}

fn load(rt: &ModelRuntime, job: Job) -> Option<Loaded> {
    let t0 = Instant::now();
    let res = (|| -> Result<_, JobError> {
        let format = Format::from_path(&job.path).ok_or_else(|| {
            JobError::new(
                ErrorKind::UnknownFormat,
                format!(
                    "'{}' has no known extension: name job files *.npy, *.npz or *.safetensors",
                    job.name
                ),
            )
        })?;
        let named = tensorfile::read(&job.path, format, rt.cfg.max_job_bytes)?;
        let (inputs, items) = rt.model().match_inputs(named)?;
        Ok((format, inputs, items as usize))
    })();
    match res {
        Ok((format, inputs, items)) => {
            log::debug!(
                "model {}: {} loaded in {:.2} ms",
                rt.cfg.name,
                job.name,
                t0.elapsed().as_secs_f64() * 1e3
            );
            Some(Loaded {
                job,
                format,
                inputs,
                items,
            })
        }
        Err(e) => {
            rt.fail(&job, &e);
            None
        }
    }
}

fn model_error(e: anyhow::Error) -> JobError {
    JobError::new(ErrorKind::ModelError, format!("{e:#}"))
}

fn run_group(rt: &ModelRuntime, group: Vec<Loaded>) {
    let result = if group.len() == 1 {
        let out = run_one(rt, &group[0]);
        if let Ok(out) = &out {
            rt.check_precision(&group[0].inputs, out);
        }
        out.map(|o| vec![o])
    } else {
        run_coalesced(rt, &group)
    };
    match result {
        Ok(outs) => {
            for (l, out) in group.iter().zip(outs) {
                finish(rt, l, &out);
            }
        }
        Err(e) if group.len() > 1 => {
            log::warn!(
                "model {}: coalesced batch of {} jobs failed ({e:#}); running them one by one",
                rt.cfg.name,
                group.len()
            );
            for l in &group {
                match run_one(rt, l) {
                    Ok(out) => finish(rt, l, &out),
                    Err(e) => rt.fail(&l.job, &model_error(e)),
                }
            }
        }
        Err(e) => rt.fail(&group[0].job, &model_error(e)),
    }
}

fn finish(rt: &ModelRuntime, l: &Loaded, out: &Outputs) {
    let t0 = Instant::now();
    let fmt = l.format.for_outputs(out.len());
    let res = rt
        .spool
        .publish(&l.job, fmt.ext(), |w| tensorfile::write(w, fmt, out));
    log::debug!(
        "model {}: {} written in {:.2} ms",
        rt.cfg.name,
        l.job.name,
        t0.elapsed().as_secs_f64() * 1e3
    );
    match res {
        Ok(path) => {
            let dt = l.job.claimed.elapsed();
            log::info!(
                "model {}: {} ({} items) -> {} in {:.1} ms",
                rt.cfg.name,
                l.job.name,
                l.items,
                path.display(),
                dt.as_secs_f64() * 1e3
            );
            rt.stats().record_done(dt);
        }
        Err(e) => rt.fail(
            &l.job,
            &JobError::new(
                ErrorKind::OutputError,
                format!("cannot write the output: {e:#}"),
            ),
        ),
    }
}

/// One job, in chunks of max_batch when it is larger.
fn run_one(rt: &ModelRuntime, l: &Loaded) -> Result<Outputs> {
    let max = rt.cfg.max_batch;
    let mut parts = Vec::new();
    let mut off = 0;
    while off < l.items {
        let n = (l.items - off).min(max);
        let inputs: Vec<Tensor> = l
            .inputs
            .iter()
            .map(|t| t.narrow(0, off as i64, n as i64))
            .collect();
        parts.push(rt.run_batch(&inputs, n)?);
        off += n;
    }
    concat_outputs(parts)
}

fn run_coalesced(rt: &ModelRuntime, group: &[Loaded]) -> Result<Vec<Outputs>> {
    let total: usize = group.iter().map(|l| l.items).sum();
    let n_inputs = group[0].inputs.len();
    let inputs: Vec<Tensor> = (0..n_inputs)
        .map(|k| Tensor::f_cat(&group.iter().map(|l| &l.inputs[k]).collect::<Vec<_>>(), 0))
        .collect::<Result<_, _>>()?;
    let out = rt.run_batch(&inputs, total)?;
    let sizes: Vec<usize> = group.iter().map(|l| l.items).collect();
    split_outputs(out, &sizes)
}
