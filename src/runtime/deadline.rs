//! Deadlines: when a job is due, which waiting jobs can no longer make it, and how many
//! finished in time (goodput).
//!
//! A job is due `deadline_ms` after it arrived — its file's mtime, when the client finished
//! writing it — or after the time its name sets (`img.deadline=250ms.npy`, which wins). With
//! `on_deadline = "fail"`, the dispatcher predicts when each waiting job would finish: the
//! work queued ahead of it (earliest deadline first, this agent's batches, the live plan
//! table's latencies corrected by how far recent batches ran from them), plus its own batch.
//! A job that would finish after it is due goes to `failed/` as `deadline_exceeded` without
//! running, and is not counted ahead of the jobs behind it: under overload the jobs that
//! cannot make it are shed, the rest run in time.

use std::time::{Duration, SystemTime};

use serde::{Deserialize, Serialize};

use super::queue::Pending;
use crate::config::{ModelConfig, OnDeadline};
use crate::spool::naming::deadline_in_name;
use crate::spool::{ErrorKind, JobError};

/// When a job named `name` that arrived at `arrived` is due; Err: its name's deadline field
/// is not a duration.
pub fn due(
    name: &str,
    arrived: SystemTime,
    cfg: &ModelConfig,
) -> Result<Option<SystemTime>, JobError> {
    let named = deadline_in_name(name).map_err(|why| JobError::new(ErrorKind::BadName, why))?;
    let after = named.or_else(|| cfg.deadline_ms.map(|ms| Duration::from_secs_f64(ms / 1e3)));
    Ok(after.map(|d| arrived + d))
}

/// `due` for a name only seen waiting: a name that is not UTF-8 or has a bad deadline field
/// has none here (claiming it fails it with the reason).
pub fn due_waiting(
    name: &std::ffi::OsStr,
    arrived: SystemTime,
    cfg: &ModelConfig,
) -> Option<SystemTime> {
    due(name.to_str()?, arrived, cfg).ok().flatten()
}

/// Predicted time to run `items` items as this agent batches them: full batches of
/// `max_batch` items, then the rest; `batch_ms(b)` is a b-item batch's time.
pub fn work_ms(items: usize, max_batch: usize, batch_ms: &dyn Fn(usize) -> f64) -> f64 {
    let max = max_batch.max(1);
    let full = items / max;
    let rest = items % max;
    full as f64 * batch_ms(max) + if rest > 0 { batch_ms(rest) } else { 0.0 }
}

/// The waiting jobs (in the order they run) that cannot finish by when they are due, with
/// what the prediction said: each is predicted after `ahead` jobs already owned and every
/// kept job before it, of `items_per_job` items each, the batches before its own spread over
/// `lanes` lanes. Shed jobs are not counted ahead.
pub fn to_shed(
    now: SystemTime,
    ahead: usize,
    waiting: &[Pending],
    items_per_job: f64,
    max_batch: usize,
    lanes: usize,
    batch_ms: &dyn Fn(usize) -> f64,
) -> Vec<(usize, Duration)> {
    let per_job = items_per_job.max(1.0);
    let max = max_batch.max(1);
    let mut queued = ahead as f64 * per_job;
    let mut shed = Vec::new();
    for (k, p) in waiting.iter().enumerate() {
        let with_it = (queued + per_job).round() as usize;
        let total = work_ms(with_it, max, batch_ms);
        // Its own batch (the last) runs whole; those before it spread over the lanes.
        let own = match with_it % max {
            0 => batch_ms(max),
            rest => batch_ms(rest),
        };
        let ms = (total - own) / lanes.max(1) as f64 + own;
        let finish = Duration::from_secs_f64(ms.max(0.0) / 1e3);
        match p.due {
            Some(due) if now + finish > due => shed.push((k, finish)),
            _ => queued += per_job,
        }
    }
    shed
}

