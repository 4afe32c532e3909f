//! The MLP: its configuration, its parameters in PyTorch `nn.Sequential` order and names, and
//! their initialisation.
//!
//! A model `--layers 784,512,10` is `Sequential(Linear(784, 512), ReLU(), Linear(512, 10))`;
//! with layer norm, `Sequential(Linear, LayerNorm, ReLU, Linear)`. Parameter names are the
//! `state_dict` keys of that `Sequential` (`0.weight`, `0.bias`, `2.weight`, …), weights
//! `[out, in]`, so a checkpoint loads into PyTorch unchanged.

use crate::amp::{Fp8Recipe, Precision};
use crate::error::{Error, Result};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use serde::{Deserialize, Serialize};

/// The shape of an MLP and how it computes.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct MlpConfig {
    /// Widths from input to output, e.g. `[784, 512, 10]`: `len − 1` linear layers.
    pub layers: Vec<usize>,
    /// A LayerNorm (learnable, eps 1e-5) after each hidden linear layer, before its ReLU.
    pub layernorm: bool,
    /// Mixed precision or f32 throughout.
    pub precision: Precision,
    /// Linear layers (0-based) computed in f32 under mixed precision, like PyTorch's
    /// `autocast(enabled=False)` regions.
    pub fp32_layers: Vec<usize>,
    /// Delayed scaling's parameters under [`Precision::Fp8`] (ignored otherwise). Absent in
    /// checkpoints of earlier versions: the defaults.
    #[serde(default)]
    pub fp8: Fp8Recipe,
}

/// LayerNorm's epsilon (PyTorch's default).
pub(crate) const LAYERNORM_EPS: f32 = 1e-5;

impl MlpConfig {
    /// The default model: 784→512→10, ReLU, mixed precision.
    pub fn mnist_default() -> Self {
        MlpConfig {
            layers: vec![784, 512, 10],
            layernorm: false,
            precision: Precision::Mixed,
            fp32_layers: Vec::new(),
            fp8: Fp8Recipe::default(),
        }
    }

    /// Checks widths (≥ 2 entries, each ≥ 1, parameter count within usize) and that every
    /// forced-f32 layer exists.
    pub fn validate(&self) -> Result<()> {
        let bad = |detail: String| Error::InvalidArgument {
            op: "nn::MlpConfig",
            detail,
        };
        if self.layers.len() < 2 {
            return Err(bad(format!(
                "layers {:?} needs at least an input and an output width, e.g. 784,512,10",
                self.layers
            )));
        }
        if let Some(i) = self.layers.iter().position(|&w| w == 0) {
            return Err(bad(format!(
                "layers {:?}: entry {i} (0-based) is 0; every width must be ≥ 1",
                self.layers
            )));
        }
        // Element counts are usize products: a model whose tensors cannot be counted cannot be
        // allocated either, and the count must not wrap.
        let mut total: usize = 0;
        for w in self.layers.windows(2) {
            let tensor = w[0].checked_add(3).and_then(|n| n.checked_mul(w[1]));
            match tensor.and_then(|n| total.checked_add(n)) {
                Some(t) => total = t,
                None => {
                    return Err(bad(format!(
                        "layers {:?}: the parameter count overflows usize; use narrower layers",
                        self.layers
                    )))
                }
            }
        }
        if self.precision == Precision::Fp8 {
            self.fp8.validate()?;
            for l in (0..self.linear_count()).filter(|&l| self.fp8_layer(l)) {
                let (fan_in, out) = (self.layers[l], self.layers[l + 1]);
                if fan_in % 16 != 0 || out % 16 != 0 {
                    return Err(bad(format!(
                        "layer {l} ({fan_in}→{out}) runs in FP8, whose GEMMs need both widths \
                         to be multiples of 16: change the widths or keep it out of FP8 with \
                         --fp32-layers {l}"
                    )));
                }
            }
        }
        if let Some(&l) = self.fp32_layers.iter().find(|&&l| l >= self.linear_count()) {
            return Err(bad(format!(
                "fp32 layer {l} does not exist: the model has linear layers 0..{}",
                self.linear_count()
            )));
        }
        Ok(())
    }

