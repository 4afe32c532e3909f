//! The GPU backend's data path: the training set resident in device memory, each epoch loaded as
//! a plan (an image index and a shift per sample, a few bytes per sample from the host), and the
//! step's input stage ([`crate::ops::augment::gather_batch`]) gathering each batch on the device
//! from a sample cursor that the step's bookkeeping kernel advances. A CUDA-graph step therefore
//! replays with no host call besides the launch: no staging copies, no per-epoch image upload.
//!
//! [`Backend::load_epoch`](super::Backend::load_epoch) (epoch images assembled by the caller)
//! takes the same path: its images become the resident set, in the order given, unshifted.

use super::cpu_backend::check_samples;
use crate::cuda::{DeviceBuffer, Gpu};
use crate::error::{Error, Result};
use crate::nn::MlpConfig;
use crate::ops::augment::{EpochSource, Pixels, PALETTE};
use cudarc::driver::DevicePtr;
use std::collections::HashMap;

/// The dataset's pixels on the device: f32 values, or one-byte codes into a palette when the
/// set has at most 256 distinct values (8-bit images scaled to k/255: a quarter of the memory,
/// and of the bytes each batch reads; the batch holds the same values either way).
enum Images {
    F32(DeviceBuffer<f32>),
    Coded {
        codes: DeviceBuffer<u8>,
        palette: DeviceBuffer<f32>,
    },
}

impl Images {
    fn pixels(&self) -> Pixels<'_> {
        match self {
            Images::F32(v) => Pixels::F32(v),
            Images::Coded { codes, palette } => Pixels::Coded { codes, palette },
        }
    }
}

/// One-byte codes for `values` and the [`PALETTE`] values they index (unused entries 0), when the
/// values hold at most 256 distinct bit patterns; `None` otherwise. 8-bit images scaled as
/// `k as f32 / 255.0` take a fast path that codes `k` itself.
pub(crate) fn palette_codes(values: &[f32]) -> Option<(Vec<u8>, Vec<f32>)> {
    let by_255 = |v: f32| -> Option<u8> {
        let k = (v * 255.0).round();
        ((0.0..=255.0).contains(&k) && (k / 255.0).to_bits() == v.to_bits()).then_some(k as u8)
    };
    if let Some(codes) = values
        .iter()
        .map(|&v| by_255(v))
        .collect::<Option<Vec<u8>>>()
    {
        let palette = (0..PALETTE).map(|k| k as f32 / 255.0).collect();
        return Some((codes, palette));
    }
    let mut index: HashMap<u32, u8> = HashMap::new();
    let mut palette = vec![0f32; PALETTE];
    let mut codes = Vec::with_capacity(values.len());
    for &v in values {
        let next = index.len();
        let code = match index.get(&v.to_bits()) {
            Some(&c) => c,
            None if next < PALETTE => {
                index.insert(v.to_bits(), next as u8);
                palette[next] = v;
                next as u8
            }
            None => return None,
        };
        codes.push(code);
    }
    Some((codes, palette))
}

/// The dataset on the device and the loaded epoch's plan over it.
pub(crate) struct EpochData {
    /// `count·inputs` pixels.
    images: Images,
    /// `count` labels.
    labels: DeviceBuffer<u32>,
    /// The plan: at least `plan_len` indices (and `2·plan_len` shifts when `side ≠ 0`).
    order: DeviceBuffer<u32>,
    shifts: DeviceBuffer<i32>,
    plan_len: usize,
    side: usize,
    background: f32,
    /// Whether the images are the set kept by [`EpochData::keep`] (else one epoch's, from
    /// `load_epoch`, replaced by the next).
    kept: bool,
}

const OP_KEEP: &str = "train::GpuBackend::keep_dataset";
const OP_PLAN: &str = "train::GpuBackend::load_epoch_plan";

impl EpochData {
    /// Nothing loaded yet (one-element placeholders; `plan_len` 0 refuses every step).
    pub(crate) fn empty(gpu: &Gpu) -> Result<EpochData> {
        Ok(EpochData {
            images: Images::F32(gpu.alloc_zeros(1)?),
            labels: gpu.alloc_zeros(1)?,
            order: gpu.alloc_zeros(1)?,
            shifts: gpu.alloc_zeros(1)?,
            plan_len: 0,
            side: 0,
            background: 0.0,
            kept: false,
        })
    }

