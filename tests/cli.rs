//! The commands that need no agent: `plan` on a vendored profile of the Packrat authors.

use std::path::PathBuf;
use std::process::Command;

fn profile(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("crates/planner/tests/data")
        .join(name)
}

fn packrat(args: &[&str]) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_packrat"))
        .args(args)
        .output()
        .unwrap()
}

#[test]
fn plan_json_prints_the_plan_and_refuses_more_cores_than_profiled() {
    let p = profile("resnet_cloudlab16.json");
    let p = p.to_str().unwrap();
    let out = packrat(&[
        "plan",
        "--profile",
        p,
        "--cores",
        "16",
        "--batch",
        "32",
        "--json",
    ]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["batch"], 32);
    assert_eq!(v["cores"], 16);
    let items: u64 = v["instances"]
        .as_array()
        .unwrap()
        .iter()
        .map(|i| i["batch"].as_u64().unwrap())
        .sum();
    assert_eq!(items, 32);
    let bad = packrat(&["plan", "--profile", p, "--cores", "17", "--batch", "4"]);
    assert_eq!(bad.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&bad.stderr).contains("or fewer"));
    let sweep = packrat(&[
        "plan",
        "--profile",
        p,
        "--cores",
        "16",
        "--batch",
        "4",
        "--sweep",
    ]);
    assert_eq!(String::from_utf8_lossy(&sweep.stdout).lines().count(), 5);
}

#[test]
fn plan_names_the_engine_and_precision_a_profile_was_measured_on() {
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("p.json");
    std::fs::write(
        &p,
        r#"{"model":"m","cores":2,"framework":"openvino 2026.4.0 bf16","points":[
            {"threads":1,"batch":1,"latency_ms":10.0},{"threads":2,"batch":1,"latency_ms":6.0}]}"#,
    )
    .unwrap();
    let out = packrat(&[
        "plan",
        "--profile",
        p.to_str().unwrap(),
        "--cores",
        "2",
        "--batch",
        "2",
    ]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.contains("measured on openvino 2026.4.0 bf16"),
        "{text}"
    );
}

#[test]
fn version_names_the_engines_and_this_cpu_with_its_features() {
    let out = packrat(&["--version"]);
    assert!(out.status.success());
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.contains("libtorch") && text.contains("OpenVINO"),
        "{text}"
    );
    let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
    let field = |key: &str| {
        cpuinfo
            .lines()
            .find(|l| l.starts_with(key))
            .and_then(|l| l.split_once(':'))
            .map(|(_, v)| v.trim().to_string())
            .unwrap_or_default()
    };
    let line = text
        .lines()
        .find(|l| l.starts_with("cpu: "))
        .unwrap_or_else(|| panic!("no cpu line: {text}"));
    assert!(line.contains(&field("model name")), "{line}");
    let flags = field("flags");
    let flags: Vec<&str> = flags.split_whitespace().collect();
    for f in ["avx2", "avx512f", "avx512_bf16", "amx_bf16", "amx_int8"] {
        assert_eq!(line.contains(f), flags.contains(&f), "{f}: {line}");
    }
    let units = flags.contains(&"avx512_bf16") || flags.contains(&"amx_bf16");
    assert!(
        line.ends_with(if units {
            "bf16 units: yes"
        } else {
            "bf16 units: no"
        }),
        "{line}"
    );
}

