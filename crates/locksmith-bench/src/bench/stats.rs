//! Figures: samples per run, medians and spreads over runs, ratios to raw baselines, the
//! markdown table and the JSON report.

use std::collections::BTreeMap;

use comfy_table::presets::ASCII_MARKDOWN;
use comfy_table::{Cell, Table};
use serde::Serialize;

/// The `q`-quantile (0..=1) of `samples` (sorted here), nearest rank; `NaN` when empty.
pub(crate) fn quantile(samples: &mut [f64], q: f64) -> f64 {
    if samples.is_empty() {
        return f64::NAN;
    }
    samples.sort_by(f64::total_cmp);
    let rank = ((samples.len() as f64 - 1.0) * q).round() as usize;
    samples[rank.min(samples.len() - 1)]
}

/// Which way a figure is better, for the ratio column.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub(crate) enum Better {
    Higher,
    Lower,
    /// A count or a size: no direction (e.g. lost updates, commands per handoff).
    Neither,
}

/// One measured figure of one run.
#[derive(Debug, Clone)]
pub(crate) struct Sample {
    pub(crate) scenario: String,
    pub(crate) metric: &'static str,
    pub(crate) unit: &'static str,
    pub(crate) better: Better,
    pub(crate) value: f64,
    /// The `scenario`/`metric` key of the raw baseline this figure compares with.
    pub(crate) baseline: Option<String>,
}

impl Sample {
    pub(crate) fn new(
        scenario: impl Into<String>,
        metric: &'static str,
        unit: &'static str,
        better: Better,
        value: f64,
    ) -> Sample {
        Sample {
            scenario: scenario.into(),
            metric,
            unit,
            better,
            value,
            baseline: None,
        }
    }

    /// Compares this figure with the raw baseline `scenario` (same metric).
    pub(crate) fn against(mut self, scenario: impl Into<String>) -> Sample {
        self.baseline = Some(format!("{}/{}", scenario.into(), self.metric));
        self
    }

    fn key(&self) -> String {
        format!("{}/{}", self.scenario, self.metric)
    }
}

/// A figure over every run.
#[derive(Debug, Clone, Serialize)]
pub(crate) struct Figure {
    pub(crate) store: String,
    pub(crate) scenario: String,
    pub(crate) metric: &'static str,
    pub(crate) unit: &'static str,
    pub(crate) better: Better,
    pub(crate) runs: Vec<f64>,
    pub(crate) median: f64,
    pub(crate) min: f64,
    pub(crate) max: f64,
    /// The raw baseline's figure key, and this figure's median over the baseline's median.
    pub(crate) baseline: Option<String>,
    pub(crate) ratio: Option<f64>,
}

/// Every figure of every store, in first-seen order.
#[derive(Debug, Default)]
pub(crate) struct Figures {
    order: Vec<(String, String)>,
    by_key: BTreeMap<(String, String), Figure>,
}

impl Figures {
    pub(crate) fn add(&mut self, store: &str, sample: Sample) {
        let key = (store.to_string(), sample.key());
        let fig = self.by_key.entry(key.clone()).or_insert_with(|| {
            self.order.push(key.clone());
            Figure {
                store: store.to_string(),
                scenario: sample.scenario.clone(),
                metric: sample.metric,
                unit: sample.unit,
                better: sample.better,
                runs: Vec::new(),
                median: f64::NAN,
                min: f64::NAN,
                max: f64::NAN,
                baseline: sample.baseline.clone(),
                ratio: None,
            }
        });
        fig.runs.push(sample.value);
    }

    /// Medians, spreads and ratios.
    pub(crate) fn finish(&mut self) -> Vec<Figure> {
        for fig in self.by_key.values_mut() {
            let mut runs = fig.runs.clone();
            fig.median = quantile(&mut runs, 0.5);
            fig.min = runs.first().copied().unwrap_or(f64::NAN);
            fig.max = runs.last().copied().unwrap_or(f64::NAN);
        }
        let medians: BTreeMap<(String, String), f64> = self
            .by_key
            .iter()
            .map(|(k, f)| (k.clone(), f.median))
            .collect();
        for fig in self.by_key.values_mut() {
            if let Some(base) = &fig.baseline
                && let Some(b) = medians.get(&(fig.store.clone(), base.clone()))
                && *b != 0.0
                && b.is_finite()
            {
                fig.ratio = Some(fig.median / b);
            }
        }
        self.order.iter().map(|k| self.by_key[k].clone()).collect()
    }
}

/// A number for the table: three significant digits, thousands kept whole.
pub(crate) fn num(v: f64) -> String {
    if !v.is_finite() {
        return "—".into();
    }
    let a = v.abs();
    if a >= 1000.0 {
        format!("{v:.0}")
    } else if a >= 100.0 {
        format!("{v:.1}")
    } else if a >= 10.0 {
        format!("{v:.2}")
    } else if a == 0.0 {
        "0".into()
    } else {
        format!("{v:.3}")
    }
}

/// The markdown table of every figure.
pub(crate) fn table(figures: &[Figure]) -> String {
    let mut t = Table::new();
    t.load_style(ASCII_MARKDOWN);
    t.set_header([
        "store",
        "scenario",
        "metric",
        "median",
        "min–max",
        "unit",
        "vs raw",
    ]);
    for f in figures {
        let ratio = match (f.ratio, f.better) {
            (Some(r), _) => format!("{}×", num(r)),
            (None, _) => String::new(),
        };
        t.add_row([
            Cell::new(&f.store),
            Cell::new(&f.scenario),
            Cell::new(f.metric),
            Cell::new(num(f.median)),
            Cell::new(format!("{}–{}", num(f.min), num(f.max))),
            Cell::new(f.unit),
            Cell::new(ratio),
        ]);
    }
    t.to_string()
}