    /// Everything about the data that a captured step holds (buffer addresses, the plan's
    /// length, side and background): a graph captured with another signature is stale.
    pub(crate) fn signature(&self, gpu: &Gpu) -> [u64; 8] {
        let stream = gpu.stream();
        let (images, palette) = match &self.images {
            Images::F32(v) => (v.device_ptr(stream).0, 0),
            Images::Coded { codes, palette } => {
                (codes.device_ptr(stream).0, palette.device_ptr(stream).0)
            }
        };
        [
            images,
            palette,
            self.labels.device_ptr(stream).0,
            self.order.device_ptr(stream).0,
            self.shifts.device_ptr(stream).0,
            self.plan_len as u64,
            self.side as u64,
            u64::from(self.background.to_bits()),
        ]
    }

    /// Samples in the loaded epoch.
    pub(crate) fn len(&self) -> usize {
        self.plan_len
    }

    /// What the input stage reads.
    pub(crate) fn source(&self, inputs: usize) -> EpochSource<'_> {
        EpochSource {
            images: self.images.pixels(),
            labels: &self.labels,
            order: &self.order,
            shifts: &self.shifts,
            plan_len: self.plan_len,
            inputs,
            side: self.side,
            background: self.background,
        }
    }

    /// Uploads the training set once, for [`EpochData::plan`]. Errors: as
    /// [`check_samples`], and [`Error::InvalidArgument`] for an empty set; [`Error::Driver`].
    pub(crate) fn keep(
        &mut self,
        gpu: &Gpu,
        cfg: &MlpConfig,
        images: &[f32],
        labels: &[u32],
    ) -> Result<()> {
        check_samples(OP_KEEP, cfg, images, labels)?;
        if labels.is_empty() {
            return Err(Error::InvalidArgument {
                op: OP_KEEP,
                detail: "the training set is empty".into(),
            });
        }
        self.set_images(gpu, images, labels)?;
        self.plan_len = 0;
        self.kept = true;
        Ok(())
    }

    /// One epoch of images assembled by the caller: they replace the resident set, read in
    /// order and unshifted. Errors: as [`check_samples`]; [`Error::Driver`].
    pub(crate) fn load(
        &mut self,
        gpu: &Gpu,
        cfg: &MlpConfig,
        images: &[f32],
        labels: &[u32],
    ) -> Result<()> {
        check_samples("train::GpuBackend::load_epoch", cfg, images, labels)?;
        self.set_images(gpu, images, labels)?;
        let order: Vec<u32> = (0..labels.len() as u32).collect();
        self.set_plan(gpu, &order, &[], 0, 0.0)?;
        self.kept = false;
        Ok(())
    }

    /// An epoch of the kept set: sample `i` is image `order[i]` shifted by `shifts[2i..2i + 2]`
    /// on a `side × side` grid (`side` 0: unshifted, `shifts` ignored), border `background`.
    ///
    /// Errors, with nothing changed: [`Error::InvalidArgument`] when no set is kept, an index
    /// is past it, `order` is empty or beyond u32, or `side` is neither 0 nor the image's side;
    /// [`Error::ShapeMismatch`] when `shifts` does not hold two values per sample.
    pub(crate) fn plan(
        &mut self,
        gpu: &Gpu,
        inputs: usize,
        order: &[u32],
        shifts: &[i32],
        side: usize,
        background: f32,
    ) -> Result<()> {
        let invalid = |detail: String| Error::InvalidArgument {
            op: OP_PLAN,
            detail,
        };
        if !self.kept {
            return Err(invalid(
                "no training set is kept: call keep_dataset first (or load_epoch with the \
                 epoch's images)"
                    .into(),
            ));
        }
        let count = self.labels.len();
        if let Some(i) = order.iter().position(|&s| s as usize >= count) {
            return Err(invalid(format!(
                "order[{i}] = {} is past the {count} kept images",
                order[i]
            )));
        }
        if order.is_empty() || u32::try_from(order.len()).is_err() {
            return Err(invalid(format!(
                "an epoch of {} samples: it needs at least one and at most u32::MAX",
                order.len()
            )));
        }
        if side != 0 && side.checked_mul(side) != Some(inputs) {
            return Err(invalid(format!(
                "side {side} does not make a square image of {inputs} inputs; pass 0 for no \
                 shift"
            )));
        }
        if side != 0 && shifts.len() != 2 * order.len() {
            return Err(Error::ShapeMismatch {
                op: OP_PLAN,
                detail: format!(
                    "{} shifts for {} samples; a (dx, dy) pair per sample is {}",
                    shifts.len(),
                    order.len(),
                    2 * order.len()
                ),
            });
        }
        self.set_plan(gpu, order, shifts, side, background)
    }

    fn set_images(&mut self, gpu: &Gpu, images: &[f32], labels: &[u32]) -> Result<()> {
        if labels.is_empty() {
            return Ok(()); // an empty epoch: plan_len 0 refuses every step
        }
        // Reuse the buffers when the size and coding are unchanged (every epoch of a run), else
        // replace.
        match (palette_codes(images), &mut self.images) {
            (
                Some((codes, palette)),
                Images::Coded {
                    codes: c,
                    palette: p,
                },
            ) if c.len() == codes.len() => {
                gpu.upload_into(&codes, c)?;
                gpu.upload_into(&palette, p)?;
            }
            (Some((codes, palette)), _) => {
                self.images = Images::Coded {
                    codes: gpu.upload(&codes)?,
                    palette: gpu.upload(&palette)?,
                };
            }
            (None, Images::F32(v)) if v.len() == images.len() => gpu.upload_into(images, v)?,
            (None, _) => self.images = Images::F32(gpu.upload(images)?),
        }
        if self.labels.len() == labels.len() {
            gpu.upload_into(labels, &mut self.labels)?;
        } else {
            self.labels = gpu.upload(labels)?;
        }
        Ok(())
    }

    fn set_plan(
        &mut self,
        gpu: &Gpu,
        order: &[u32],
        shifts: &[i32],
        side: usize,
        background: f32,
    ) -> Result<()> {
        self.plan_len = 0;
        if order.is_empty() {
            return Ok(());
        }
        if self.order.len() < order.len() {
            self.order = gpu.alloc_zeros(order.len())?;
        }
        gpu.upload_into(order, &mut self.order.slice_mut(..order.len()))?;
        if side != 0 {
            if self.shifts.len() < shifts.len() {
                self.shifts = gpu.alloc_zeros(shifts.len())?;
            }
            gpu.upload_into(shifts, &mut self.shifts.slice_mut(..shifts.len()))?;
        }
        self.plan_len = order.len();
        self.side = side;
        self.background = background;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::palette_codes;

    #[test]
    fn palette_codes_keep_every_bit() {
        // 8-bit images scaled by 255: the fast path, code = k.
        let scaled: Vec<f32> = (0..1000u32).map(|i| (i * 7 % 256) as f32 / 255.0).collect();
        let (codes, palette) = palette_codes(&scaled).unwrap();
        assert_eq!(palette.len(), 256);
        for (v, &c) in scaled.iter().zip(&codes) {
            assert_eq!(palette[c as usize].to_bits(), v.to_bits());
            assert_eq!(u32::from(c), (v * 255.0).round() as u32);
        }
        // Any other ≤ 256 distinct values, −0.0, NaN payloads and infinities included.
        let mut odd: Vec<f32> = (0..250).map(|i| i as f32 * 0.37 - 20.0).collect();
        odd.extend([
            -0.0,
            f32::from_bits(0x7FC0_1234),
            f32::INFINITY,
            f32::NEG_INFINITY,
        ]);
        let values: Vec<f32> = (0..5000).map(|i| odd[(i * 31) % odd.len()]).collect();
        let (codes, palette) = palette_codes(&values).unwrap();
        for (v, &c) in values.iter().zip(&codes) {
            assert_eq!(palette[c as usize].to_bits(), v.to_bits());
        }
        // 257 distinct values do not fit.
        let many: Vec<f32> = (0..257).map(|i| i as f32 + 0.5).collect();
        assert!(palette_codes(&many).is_none());
        assert!(palette_codes(&many[..256]).is_some());
    }
}
