//! GPU-vs-CPU parity for delayed-scaling FP8 training's casts (`kernels/fp8_train.cu`), bit for
//! bit: `ops::fp8::cast_transpose` against `cpu::fp8::cast_transpose` (E4M3 and E5M2, f32 and
//! bf16 sources, any bit pattern, odd shapes, the vector and element kernels, outputs poisoned
//! around their views, the transposed copy's padding, the amax), and `ops::fp8::update_scales`
//! against `cpu::fp8::ScalingState::update` over many steps (NaN, zero, infinite and tiny amaxes,
//! margins, both algorithms, eagerly and replayed from a CUDA graph).

mod common;

use ampkit::cpu::fp8::{transpose_ld, AmaxAlgo, CastInput, Fp8Format, ScalingState};
use ampkit::cuda::Gpu;
use ampkit::ops::fp8::{CastSource, Fp8Scales};
use ampkit::{cpu, ops, Error};
use common::{assert_bits_eq, gpu, rng, sized};
use cudarc::driver::{CudaSlice, DevicePtrMut};
use half::bf16;
use rand::rngs::StdRng;
use rand::Rng;

const FORMATS: [Fp8Format; 2] = [Fp8Format::E4M3, Fp8Format::E5M2];
const SIZES: [usize; 8] = [1, 15, 17, 63, 64, 65, 100, 784];
const POISON: u8 = 0xA5;
const GUARD: usize = 7;

/// Values that, after `scale`, land on every branch of the conversion of `format`: any bit
/// pattern (NaN, ±inf, subnormals), beyond the largest finite value, exact ties, the FP8
/// subnormal range, ordinary activations.
fn value(rng: &mut StdRng, format: Fp8Format, scale: f32) -> f32 {
    let max = format.max();
    let sign = if rng.gen() { 1.0 } else { -1.0 };
    match rng.gen_range(0..7) {
        0 => f32::from_bits(rng.gen()),
        1 => sign * rng.gen_range(0.9 * max..4.0 * max) / scale,
        2 => {
            let b = rng.gen_range(0..0x7Du8);
            sign * (format.decode(b) + format.decode(b + 1)) * 0.5 / scale
        }
        3 => sign * rng.gen_range(0.0f32..1.0) * 2f32.powi(-rng.gen_range(6..20)) / scale,
        4 => [f32::NAN, f32::INFINITY, f32::NEG_INFINITY, 1e-40, -0.0][rng.gen_range(0..5)],
        _ => rng.gen_range(-4.0f32..4.0) * 2f32.powi(rng.gen_range(-8..8)),
    }
}

/// A source element type of the test: f32, or bf16 made from the f32 draw's top bits.
trait Source: CastSource + CastInput + Copy + std::fmt::Debug {
    const NAME: &'static str;
    fn from_draw(x: f32) -> Self;
}

impl Source for f32 {
    const NAME: &'static str = "f32";
    fn from_draw(x: f32) -> f32 {
        x
    }
}

impl Source for bf16 {
    const NAME: &'static str = "bf16";
    fn from_draw(x: f32) -> bf16 {
        bf16::from_bits((x.to_bits() >> 16) as u16)
    }
}

