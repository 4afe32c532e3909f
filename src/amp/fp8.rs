//! The FP8 recipe of `--precision fp8`: Transformer Engine's delayed scaling.
//!
//! Each FP8 tensor of a step (per FP8 layer: its input, its weight and its output's gradient)
//! keeps an amax history and a scale on the device. The casts that produce the FP8 copies fold
//! the tensor's `max |x|` into the history's current slot in the same pass, and one launch at the
//! end of the step computes every next scale, `fp8_max · 2^-margin / amax` over the window
//! ([`crate::cpu::fp8::ScalingState`] states the rule exactly), so the step never waits for the
//! host and the scales lag one step behind the tensors they scale ("delayed").

use crate::cpu::fp8::{AmaxAlgo, Fp8Format};
use crate::error::{Error, Result};
use serde::{Deserialize, Serialize};

/// Which FP8 format each kind of tensor is cast to (Transformer Engine's `Format`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Fp8Formats {
    /// E4M3 (more precision, ±448) for the forward tensors, inputs and weights; E5M2 (more
    /// range, ±57344) for gradients. TE's default.
    #[default]
    Hybrid,
    /// E4M3 for every tensor.
    E4m3,
}

/// Delayed scaling's parameters, Transformer Engine's `DelayedScaling` defaults.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Fp8Recipe {
    /// Steps of amax history each scale is computed from (TE's `amax_history_len`).
    pub history_len: usize,
    /// The scale leaves `2^margin` of headroom: `scale = fp8_max / amax / 2^margin`.
    pub margin: i32,
    /// How the window is reduced: its maximum (TE's default) or the latest step's amax.
    pub amax_algo: AmaxAlgo,
    /// Formats of the forward tensors and of the gradients.
    pub formats: Fp8Formats,
    /// The last linear layer in FP8 too. Off by default: Transformer Engine recommends keeping
    /// a model's last layer (the classifier) in higher precision, so it runs in bf16. Turn it on
    /// for a stack whose last layer is an ordinary hidden-size layer.
    #[serde(default)]
    pub last_layer: bool,
}

impl Default for Fp8Recipe {
    fn default() -> Self {
        Fp8Recipe {
            history_len: 1024,
            margin: 0,
            amax_algo: AmaxAlgo::Max,
            formats: Fp8Formats::Hybrid,
            last_layer: false,
        }
    }
}

use crate::ops::fp8::MAX_HISTORY;

impl Fp8Recipe {
    /// The format of forward tensors (inputs and weights): E4M3.
    pub fn forward_format(&self) -> Fp8Format {
        Fp8Format::E4M3
    }

    /// The format of gradients: E5M2 under [`Fp8Formats::Hybrid`], else E4M3.
    pub fn gradient_format(&self) -> Fp8Format {
        match self.formats {
            Fp8Formats::Hybrid => Fp8Format::E5M2,
            Fp8Formats::E4m3 => Fp8Format::E4M3,
        }
    }

    /// Checks a history of 1 to [`MAX_HISTORY`] steps and a margin within ±64.
    ///
    /// Errors: [`Error::InvalidArgument`] naming the setting.
    pub fn validate(&self) -> Result<()> {
        let bad = |detail: String| Error::InvalidArgument {
            op: "amp::Fp8Recipe",
            detail,
        };
        if !(1..=MAX_HISTORY).contains(&self.history_len) {
            return Err(bad(format!(
                "amax history of {} steps: use 1 to {MAX_HISTORY} (Transformer Engine's default \
                 is 1024)",
                self.history_len
            )));
        }
        if self.margin.abs() > 64 {
            return Err(bad(format!(
                "margin {}: use -64 to 64 (the scale is divided by 2^margin; 0 is the default)",
                self.margin
            )));
        }
        Ok(())
    }
}
