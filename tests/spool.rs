//! The spool's promise — every job ends exactly once, in out/ or in failed/ with a reason —
//! against the real binary, one test per way it was seen to break: several agents on one
//! spool, kill -9, SIGTERM, hostile names, shared stems, disk full, a zip bomb, a symlinked
//! folder, and clients who are not the agent's user.

mod common;

use std::ffi::OsStr;
use std::fs;
use std::io::Write;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use common::*;
use nix::sys::signal::Signal;
use tch::Tensor;

const RESNET: &str = "plan = \"baseline\"";

/// `n` jobs of `items` items each, submitted in order; returns (name, input).
fn submit_many(agent: &Agent, model: &str, n: usize, items: i64) -> Vec<(String, Tensor)> {
    (0..n)
        .map(|i| {
            let x = input(model, items);
            let name = agent.submit(
                &format!("j{i:03}.npy"),
                &[("input".into(), x.shallow_clone())],
            );
            (name, x)
        })
        .collect()
}

/// The failure record of `name`, parsed.
fn record(agent: &Agent, name: &str) -> serde_json::Value {
    let p = agent
        .model_dir()
        .join("failed")
        .join(format!("{name}.error.json"));
    serde_json::from_str(&fs::read_to_string(&p).unwrap_or_else(|e| panic!("{}: {e}", p.display())))
        .unwrap()
}

/// Waits until `cond` holds; panics with `what` after `secs`.
fn wait_for(secs: u64, what: &str, cond: impl Fn() -> bool) {
    let t0 = Instant::now();
    while !cond() {
        assert!(t0.elapsed() < Duration::from_secs(secs), "{what}");
        std::thread::sleep(Duration::from_millis(5));
    }
}

/// Every job has exactly its one output, equal to the model's, and nothing else is left.
fn assert_exactly_once(agent: &Agent, model: &str, jobs: &[(String, Tensor)]) {
    let mut names: Vec<String> = jobs.iter().map(|(n, _)| n.clone()).collect();
    names.sort();
    assert_eq!(
        agent.files("out"),
        names,
        "one output per job, no duplicates"
    );
    assert!(
        agent.files("failed").is_empty(),
        "{:?}",
        agent.files("failed")
    );
    assert!(agent.claimed().is_empty(), "{:?}", agent.claimed());
    assert!(agent.files("incoming").is_empty());
    for (name, x) in jobs.iter().step_by(17) {
        let want = reference(model, std::slice::from_ref(x));
        let got = read(&agent.model_dir().join("out").join(name));
        assert_close(&got[0].1, &want[0].1);
    }
}

#[test]
fn two_agents_on_one_spool_split_the_work_and_run_every_job_once() {
    // The second agent starts while the first is busy with a backlog it has partly claimed;
    // each has a core of its own, as two agents on one host would.
    let cpus = allowed_cpus();
    let core = |k: usize| format!("cores = \"{}\"", cpus[k % cpus.len()]);
    let mut a = Agent::configured(None, &core(0), "builtin:resnet18", RESNET);
    a.spawn(&[]);
    let jobs = submit_many(&a, "resnet18", 60, 8);
    let b = a.peer(&core(1), "builtin:resnet18", RESNET);
    for (n, _) in &jobs {
        a.wait(n).unwrap();
    }
    // Status files are rewritten every second: wait until both have counted everything.
    let done = |ag: &Agent| ag.status()["models"][0]["jobs_done"].as_u64().unwrap();
    let n = jobs.len() as u64;
    wait_for(5, "the agents never counted every job", || {
        done(&a) + done(&b) == n
    });
    let (da, db) = (done(&a), done(&b));
    wait_for(5, "retired", || a.claimed().is_empty());
    assert_exactly_once(&a, "resnet18", &jobs);
    assert!(db > 0, "the second agent got no work: a {da}, b {db}");
}

#[test]
fn kill_9_loops_fail_no_job_that_was_only_queued() {
    let mut agent = Agent::start("resnet18", RESNET);
    agent.stop(Signal::SIGTERM);
    let jobs = submit_many(&agent, "resnet18", 60, 1);
    for _ in 0..3 {
        // Kill once a batch has finished since the start (the taken-over jobs run first, so
        // they are done): usually mid-way through the next batch, however slow the machine.
        let before = agent.files("out").len();
        agent.spawn(&[]);
        wait_for(60, "no batch finished", || {
            agent.files("out").len() > before
        });
        agent.stop(Signal::SIGKILL);
    }
    assert!(
        agent.files("out").len() < jobs.len(),
        "the kills came too late to matter"
    );
    agent.spawn(&[]);
    for (n, _) in &jobs {
        agent.wait(n).unwrap();
    }
    wait_for(5, "retired", || agent.claimed().is_empty());
    assert_exactly_once(&agent, "resnet18", &jobs);
}

