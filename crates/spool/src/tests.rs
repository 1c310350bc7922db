//! The protocol on a real temporary tree: claiming, refusals, recovery, publishing, failing,
//! and the client's name probing.

use std::fs;
use std::io::Write;
use std::time::Duration;

use super::*;
use crate::client::{self, Outcome};

fn spool() -> (tempfile::TempDir, Spool) {
    let dir = tempfile::tempdir().unwrap();
    let s = Spool::open(dir.path().join("m"), false).unwrap();
    (dir, s)
}

fn drop_job(s: &Spool, name: &str) {
    fs::write(s.dir(Folder::Incoming).join(name), b"job").unwrap();
}

fn claim(s: &Spool, name: &str) -> Job {
    match s.claim(name).unwrap() {
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
}

#[test]
fn scan_skips_uploads_in_progress_and_lists_oldest_first() {
    let (_d, s) = spool();
    for n in ["b.npy", ".hidden.npy", "c.npy.part", "d.tmp"] {
        drop_job(&s, n);
    }
    std::thread::sleep(Duration::from_millis(20));
    drop_job(&s, "a.npy");
    assert_eq!(s.scan(), ["b.npy", "a.npy"]);
}

#[test]
fn a_claim_never_reuses_a_name_with_an_output_or_record() {
    let (_d, s) = spool();
    fs::write(s.dir(Folder::Out).join("j.npy"), b"old output").unwrap();
    drop_job(&s, "j.npy");
    let job = claim(&s, "j.npy");
    assert_eq!(job.name, "j~1.npy");
    assert!(job.path.exists());
    assert!(matches!(s.claim("j.npy").unwrap(), Claim::Gone));
}

#[test]
fn anything_but_a_regular_file_is_failed_at_claim_with_a_reason() {
    let (_d, s) = spool();
    std::os::unix::fs::symlink("/etc/passwd", s.dir(Folder::Incoming).join("l.npy")).unwrap();
    fs::create_dir(s.dir(Folder::Incoming).join("d.npy")).unwrap();
    for name in ["l.npy", "d.npy"] {
        match s.claim(name).unwrap() {
            Claim::Refused(n, e) => {
                assert_eq!(n, name);
                assert_eq!(e.kind, ErrorKind::NotRegular);
            }
            other => panic!("{other:?}"),
        }
        let rec: serde_json::Value = serde_json::from_str(
            &fs::read_to_string(naming::error_record_path(&s.root, name)).unwrap(),
        )
        .unwrap();
        assert_eq!(rec["error"], "not_regular");
    }
    // The symlink itself moved, its target untouched.
    assert!(fs::symlink_metadata(s.dir(Folder::Failed).join("l.npy"))
        .unwrap()
        .file_type()
        .is_symlink());
}

#[test]
fn publish_is_atomic_and_retires_the_input() {
    let (_d, s) = spool();
    drop_job(&s, "x.npz");
    let job = claim(&s, "x.npz");
    let out = s
        .publish(&job, "npz", |w| {
            w.write_all(b"result")?;
            Ok(())
        })
        .unwrap();
    assert_eq!(out, s.dir(Folder::Out).join("x.npz"));
    assert_eq!(fs::read(&out).unwrap(), b"result");
    assert!(files(&s, Folder::Processing).is_empty());
    // A writer that fails leaves nothing visible.
    drop_job(&s, "y.npy");
    let job = claim(&s, "y.npy");
    assert!(s.publish(&job, "npy", |_| anyhow::bail!("boom")).is_err());
    assert_eq!(files(&s, Folder::Out), ["x.npz"]);
}

#[test]
fn recovery_finishes_fails_or_reruns_and_stops_a_crash_loop() {
    let (_d, s) = spool();
    for n in ["done.npy", "bad.npy", "rerun.npy"] {
        drop_job(&s, n);
        claim(&s, n);
    }
    fs::write(s.dir(Folder::Out).join("done.npy"), b"out").unwrap();
    fs::write(naming::error_record_path(&s.root, "bad.npy"), b"{}").unwrap();
    fs::write(s.dir(Folder::Out).join(".packrat-half.tmp"), b"").unwrap();
    let again = s.recover().unwrap();
    assert_eq!(
        again.iter().map(|j| j.name.as_str()).collect::<Vec<_>>(),
        ["rerun.npy"]
    );
    assert_eq!(files(&s, Folder::Out), ["done.npy"]);
    assert!(files(&s, Folder::Failed).contains(&"bad.npy".to_string()));
    // Still claimed at the third start: failed as a likely crasher.
    assert_eq!(s.recover().unwrap().len(), 1);
    assert!(s.recover().unwrap().is_empty());
    let rec = fs::read_to_string(naming::error_record_path(&s.root, "rerun.npy")).unwrap();
    assert!(rec.contains("crashed_agent"), "{rec}");
    assert!(files(&s, Folder::Processing).is_empty());
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
    s.publish(&job, "npy", |w| Ok(w.write_all(b"o")?)).unwrap();
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