/// One GPU cast + transpose of `src` (`rows`×`cols`) into views at the given offsets of
/// poisoned buffers, checked against the CPU: q, qt (padding included), nothing written around
/// either view, and the amax (which starts at `amax0`, so the kernel must raise it).
#[allow(clippy::too_many_arguments)]
fn case<T: Source>(
    gpu: &Gpu,
    f: Fp8Format,
    src: &[T],
    (rows, cols): (usize, usize),
    scale: f32,
    (src_off, q_off, qt_off): (usize, usize, usize),
    with_q: bool,
    amax0: f32,
) {
    let (n, ld) = (rows * cols, transpose_ld(rows).unwrap());
    let mut want_q = vec![0u8; n];
    let mut want_qt = vec![0u8; cols * ld];
    let want_amax =
        cpu::fp8::cast_transpose(f, src, rows, cols, scale, Some(&mut want_q), &mut want_qt)
            .unwrap();
    let want_amax = if want_amax.is_nan() || want_amax > amax0 {
        want_amax
    } else {
        amax0
    };

    let mut host = vec![T::from_draw(f32::NAN); src_off];
    host.extend_from_slice(src);
    let dsrc = gpu.upload(&host).unwrap();
    let mut dq = gpu.upload(&vec![POISON; q_off + n + GUARD]).unwrap();
    let mut dqt = gpu
        .upload(&vec![POISON; qt_off + cols * ld + GUARD])
        .unwrap();
    let dscale = gpu.upload(&[scale]).unwrap();
    let mut amax = gpu.upload(&[amax0]).unwrap();
    {
        let mut qv = dq.slice_mut(q_off..q_off + n);
        let q: Option<&mut dyn DevicePtrMut<u8>> = if with_q { Some(&mut qv) } else { None };
        let mut qtv = dqt.slice_mut(qt_off..qt_off + cols * ld);
        ops::fp8::cast_transpose(
            gpu,
            f,
            &dsrc.slice(src_off..),
            rows,
            cols,
            &dscale,
            q,
            &mut qtv,
            &mut amax,
        )
        .unwrap();
    }
    let what = format!(
        "{} {f:?} {rows}x{cols} scale {scale} offsets {src_off}/{q_off}/{qt_off} q {with_q}",
        T::NAME
    );
    let got_q = gpu.download(&dq).unwrap();
    let got_qt = gpu.download(&dqt).unwrap();
    if with_q {
        assert_bits_eq(
            &format!("{what}: q"),
            &got_q[q_off..q_off + n],
            &want_q,
            |i| src[i],
        );
    } else {
        assert!(got_q.iter().all(|&b| b == POISON), "{what}: q written");
    }
    let input = |i: usize| {
        let (c, r) = (i / ld, i % ld);
        if r < rows {
            format!("src[{r}][{c}] = {:?}", src[r * cols + c])
        } else {
            format!("padding of row {c}")
        }
    };
    let qt_view = &got_qt[qt_off..qt_off + cols * ld];
    assert_bits_eq(&format!("{what}: qt"), qt_view, &want_qt, input);
    let outside = |v: &[u8], off: usize, len: usize| {
        v[..off].iter().chain(&v[off + len..]).all(|&b| b == POISON)
    };
    assert!(outside(&got_q, q_off, n), "{what}: wrote outside q");
    assert!(
        outside(&got_qt, qt_off, cols * ld),
        "{what}: wrote outside qt"
    );
    let got_amax = gpu.download(&amax).unwrap()[0];
    assert_eq!(
        got_amax.to_bits(),
        want_amax.to_bits(),
        "{what}: amax {got_amax} vs {want_amax}"
    );
}

fn all_shapes<T: Source>(gpu: &Gpu, rng: &mut StdRng) {
    for f in FORMATS {
        for &rows in &SIZES {
            for &cols in &SIZES {
                let scale = if rng.gen() {
                    2f32.powi(rng.gen_range(-6..6))
                } else {
                    rng.gen_range(0.01f32..100.0)
                };
                let mut x: Vec<T> = (0..rows * cols)
                    .map(|_| T::from_draw(value(rng, f, scale)))
                    .collect();
                if rng.gen_bool(0.5) {
                    // Half the matrices hold no NaN, so the amax is a number.
                    for v in x.iter_mut().filter(|v| v.widen().is_nan()) {
                        *v = T::from_draw(1.0);
                    }
                }
                // Aligned views (the vector kernel when cols % 4 == 0) half the time, else
                // offsets that force the element kernel.
                let offs = if rng.gen() {
                    (0, 0, 0)
                } else {
                    (
                        rng.gen_range(0..4),
                        rng.gen_range(0..4),
                        rng.gen_range(0..4),
                    )
                };
                let amax0 = if rng.gen() { 0.0 } else { 3.0 };
                case(
                    gpu,
                    f,
                    &x,
                    (rows, cols),
                    scale,
                    offs,
                    rng.gen_bool(0.8),
                    amax0,
                );
            }
        }
    }
}

