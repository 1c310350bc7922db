//! The engine: everything that touches libtorch to run a model. Loading ([`Model`], from a
//! TorchScript file or a [`Builtin`]), instances ([`InstanceSet`]: pinned threads with their own
//! intra-op thread counts, sharing one model), and the [`InstancePool`] of warm instance sets
//! that the runtime, the profiler and the bench all run through.
//!
//! It knows nothing of plans, spools or configs: an instance layout is a list of
//! [`InstanceSpec`]s, a batch split is a list of shares.

mod builtins;
mod instances;
mod model;
mod nets;
mod pool;

use anyhow::{anyhow, Context, Result};
use tch::{Kind, Tensor};

pub use builtins::Builtin;
pub use instances::{InstanceInfo, InstanceSet, InstanceSpec};
pub use model::{InputMismatch, MismatchKind, Model, ModelSource};
pub use pool::InstancePool;

/// A forward pass's named outputs, in the model's order.
pub type Outputs = Vec<(String, Tensor)>;

/// One declared input of a model: a job must supply it with shape `[B] ++ shape`.
#[derive(Debug, Clone, PartialEq)]
pub struct InputSpec {
    pub name: String,
    pub shape: Vec<i64>,
    pub dtype: Kind,
}

impl InputSpec {
    pub fn float(name: &str, shape: Vec<i64>) -> InputSpec {
        InputSpec {
            name: name.into(),
            shape,
            dtype: Kind::Float,
        }
    }

    /// Zeros of `batch` items of this input.
    pub fn zeros(&self, batch: i64) -> Tensor {
        let mut s = vec![batch];
        s.extend(&self.shape);
        Tensor::zeros(&s, (self.dtype, tch::Device::Cpu))
    }
}

/// Concatenates outputs of consecutive slices of one batch along dimension 0, output by output.
pub fn concat_outputs(mut parts: Vec<Outputs>) -> Result<Outputs> {
    if parts.len() == 1 {
        return Ok(parts.remove(0));
    }
    let first = parts
        .first()
        .ok_or_else(|| anyhow!("no instance produced output"))?;
    let names: Vec<String> = first.iter().map(|(n, _)| n.clone()).collect();
    names
        .iter()
        .enumerate()
        .map(|(k, name)| {
            let ts: Vec<&Tensor> = parts.iter().map(|p| &p[k].1).collect();
            let t = Tensor::f_cat(&ts, 0).with_context(|| {
                format!("output '{name}' does not concatenate along dimension 0")
            })?;
            Ok((name.clone(), t))
        })
        .collect()
}

/// Splits a batch's outputs back into consecutive slices of `sizes` items (the inverse of
/// [`concat_outputs`]).
pub fn split_outputs(out: Outputs, sizes: &[usize]) -> Result<Vec<Outputs>> {
    let total: usize = sizes.iter().sum();
    let mut parts: Vec<Outputs> = sizes.iter().map(|_| Vec::new()).collect();
    for (name, t) in out {
        if t.size().first().copied() != Some(total as i64) {
            return Err(anyhow!("output '{name}' does not have the batch as dimension 0, so it cannot be split per job"));
        }
        let mut off = 0i64;
        for (part, &n) in parts.iter_mut().zip(sizes) {
            part.push((name.clone(), t.narrow(0, off, n as i64)));
            off += n as i64;
        }
    }
    Ok(parts)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn split_undoes_concat() {
        let t = Tensor::arange(12, (Kind::Float, tch::Device::Cpu)).reshape([6, 2]);
        let parts = split_outputs(vec![("output".into(), t.shallow_clone())], &[1, 3, 2]).unwrap();
        assert_eq!(parts[1][0].1.size(), [3, 2]);
        let back = concat_outputs(parts).unwrap();
        assert!(back[0].1.equal(&t));
        let scalar = Tensor::from(1.0f32);
        assert!(split_outputs(vec![("output".into(), scalar)], &[1]).is_err());
    }
}