/// Whether a batch whose tightest job would finish late were it grown should grow anyway, to
/// hold the jobs behind it (`rest`, `rest_items` items, the first of them the one that did not
/// fit). `batch` holds the dues of the jobs in it now, all on time at `items` items. Against
/// running it as it is and the rest next (two batches), one batch of both is chosen when more
/// jobs finish in time in it — its late ones are then failed unrun — or as many, sooner. Under
/// overload the jobs that survive shedding have little slack; closing every batch at what its
/// first job affords kept batches small, and on many cores small batches serve a fraction of
/// the items per second of full ones (BENCHMARKS.md §12).
pub fn grow_past_tightest(
    now: SystemTime,
    batch: &[Option<SystemTime>],
    items: usize,
    rest: &[Option<SystemTime>],
    rest_items: usize,
    batch_ms: &dyn Fn(usize) -> f64,
) -> bool {
    let at = |ms: f64| now + Duration::from_secs_f64(ms.max(0.0) / 1e3);
    let on_time = |dues: &mut dyn Iterator<Item = &Option<SystemTime>>, by: SystemTime| {
        dues.filter(|d| d.is_none_or(|d| d >= by)).count()
    };
    let (first, second) = (batch_ms(items), batch_ms(rest_items));
    let apart = batch.len() + on_time(&mut rest.iter(), at(first + second));
    let one_ms = batch_ms(items + rest_items);
    let together = on_time(&mut batch.iter().chain(rest), at(one_ms));
    together > apart || (together == apart && one_ms < first + second)
}

/// The reason a job that cannot make its deadline is failed with.
pub fn exceeded(due: SystemTime, now: SystemTime, predicted: Duration, ahead: usize) -> JobError {
    let left_ms = due.duration_since(now).map_or_else(
        |e| -(e.duration().as_secs_f64() * 1e3),
        |d| d.as_secs_f64() * 1e3,
    );
    let when = if left_ms < 0.0 {
        format!("it was due {:.0} ms ago", -left_ms)
    } else {
        format!("it is due in {left_ms:.0} ms")
    };
    JobError::new(
        ErrorKind::DeadlineExceeded,
        format!(
            "{when}, and would finish in {:.0} ms ({ahead} job(s) ahead of it): not run (on_deadline = \"fail\"); give it a later deadline, or add capacity",
            predicted.as_secs_f64() * 1e3
        ),
    )
}

/// Jobs with a deadline, by outcome.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Goodput {
    /// Finished by when they were due.
    pub on_time: u64,
    /// Finished after (`on_deadline = "run"`, or a batch slower than predicted).
    pub late: u64,
    /// Failed unrun as `deadline_exceeded`.
    pub expired: u64,
    /// Started after they were due (with `on_deadline = "fail"`, none should).
    #[serde(default)]
    pub started_late: u64,
}

impl Goodput {
    pub fn finished(&mut self, due: SystemTime, at: SystemTime) {
        if at <= due {
            self.on_time += 1;
        } else {
            self.late += 1;
        }
    }
}

