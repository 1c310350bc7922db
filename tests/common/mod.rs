//! What the integration tests share: the real agent binary on a temporary spool, job files,
//! references, and reading thread placement from /proc.
#![allow(dead_code)] // each test binary uses its own part of it

use std::ffi::OsStr;
use std::fs;
use std::os::unix::net::UnixDatagram;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;
use packrat::engine::{Builtin, InputSpec, Model, ModelSource, Precision};
use packrat::spool::client::{self, Outcome};
use packrat::tensorfile::{self, Format};
use tch::{Kind, Tensor};

pub struct Agent {
    pub dir: tempfile::TempDir,
    pub child: Option<Child>,
    pub config: PathBuf,
    /// The spool root (several agents may share one).
    pub spool: PathBuf,
    /// A command the agent runs under (e.g. `shared-fs exec DIR 2`: as another host).
    pub wrap: Vec<String>,
}

pub fn config_text(dir: &Path, model: &str, extra: &str) -> String {
    config_with_source(dir, &format!("builtin:{model}"), extra)
}

pub fn config_with_source(dir: &Path, source: &str, extra: &str) -> String {
    config_on_spool(dir, &dir.join("spool"), "", source, extra)
}

/// A config on the spool root `spool`, with `top` fields before the model and `extra` fields
/// in it.
pub fn config_on_spool(dir: &Path, spool: &Path, top: &str, source: &str, extra: &str) -> String {
    format!(
        "spool = \"{}\"\nstate_dir = \"{}\"\nrescan_interval_ms = 200\n{top}\n[[model]]\nname = \"m\"\nsource = \"{source}\"\nmax_batch = 8\n{extra}\n",
        spool.display(),
        dir.join("state").display()
    )
}

/// Tests that keep the agent's helper threads busy with timing run one at a time (within a
/// test binary) while they hold this.
static ALONE: std::sync::Mutex<()> = std::sync::Mutex::new(());

pub fn alone() -> std::sync::MutexGuard<'static, ()> {
    ALONE.lock().unwrap_or_else(|p| p.into_inner())
}

/// The CPUs this test process may run on (the agent inherits them).
pub fn allowed_cpus() -> Vec<usize> {
    packrat::planner::topology::allowed_cpus().unwrap()
}

impl Agent {
    pub fn start(model: &str, extra: &str) -> Agent {
        Self::start_with(model, extra, &[])
    }

    pub fn start_with(model: &str, extra: &str, env: &[(&str, &str)]) -> Agent {
        Self::start_full(&format!("builtin:{model}"), extra, env)
    }

    /// An agent serving `source` (a `builtin:NAME` or a model file).
    pub fn start_source(source: &str, extra: &str) -> Agent {
        Self::start_full(source, extra, &[])
    }

    pub fn start_full(source: &str, extra: &str, env: &[(&str, &str)]) -> Agent {
        let mut a = Self::configured(None, "", source, extra);
        a.spawn(env);
        a
    }

    /// An agent not yet started, on `spool` (a new one when None), with `top` config fields
    /// before the model and `extra` in it.
    pub fn configured(spool: Option<&Path>, top: &str, source: &str, extra: &str) -> Agent {
        let dir = tempfile::tempdir().unwrap();
        let spool = spool.map_or_else(|| dir.path().join("spool"), Path::to_path_buf);
        let config = dir.path().join("packrat.toml");
        fs::write(
            &config,
            config_on_spool(dir.path(), &spool, top, source, extra),
        )
        .unwrap();
        Agent {
            dir,
            child: None,
            config,
            spool,
            wrap: Vec::new(),
        }
    }

    /// Another agent, started, on this agent's spool (its own state dir).
    pub fn peer(&self, top: &str, source: &str, extra: &str) -> Agent {
        let mut a = Self::configured(Some(&self.spool), top, source, extra);
        a.spawn(&[]);
        a
    }