#[test]
fn cast_transpose_f32_matches_the_cpu_bit_for_bit() {
    let Some(gpu) = gpu() else { return };
    all_shapes::<f32>(&gpu, &mut rng("fp8 cast_transpose f32"));
}

#[test]
fn cast_transpose_bf16_matches_the_cpu_bit_for_bit() {
    let Some(gpu) = gpu() else { return };
    all_shapes::<bf16>(&gpu, &mut rng("fp8 cast_transpose bf16"));
}

#[test]
fn cast_transpose_of_large_matrices_loops_over_tiles() {
    // More tiles than one wave of blocks, so every block takes several; both kernels.
    let Some(gpu) = gpu() else { return };
    let mut rng = rng("fp8 cast_transpose large");
    let (rows, cols) = sized((2053, 4100), (130, 200));
    for (f, offs) in [(Fp8Format::E4M3, (0, 0, 0)), (Fp8Format::E5M2, (1, 3, 2))] {
        let x: Vec<f32> = (0..rows * cols)
            .map(|_| rng.gen_range(-1.0f32..1.0) * 2f32.powi(rng.gen_range(-12..12)))
            .collect();
        case(&gpu, f, &x, (rows, cols), 40.0, offs, true, 0.0);
        let b: Vec<bf16> = x.iter().map(|&v| bf16::from_f32(v)).collect();
        case(&gpu, f, &b, (rows, cols), 0.75, offs, false, 0.0);
    }
}

/// An amax history entry or a recorded amax: mostly ordinary, sometimes NaN, zero, infinite,
/// or so small that the scale it gives overflows.
fn amax_draw(rng: &mut StdRng) -> f32 {
    match rng.gen_range(0..10) {
        0 => f32::NAN,
        1 => 0.0,
        2 => f32::INFINITY,
        3 => 1e-40,
        _ => rng.gen_range(0.0f32..8.0) * 2f32.powi(rng.gen_range(-20..20)),
    }
}

/// Casts a small tensor for each tensor of `state` (some skipped) through `quantize` with the
/// state's own scale and amax views, and records the same on the CPU states.
fn step_casts(gpu: &Gpu, rng: &mut StdRng, state: &mut Fp8Scales, cpu: &mut [ScalingState]) {
    for (t, s) in cpu.iter_mut().enumerate() {
        if rng.gen_bool(0.2) {
            continue;
        }
        let x: Vec<f32> = (0..rng.gen_range(1..300))
            .map(|_| amax_draw(rng) * if rng.gen() { 1.0 } else { -1.0 })
            .collect();
        let f = state.formats()[t];
        let mut q = vec![0u8; x.len()];
        s.record(cpu::fp8::quantize(f, &x, s.scale, &mut q).unwrap());
        let dx = gpu.upload(&x).unwrap();
        let mut dq = gpu.alloc_zeros::<u8>(x.len()).unwrap();
        let (scale, mut amax) = state.scale_and_amax(t).unwrap();
        ops::fp8::quantize(gpu, f, &dx, &mut dq, &scale, &mut amax).unwrap();
        assert_eq!(
            gpu.download(&dq).unwrap(),
            q,
            "tensor {t}: cast with the state's scale"
        );
    }
}

fn same_state(what: &str, gpu: &Gpu, state: &Fp8Scales, cpu: &[ScalingState]) {
    let got = state.download(gpu).unwrap();
    let inv = gpu.download(state.scale_invs()).unwrap();
    for (t, (g, w)) in got.iter().zip(cpu).enumerate() {
        let bits = |h: &[f32]| h.iter().map(|v| v.to_bits()).collect::<Vec<_>>();
        assert_eq!(
            bits(&g.history),
            bits(&w.history),
            "{what}: tensor {t} history"
        );
        assert_eq!(
            g.scale.to_bits(),
            w.scale.to_bits(),
            "{what}: tensor {t} scale {} vs {}",
            g.scale,
            w.scale
        );
        assert_eq!(
            inv[t].to_bits(),
            (1.0 / w.scale).to_bits(),
            "{what}: tensor {t} scale_inv"
        );
    }
}