    /// Number of linear layers.
    pub fn linear_count(&self) -> usize {
        self.layers.len() - 1
    }

    /// Input width.
    pub fn inputs(&self) -> usize {
        self.layers[0]
    }

    /// Output width (classes).
    pub fn classes(&self) -> usize {
        *self.layers.last().unwrap_or(&0)
    }

    /// Whether linear layer `l` computes in a 16-bit type, f16 or bf16 (mixed, bf16 or fp8
    /// precision, and not forced to f32); under fp8 its GEMMs may be FP8 ([`Self::fp8_layer`])
    /// with bf16 activations around them.
    pub fn half_layer(&self, l: usize) -> bool {
        matches!(
            self.precision,
            Precision::Mixed | Precision::Bf16 | Precision::Fp8
        ) && !self.fp32_layers.contains(&l)
    }

    /// Whether linear layer `l` runs its GEMMs in FP8: under [`Precision::Fp8`], every layer
    /// but those forced to f32 and the last (the classifier, kept in bf16 as Transformer Engine
    /// recommends, unless the recipe's `last_layer` says otherwise).
    pub fn fp8_layer(&self, l: usize) -> bool {
        self.precision == Precision::Fp8
            && (l + 1 < self.linear_count() || self.fp8.last_layer)
            && self.half_layer(l)
    }

    /// The `Sequential` index of linear layer `l` (and `+1` is its LayerNorm, if any).
    pub fn sequential_index(&self, l: usize) -> usize {
        l * if self.layernorm { 3 } else { 2 }
    }

    /// Every parameter tensor in `state_dict` order: per linear layer `weight [out, in]`,
    /// `bias [out]`, then for hidden layers with LayerNorm its `weight` (γ) and `bias` (β).
    pub fn parameter_specs(&self) -> Vec<ParamSpec> {
        let mut specs = Vec::new();
        for l in 0..self.linear_count() {
            let (fan_in, out) = (self.layers[l], self.layers[l + 1]);
            let i = self.sequential_index(l);
            specs.push(ParamSpec::new(
                format!("{i}.weight"),
                vec![out, fan_in],
                Init::Uniform(fan_in),
            ));
            specs.push(ParamSpec::new(
                format!("{i}.bias"),
                vec![out],
                Init::Uniform(fan_in),
            ));
            if self.layernorm && l + 1 < self.linear_count() {
                specs.push(ParamSpec::new(
                    format!("{}.weight", i + 1),
                    vec![out],
                    Init::Ones,
                ));
                specs.push(ParamSpec::new(
                    format!("{}.bias", i + 1),
                    vec![out],
                    Init::Zeros,
                ));
            }
        }
        specs
    }

    /// Parameter count.
    pub fn parameter_count(&self) -> usize {
        self.parameter_specs().iter().map(|s| s.len()).sum()
    }

    /// PyTorch's `repr` of the model, for logs.
    pub fn describe(&self) -> String {
        let mut parts = Vec::new();
        for l in 0..self.linear_count() {
            let dtype = if self.fp8_layer(l) {
                " [fp8]"
            } else if self.half_layer(l) {
                ""
            } else {
                " [f32]"
            };
            parts.push(format!(
                "Linear({}, {}){dtype}",
                self.layers[l],
                self.layers[l + 1]
            ));
            if l + 1 < self.linear_count() {
                if self.layernorm {
                    parts.push(format!("LayerNorm({})", self.layers[l + 1]));
                }
                parts.push("ReLU()".into());
            }
        }
        parts.join(" → ")
    }
}

/// How a parameter starts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Init {
    /// `U(−1/√fan_in, 1/√fan_in)`: `nn.Linear`'s default for weight and bias.
    Uniform(usize),
    /// All ones (LayerNorm γ).
    Ones,
    /// All zeros (LayerNorm β).
    Zeros,
}

