//! A fuzz harness for the job readers (`.npy`, `.npz`, `.safetensors`) that runs on a stable
//! toolchain: valid seed files of every format are mutated (bit flips, interesting integers,
//! inserted, deleted and duplicated ranges, truncation, header numbers made huge), and each
//! mutant is read as a job with a byte budget. No mutant may panic, and none may make the
//! reader allocate more than its budget: single Rust allocations are counted by the global
//! allocator below, and the tensors it returns (libtorch's allocations) must fit the budget.
//!
//! CI runs 200,000 mutants; `packaging/fuzz.sh` runs 5,000,000 (`PACKRAT_FUZZ_ITERS`).
//! `PACKRAT_FUZZ_SEED` replays a run; a failing mutant is saved under `target/fuzz-failures/`.

mod common;

use std::alloc::{GlobalAlloc, Layout, System};
use std::panic::AssertUnwindSafe;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Instant;

use common::Rng;
use packrat::tensorfile::{self, Format};
use tch::{Kind, Tensor};

/// The system allocator, remembering the largest single allocation since the last reset.
struct Counting;

static LARGEST: AtomicUsize = AtomicUsize::new(0);

unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, l: Layout) -> *mut u8 {
        LARGEST.fetch_max(l.size(), Ordering::Relaxed);
        // SAFETY: forwarded unchanged to the system allocator.
        unsafe { System.alloc(l) }
    }
    unsafe fn dealloc(&self, p: *mut u8, l: Layout) {
        // SAFETY: forwarded unchanged to the system allocator.
        unsafe { System.dealloc(p, l) }
    }
    unsafe fn realloc(&self, p: *mut u8, l: Layout, new: usize) -> *mut u8 {
        LARGEST.fetch_max(new, Ordering::Relaxed);
        // SAFETY: forwarded unchanged to the system allocator.
        unsafe { System.realloc(p, l, new) }
    }
}

#[global_allocator]
static ALLOC: Counting = Counting;

/// A job's byte budget (`max_job_bytes`) for every mutant.
const BUDGET: u64 = 256 << 10;
/// What a reader may allocate beyond the data itself: its fixed 64 KiB header buffer.
const SLACK: usize = 64 << 10;

/// Valid files of every format: the mutation seeds.
fn seeds(dir: &std::path::Path) -> Vec<(Format, Vec<u8>)> {
    let a = Tensor::arange(24, (Kind::Float, tch::Device::Cpu)).reshape([2, 3, 4]);
    let b = Tensor::arange(6, (Kind::Int64, tch::Device::Cpu)).reshape([2, 3]);
    let mut out = Vec::new();
    for (fmt, tensors) in [
        (Format::Npy, vec![("input".to_string(), a.shallow_clone())]),
        (Format::Npy, vec![("input".to_string(), b.shallow_clone())]),
        (
            Format::Npz,
            vec![
                ("a".into(), a.shallow_clone()),
                ("b".into(), b.shallow_clone()),
            ],
        ),
        (
            Format::Safetensors,
            vec![
                ("a".into(), a.shallow_clone()),
                ("b".into(), b.shallow_clone()),
            ],
        ),
    ] {
        let p = dir.join(format!("seed.{}", fmt.ext()));
        tensorfile::write(&mut std::fs::File::create(&p).unwrap(), fmt, &tensors).unwrap();
        out.push((fmt, std::fs::read(&p).unwrap()));
    }
    // A deflated .npz too (numpy's savez_compressed), written by hand.
    let mut buf = std::io::Cursor::new(Vec::new());
    {
        use std::io::Write;
        let mut z = zip::ZipWriter::new(&mut buf);
        let o =
            zip::write::FileOptions::default().compression_method(zip::CompressionMethod::Deflated);
        z.start_file("input.npy", o).unwrap();
        z.write_all(&out[0].1).unwrap();
        z.finish().unwrap();
    }
    out.push((Format::Npz, buf.into_inner()));
    out
}

const INTERESTING: [u64; 10] = [
    0,
    1,
    0x7f,
    0xff,
    0x7fff,
    0xffff,
    0x7fff_ffff,
    0xffff_ffff,
    0x7fff_ffff_ffff_ffff,
    u64::MAX,
];