/// What status shows of a model's deadlines.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct DeadlineStatus {
    pub deadline_ms: Option<f64>,
    pub on_deadline: OnDeadline,
    #[serde(flatten)]
    pub goodput: Goodput,
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pending(due_ms: Option<u64>, now: SystemTime) -> Pending {
        Pending {
            name: "j.npy".into(),
            arrived: now,
            due: due_ms.map(|ms| now + Duration::from_millis(ms)),
        }
    }

    #[test]
    fn work_is_full_batches_then_the_rest() {
        let ms = |b: usize| 10.0 + b as f64;
        assert_eq!(work_ms(0, 8, &ms), 0.0);
        assert_eq!(work_ms(3, 8, &ms), 13.0);
        assert_eq!(work_ms(8, 8, &ms), 18.0);
        assert_eq!(work_ms(19, 8, &ms), 18.0 * 2.0 + 13.0);
    }

    #[test]
    fn jobs_that_cannot_make_it_are_shed_and_not_counted_ahead() {
        let now = SystemTime::UNIX_EPOCH + Duration::from_secs(1_000_000);
        // One item per job, one-item batches of 100 ms each.
        let ms = |b: usize| 100.0 * b as f64;
        let w: Vec<Pending> = [Some(150), Some(150), Some(250), None, Some(350)]
            .into_iter()
            .map(|d| pending(d, now))
            .collect();
        let shed = to_shed(now, 0, &w, 1.0, 1, 1, &ms);
        // 1st finishes at 100 ms (kept), 2nd would at 200 > 150 (shed), 3rd at 200 ≤ 250,
        // the one without a deadline at 300, the last at 400 > 350.
        let k: Vec<usize> = shed.iter().map(|s| s.0).collect();
        assert_eq!(k, [1, 4]);
        assert_eq!(shed[0].1, Duration::from_millis(200));
        // Two owned jobs ahead: only the one without a deadline is kept.
        let k: Vec<usize> = to_shed(now, 2, &w, 1.0, 1, 1, &ms)
            .iter()
            .map(|s| s.0)
            .collect();
        assert_eq!(k, [0, 1, 2, 4]);
    }

    #[test]
    fn with_lanes_the_batches_ahead_spread_over_them() {
        let now = SystemTime::UNIX_EPOCH + Duration::from_secs(1_000_000);
        let ms = |b: usize| 100.0 * b as f64;
        let w: Vec<Pending> = (0..4).map(|_| pending(Some(250), now)).collect();
        // One lane: 100, 200, 300 > 250, ... Two lanes: 100, 150, 200, 250 — all make it.
        assert_eq!(to_shed(now, 0, &w, 1.0, 1, 1, &ms).len(), 2);
        assert!(to_shed(now, 0, &w, 1.0, 1, 2, &ms).is_empty());
    }

    #[test]
    fn a_batch_grows_past_its_tightest_job_only_where_more_finish_in_time() {
        let now = SystemTime::UNIX_EPOCH + Duration::from_secs(1_000_000);
        let ms = |b: usize| 50.0 + 10.0 * b as f64;
        let at = |ms: u64| Some(now + Duration::from_millis(ms));
        // One tight job (due at 70 ms: it makes it alone, in 60) and three behind due at 100:
        // apart, they would finish at 60 + 80 = 140; together at 90. One late against three.
        assert!(grow_past_tightest(now, &[at(70)], 1, &[at(100); 3], 3, &ms));
        // The three due at 200 make it after the tight one's batch too: four on time apart.
        assert!(!grow_past_tightest(
            now,
            &[at(70)],
            1,
            &[at(200); 3],
            3,
            &ms
        ));
        // As many on time either way (the one behind, due at 85, is late apart, at 120, and
        // the tight one together, at 70): one batch, sooner.
        assert!(grow_past_tightest(now, &[at(65)], 1, &[at(85)], 1, &ms));
    }

    #[test]
    fn goodput_counts_on_time_and_late() {
        let now = SystemTime::UNIX_EPOCH + Duration::from_secs(5);
        let mut g = Goodput::default();
        g.finished(now, now);
        g.finished(now, now + Duration::from_millis(1));
        assert_eq!((g.on_time, g.late, g.expired), (1, 1, 0));
    }

    #[test]
    fn the_reason_says_when_it_was_due_and_the_prediction() {
        let now = SystemTime::UNIX_EPOCH + Duration::from_secs(5);
        let e = exceeded(
            now - Duration::from_millis(20),
            now,
            Duration::from_millis(40),
            3,
        );
        assert_eq!(e.kind, ErrorKind::DeadlineExceeded);
        assert!(e.message.contains("due 20 ms ago"), "{}", e.message);
        assert!(e.message.contains("40 ms (3 job(s) ahead"), "{}", e.message);
    }
}
