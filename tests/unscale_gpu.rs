//! GPU multi-tensor unscale + inf/NaN check vs the CPU reference: a model-sized list (dozens of
//! tensors from 0 to millions of elements, odd sizes, unaligned views) with inf, NaN, −0.0,
//! subnormals and huge values at random places; bit-exact results (NaN compared as NaN where a
//! multiply happens), found_inf exactly when the reference finds one, the flag never cleared,
//! more tensors than one launch holds, the per-tensor non-finite flags (the overflow locator's)
//! against the reference's, and argument errors.

mod common;

use ampkit::amp::NonFinite;
use ampkit::cpu::unscale as cpu;
use ampkit::ops::unscale::{unscale_and_check, unscale_and_locate, unscale_f16_to_f32};
use ampkit::Error;
use common::{gpu, rng, sized};
use half::f16;
use rand::rngs::StdRng;
use rand::Rng;

/// Random gradients with specials sprinkled in (`specials` of them, if any room).
fn grads(rng: &mut StdRng, len: usize, specials: usize) -> Vec<f32> {
    let mut g: Vec<f32> = (0..len)
        .map(|_| rng.gen_range(-1.0f32..1.0) * 2f32.powi(rng.gen_range(-30..20)))
        .collect();
    for k in 0..specials.min(len) {
        let i = rng.gen_range(0..len);
        if k == 0 {
            // At least one non-finite value whenever specials are asked for.
            g[i] = [f32::INFINITY, f32::NEG_INFINITY, f32::NAN][rng.gen_range(0..3)];
            continue;
        }
        g[i] = [
            f32::INFINITY,
            f32::NEG_INFINITY,
            f32::from_bits(0x7FC0_1234),
            -0.0,
            1e-40,
            65504.0,
            f32::MAX,
        ][rng.gen_range(0..7)];
    }
    g
}

/// Tensor sizes like a model's: biases, weights, odd sizes, empties, one large tensor (3 M, or
/// 0.75 M under `AMPKIT_TEST_SANITIZE=1`: about 1.1 M elements in all instead of 4 M).
fn model_sizes(rng: &mut StdRng) -> Vec<usize> {
    let (weight, large, most) = sized((784 * 512, 3 << 20, 40_000), (784 * 64, 3 << 18, 10_000));
    let mut sizes = vec![0, 1, 7, 10, 512, weight, 5120, 8191, 8192, 8193, large];
    sizes.extend((0..30).map(|_| rng.gen_range(1..most)));
    sizes
}

/// NaN matches NaN (the GPU's multiply returns the canonical NaN); everything else bitwise.
fn same(got: f32, want: f32) -> bool {
    (got.is_nan() && want.is_nan()) || got.to_bits() == want.to_bits()
}

fn check_f32_case(
    gpu: &ampkit::cuda::Gpu,
    rng: &mut StdRng,
    scale: f32,
    specials: usize,
    offset: usize,
) -> bool {
    let sizes = model_sizes(rng);
    let host: Vec<Vec<f32>> = sizes
        .iter()
        .map(|&n| grads(rng, n + offset, specials))
        .collect();
    let mut want = host.clone();
    let want_tensors = {
        let mut views: Vec<&mut [f32]> = want.iter_mut().map(|g| &mut g[offset..]).collect();
        cpu::unscale_and_locate(&mut views, cpu::inv_scale(scale))
    };
    let want_found = !want_tensors.is_empty();
    let mut dev: Vec<_> = host.iter().map(|g| gpu.upload(g).unwrap()).collect();
    let scale_dev = gpu.upload(&[scale]).unwrap();
    let mut found = gpu.upload(&[0f32]).unwrap();
    let mut mask = gpu.alloc_zeros::<u32>(2).unwrap();
    {
        let mut views: Vec<_> = dev.iter_mut().map(|d| d.slice_mut(offset..)).collect();
        unscale_and_locate(gpu, &mut views, &scale_dev, &mut found, &mut mask).unwrap();
    }
    let got_found = gpu.download(&found).unwrap()[0];
    assert_eq!(
        got_found == 1.0,
        want_found,
        "found_inf (scale {scale}, specials {specials})"
    );
    let words = gpu.download(&mask).unwrap();
    assert_eq!(
        NonFinite::from_words(words[0], words[1]),
        want_tensors,
        "the non-finite tensors (scale {scale}, specials {specials})"
    );
    for (t, (d, w)) in dev.iter().zip(&want).enumerate() {
        let got = gpu.download(d).unwrap();
        if let Some(i) = (0..got.len()).find(|&i| !same(got[i], w[i])) {
            panic!(
                "tensor {t} ({} elements) [{i}]: got {:#x}, want {:#x}",
                got.len(),
                got[i].to_bits(),
                w[i].to_bits()
            );
        }
    }
    want_found
}

