// step_record.cuh — the loss-scale update rule and a training step's record, shared by
// scaler.cu (update_scale, record_step: one thread) and unscale.cu (unscale_f32_record: the
// unscale's last block runs the record, so a step needs no launch of its own for it). The rule is
// documented in scaler.cu's header, the record in record_step's comment there.
#pragma once

namespace step_record {

// The update rule on a scale and tracker in device memory.
__device__ __forceinline__ void apply_update(float* scale, int* tracker, bool found_inf,
                                             double growth, double backoff, int interval,
                                             int has_min, float min_scale, int has_max,
                                             float max_scale) {
    if (found_inf) {
        float s = float(double(*scale) * backoff);
        if (has_min) s = fmaxf(s, min_scale);
        *scale = s;
        *tracker = 0;
    } else {
        // Two's-complement wrap, like the reference's wrapping_add.
        const int successful = int(unsigned(*tracker) + 1u);
        if (successful == interval) {
            float grown = float(double(*scale) * growth);
            if (has_max) grown = fminf(grown, max_scale);
            if (isfinite(grown)) *scale = grown;
            *tracker = 0;
        } else {
            *tracker = successful;
        }
    }
}

// Appends (loss, scale, found_inf) at record cursor[0] (nothing past `capacity`), advances
// cursor[0] by one and the sample cursor[1] by `advance`, then, when `dynamic`, updates the scale.
// The record holds the scale the step ran with, read before the update.
__device__ __forceinline__ void record(const float* loss, float* scale, const float* found_inf,
                                       float* records, unsigned* cursor, unsigned capacity,
                                       unsigned advance, int dynamic, int* tracker, double growth,
                                       double backoff, int interval, int has_min,
                                       float min_scale, int has_max, float max_scale) {
    const unsigned i = cursor[0];
    const float inf_flag = *found_inf;
    if (i < capacity) {
        records[3 * size_t(i)] = *loss;
        records[3 * size_t(i) + 1] = *scale;
        records[3 * size_t(i) + 2] = inf_flag;
    }
    cursor[0] = i + 1;
    cursor[1] += advance;
    if (dynamic) {
        apply_update(scale, tracker, inf_flag != 0.f, growth, backoff, interval, has_min,
                     min_scale, has_max, max_scale);
    }
}

}  // namespace step_record
