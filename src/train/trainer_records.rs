//! What the training loop does with the step records it reads back: the divergence rules, the
//! scaler's warnings, the run summary and the metrics file, and the overflow locator's replays
//! of skipped steps (a child module of `trainer`).

use super::*;

/// The first inf/NaN of a located step, in words.
pub(super) fn site_text(site: Option<&OverflowSite>) -> String {
    match site {
        Some(s) => format!("first inf/NaN: {s}"),
        None => "its replay on the CPU reference found every op finite (the overflow is within \
                 f32 summation-order differences of f16's limit)"
            .to_string(),
    }
}

/// Where an epoch's samples are: a kept dataset's plan (`order`, `shifts`, `side`) over the
/// training set with its border value, or the samples assembled on the host.
pub(super) enum EpochSet<'a> {
    Plan(&'a (Vec<u32>, Vec<i32>, usize), (&'a [f32], &'a [u32]), f32),
    Samples(&'a [f32], &'a [u32]),
}

/// The samples and labels of the step on rows `first..first + batch` of the epoch, as the
/// backend saw them (a plan's rows gathered with [`crate::cpu::augment::gather_shifted`], as the
/// device gathers them).
pub(super) fn step_batch(
    cfg: &TrainConfig,
    set: EpochSet<'_>,
    first: usize,
    batch: usize,
) -> Result<(Vec<f32>, Vec<u32>)> {
    let inputs = cfg.model.inputs();
    let rows = first..first + batch;
    match set {
        EpochSet::Plan((order, shifts, side), (images, labels), border) => {
            let order = &order[rows];
            let shifts = &shifts[2 * first..2 * (first + batch)];
            let mut x = vec![0f32; batch * inputs];
            crate::cpu::augment::gather_shifted(
                images, inputs, *side, order, shifts, border, &mut x,
            )?;
            Ok((x, order.iter().map(|&s| labels[s as usize]).collect()))
        }
        EpochSet::Samples(xs, ys) => Ok((
            xs[first * inputs..(first + batch) * inputs].to_vec(),
            ys[rows].to_vec(),
        )),
    }
}

/// Replays a skipped step ([`crate::train::locate`]) on a CPU replica of `backend`'s state (the
/// weights the step ran with: a skipped step changed none), on `batch` at `scale`.
pub(super) fn replay(
    backend: &mut dyn Backend,
    cfg: &TrainConfig,
    (x, y): (Vec<f32>, Vec<u32>),
    scale: f32,
) -> Result<Option<OverflowSite>> {
    let state = backend.export()?;
    let mut replica = crate::train::cpu_backend::CpuBackend::new(cfg)?;
    replica.import(&state)?;
    replica.load_epoch(&x, &y)?;
    replica.locate(0, y.len(), scale)
}

/// What the loop does with each batch of records it reads back: the divergence rules, the
/// scaler's warnings, the run summary and the metrics file.
pub(super) struct Seen<'a> {
    pub(super) health: &'a mut Health,
    pub(super) advisor: &'a mut Advisor,
    /// The parameters' `state_dict` names, for the overflow reports.
    pub(super) names: &'a [String],
    pub(super) verbose: bool,
}

impl Seen<'_> {
    /// Feeds `records` (`progress` is already past the last one) to the warnings, the summary
    /// and the metrics file, then to the divergence rules, so that a dead run's records are
    /// logged before its error.
    pub(super) fn records(
        &mut self,
        summary: &mut RunSummary,
        metrics: &mut Option<(std::io::BufWriter<std::fs::File>, &std::path::Path)>,
        progress: &Progress,
        records: &[StepRecord],
        epoch: usize,
        site: Option<Option<OverflowSite>>,
    ) -> Result<()> {
        let first = progress.global_step - records.len() as u64;
        for w in self.advisor.observe(first, records, self.names) {
            if self.verbose {
                eprintln!("warning: {w}");
            }
            summary.warnings.push((progress.global_step, w));
        }
        if let (Some(site), Some(r), true) = (&site, records.last(), self.verbose) {
            let reason = skip_reason(r, self.names).unwrap_or_default();
            eprintln!(
                "step {} skipped: {reason}; {}",
                progress.global_step - 1,
                site_text(site.as_ref())
            );
        }
        log_records(summary, metrics, first, records, epoch, self.names, site)?;
        self.health.observe(first, records)
    }
}

/// Appends the records of global steps `first..` to the run summary and the metrics file; a
/// skipped step's line also says why (`skip_reason`) and names its inf/NaN gradients
/// (`nonfinite`).
fn log_records(
    summary: &mut RunSummary,
    metrics: &mut Option<(std::io::BufWriter<std::fs::File>, &std::path::Path)>,
    first: u64,
    records: &[StepRecord],
    epoch: usize,
    names: &[String],
    site: Option<Option<OverflowSite>>,
) -> Result<()> {
    for (i, r) in records.iter().enumerate() {
        let step = first + i as u64;
        summary.steps.push((step, *r));
        if let Some((m, path)) = metrics {
            let mut line = serde_json::json!({
                "step": step,
                "epoch": epoch,
                "loss": r.loss,
                "scale": r.scale,
                "skipped": r.skipped,
                "lr": r.lr,
            });
            if let Some(n) = r.grad_norm {
                line["grad_norm"] = n.into();
            }
            if let Some(reason) = skip_reason(r, names) {
                line["skip_reason"] = reason.into();
                line["nonfinite"] = r.nonfinite.names(names).into();
                if let (Some(site), true) = (&site, i + 1 == records.len()) {
                    line["overflow_site"] = site_text(site.as_ref()).into();
                }
            }
            writeln!(m, "{line}").map_err(|e| Error::io(path, "writing metrics to", e))?;
        }
    }
    Ok(())
}
