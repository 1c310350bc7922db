//! The protocol on a real temporary tree: claiming, refusals, recovery, publishing, failing,
//! and the client's name probing.

use std::ffi::OsStr;
use std::fs;
use std::io::Write;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::PermissionsExt;
use std::time::Duration;

use super::*;
use crate::client::{self, Outcome};

fn spool() -> (tempfile::TempDir, Spool) {
    let dir = tempfile::tempdir().unwrap();
    let s = Spool::open(dir.path().join("m"), SpoolOptions::default()).unwrap();
    (dir, s)
}

/// A second agent on the same spool.
fn another(s: &Spool) -> Spool {
    Spool::open(s.root.clone(), SpoolOptions::default()).unwrap()
}

fn drop_job(s: &Spool, name: &str) {
    fs::write(s.dir(Folder::Incoming).join(name), b"job").unwrap();
}

fn claim(s: &Spool, name: &str) -> Job {
    match s.claim(OsStr::new(name)).unwrap() {
        Claim::Job(j) => j,
        other => panic!("{name}: {other:?}"),
    }
}

fn files(s: &Spool, f: Folder) -> Vec<String> {
    let mut v: Vec<String> = fs::read_dir(s.dir(f))
        .unwrap()
        .flatten()
        .map(|e| e.file_name().to_string_lossy().to_string())
        .collect();
    v.sort();
    v
}

#[test]
fn open_makes_the_tree_with_client_folders_open_to_all() {
    let (_d, s) = spool();
    for f in Folder::ALL {
        assert!(s.dir(f).is_dir(), "{}", f.name());
    }
    let mode = fs::metadata(s.dir(Folder::Incoming))
        .unwrap()
        .permissions()
        .mode();
    assert_eq!(mode & 0o7777, 0o1777);
    let mode = fs::metadata(s.dir(Folder::Out))
        .unwrap()
        .permissions()
        .mode();
    assert_eq!(mode & 0o7777, 0o2750);
}

#[test]
fn a_symlinked_spool_folder_is_refused_and_its_target_untouched() {
    let d = tempfile::tempdir().unwrap();
    let target = d.path().join("elsewhere");
    fs::create_dir(&target).unwrap();
    fs::set_permissions(&target, fs::Permissions::from_mode(0o700)).unwrap();
    let root = d.path().join("m");
    fs::create_dir(&root).unwrap();
    std::os::unix::fs::symlink(&target, root.join("incoming")).unwrap();
    let err = Spool::open(root, SpoolOptions::default()).err().unwrap();
    assert!(
        format!("{err:#}").contains("never follows links"),
        "{err:#}"
    );
    let mode = fs::metadata(&target).unwrap().permissions().mode();
    assert_eq!(mode & 0o7777, 0o700);
}

#[test]
fn scan_skips_uploads_in_progress_and_lists_oldest_first() {
    let (_d, s) = spool();
    for n in ["b.npy", ".hidden.npy", "c.npy.part", "d.tmp"] {
        drop_job(&s, n);
    }
    std::thread::sleep(Duration::from_millis(20));
    drop_job(&s, "a.npy");
    fs::write(
        s.dir(Folder::Incoming).join(OsStr::from_bytes(b"\xff.npy")),
        b"x",
    )
    .unwrap();
    let names: Vec<OsString> = s.scan().into_iter().map(|w| w.name).collect();
    assert_eq!(names.len(), 3);
    assert_eq!(&names[..2], ["b.npy", "a.npy"]);
}

#[test]
fn a_claim_never_reuses_a_name_with_an_outcome_or_in_flight() {
    let (_d, s) = spool();
    fs::write(s.dir(Folder::Out).join("j.npy"), b"old output").unwrap();
    drop_job(&s, "j.npy");
    let job = claim(&s, "j.npy");
    assert_eq!(job.name, "j~1.npy");
    assert!(job.path.exists());
    assert!(matches!(s.claim(OsStr::new("j.npy")).unwrap(), Claim::Gone));
    // In flight with another agent: c.npy may write out/c.npy.npz, so c.npy.npz moves aside.
    let b = another(&s);
    drop_job(&s, "c.npy");
    claim(&b, "c.npy");
    drop_job(&s, "c.npy.npz");
    assert_eq!(claim(&s, "c.npy.npz").name, "c.npy~1.npz");
    drop_job(&s, "c.npy");
    assert_eq!(claim(&s, "c.npy").name, "c~1.npy");
}

