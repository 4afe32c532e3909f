// step_record.cuh — the loss-scale update rule and a training step's record, shared by
// scaler.cu (update_scale, record_step: one thread) and unscale.cu (unscale_f32_record: the
// unscale's last block runs the record, so a step needs no launch of its own for it). The rule is
// documented in scaler.cu's header, the record in record_step's comment there.
#pragma once

namespace step_record {

// Values per record: loss, scale, found_inf, then the two words of the non-finite gradient mask
// (bit t: tensor t of the step's list; 63: tensor 63 or later) as f32 bit patterns, then the
// gradient norm of clip_grad_norm_ (NaN without it).
constexpr int RECORD = 6;

// The update rule: from the scale and tracker values `now` (read by the caller), the new ones
// written to `scale` and `tracker`.
__device__ __forceinline__ void apply_update(float* scale, int* tracker, float scale_now,
                                             int tracker_now, bool found_inf, double growth,
                                             double backoff, int interval, int has_min,
                                             float min_scale, int has_max, float max_scale) {
    if (found_inf) {
        float s = float(double(scale_now) * backoff);
        if (has_min) s = fmaxf(s, min_scale);
        *scale = s;
        *tracker = 0;
    } else {
        // Two's-complement wrap, like the reference's wrapping_add.
        const int successful = int(unsigned(tracker_now) + 1u);
        if (successful == interval) {
            float grown = float(double(scale_now) * growth);
            if (has_max) grown = fminf(grown, max_scale);
            if (isfinite(grown)) *scale = grown;
            *tracker = 0;
        } else {
            *tracker = successful;
        }
    }
}

__device__ __forceinline__ void record(const float* loss, float* scale, const float* found_inf,
                                       unsigned* mask, const float* norm, float* records,
                                       unsigned* cursor, unsigned capacity, unsigned advance,
                                       int dynamic, int* tracker, double growth, double backoff,
                                       int interval, int has_min, float min_scale, int has_max,
                                       float max_scale) {
    // Every value first, then the writes: with the stores in between (which may alias, for all
    // the compiler knows), each load waited for the one before, a chain of L2 round trips at
    // the end of the step's unscale launch. The buffers are distinct allocations.
    const unsigned i = cursor[0], next = cursor[1];
    const float inf_flag = *found_inf, step_loss = *loss, step_scale = *scale;
    const int step_tracker = dynamic ? *tracker : 0;
    const unsigned lo = mask ? mask[0] : 0u, hi = mask ? mask[1] : 0u;
    const float step_norm = norm ? *norm : __int_as_float(0x7fc00000);
    if (i < capacity) {
        float* r = records + RECORD * size_t(i);
        r[0] = step_loss;
        r[1] = step_scale;
        r[2] = inf_flag;
        r[3] = __uint_as_float(lo);
        r[4] = __uint_as_float(hi);
        r[5] = step_norm;
    }
    // The mask is the step's: cleared for the next one here, where it was last read (the
    // unscale's blocks all set their bits before this block's ticket).
    if (mask && (lo | hi)) {
        mask[0] = 0u;
        mask[1] = 0u;
    }
    cursor[0] = i + 1;
    cursor[1] = next + advance;
    if (dynamic) {
        apply_update(scale, tracker, step_scale, step_tracker, inf_flag != 0.f, growth, backoff,
                     interval, has_min, min_scale, has_max, max_scale);
    }
}

}  // namespace step_record