/// One parameter tensor's name, shape and initialisation.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ParamSpec {
    /// `state_dict` key.
    pub name: String,
    /// Shape, row-major.
    pub shape: Vec<usize>,
    /// Initialisation.
    pub init: Init,
}

impl ParamSpec {
    fn new(name: String, shape: Vec<usize>, init: Init) -> Self {
        ParamSpec { name, shape, init }
    }

    /// Element count.
    pub fn len(&self) -> usize {
        self.shape.iter().product()
    }

    /// Whether the tensor has no elements.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// A named f32 tensor (a master weight, a moment, a gradient).
#[derive(Debug, Clone, PartialEq)]
pub struct Tensor {
    /// `state_dict` key.
    pub name: String,
    /// Shape, row-major.
    pub shape: Vec<usize>,
    /// Values.
    pub data: Vec<f32>,
}

/// Fresh parameters for a model, in [`MlpConfig::parameter_specs`] order, from `seed`. The
/// same seed gives the same values on every machine (ChaCha8, one stream per tensor).
pub fn init_parameters(cfg: &MlpConfig, seed: u64) -> Vec<Tensor> {
    cfg.parameter_specs()
        .into_iter()
        .enumerate()
        .map(|(t, spec)| {
            let mut rng = ChaCha8Rng::seed_from_u64(seed);
            rng.set_stream(t as u64);
            let data = match spec.init {
                Init::Uniform(fan_in) => {
                    let bound = 1.0 / (fan_in as f32).sqrt();
                    (0..spec.len())
                        .map(|_| rng.gen_range(-bound..bound))
                        .collect()
                }
                Init::Ones => vec![1.0; spec.len()],
                Init::Zeros => vec![0.0; spec.len()],
            };
            Tensor {
                name: spec.name,
                shape: spec.shape,
                data,
            }
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_follow_nn_sequential() {
        let names = |cfg: &MlpConfig| -> Vec<String> {
            cfg.parameter_specs().into_iter().map(|s| s.name).collect()
        };
        let mut cfg = MlpConfig::mnist_default();
        assert_eq!(names(&cfg), ["0.weight", "0.bias", "2.weight", "2.bias"]);
        assert_eq!(cfg.parameter_count(), 784 * 512 + 512 + 512 * 10 + 10);
        cfg.layernorm = true;
        cfg.layers = vec![4, 8, 8, 2];
        assert_eq!(
            names(&cfg),
            [
                "0.weight", "0.bias", "1.weight", "1.bias", "3.weight", "3.bias", "4.weight",
                "4.bias", "6.weight", "6.bias"
            ]
        );
        assert_eq!(cfg.parameter_specs()[0].shape, vec![8, 4]);
    }

    #[test]
    fn init_is_reproducible_and_bounded() {
        let cfg = MlpConfig::mnist_default();
        let a = init_parameters(&cfg, 1);
        assert_eq!(a, init_parameters(&cfg, 1));
        assert_ne!(a[0].data, init_parameters(&cfg, 2)[0].data);
        let bound = 1.0 / 784f32.sqrt();
        assert!(a[0].data.iter().all(|v| v.abs() <= bound));
        assert!(a[0].data.iter().any(|v| v.abs() > 0.9 * bound));
    }

    #[test]
    fn bad_configs_are_errors() {
        let mut cfg = MlpConfig::mnist_default();
        cfg.layers = vec![784];
        assert!(cfg.validate().is_err());
        cfg.layers = vec![784, 0, 10];
        let e = cfg.validate().unwrap_err().to_string();
        assert!(e.contains("entry 1") && e.contains("is 0"), "{e}");
        cfg.layers = vec![usize::MAX / 2, 4, 10];
        let e = cfg.validate().unwrap_err().to_string();
        assert!(e.contains("overflows"), "{e}");
        cfg.layers = vec![784, 10];
        cfg.fp32_layers = vec![1];
        assert!(cfg.validate().is_err());
    }
}