#[test]
fn a_name_too_long_to_serve_is_failed_under_a_safe_name_and_restarts_still_work() {
    let mut agent = Agent::start("tiny_cnn", "plan = \"baseline\"");
    let long = "a".repeat(246) + ".npy";
    write_job(
        &agent.model_dir().join("incoming").join(&long),
        &[("input".into(), input("tiny_cnn", 1))],
    );
    let safe = format!("{}.npy", "a".repeat(176));
    wait_for(30, "no record for the long name", || {
        agent
            .model_dir()
            .join("failed")
            .join(format!("{safe}.error.json"))
            .exists()
    });
    let rec = record(&agent, &safe);
    assert_eq!(rec["error"], "bad_name");
    assert!(
        rec["reason"].as_str().unwrap().contains("250 bytes"),
        "{rec}"
    );
    assert!(rec["reason"].as_str().unwrap().contains(&long), "{rec}");
    // Nothing is left to block a restart, which serves as before.
    agent.stop(Signal::SIGTERM);
    agent.spawn(&[]);
    let name = agent.submit("after.npy", &[("input".into(), input("tiny_cnn", 1))]);
    agent.wait(&name).unwrap();
}

#[test]
fn jobs_sharing_a_stem_each_get_their_own_output_across_a_kill_9() {
    let mut agent = Agent::start("resnet18", RESNET);
    agent.stop(Signal::SIGTERM);
    let c1 = agent.submit("c.npy", &[("input".into(), input("resnet18", 1))]);
    let c16 = agent.submit("c.npz", &[("input".into(), input("resnet18", 16))]);
    assert_eq!((c1.as_str(), c16.as_str()), ("c.npy", "c.npz"));
    agent.spawn(&[]);
    let out = agent.model_dir().join("out");
    wait_for(60, "c.npy never finished", || out.join("c.npy").exists());
    agent.stop(Signal::SIGKILL);
    agent.spawn(&[]);
    let a = agent.wait("c.npy").unwrap();
    let b = agent.wait("c.npz").unwrap();
    assert_eq!(read(&a)[0].1.size(), [1, 1000]);
    assert_eq!(read(&b)[0].1.size(), [16, 1000]);
    assert_eq!(agent.files("out"), ["c.npy", "c.npz"]);
    assert!(agent.files("failed").is_empty());
}

#[test]
fn a_name_that_is_not_utf8_is_failed_with_its_bytes_quoted() {
    let agent = Agent::start("tiny_cnn", "plan = \"baseline\"");
    let name = OsStr::from_bytes(b"caf\xe9\xff.npy");
    write_job(
        &agent.model_dir().join("incoming").join(name),
        &[("input".into(), input("tiny_cnn", 1))],
    );
    wait_for(30, "no record for the non-UTF-8 name", || {
        agent
            .model_dir()
            .join("failed/caf__.npy.error.json")
            .exists()
    });
    let rec = record(&agent, "caf__.npy");
    assert_eq!(rec["error"], "bad_name");
    assert!(
        rec["reason"].as_str().unwrap().contains(r"caf\xe9\xff.npy"),
        "{rec}"
    );
    assert!(agent.files("incoming").is_empty());
    assert!(agent.log().contains(r"caf\xe9\xff.npy"), "{}", agent.log());
}

/// A tmpfs of `size` mounted at `dir` for a test's life (the disk-full test's small disk).
struct SmallDisk(std::path::PathBuf);

impl SmallDisk {
    fn mount(dir: &Path, size: &str) -> SmallDisk {
        fs::create_dir_all(dir).unwrap();
        let st = Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs"])
            .arg(dir)
            .status()
            .unwrap();
        assert!(
            st.success(),
            "this test mounts a small tmpfs: it needs root (CAP_SYS_ADMIN)"
        );
        SmallDisk(dir.to_path_buf())
    }

    /// Fills the disk with one file; returns its path.
    fn fill(&self) -> std::path::PathBuf {
        let p = self.0.join("filler");
        let mut f = fs::File::create(&p).unwrap();
        let chunk = vec![1u8; 16 << 10];
        while f.write_all(&chunk).is_ok() {}
        // Also the last partial page.
        while f.write_all(&[1u8]).is_ok() {}
        p
    }
}

impl Drop for SmallDisk {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg("-l").arg(&self.0).status();
    }
}