/// `plan --rate` on the authors' 16-core ResNet profile: the lane count packrat picks, and
/// each count's capacity.
fn queue_plan(rate: f64) -> Vec<(usize, String, f64, bool)> {
    let p = profile("resnet_cloudlab16.json");
    let out = packrat(&[
        "plan",
        "--profile",
        p.to_str().unwrap(),
        "--cores",
        "16",
        "--batch",
        "16",
        "--rate",
        &rate.to_string(),
    ]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .skip(2)
        .map(|l| {
            let f: Vec<&str> = l.split_whitespace().collect();
            let lat = if l.contains("cannot keep up") {
                "inf"
            } else {
                f[2]
            };
            let cap_at = if l.contains("cannot keep up") { 5 } else { 3 };
            (
                f[0].parse().unwrap(),
                lat.to_string(),
                f[cap_at].parse().unwrap(),
                l.ends_with("<- packrat"),
            )
        })
        .collect()
}

#[test]
fn plan_for_a_queue_splits_one_batch_at_low_load_and_runs_lanes_near_saturation() {
    let low = queue_plan(1.0);
    assert_eq!(
        low.iter().map(|r| r.0).collect::<Vec<_>>(),
        [1, 2, 4, 8, 16],
        "every k that splits 16 cores"
    );
    let picked = |rows: &[(usize, String, f64, bool)]| rows.iter().find(|r| r.3).unwrap().0;
    assert_eq!(
        picked(&low),
        1,
        "one job at a time: every core on it: {low:?}"
    );
    // Past what one batch at a time can serve, it runs several at once.
    let one_lane = low[0].2;
    let most = low.iter().map(|r| r.2).fold(0.0, f64::max);
    assert!(
        most > one_lane,
        "lanes serve more than one split batch: {low:?}"
    );
    let high = queue_plan(one_lane * 1.1);
    assert_eq!(high[0].1, "inf", "one lane cannot keep up: {high:?}");
    assert!(picked(&high) > 1, "{high:?}");
}

/// `plan` with two profiles and rates: (the layout line, each model's (cores, predicted)).
fn joint_plan(cores: usize, rates: [f64; 2]) -> (String, Vec<(String, String)>) {
    let (a, b) = (
        profile("resnet_cloudlab16.json"),
        profile("inception_cloudlab16.json"),
    );
    let cores = cores.to_string();
    let (ra, rb) = (rates[0].to_string(), rates[1].to_string());
    let out = packrat(&[
        "plan",
        "--cores",
        &cores,
        "--batch",
        "8",
        "--profile",
        a.to_str().unwrap(),
        "--rate",
        &ra,
        "--profile",
        b.to_str().unwrap(),
        "--rate",
        &rb,
    ]);
    let text = String::from_utf8_lossy(&out.stdout).to_string();
    assert!(
        out.status.success(),
        "{text}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let lines: Vec<&str> = text.lines().collect();
    let rows = lines[4..]
        .iter()
        .map(|l| {
            let f: Vec<&str> = l.split_whitespace().collect();
            (f[2].to_string(), f[f.len() - 1].to_string())
        })
        .collect();
    (lines[2].to_string(), rows)
}

#[test]
fn plan_with_several_profiles_prints_the_joint_split_of_the_cores() {
    // 16 cores, ResNet-50 far busier than Inception: disjoint runs, ResNet's the longer.
    let (how, rows) = joint_plan(16, [60.0, 3.0]);
    assert_eq!(how, "packrat: a split by load");
    let run = |c: &str| -> Vec<usize> { packrat::planner::topology::parse_cpu_list(c).unwrap() };
    let (a, b) = (run(&rows[0].0), run(&rows[1].0));
    assert!(
        a.len() > b.len() && !b.is_empty() && a.len() + b.len() == 16,
        "{rows:?}"
    );
    assert!(a.iter().all(|c| !b.contains(c)), "{rows:?}");
    // A model without work gets no cores.
    let (_, idle) = joint_plan(16, [60.0, 0.0]);
    assert_eq!(idle[1].0, "none", "{idle:?}");
    // Two cores, ResNet at more than one core serves: both share every core.
    let (how, rows) = joint_plan(2, [26.0, 2.0]);
    assert_eq!(
        how, "packrat: every model on every core, sharing them",
        "{rows:?}"
    );
    assert!(
        rows.iter()
            .all(|r| r.0 == "0-1" && r.1.parse::<f64>().is_ok()),
        "{rows:?}"
    );
    // One rate per profile.
    let p = profile("resnet_cloudlab16.json");
    let out = packrat(&[
        "plan",
        "--cores",
        "4",
        "--batch",
        "8",
        "--profile",
        p.to_str().unwrap(),
        "--profile",
        p.to_str().unwrap(),
        "--rate",
        "3",
    ]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("one --rate (jobs/s) per --profile"));
}