    pub fn spawn(&mut self, env: &[(&str, &str)]) {
        let _ = fs::remove_file(self.state().join("status.json"));
        let log = fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.dir.path().join("agent.log"))
            .unwrap();
        let mut cmd = match self.wrap.split_first() {
            Some((prog, args)) => {
                let mut c = Command::new(prog);
                c.args(args).arg(env!("CARGO_BIN_EXE_packrat"));
                c
            }
            None => Command::new(env!("CARGO_BIN_EXE_packrat")),
        };
        cmd.args(["serve", "--config"])
            .arg(&self.config)
            .env("RUST_LOG", "info")
            .stderr(Stdio::from(log));
        for (k, v) in env {
            cmd.env(k, v);
        }
        self.child = Some(cmd.spawn().unwrap());
        let t0 = Instant::now();
        while !self.state().join("status.json").exists() {
            if let Some(code) = self.child.as_mut().unwrap().try_wait().unwrap() {
                panic!("agent exited at start ({code}): {}", self.log());
            }
            assert!(
                t0.elapsed() < Duration::from_secs(120),
                "agent not ready: {}",
                self.log()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    pub fn pid(&self) -> Pid {
        Pid::from_raw(self.child.as_ref().unwrap().id() as i32)
    }

    pub fn model_dir(&self) -> PathBuf {
        self.spool.join("m")
    }

    pub fn state(&self) -> PathBuf {
        self.dir.path().join("state")
    }

    pub fn log(&self) -> String {
        fs::read_to_string(self.dir.path().join("agent.log")).unwrap_or_default()
    }

    pub fn status(&self) -> serde_json::Value {
        serde_json::from_str(&fs::read_to_string(self.state().join("status.json")).unwrap())
            .unwrap()
    }

    /// The first status (rewritten every second) that satisfies `ok`; panics after 10 s.
    pub fn status_when(&self, ok: impl Fn(&serde_json::Value) -> bool) -> serde_json::Value {
        let t0 = Instant::now();
        loop {
            let st = fs::read_to_string(self.state().join("status.json"))
                .ok()
                .and_then(|t| serde_json::from_str(&t).ok());
            match st {
                Some(st) if ok(&st) => return st,
                Some(st) if t0.elapsed() > Duration::from_secs(10) => {
                    panic!("status never got there: {st}\n{}", self.log())
                }
                _ => std::thread::sleep(Duration::from_millis(50)),
            }
        }
    }

    /// Writes `tensors` to a job file and submits it; returns the job name.
    pub fn submit(&self, name: &str, tensors: &[(String, Tensor)]) -> String {
        let path = write_job(&self.dir.path().join(name), tensors);
        client::submit(&self.model_dir(), &path).unwrap()
    }

    pub fn wait(&self, name: &str) -> Result<PathBuf, String> {
        match client::wait(&self.model_dir(), name, Duration::from_secs(120)) {
            Ok(Outcome::Output(p)) => Ok(p),
            Ok(Outcome::Failed(reason)) => Err(reason),
            Err(e) => panic!("{e}: {}", self.log()),
        }
    }

    pub fn stop(&mut self, sig: Signal) -> i32 {
        let mut child = self.child.take().unwrap();
        kill(Pid::from_raw(child.id() as i32), sig).unwrap();
        child.wait().unwrap().code().unwrap_or(-1)
    }

    pub fn files(&self, sub: &str) -> Vec<String> {
        let mut v: Vec<String> = fs::read_dir(self.model_dir().join(sub))
            .unwrap()
            .flatten()
            .map(|e| e.file_name().to_string_lossy().to_string())
            .filter(|n| !n.starts_with('.'))
            .collect();
        v.sort();
        v
    }
}

impl Agent {
    /// Profiles this agent's model once with `packrat profile` (cached in its state dir).
    pub fn profile(&self) -> packrat::planner::profile::ProfileFile {
        let config = self.config.as_os_str();
        packrat_ok(&[
            OsStr::new("profile"),
            OsStr::new("--model"),
            OsStr::new("m"),
            OsStr::new("--config"),
            config,
        ]);
        packrat::planner::profile::ProfileFile::load(&self.state().join("profiles/m.json")).unwrap()
    }

    /// Job files claimed by any agent (in any `claims/<agent>/`), sorted.
    pub fn claimed(&self) -> Vec<String> {
        claimed(&self.model_dir())
    }
}

/// The stdout of a `packrat` command that must succeed (its stderr in the panic otherwise).
pub fn packrat_ok<S: AsRef<std::ffi::OsStr> + std::fmt::Debug>(args: &[S]) -> Vec<u8> {
    let out = Command::new(env!("CARGO_BIN_EXE_packrat"))
        .args(args)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "packrat {args:?}: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    out.stdout
}

/// Job files claimed under `model_dir/claims/*/`, sorted.
pub fn claimed(model_dir: &Path) -> Vec<String> {
    let mut v = Vec::new();
    for d in fs::read_dir(model_dir.join("claims")).unwrap().flatten() {
        if d.file_name().to_string_lossy().starts_with('.') {
            continue;
        }
        for e in fs::read_dir(d.path()).into_iter().flatten().flatten() {
            let n = e.file_name().to_string_lossy().to_string();
            if !n.starts_with('.') {
                v.push(n);
            }
        }
    }
    v.sort();
    v
}

impl Drop for Agent {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

/// Writes a job file in the format its extension names; returns its path.
pub fn write_job(path: &Path, tensors: &[(String, Tensor)]) -> PathBuf {
    let fmt = Format::from_path(path).unwrap();
    tensorfile::write(&mut fs::File::create(path).unwrap(), fmt, tensors).unwrap();
    path.to_path_buf()
}

pub fn builtin_inputs(model: &str) -> Vec<InputSpec> {
    Builtin::from_name(model).unwrap().default_inputs()
}

pub fn input(model: &str, batch: i64) -> Tensor {
    let spec = &builtin_inputs(model)[0];
    let mut shape = vec![batch];
    shape.extend(&spec.shape);
    Tensor::randn(&shape, (Kind::Float, tch::Device::Cpu))
}

/// The same built-in run in this process on one thread: what the agent must reproduce.
pub fn reference(model: &str, inputs: &[Tensor]) -> Vec<(String, Tensor)> {
    tch::set_num_threads(1);
    let b = Builtin::from_name(model).unwrap();
    let m = Model::load(
        "ref",
        &ModelSource::Builtin(b),
        b.default_inputs(),
        Precision::F32,
    )
    .unwrap();
    m.forward(inputs).unwrap()
}

pub fn read(path: &Path) -> Vec<(String, Tensor)> {
    let mut v: Vec<(String, Tensor)> =
        tensorfile::read(path, Format::from_path(path).unwrap(), 1 << 30)
            .unwrap()
            .into_iter()
            .map(|n| (n.name, n.tensor))
            .collect();
    v.sort_by(|a, b| a.0.cmp(&b.0));
    v
}

pub fn assert_close(a: &Tensor, b: &Tensor) {
    assert_eq!(a.size(), b.size());
    assert!(
        a.allclose(b, 1e-4, 1e-4, false),
        "max diff {}",
        (a - b).abs().max().double_value(&[])
    );
}

pub fn task_cpus(pid: Pid) -> Vec<(i32, String, String)> {
    fs::read_dir(format!("/proc/{pid}/task"))
        .unwrap()
        .flatten()
        .map(|t| {
            let tid: i32 = t.file_name().to_string_lossy().parse().unwrap();
            let comm = fs::read_to_string(t.path().join("comm"))
                .unwrap()
                .trim()
                .to_string();
            let status = fs::read_to_string(t.path().join("status")).unwrap();
            let cpus = status
                .lines()
                .find(|l| l.starts_with("Cpus_allowed_list:"))
                .unwrap()
                .split(':')
                .nth(1)
                .unwrap()
                .trim()
                .to_string();
            (tid, comm, cpus)
        })
        .collect()
}

/// A socket standing in for systemd's `$NOTIFY_SOCKET`: like systemd, it reads continuously
/// (a reader thread), and `seen` holds every message so far.
pub struct NotifySocket {
    _dir: tempfile::TempDir,
    path: PathBuf,
    messages: std::sync::Arc<std::sync::Mutex<Vec<String>>>,
    pub seen: Vec<String>,
}

impl NotifySocket {
    pub fn bind() -> NotifySocket {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("notify.sock");
        let sock = UnixDatagram::bind(&path).unwrap();
        let messages = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
        let sink = messages.clone();
        std::thread::spawn(move || {
            let mut buf = [0u8; 4096];
            while let Ok(n) = sock.recv(&mut buf) {
                sink.lock()
                    .unwrap()
                    .push(String::from_utf8_lossy(&buf[..n]).to_string());
            }
        });
        NotifySocket {
            _dir: dir,
            path,
            messages,
            seen: Vec::new(),
        }
    }

    /// Messages received and not yet moved to `seen`.
    pub fn messages_now(&self) -> Vec<String> {
        self.messages.lock().unwrap().drain(..).collect()
    }

    pub fn env(&self) -> (&'static str, &str) {
        ("NOTIFY_SOCKET", self.path.to_str().unwrap())
    }

    /// Waits until a message has a line starting with `want`; `seen` then holds the messages
    /// received since the last `seen.clear()`.
    pub fn recv_until(&mut self, want: &str) {
        let t0 = Instant::now();
        loop {
            self.seen.extend(self.messages.lock().unwrap().drain(..));
            if self
                .seen
                .iter()
                .any(|m| m.lines().any(|l| l.starts_with(want)))
            {
                return;
            }
            assert!(
                t0.elapsed() < Duration::from_secs(120),
                "no {want}; got {:?}",
                self.seen
            );
            std::thread::sleep(Duration::from_millis(5));
        }
    }
}

/// xorshift64*: a reproducible stream of choices for the soak and fuzz tests.
pub struct Rng(pub u64);

impl Rng {
    pub fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }

    /// A value in 0..n (0 when n is 0).
    pub fn below(&mut self, n: usize) -> usize {
        (self.next() % n.max(1) as u64) as usize
    }
}

/// A field of this host's first processor in /proc/cpuinfo (the tests' own oracle,
/// independent of the agent's reading of it).
pub fn cpu_field(key: &str) -> Option<String> {
    fs::read_to_string("/proc/cpuinfo")
        .unwrap_or_default()
        .lines()
        .take_while(|l| !l.trim().is_empty())
        .find(|l| l.split_once(':').is_some_and(|(k, _)| k.trim() == key))
        .and_then(|l| l.split_once(':'))
        .map(|(_, v)| v.trim().to_string())
}

/// The CPU's name as /proc/cpuinfo gives it.
pub fn cpu_model() -> String {
    cpu_field("model name").unwrap_or_else(|| "unknown".into())
}

/// This host's first-processor flags.
pub fn cpu_flags() -> Vec<String> {
    cpu_field("flags")
        .unwrap_or_default()
        .split_whitespace()
        .map(str::to_string)
        .collect()
}

/// Whether this CPU has bf16 arithmetic units (AVX-512 BF16 or AMX-BF16). Tests that touch
/// bf16 assert the behaviour right for the CPU they run on, both ways.
pub fn host_has_bf16_units() -> bool {
    cpu_flags()
        .iter()
        .any(|f| f == "avx512_bf16" || f == "amx_bf16")
}

/// Generates the test models into a temp dir with the test venv's Python.
pub fn onnx_models() -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    let python = std::env::var("PACKRAT_TEST_PYTHON").unwrap_or_else(|_| ".venv/bin/python".into());
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/support/make_onnx.py");
    let out = Command::new(&python)
        .arg(&script)
        .arg(dir.path())
        .output()
        .unwrap_or_else(|e| {
            panic!("{python}: {e} (run ./packaging/test.sh, which makes the venv)")
        });
    assert!(
        out.status.success(),
        "make_onnx.py: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    dir
}
