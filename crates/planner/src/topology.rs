//! CPU topology: which cores the agent may use and how instances get concrete cores —
//! contiguous, physical cores before SMT siblings, never spanning a NUMA node when avoidable.

use std::collections::BTreeMap;
use std::path::Path;

use anyhow::{bail, Context, Result};

/// CPU numbers at or above this cannot exist (the kernel's `NR_CPUS` limit is 8192).
const MAX_CPU: usize = 8192;

/// Parses a Linux CPU list such as `0-3,8,10-11`.
pub fn parse_cpu_list(s: &str) -> Result<Vec<usize>> {
    let mut out = Vec::new();
    for part in s.trim().split(',').map(str::trim).filter(|p| !p.is_empty()) {
        let (a, b) = match part.split_once('-') {
            Some((a, b)) => (a.trim().parse::<usize>(), b.trim().parse::<usize>()),
            None => (part.parse::<usize>(), part.parse::<usize>()),
        };
        match (a, b) {
            (Ok(a), Ok(b)) if a <= b && b < MAX_CPU => out.extend(a..=b),
            (Ok(_), Ok(b)) if b >= MAX_CPU => {
                bail!("CPU {b} in '{part}' is beyond the {MAX_CPU} CPUs Linux can address")
            }
            _ => bail!("'{part}' is not a CPU or CPU range (write e.g. \"0-3,8\")"),
        }
    }
    out.sort_unstable();
    out.dedup();
    Ok(out)
}

/// The CPUs in this process's affinity mask (what systemd's CPUAffinity= or taskset allowed).
pub fn allowed_cpus() -> Result<Vec<usize>> {
    let set = nix::sched::sched_getaffinity(nix::unistd::Pid::from_raw(0))
        .context("sched_getaffinity failed")?;
    Ok((0..nix::sched::CpuSet::count())
        .filter(|&c| set.is_set(c).unwrap_or(false))
        .collect())
}

/// The cores the agent may use: `requested` (each checked against the affinity mask) or the
/// mask itself.
pub fn usable(requested: Option<&[usize]>) -> Result<Topology> {
    let allowed = allowed_cpus()?;
    let cores = match requested {
        Some(list) => {
            if let Some(c) = list.iter().find(|c| !allowed.contains(c)) {
                bail!(
                    "core {c} is not in this process's CPU mask {allowed:?}: list only allowed cores, or widen CPUAffinity= in the unit"
                );
            }
            list.to_vec()
        }
        None => allowed,
    };
    Ok(Topology::detect(&cores))
}

#[derive(Debug, Clone)]
struct Cpu {
    id: usize,
    node: usize,
    /// (package, core id): CPUs sharing it are SMT siblings.
    core: (usize, usize),
}

/// The usable CPUs with their place in the machine.
#[derive(Debug, Clone)]
pub struct Topology {
    cpus: Vec<Cpu>,
}

fn read_usize(p: &Path) -> Option<usize> {
    std::fs::read_to_string(p).ok()?.trim().parse().ok()
}

impl Topology {
    /// Reads `/sys/devices/system/{cpu,node}` for the given CPUs; missing files mean one node
    /// and no SMT, which is what a VM without topology information looks like.
    pub fn detect(cpus: &[usize]) -> Topology {
        let sys = Path::new("/sys/devices/system");
        let mut node_of = BTreeMap::new();
        if let Ok(rd) = std::fs::read_dir(sys.join("node")) {
            for e in rd.flatten() {
                let name = e.file_name().to_string_lossy().to_string();
                if let Some(n) = name
                    .strip_prefix("node")
                    .and_then(|n| n.parse::<usize>().ok())
                {
                    if let Ok(list) = std::fs::read_to_string(e.path().join("cpulist")) {
                        for c in parse_cpu_list(&list).unwrap_or_default() {
                            node_of.insert(c, n);
                        }
                    }
                }
            }
        }
        let cpus = cpus
            .iter()
            .map(|&id| {
                let t = sys.join(format!("cpu/cpu{id}/topology"));
                let pkg = read_usize(&t.join("physical_package_id")).unwrap_or(0);
                let core = read_usize(&t.join("core_id")).unwrap_or(id);
                Cpu {
                    id,
                    node: node_of.get(&id).copied().unwrap_or(0),
                    core: (pkg, core),
                }
            })
            .collect();
        Topology { cpus }
    }

    /// A made-up machine of `n` cores, one node, no SMT (for planning for another host).
    pub fn flat(n: usize) -> Topology {
        Topology {
            cpus: (0..n)
                .map(|id| Cpu {
                    id,
                    node: 0,
                    core: (0, id),
                })
                .collect(),
        }
    }