#[test]
fn f32_in_place_matches_the_reference() {
    let Some(gpu) = gpu() else { return };
    let mut rng = rng("gpu unscale f32");
    for (scale, specials, offset) in [
        (65536.0, 0, 0),
        (65536.0, 3, 0),
        (3.0, 2, 1),
        (1.0, 2, 0),
        (0.5, 0, 3),
        (1e-30, 1, 0),
    ] {
        // Every list has empty and tiny tensors, so with specials the flag must come up.
        let found = check_f32_case(&gpu, &mut rng, scale, specials, offset);
        assert_eq!(
            found,
            specials > 0,
            "non-finite values were injected: {specials}"
        );
    }
}

#[test]
fn inv_scale_one_passes_bits_through() {
    let Some(gpu) = gpu() else { return };
    let payloads: Vec<f32> = [
        0x7FC0_0001u32,
        0xFFC1_2345,
        0x7F80_0001,
        0x8000_0000,
        0x0000_0001,
    ]
    .map(f32::from_bits)
    .to_vec();
    let mut dev = vec![gpu.upload(&payloads).unwrap()];
    let mut found = gpu.upload(&[0f32]).unwrap();
    unscale_and_check(&gpu, &mut dev, &gpu.upload(&[1.0f32]).unwrap(), &mut found).unwrap();
    let got: Vec<u32> = gpu
        .download(&dev[0])
        .unwrap()
        .iter()
        .map(|v| v.to_bits())
        .collect();
    assert_eq!(
        got,
        payloads.iter().map(|v| v.to_bits()).collect::<Vec<_>>()
    );
    assert_eq!(gpu.download(&found).unwrap()[0], 1.0);
}

#[test]
fn found_inf_is_set_never_cleared() {
    let Some(gpu) = gpu() else { return };
    let mut dev = vec![gpu.upload(&[1.0f32, 2.0, 3.0]).unwrap()];
    let mut found = gpu.upload(&[1.0f32]).unwrap();
    unscale_and_check(&gpu, &mut dev, &gpu.upload(&[2.0f32]).unwrap(), &mut found).unwrap();
    assert_eq!(
        gpu.download(&found).unwrap()[0],
        1.0,
        "a clean list leaves an earlier overflow flagged"
    );
    assert_eq!(gpu.download(&dev[0]).unwrap(), vec![0.5, 1.0, 1.5]);
}

#[test]
fn f16_to_f32_matches_the_reference() {
    let Some(gpu) = gpu() else { return };
    let mut rng = rng("gpu unscale f16");
    for (scale, specials) in [(65536.0f32, 0usize), (1024.0, 2), (1.0, 1)] {
        let sizes = model_sizes(&mut rng);
        let src: Vec<Vec<f16>> = sizes
            .iter()
            .map(|&n| {
                grads(&mut rng, n, specials)
                    .iter()
                    .map(|&v| f16::from_f32(v))
                    .collect()
            })
            .collect();
        let mut want: Vec<Vec<f32>> = sizes.iter().map(|&n| vec![0f32; n]).collect();
        let want_found = {
            let s: Vec<&[f16]> = src.iter().map(|v| &v[..]).collect();
            let mut d: Vec<&mut [f32]> = want.iter_mut().map(|v| &mut v[..]).collect();
            cpu::unscale_f16_to_f32(&s, &mut d, cpu::inv_scale(scale)).unwrap()
        };
        let src_dev: Vec<_> = src.iter().map(|v| gpu.upload(v).unwrap()).collect();
        let mut dst_dev: Vec<_> = sizes
            .iter()
            .map(|&n| gpu.upload(&vec![f32::from_bits(0x7FC0_DEAD); n]).unwrap())
            .collect();
        let mut found = gpu.upload(&[0f32]).unwrap();
        unscale_f16_to_f32(
            &gpu,
            &src_dev,
            &mut dst_dev,
            &gpu.upload(&[scale]).unwrap(),
            &mut found,
        )
        .unwrap();
        assert_eq!(gpu.download(&found).unwrap()[0] == 1.0, want_found);
        for (t, (d, w)) in dst_dev.iter().zip(&want).enumerate() {
            let got = gpu.download(d).unwrap();
            if let Some(i) = (0..got.len()).find(|&i| !same(got[i], w[i])) {
                panic!(
                    "tensor {t} [{i}]: got {:#x}, want {:#x}",
                    got[i].to_bits(),
                    w[i].to_bits()
                );
            }
        }
    }
}