#[test]
fn what_cannot_be_served_is_claimed_under_a_safe_name_and_refused() {
    let (_d, s) = spool();
    let inc = s.dir(Folder::Incoming);
    std::os::unix::fs::symlink("/etc/passwd", inc.join("l.npy")).unwrap();
    fs::create_dir(inc.join("d.npy")).unwrap();
    let long = "a".repeat(246) + ".npy";
    drop_job(&s, &long);
    fs::write(inc.join(OsStr::from_bytes(b"caf\xe9.npy")), b"x").unwrap();
    let cases: [(&OsStr, ErrorKind); 4] = [
        (OsStr::new("l.npy"), ErrorKind::NotRegular),
        (OsStr::new("d.npy"), ErrorKind::NotRegular),
        (OsStr::new(&long), ErrorKind::BadName),
        (OsStr::from_bytes(b"caf\xe9.npy"), ErrorKind::BadName),
    ];
    for (name, kind) in cases {
        let (job, e) = match s.claim(name).unwrap() {
            Claim::Refused(j, e) => (j, e),
            other => panic!("{other:?}"),
        };
        assert_eq!(e.kind, kind);
        assert!(job.name.len() <= naming::MAX_JOB_NAME && job.name.is_ascii());
        s.fail(&job, &e).unwrap();
        let rec: serde_json::Value = serde_json::from_str(
            &fs::read_to_string(naming::error_record_path(&s.root, &job.name)).unwrap(),
        )
        .unwrap();
        assert_eq!(rec["error"], kind.as_str());
    }
    assert!(files(&s, Folder::Incoming).is_empty());
    let rec = fs::read_to_string(naming::error_record_path(&s.root, "caf_.npy")).unwrap();
    assert!(rec.contains(r#"caf\\xe9.npy"#), "{rec}");
    // The symlink itself moved, its target untouched.
    assert!(fs::symlink_metadata(s.dir(Folder::Failed).join("l.npy"))
        .unwrap()
        .file_type()
        .is_symlink());
}

#[test]
fn publish_is_atomic_never_replaces_an_outcome_and_retires_the_input() {
    let (_d, s) = spool();
    drop_job(&s, "x.npz");
    let job = claim(&s, "x.npz");
    let out = s
        .publish(&job, "npz", &[], |w| {
            w.write_all(b"result")?;
            Ok(())
        })
        .unwrap();
    assert!(matches!(&out, Published::Output(p) if *p == s.dir(Folder::Out).join("x.npz")));
    assert_eq!(
        fs::read(s.dir(Folder::Out).join("x.npz")).unwrap(),
        b"result"
    );
    let mode = fs::metadata(s.dir(Folder::Out).join("x.npz"))
        .unwrap()
        .permissions()
        .mode();
    assert_eq!(mode & 0o777, 0o640);
    assert!(!job.path.exists());
    // A writer that fails leaves nothing visible.
    drop_job(&s, "y.npy");
    let job = claim(&s, "y.npy");
    assert!(matches!(
        s.publish(&job, "npy", &[], |_| anyhow::bail!("boom")),
        Err(PublishError::Encode(_))
    ));
    assert_eq!(files(&s, Folder::Out), ["x.npz"]);
    // Two runs of one job (a paused agent's, a takeover's): the first outcome stands.
    let second = s
        .publish(&job, "npy", &[], |w| Ok(w.write_all(b"first")?))
        .unwrap();
    assert!(matches!(second, Published::Output(_)));
    fs::write(&job.path, b"job").unwrap();
    let third = s
        .publish(&job, "npy", &[], |w| Ok(w.write_all(b"second")?))
        .unwrap();
    assert!(matches!(third, Published::Duplicate(_)));
    assert_eq!(
        fs::read(s.dir(Folder::Out).join("y.npy")).unwrap(),
        b"first"
    );
    assert!(s
        .fail(&job, &JobError::new(ErrorKind::ModelError, "late"))
        .is_ok());
    assert!(!naming::error_record_path(&s.root, "y.npy").exists());
}

#[test]
fn a_gone_agents_jobs_are_taken_over_once_and_a_live_ones_never() {
    let (_d, s) = spool();
    let dead = another(&s);
    let alive = another(&s);
    for n in [
        "done.npy",
        "bad.npy",
        "queued.npy",
        "ran.npy",
        "crasher.npy",
    ] {
        drop_job(&s, n);
        let mut job = claim(&dead, n);
        if n == "ran.npy" {
            dead.started(&mut job).unwrap();
        }
        if n == "crasher.npy" {
            for _ in 0..MAX_ATTEMPTS {
                dead.started(&mut job).unwrap();
            }
        }
    }
    drop_job(&s, "theirs.npy");
    claim(&alive, "theirs.npy");
    fs::write(s.dir(Folder::Out).join("done.npy"), b"out").unwrap();
    fs::write(naming::error_record_path(&s.root, "bad.npy"), b"{}").unwrap();
    let half = format!(".packrat-{}-x.tmp", dead.agent_id());
    fs::write(s.dir(Folder::Out).join(&half), b"").unwrap();
    // Alive: nothing moves.
    assert!(s.take_over().is_empty());
    drop(dead);
    let again = s.take_over();
    let names: Vec<(&str, u32)> = again.iter().map(|j| (j.name.as_str(), j.runs)).collect();
    assert_eq!(names, [("queued.npy", 0), ("ran.npy", 1)]);
    assert_eq!(files(&s, Folder::Out), ["done.npy"]);
    assert!(files(&s, Folder::Failed).contains(&"bad.npy".to_string()));
    let rec = fs::read_to_string(naming::error_record_path(&s.root, "crasher.npy")).unwrap();
    assert!(rec.contains("crashed_agent"), "{rec}");
    // Only the live agent's folder and ours remain; a second look takes nothing.
    assert_eq!(ownership::claim_dirs(&s.root).len(), 2);
    assert!(another(&s).take_over().is_empty());
    let theirs = alive
        .dir(Folder::Claims)
        .join(alive.agent_id())
        .join("theirs.npy");
    assert!(theirs.exists());
}

#[test]
fn release_gives_jobs_back_and_leave_removes_an_empty_claim_folder() {
    let (_d, s) = spool();
    drop_job(&s, "r.npy");
    let job = claim(&s, "r.npy");
    s.release(&job);
    assert_eq!(files(&s, Folder::Incoming), ["r.npy"]);
    s.leave();
    assert!(ownership::claim_dirs(&s.root).is_empty());
}

#[test]
fn the_client_picks_a_fresh_name_and_reads_the_outcome() {
    let (d, s) = spool();
    let src = d.path().join("job.npy");
    fs::write(&src, b"data").unwrap();
    assert_eq!(client::submit(&s.root, &src).unwrap(), "job.npy");
    assert_eq!(client::submit(&s.root, &src).unwrap(), "job~1.npy");
    assert_eq!(
        fs::read(s.dir(Folder::Incoming).join("job~1.npy")).unwrap(),
        b"data"
    );
    assert!(client::submit(&s.root, &d.path().join("x.txt")).is_err());
    let job = claim(&s, "job.npy");
    s.publish(&job, "npy", &[], |w| Ok(w.write_all(b"o")?))
        .unwrap();
    assert_eq!(
        client::wait(&s.root, "job.npy", Duration::from_secs(1)).unwrap(),
        Outcome::Output(s.dir(Folder::Out).join("job.npy"))
    );
    let job = claim(&s, "job~1.npy");
    s.fail(&job, &JobError::new(ErrorKind::BadFile, "not numpy"))
        .unwrap();
    assert_eq!(
        client::wait(&s.root, "job~1.npy", Duration::from_secs(1)).unwrap(),
        Outcome::Failed("not numpy".into())
    );
    assert!(client::wait(&s.root, "never.npy", Duration::from_millis(20)).is_err());
}