fn mutate(rng: &mut Rng, seed: &[u8]) -> Vec<u8> {
    let mut v = seed.to_vec();
    for _ in 0..1 + rng.below(4) {
        let len = v.len().max(1);
        match rng.below(8) {
            0 => {
                let i = rng.below(len);
                if let Some(b) = v.get_mut(i) {
                    *b ^= 1 << rng.below(8);
                }
            }
            1 => {
                let i = rng.below(len);
                if let Some(b) = v.get_mut(i) {
                    *b = INTERESTING[rng.below(4)] as u8;
                }
            }
            2 => {
                // An interesting 2, 4 or 8-byte integer over any position (lengths, offsets).
                let width = [2, 4, 8][rng.below(3)];
                let x = INTERESTING[rng.below(INTERESTING.len())].to_le_bytes();
                let i = rng.below(len);
                for (k, byte) in x.iter().enumerate().take(width) {
                    if let Some(b) = v.get_mut(i + k) {
                        *b = *byte;
                    }
                }
            }
            3 => {
                let i = rng.below(len + 1).min(v.len());
                let n = rng.below(64);
                let bytes: Vec<u8> = (0..n).map(|_| rng.next() as u8).collect();
                v.splice(i..i, bytes);
            }
            4 => {
                let i = rng.below(len).min(v.len());
                let n = rng.below(64).min(v.len() - i);
                v.drain(i..i + n);
            }
            5 => v.truncate(rng.below(len)),
            6 => {
                // Duplicate a range (repeated headers, entries, keys).
                let i = rng.below(len).min(v.len());
                let n = rng.below(256).min(v.len() - i);
                let chunk = v[i..i + n].to_vec();
                let at = rng.below(v.len() + 1).min(v.len());
                v.splice(at..at, chunk);
            }
            _ => {
                // A number in a text header made huge (shapes, offsets).
                let digits: Vec<usize> = (0..v.len()).filter(|&i| v[i].is_ascii_digit()).collect();
                if !digits.is_empty() {
                    let i = digits[rng.below(digits.len())];
                    let big = [
                        "99999999999",
                        "4294967296",
                        "18446744073709551615",
                        "0",
                        "-1",
                    ][rng.below(5)];
                    v.splice(i..i + 1, big.bytes());
                }
            }
        }
    }
    v
}

#[test]
fn mutated_job_files_never_panic_or_allocate_past_the_budget() {
    let iters: usize = std::env::var("PACKRAT_FUZZ_ITERS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(200_000);
    let seed: u64 = std::env::var("PACKRAT_FUZZ_SEED")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(0xf022_0000 ^ u64::from(std::process::id()))
        | 1;
    let dir = tempfile::tempdir_in("/dev/shm").unwrap_or_else(|_| tempfile::tempdir().unwrap());
    let seeds = seeds(dir.path());
    let mut rng = Rng(seed);
    let (mut accepted, mut refused) = (0usize, 0usize);
    let t0 = Instant::now();
    for i in 0..iters {
        let (fmt, base) = &seeds[rng.below(seeds.len())];
        let bytes = mutate(&mut rng, base);
        let path = dir.path().join(format!("m.{}", fmt.ext()));
        std::fs::write(&path, &bytes).unwrap();
        LARGEST.store(0, Ordering::Relaxed);
        let res =
            std::panic::catch_unwind(AssertUnwindSafe(|| tensorfile::read(&path, *fmt, BUDGET)));
        let largest = LARGEST.load(Ordering::Relaxed);
        let fail = |why: String| {
            let keep = std::path::Path::new(env!("CARGO_TARGET_TMPDIR")).join("fuzz-failures");
            std::fs::create_dir_all(&keep).unwrap();
            let f = keep.join(format!("{seed}-{i}.{}", fmt.ext()));
            std::fs::write(&f, &bytes).unwrap();
            panic!(
                "mutant {i} (PACKRAT_FUZZ_SEED={seed}, saved as {}): {why}",
                f.display()
            );
        };
        match res {
            Err(_) => fail("the reader panicked".into()),
            Ok(Ok(named)) => {
                accepted += 1;
                let bytes: usize = named
                    .iter()
                    .map(|n| n.tensor.numel() * n.tensor.kind().elt_size_in_bytes())
                    .sum();
                if bytes as u64 > BUDGET {
                    fail(format!(
                        "tensors of {bytes} bytes over a budget of {BUDGET}"
                    ));
                }
            }
            Ok(Err(_)) => refused += 1,
        }
        if largest > BUDGET as usize + SLACK {
            fail(format!(
                "an allocation of {largest} bytes over a budget of {BUDGET}"
            ));
        }
    }
    eprintln!(
        "fuzz: {iters} mutants (PACKRAT_FUZZ_SEED={seed}): {accepted} read, {refused} refused, 0 panics, largest allocation within {BUDGET} + {SLACK} bytes, in {:.1} s",
        t0.elapsed().as_secs_f64()
    );
    assert!(
        accepted > 0 && refused > 0,
        "the mutator is too weak or too strong"
    );
}
