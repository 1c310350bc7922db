//! What this CPU can compute fast: its model and the instruction sets that matter for inference
//! (AVX2, AVX-512, VNNI, bf16, AMX), as the kernel reports them in `/proc/cpuinfo` (which
//! also says whether the kernel enabled them: AMX needs its permission). Precision choices,
//! profile keys, status and benchmarks all read it from here, so every part of the agent tells
//! the same story about the machine.

use std::sync::OnceLock;

use serde::{Deserialize, Serialize};

/// The flags that matter for inference, in the order they are shown.
pub const FEATURES: [&str; 8] = [
    "avx2",
    "fma",
    "avx512f",
    "avx512_vnni",
    "avx_vnni",
    "avx512_bf16",
    "amx_bf16",
    "amx_int8",
];

/// This CPU, as the agent describes it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CpuInfo {
    /// `model name` (e.g. `AMD EPYC`, `Intel(R) Xeon(R) Platinum 8480+`).
    pub model: String,
    /// `vendor_id` (`GenuineIntel`, `AuthenticAMD`).
    pub vendor: String,
    /// `cpu family` / `model`, which tell CPU generations apart when the name does not.
    pub family: Option<u32>,
    pub model_id: Option<u32>,
    /// Those of [`FEATURES`] the CPU has, in that order.
    pub features: Vec<String>,
}

impl CpuInfo {
    /// Reads the first processor's entry of `/proc/cpuinfo`-formatted text.
    pub fn parse(text: &str) -> CpuInfo {
        let field = |key: &str| {
            text.lines()
                // The first processor's entry ends at the first blank line.
                .take_while(|l| !l.trim().is_empty())
                .find_map(|l| {
                    let (k, v) = l.split_once(':')?;
                    (k.trim() == key).then(|| v.trim().to_string())
                })
        };
        let flags = field("flags").unwrap_or_default();
        let flags: Vec<&str> = flags.split_whitespace().collect();
        CpuInfo {
            model: field("model name").unwrap_or_else(|| "unknown".into()),
            vendor: field("vendor_id").unwrap_or_else(|| "unknown".into()),
            family: field("cpu family").and_then(|v| v.parse().ok()),
            model_id: field("model").and_then(|v| v.parse().ok()),
            features: FEATURES
                .iter()
                .filter(|f| flags.contains(f))
                .map(|f| f.to_string())
                .collect(),
        }
    }

    /// This machine's CPU (read once per process).
    pub fn detect() -> &'static CpuInfo {
        static CPU: OnceLock<CpuInfo> = OnceLock::new();
        CPU.get_or_init(|| {
            CpuInfo::parse(&std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default())
        })
    }

    pub fn has(&self, feature: &str) -> bool {
        self.features.iter().any(|f| f == feature)
    }

    /// Whether the CPU has bf16 arithmetic units (AVX-512 BF16 or AMX-BF16). Without them an
    /// engine either computes f32 anyway (OpenVINO) or emulates bf16 slowly (libtorch).
    pub fn native_bf16(&self) -> bool {
        self.has("avx512_bf16") || self.has("amx_bf16")
    }

    /// The features as one comma-separated string (`none` when there are none).
    pub fn features_str(&self) -> String {
        if self.features.is_empty() {
            "none".into()
        } else {
            self.features.join(",")
        }
    }

    /// One line for logs, benchmarks and reasons: `AMD EPYC (AuthenticAMD family 25 model 1;
    /// avx2,fma)`.
    pub fn summary(&self) -> String {
        let generation = match (self.family, self.model_id) {
            (Some(f), Some(m)) => format!(" family {f} model {m}"),
            _ => String::new(),
        };
        format!(
            "{} ({}{generation}; {})",
            self.model,
            self.vendor,
            self.features_str()
        )
    }

    /// Why bf16 cannot run natively here, naming the CPU (None when it can).
    pub fn no_bf16_reason(&self) -> Option<String> {
        (!self.native_bf16()).then(|| {
            format!(
                "this CPU has no bf16 units (no avx512_bf16 or amx_bf16): {}",
                self.summary()
            )
        })
    }

    /// What a profile key records of the CPU: the name alone does not tell two VMs apart
    /// whose hosts differ (a VM may show "AMD EPYC" on several generations).
    pub fn key(&self) -> String {
        format!(
            "{} {}/{}/{} {}",
            self.model,
            self.vendor,
            self.family.map_or("-".into(), |f| f.to_string()),
            self.model_id.map_or("-".into(), |m| m.to_string()),
            self.features_str()
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The first entry of /proc/cpuinfo on the project's AMD EPYC (Zen 3) hosts.
    const EPYC: &str = "processor\t: 0\nvendor_id\t: AuthenticAMD\ncpu family\t: 25\nmodel\t\t: 1\nmodel name\t: AMD EPYC\nstepping\t: 1\nflags\t\t: fpu vme de pse tsc msr pae sse sse2 ht syscall nx pni pclmulqdq ssse3 fma cx16 sse4_1 sse4_2 avx f16c avx2 bmi2 sha_ni vaes vpclmulqdq\n\nprocessor\t: 1\nvendor_id\t: AuthenticAMD\nflags\t\t: fpu avx512f\n";
    /// A Sapphire Rapids entry (flags abridged to the inference-relevant ones and neighbours).
    const SPR: &str = "processor\t: 0\nvendor_id\t: GenuineIntel\ncpu family\t: 6\nmodel\t\t: 143\nmodel name\t: Intel(R) Xeon(R) Platinum 8480+\nflags\t\t: fpu sse sse2 fma avx avx2 avx512f avx512dq avx512_vnni avx_vnni avx512_bf16 amx_bf16 amx_tile amx_int8 avx512_fp16\n";

    #[test]
    fn an_avx2_only_epyc_has_no_bf16_units() {
        let c = CpuInfo::parse(EPYC);
        assert_eq!(c.model, "AMD EPYC");
        assert_eq!((c.family, c.model_id), (Some(25), Some(1)));
        // Only the first processor counts: the second's avx512f is not this CPU's.
        assert_eq!(c.features, ["avx2", "fma"]);
        assert!(!c.native_bf16());
        let why = c.no_bf16_reason().unwrap();
        assert!(
            why.contains("AMD EPYC") && why.contains("avx2,fma"),
            "{why}"
        );
    }

    #[test]
    fn a_sapphire_rapids_has_amx_and_bf16() {
        let c = CpuInfo::parse(SPR);
        assert_eq!(
            c.features,
            [
                "avx2",
                "fma",
                "avx512f",
                "avx512_vnni",
                "avx_vnni",
                "avx512_bf16",
                "amx_bf16",
                "amx_int8"
            ]
        );
        assert!(c.native_bf16());
        assert_eq!(c.no_bf16_reason(), None);
        assert_ne!(c.key(), CpuInfo::parse(EPYC).key());
    }

    #[test]
    fn missing_or_empty_cpuinfo_is_an_unknown_cpu_without_features() {
        let c = CpuInfo::parse("");
        assert_eq!((c.model.as_str(), c.features.len()), ("unknown", 0));
        assert_eq!(c.features_str(), "none");
        assert!(!c.native_bf16());
    }

    #[test]
    fn this_machine_is_described_as_its_cpuinfo_says() {
        let text = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
        let c = CpuInfo::detect();
        for f in FEATURES {
            let first_flags = text
                .lines()
                .find(|l| l.starts_with("flags"))
                .unwrap_or_default();
            assert_eq!(
                c.has(f),
                first_flags.split_whitespace().any(|w| w == f),
                "{f}"
            );
        }
    }
}