#[test]
fn more_tensors_than_one_launch_holds() {
    let Some(gpu) = gpu() else { return };
    let mut rng = rng("gpu unscale many");
    let host: Vec<Vec<f32>> = (0..250)
        .map(|_| {
            let n = rng.gen_range(1..300);
            grads(&mut rng, n, 0)
        })
        .collect();
    let mut want = host.clone();
    let mut poisoned = want.clone();
    poisoned[203][0] = f32::NAN; // only in the third launch
    {
        let mut views: Vec<&mut [f32]> = want.iter_mut().map(|g| &mut g[..]).collect();
        cpu::unscale_and_check(&mut views, cpu::inv_scale(8.0));
    }
    let mut dev: Vec<_> = host.iter().map(|g| gpu.upload(g).unwrap()).collect();
    let mut found = gpu.upload(&[0f32]).unwrap();
    unscale_and_check(&gpu, &mut dev, &gpu.upload(&[8.0f32]).unwrap(), &mut found).unwrap();
    assert_eq!(gpu.download(&found).unwrap()[0], 0.0);
    for (d, w) in dev.iter().zip(&want) {
        assert_eq!(&gpu.download(d).unwrap(), w);
    }
    let mut dev: Vec<_> = poisoned.iter().map(|g| gpu.upload(g).unwrap()).collect();
    unscale_and_check(&gpu, &mut dev, &gpu.upload(&[8.0f32]).unwrap(), &mut found).unwrap();
    assert_eq!(
        gpu.download(&found).unwrap()[0],
        1.0,
        "an inf in tensor 203 is seen"
    );
    // The locator across launches: tensors 5 (first launch) and 70, 203 (later launches; 70
    // and up share bit 63), with an empty tensor before them shifting nothing.
    poisoned[5][1] = f32::INFINITY;
    poisoned[70][0] = f32::NEG_INFINITY;
    poisoned[2].clear();
    let mut dev: Vec<_> = poisoned.iter().map(|g| gpu.upload(g).unwrap()).collect();
    let (mut found, mut mask) = (gpu.upload(&[0f32]).unwrap(), gpu.alloc_zeros(2).unwrap());
    let scale = gpu.upload(&[8.0f32]).unwrap();
    unscale_and_locate(&gpu, &mut dev, &scale, &mut found, &mut mask).unwrap();
    let words = gpu.download(&mask).unwrap();
    let got = NonFinite::from_words(words[0], words[1]);
    assert_eq!(got, NonFinite::NONE.with(5).with(70).with(203), "{got}");
    let mut want = poisoned.clone();
    let mut views: Vec<&mut [f32]> = want.iter_mut().map(|g| &mut g[..]).collect();
    assert_eq!(
        cpu::unscale_and_locate(&mut views, cpu::inv_scale(8.0)),
        got
    );
}

#[test]
fn bad_arguments_are_typed_errors() {
    let Some(gpu) = gpu() else { return };
    let src = vec![gpu.upload(&[f16::ONE; 4]).unwrap()];
    let mut dst = vec![gpu.upload(&[0f32; 3]).unwrap()];
    let scale = gpu.upload(&[1.0f32]).unwrap();
    let mut found = gpu.upload(&[0f32]).unwrap();
    let e = unscale_f16_to_f32(&gpu, &src, &mut dst, &scale, &mut found).unwrap_err();
    assert!(matches!(e, Error::ShapeMismatch { .. }), "{e}");
    let mut two = gpu.upload(&[0f32; 2]).unwrap();
    let mut grads = vec![gpu.upload(&[1f32; 3]).unwrap()];
    let e = unscale_and_check(&gpu, &mut grads, &scale, &mut two).unwrap_err();
    assert!(e.to_string().contains("found_inf"), "{e}");
    let mut mask = gpu.alloc_zeros::<u32>(3).unwrap();
    let e = unscale_and_locate(&gpu, &mut grads, &scale, &mut found, &mut mask).unwrap_err();
    assert!(matches!(e, Error::ShapeMismatch { .. }), "{e}");
    assert!(e.to_string().contains("two u32 words"), "{e}");
}