#[test]
fn update_scales_matches_scaling_state_step_by_step() {
    let Some(gpu) = gpu() else { return };
    let mut rng = rng("fp8 update_scales");
    for len in [1, 2, 3, 17, 256, 257, 1024, 4096] {
        let formats: Vec<Fp8Format> = (0..rng.gen_range(1..12))
            .map(|_| FORMATS[rng.gen_range(0..2)])
            .collect();
        let mut state = Fp8Scales::new(&gpu, &formats, len).unwrap();
        // Random windows and scales (uploaded), including NaN, zero, inf and tiny amaxes.
        let mut cpu: Vec<ScalingState> = formats
            .iter()
            .map(|_| ScalingState {
                history: (0..len).map(|_| amax_draw(&mut rng)).collect(),
                scale: rng.gen_range(0.01f32..1000.0),
            })
            .collect();
        state.upload(&gpu, &cpu).unwrap();
        same_state("uploaded", &gpu, &state, &cpu);
        for step in 0..sized(12, 4) {
            if step > 0 {
                step_casts(&gpu, &mut rng, &mut state, &mut cpu);
            }
            let algo = if rng.gen() {
                AmaxAlgo::Max
            } else {
                AmaxAlgo::MostRecent
            };
            let margin = [0.0, 1.0, -2.0, 0.5, 3.7][rng.gen_range(0..5)];
            ops::fp8::update_scales(&gpu, &mut state, algo, margin).unwrap();
            for (s, &f) in cpu.iter_mut().zip(&formats) {
                s.update(f, algo, margin);
            }
            let what = format!("len {len} step {step} {algo:?} margin {margin}");
            same_state(&what, &gpu, &state, &cpu);
        }
    }
}

#[test]
fn casts_and_update_scales_replay_from_a_cuda_graph() {
    let Some(shared) = gpu() else { return };
    let gpu = shared.fork().unwrap();
    gpu.set_sync_launches(false);
    let mut rng = rng("fp8 update_scales graph");
    let formats = [Fp8Format::E4M3, Fp8Format::E5M2, Fp8Format::E4M3];
    let (rows, cols) = (33, 40);
    let ld = transpose_ld(rows).unwrap();
    let mut state = Fp8Scales::new(&gpu, &formats, 5).unwrap();
    let mut cpu = vec![ScalingState::new(5); 3];
    let mut x = gpu.alloc_zeros::<f32>(rows * cols).unwrap();
    let mut qt = gpu.alloc_zeros::<u8>(cols * ld).unwrap();
    // Per tensor a cast + transpose with its own scale and amax, then the update of all three.
    let body = |g: &Gpu, state: &mut Fp8Scales, x: &CudaSlice<f32>, qt: &mut CudaSlice<u8>| {
        for (t, &f) in formats.iter().enumerate() {
            let (scale, mut amax) = state.scale_and_amax(t)?;
            ops::fp8::cast_transpose(g, f, x, rows, cols, &scale, None, qt, &mut amax)?;
        }
        ops::fp8::update_scales(g, state, AmaxAlgo::Max, 1.0)
    };
    let host_step = |rng: &mut StdRng, cpu: &mut [ScalingState]| {
        let m = 2f32.powi(rng.gen_range(-10..10));
        let v: Vec<f32> = (0..rows * cols).map(|_| rng.gen_range(-m..m)).collect();
        for (s, &f) in cpu.iter_mut().zip(&formats) {
            let mut q = vec![0u8; rows * cols];
            s.record(cpu::fp8::quantize(f, &v, s.scale, &mut q).unwrap());
            s.update(f, AmaxAlgo::Max, 1.0);
        }
        v
    };
    // Step 0 eagerly: it loads the module the graph uses.
    let v = host_step(&mut rng, &mut cpu);
    gpu.upload_into(&v, &mut x).unwrap();
    body(&gpu, &mut state, &x, &mut qt).unwrap();
    same_state("eager step", &gpu, &state, &cpu);
    let ((), graph) = gpu.capture(|g| body(g, &mut state, &x, &mut qt)).unwrap();
    for step in 1..8 {
        let v = host_step(&mut rng, &mut cpu);
        gpu.upload_into(&v, &mut x).unwrap();
        graph.launch().unwrap();
        same_state(&format!("graph replay {step}"), &gpu, &state, &cpu);
    }
}