#[test]
fn disk_full_holds_jobs_without_failing_them_and_retries_once_space_is_back() {
    let dir = tempfile::tempdir().unwrap();
    let disk = SmallDisk::mount(&dir.path().join("spool"), "4m");
    let mut agent = Agent::configured(
        Some(&dir.path().join("spool")),
        "",
        "builtin:tiny_cnn",
        "plan = \"baseline\"",
    );
    agent.spawn(&[]);
    agent.stop(Signal::SIGTERM);
    let jobs = submit_many(&agent, "tiny_cnn", 20, 1);
    let filler = disk.fill();
    agent.spawn(&[]);
    let st = agent.status_when(|s| s["models"][0]["disk_full"] == true);
    assert!(
        st["models"][0]["storage_problem"]
            .as_str()
            .unwrap()
            .contains("disk full"),
        "{st}"
    );
    std::thread::sleep(Duration::from_secs(3));
    // Held, not failed; nothing partial is visible.
    assert!(agent.files("out").is_empty(), "{:?}", agent.files("out"));
    assert!(
        agent.files("failed").is_empty(),
        "{:?}",
        agent.files("failed")
    );
    let metrics = fs::read_to_string(agent.state().join("metrics.prom")).unwrap();
    assert!(
        metrics.contains("packrat_spool_disk_full{model=\"m\"} 1"),
        "{metrics}"
    );
    let log = agent.log();
    assert_eq!(
        log.matches("spool disk full").count(),
        1,
        "said once: {log}"
    );
    // Space comes back: every job finishes, with no restart.
    fs::remove_file(filler).unwrap();
    for (n, _) in &jobs {
        agent.wait(n).unwrap();
    }
    wait_for(5, "retired", || agent.claimed().is_empty());
    assert_exactly_once(&agent, "tiny_cnn", &jobs);
    assert!(agent.log().contains("writable again"));
    agent.status_when(|s| s["models"][0]["disk_full"] == false);
    drop(agent);
    drop(disk);
}

/// An `.npz` whose one entry inflates to `inflated` bytes but declares `declared`.
fn zip_bomb(path: &Path, inflated: usize, declared: u32) {
    let mut buf = std::io::Cursor::new(Vec::new());
    {
        let mut z = zip::ZipWriter::new(&mut buf);
        let opts =
            zip::write::FileOptions::default().compression_method(zip::CompressionMethod::Deflated);
        z.start_file("input.npy", opts).unwrap();
        let hdr = format!(
            "{{'descr': '<f4', 'fortran_order': False, 'shape': ({}, 3, 32, 32), }}",
            inflated / (3 * 32 * 32 * 4)
        );
        z.write_all(b"\x93NUMPY\x01\x00").unwrap();
        z.write_all(&(hdr.len() as u16).to_le_bytes()).unwrap();
        z.write_all(hdr.as_bytes()).unwrap();
        let zeros = vec![0u8; 1 << 20];
        for _ in 0..inflated / zeros.len() {
            z.write_all(&zeros).unwrap();
        }
        z.finish().unwrap();
    }
    let mut bytes = buf.into_inner();
    // Lie about the uncompressed size: local header (offset 22) and central directory (+24).
    bytes[22..26].copy_from_slice(&declared.to_le_bytes());
    let cd = bytes.windows(4).rposition(|w| w == b"PK\x01\x02").unwrap();
    bytes[cd + 24..cd + 28].copy_from_slice(&declared.to_le_bytes());
    fs::write(path, bytes).unwrap();
}

#[test]
fn an_npz_zip_bomb_is_refused_at_max_job_bytes_of_inflated_data() {
    let agent = Agent::start("tiny_cnn", "plan = \"baseline\"\nmax_job_bytes = 10485760");
    let tmp = agent.dir.path().join("bomb.npz");
    zip_bomb(&tmp, 512 << 20, 100);
    assert!(fs::metadata(&tmp).unwrap().len() < 10 << 20);
    let name = packrat::spool::client::submit(&agent.model_dir(), &tmp).unwrap();
    let why = agent.wait(&name).unwrap_err();
    assert_eq!(record(&agent, &name)["error"], "too_large", "{why}");
    assert!(why.contains("max_job_bytes"), "{why}");
    // The agent never held the inflated data.
    let rss_kb: u64 = fs::read_to_string(format!("/proc/{}/status", agent.pid()))
        .unwrap()
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().trim_end_matches(" kB").parse().ok())
        .unwrap();
    assert!(rss_kb < 400 << 10, "peak RSS {rss_kb} kB");
    let ok = agent.submit("fine.npy", &[("input".into(), input("tiny_cnn", 1))]);
    agent.wait(&ok).unwrap();
}

