// scaler.cu — the dynamic loss-scale update on the device: PyTorch's `_amp_update_scale_`.
//
// What: one thread applies src/cpu/scaler.rs's rule, bit for bit, to a scale (f32) and a growth
//   tracker (i32) that live in device memory and are updated in place (stable addresses, so a
//   captured CUDA graph replays the whole step):
//     found_inf: scale = f32(f64(scale)·backoff), clamped below by min_scale; tracker = 0
//     else: s = tracker + 1; at s == interval: n = f32(f64(scale)·growth), capped by max_scale,
//           kept only if finite; tracker = 0; otherwise tracker = s
//   found_inf is the f32 flag the unscale kernel sets (nonzero = overflow). has_min / has_max
//   switch the optional clamps (off: PyTorch exactly). fmaxf/fminf match Rust's f32::max/min.
// Launch: 1 block of 1 thread. Roofline: a few loads and stores; the cost is the launch.
// record_step (below) is the training step's bookkeeping with the same rule fused in.
#include "common.cuh"
#include "step_record.cuh"


extern "C" __global__ void update_scale(float* scale, int* tracker, const float* found_inf,
                                        double growth, double backoff, int interval, int has_min,
                                        float min_scale, int has_max, float max_scale) {
    step_record::apply_update(scale, tracker, *scale, *tracker, *found_inf != 0.f, growth,
                              backoff, interval, has_min, min_scale, has_max, max_scale);
}

// record_step — a training step's bookkeeping, the last kernel of the step (captured with it in a
// CUDA graph, so a replay needs no host call): appends (loss, scale, found_inf, the two words of
// the non-finite gradient mask, zeros when `mask` is null, and a NaN gradient norm: this kernel
// runs only for a step without gradients to unscale) at record cursor[0] of `records`
// (capacity records of step_record::RECORD values; the host sizes the buffer and reads cursor[0]
// records back before it fills), clears the mask, advances cursor[0] by one and the epoch's
// sample cursor[1] by `advance` (the step's batch: where augment.cu's batch gather starts the
// next step), then, when `dynamic`, applies update_scale's rule (tracker non-null): one launch
// instead of two. The record holds the scale the step ran with, read before the update.
// Launch: 1 block of 1 thread. Its parameters after scale, found_inf and mask are unscale.cu's
// unscale_f32_record's after its ticket, which runs the same record in its last block.
extern "C" __global__ void record_step(float* scale, const float* found_inf, unsigned* mask,
                                       const float* loss, float* records, unsigned* cursor,
                                       unsigned capacity, unsigned advance, int dynamic,
                                       int* tracker, double growth, double backoff, int interval,
                                       int has_min, float min_scale, int has_max,
                                       float max_scale) {
    step_record::record(loss, scale, found_inf, mask, nullptr, records, cursor, capacity, advance,
                        dynamic, tracker, growth, backoff, interval, has_min, min_scale, has_max,
                        max_scale);
}