#[test]
fn bad_arguments_are_typed_errors() {
    let Some(gpu) = gpu() else { return };
    let invalid = |e: Error, what: &str| {
        assert!(
            matches!(e, Error::InvalidArgument { .. }) && e.to_string().contains(what),
            "{what}: {e}"
        );
    };
    let shape = |e: Error, what: &str| {
        assert!(
            matches!(e, Error::ShapeMismatch { .. }) && e.to_string().contains(what),
            "{what}: {e}"
        );
    };
    let e4 = [Fp8Format::E4M3];
    invalid(Fp8Scales::new(&gpu, &[], 4).unwrap_err(), "0 tensors");
    invalid(Fp8Scales::new(&gpu, &e4, 0).unwrap_err(), "0 steps");
    invalid(Fp8Scales::new(&gpu, &e4, 4097).unwrap_err(), "4097 steps");
    let mut state = Fp8Scales::new(&gpu, &[Fp8Format::E4M3, Fp8Format::E5M2], 4).unwrap();
    invalid(state.scale(2).unwrap_err(), "tensor 2 of 2");
    invalid(state.scale_inv(5).unwrap_err(), "tensor 5");
    invalid(state.amax(2).unwrap_err(), "tensor 2");
    invalid(state.scale_and_amax(9).unwrap_err(), "tensor 9");
    let ok = ScalingState::new(4);
    shape(
        state.upload(&gpu, std::slice::from_ref(&ok)).unwrap_err(),
        "1 states",
    );
    shape(
        state
            .upload(&gpu, &[ok.clone(), ScalingState::new(3)])
            .unwrap_err(),
        "3 entries",
    );
    let mut negative = ok.clone();
    negative.history[2] = -0.0;
    invalid(
        state.upload(&gpu, &[ok.clone(), negative]).unwrap_err(),
        "sign bit",
    );
    for m in [f32::NAN, f32::INFINITY] {
        let e = ops::fp8::update_scales(&gpu, &mut state, AmaxAlgo::Max, m).unwrap_err();
        invalid(e, "margin");
    }
    // Nothing above changed the state.
    same_state("after errors", &gpu, &state, &[ok.clone(), ok]);

    let (rows, cols) = (5, 3);
    let x = gpu.upload(&[1.0f32; 15]).unwrap();
    let (mut q, mut qt) = (
        gpu.alloc_zeros::<u8>(15).unwrap(),
        gpu.alloc_zeros::<u8>(48).unwrap(),
    );
    let f = Fp8Format::E4M3;
    let (scale, mut amax) = state.scale_and_amax(0).unwrap();
    let mut short = gpu.alloc_zeros::<u8>(15).unwrap();
    let r = ops::fp8::cast_transpose(&gpu, f, &x, rows, cols, &scale, None, &mut short, &mut amax);
    shape(r.unwrap_err(), "qt has 15");
    let mut q14 = gpu.alloc_zeros::<u8>(14).unwrap();
    let r = ops::fp8::cast_transpose(
        &gpu,
        f,
        &x,
        rows,
        cols,
        &scale,
        Some(&mut q14),
        &mut qt,
        &mut amax,
    );
    shape(r.unwrap_err(), "q has 14");
    let r = ops::fp8::cast_transpose(&gpu, f, &x, 4, 3, &scale, None, &mut qt, &mut amax);
    shape(r.unwrap_err(), "src has 15");
    let r = ops::fp8::cast_transpose(
        &gpu,
        f,
        &x,
        usize::MAX / 2,
        4,
        &scale,
        Some(&mut q),
        &mut qt,
        &mut amax,
    );
    invalid(r.unwrap_err(), "overflows");
}