    pub fn len(&self) -> usize {
        self.cpus.len()
    }

    /// The part of this machine made of the CPUs `ids` (those it has), with their places.
    pub fn subset(&self, ids: &[usize]) -> Topology {
        Topology {
            cpus: self
                .cpus
                .iter()
                .filter(|c| ids.contains(&c.id))
                .cloned()
                .collect(),
        }
    }

    pub fn is_empty(&self) -> bool {
        self.cpus.is_empty()
    }

    /// CPUs per NUMA node, each ordered physical cores first (first sibling of every core by
    /// id), then the remaining SMT siblings.
    /// The first CPU (by id) of every physical core: the one used before its SMT siblings.
    fn physical(&self) -> std::collections::HashSet<usize> {
        let mut seen = std::collections::HashSet::new();
        let mut cpus: Vec<&Cpu> = self.cpus.iter().collect();
        cpus.sort_by_key(|c| c.id);
        cpus.into_iter()
            .filter(|c| seen.insert(c.core))
            .map(|c| c.id)
            .collect()
    }

    fn ordered_by_node(&self) -> Vec<Vec<usize>> {
        let physical = self.physical();
        let mut nodes: BTreeMap<usize, Vec<&Cpu>> = BTreeMap::new();
        for c in &self.cpus {
            nodes.entry(c.node).or_default().push(c);
        }
        nodes
            .into_values()
            .map(|mut cs| {
                cs.sort_by_key(|c| c.id);
                let (first, rest): (Vec<&Cpu>, Vec<&Cpu>) =
                    cs.into_iter().partition(|c| physical.contains(&c.id));
                first.into_iter().chain(rest).map(|c| c.id).collect()
            })
            .collect()
    }

    /// All usable CPUs, node by node, physical cores first.
    pub fn ordered(&self) -> Vec<usize> {
        self.ordered_by_node().concat()
    }

    /// Gives each instance (by thread count) its cores: largest first, into the node whose next
    /// free CPUs hold the most physical cores (so SMT siblings are used last), as a contiguous
    /// run of that node's ordered CPUs; an instance larger than any node's free room takes what
    /// is left, across nodes. Returns cores in the instances' order.
    pub fn assign(&self, threads: &[usize]) -> Result<Vec<Vec<usize>>> {
        let total: usize = threads.iter().sum();
        if total > self.len() {
            bail!(
                "the plan needs {total} cores but only {} are usable",
                self.len()
            );
        }
        let mut free: Vec<Vec<usize>> = self.ordered_by_node();
        let physical = self.physical();
        let mut order: Vec<usize> = (0..threads.len()).collect();
        order.sort_by_key(|&i| (std::cmp::Reverse(threads[i]), i));
        let mut out = vec![Vec::new(); threads.len()];
        for i in order {
            let t = threads[i];
            let best = free
                .iter()
                .enumerate()
                .filter(|(_, n)| n.len() >= t)
                .max_by_key(|(k, n)| {
                    (
                        n[..t].iter().filter(|c| physical.contains(c)).count(),
                        std::cmp::Reverse(*k),
                    )
                })
                .map(|(k, _)| k);
            if let Some(k) = best {
                out[i] = free[k].drain(..t).collect();
            } else {
                for node in free.iter_mut() {
                    let take = (t - out[i].len()).min(node.len());
                    out[i].extend(node.drain(..take));
                }
            }
        }
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cpu_lists_parse_and_bad_ones_say_how() {
        assert_eq!(
            parse_cpu_list("0-3,8, 10-11").unwrap(),
            vec![0, 1, 2, 3, 8, 10, 11]
        );
        assert!(parse_cpu_list("3-1")
            .unwrap_err()
            .to_string()
            .contains("0-3,8"));
        assert!(parse_cpu_list("0-100000000000")
            .unwrap_err()
            .to_string()
            .contains("beyond"));
    }

    #[test]
    fn smt_siblings_come_after_physical_cores_and_nodes_are_not_spanned() {
        // 2 nodes x 2 cores x 2 threads: cpu i and i+4 are siblings; node0 = {0,1,4,5}.
        let cpu = |id: usize| Cpu {
            id,
            node: usize::from(id % 4 >= 2),
            core: (usize::from(id % 4 >= 2), id % 4),
        };
        let topo = Topology {
            cpus: (0..8).map(cpu).collect(),
        };
        assert_eq!(topo.ordered(), vec![0, 1, 4, 5, 2, 3, 6, 7]);
        let a = topo.assign(&[2, 2, 1]).unwrap();
        assert_eq!(a, vec![vec![0, 1], vec![2, 3], vec![4]]);
        assert!(topo.assign(&[5, 4]).is_err());
    }
}