#[test]
fn a_symlinked_spool_folder_is_refused_with_exit_78_and_its_target_untouched() {
    let a = Agent::configured(None, "", "builtin:tiny_cnn", "plan = \"baseline\"");
    let target = a.dir.path().join("private");
    fs::create_dir(&target).unwrap();
    fs::set_permissions(&target, fs::Permissions::from_mode(0o700)).unwrap();
    fs::create_dir_all(a.model_dir()).unwrap();
    std::os::unix::fs::symlink(&target, a.model_dir().join("incoming")).unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_packrat"))
        .args(["serve", "--config"])
        .arg(&a.config)
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(78), "{err}");
    assert!(
        err.contains("never follows links") && err.contains("fix:"),
        "{err}"
    );
    let mode = fs::metadata(&target).unwrap().permissions().mode();
    assert_eq!(mode & 0o7777, 0o700);
}

/// `packrat ARGS…` as uid/gid 65534 (nobody), with `groups` as supplementary groups.
fn as_nobody(groups: &[u32], args: &[&str]) -> std::process::Output {
    let groups = if groups.is_empty() {
        "--clear-groups".to_string()
    } else {
        format!(
            "--groups={}",
            groups
                .iter()
                .map(u32::to_string)
                .collect::<Vec<_>>()
                .join(",")
        )
    };
    Command::new("setpriv")
        .args([
            "--reuid=65534",
            "--regid=65534",
            &groups,
            env!("CARGO_BIN_EXE_packrat"),
        ])
        .args(args)
        .output()
        .unwrap()
}

#[test]
fn results_are_for_the_spools_group_and_other_users_are_told_why_they_cannot_read_them() {
    const GROUP: u32 = 4242;
    let mut agent = Agent::configured(None, "", "builtin:tiny_cnn", "plan = \"baseline\"");
    // The admin's part (tmpfiles.d does it in the package): a spool owned by the group, setgid.
    fs::set_permissions(agent.dir.path(), fs::Permissions::from_mode(0o755)).unwrap();
    fs::create_dir(&agent.spool).unwrap();
    nix::unistd::chown(&agent.spool, None, Some(nix::unistd::Gid::from_raw(GROUP))).unwrap();
    fs::set_permissions(&agent.spool, fs::Permissions::from_mode(0o2755)).unwrap();
    agent.spawn(&[]);
    let ok = agent.submit("ok.npy", &[("input".into(), input("tiny_cnn", 1))]);
    let out = agent.wait(&ok).unwrap();
    let bad = agent.dir.path().join("bad.npy");
    fs::write(&bad, b"not numpy").unwrap();
    let bad = packrat::spool::client::submit(&agent.model_dir(), &bad).unwrap();
    agent.wait(&bad).unwrap_err();
    for (p, mode) in [
        (out.clone(), 0o640),
        (
            agent.model_dir().join(format!("failed/{bad}.error.json")),
            0o640,
        ),
        (agent.state().join("status.json"), 0o644),
        (agent.state().join("metrics.prom"), 0o644),
    ] {
        let m = fs::metadata(&p).unwrap();
        assert_eq!(m.mode() & 0o777, mode, "{}", p.display());
        if mode == 0o640 {
            assert_eq!(m.gid(), GROUP, "{}", p.display());
        }
    }
    // A client outside the group is told why; one in it reads its result.
    let job = agent.dir.path().join("client.npy");
    write_job(&job, &[("input".into(), input("tiny_cnn", 1))]);
    fs::set_permissions(&job, fs::Permissions::from_mode(0o644)).unwrap();
    let spool = agent.spool.to_str().unwrap().to_string();
    let submit = [
        "submit",
        "--spool",
        &spool,
        "--model",
        "m",
        "--wait",
        job.to_str().unwrap(),
    ];
    let outsider = as_nobody(&[], &submit);
    let err = String::from_utf8_lossy(&outsider.stderr);
    assert_ne!(outsider.status.code(), Some(0));
    assert!(
        err.contains("cannot read") && err.contains(&format!("group '{GROUP}'")),
        "{err}"
    );
    let member = as_nobody(&[GROUP], &submit);
    let said = String::from_utf8_lossy(&member.stdout);
    assert_eq!(
        member.status.code(),
        Some(0),
        "{said} {}",
        String::from_utf8_lossy(&member.stderr)
    );
    assert!(said.contains("/out/client"), "{said}");
    let state = agent.state();
    let status = as_nobody(&[], &["status", "--state-dir", state.to_str().unwrap()]);
    assert_eq!(
        status.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&status.stderr)
    );
}
