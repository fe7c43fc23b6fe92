//! Prometheus text-format metrics (exposition format 0.0.4), written by hand: a few gauges and
//! counters read from [`ServiceStats`] at scrape time, and three latency histograms the server
//! fills as requests finish. All names are in one `ocrvl_` family.

use std::fmt::Write as _;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;
use std::time::Duration;

use crate::engine::FinishReason;
use crate::service::{Completion, ServiceStats};

/// Time to first token: from queue entry to the first token, so it holds image preprocessing
/// and waiting; tens of ms for one page, seconds under load.
const TTFT_BUCKETS: &[f64] = &[
    0.005, 0.01, 0.02, 0.04, 0.06, 0.08, 0.1, 0.25, 0.5, 0.75, 1.0, 2.5, 5.0, 7.5, 10.0, 20.0, 40.0, 80.0,
];
/// Time per output token: a decode step is a few ms at full batch on an H100.
const TPOT_BUCKETS: &[f64] = &[
    0.001, 0.0025, 0.005, 0.0075, 0.01, 0.015, 0.02, 0.03, 0.05, 0.075, 0.1, 0.25, 0.5, 1.0,
];
/// End to end, HTTP request in to last token out: a page of text is a few hundred tokens.
const E2E_BUCKETS: &[f64] = &[
    0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 20.0, 40.0, 60.0, 120.0, 300.0, 600.0,
];

struct Histogram {
    bounds: &'static [f64],
    /// Per bucket (not cumulative), plus one for +Inf.
    counts: Vec<u64>,
    sum: f64,
    count: u64,
}

impl Histogram {
    fn new(bounds: &'static [f64]) -> Histogram {
        Histogram {
            bounds,
            counts: vec![0; bounds.len() + 1],
            sum: 0.0,
            count: 0,
        }
    }

    fn observe(&mut self, v: f64) {
        let i = self.bounds.iter().position(|&b| v <= b).unwrap_or(self.bounds.len());
        self.counts[i] += 1;
        self.sum += v;
        self.count += 1;
    }

    fn render(&self, out: &mut String, name: &str, help: &str) {
        let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} histogram");
        let mut cumulative = 0;
        for (i, b) in self.bounds.iter().enumerate() {
            cumulative += self.counts[i];
            let _ = writeln!(out, "{name}_bucket{{le=\"{b}\"}} {cumulative}");
        }
        cumulative += self.counts[self.bounds.len()];
        let _ = writeln!(out, "{name}_bucket{{le=\"+Inf\"}} {cumulative}");
        let _ = writeln!(out, "{name}_sum {}", self.sum);
        let _ = writeln!(out, "{name}_count {}", self.count);
    }
}

/// How a request ended, for `ocrvl_requests_total{finish_reason}`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Outcome {
    Stop,
    Length,
    /// Aborted: the client went away, or shutdown ran out of time.
    Abort,
    /// Failed inside the engine after it was admitted.
    Error,
}

impl Outcome {
    const ALL: [Outcome; 4] = [Outcome::Stop, Outcome::Length, Outcome::Abort, Outcome::Error];

    pub fn label(self) -> &'static str {
        match self {
            Outcome::Stop => "stop",
            Outcome::Length => "length",
            Outcome::Abort => "abort",
            Outcome::Error => "error",
        }
    }

    pub fn from_finish(r: FinishReason) -> Outcome {
        match r {
            FinishReason::Stop => Outcome::Stop,
            FinishReason::Length => Outcome::Length,
            FinishReason::Aborted => Outcome::Abort,
        }
    }
}

pub struct Metrics {
    ttft: Mutex<Histogram>,
    tpot: Mutex<Histogram>,
    e2e: Mutex<Histogram>,
    outcomes: [AtomicU64; 4],
}

impl Default for Metrics {
    fn default() -> Self {
        Metrics {
            ttft: Mutex::new(Histogram::new(TTFT_BUCKETS)),
            tpot: Mutex::new(Histogram::new(TPOT_BUCKETS)),
            e2e: Mutex::new(Histogram::new(E2E_BUCKETS)),
            outcomes: Default::default(),
        }
    }
}

impl Metrics {
    /// A request that ran to its end; `e2e` is from the HTTP request's arrival.
    pub fn observe_completion(&self, c: &Completion, e2e: Duration) {
        self.count(Outcome::from_finish(c.finish_reason));
        if c.finish_reason == FinishReason::Aborted {
            return;
        }
        if !c.token_ids.is_empty() {
            if let Ok(mut h) = self.ttft.lock() {
                h.observe(c.timings.time_to_first_token.as_secs_f64());
            }
        }
        if c.token_ids.len() > 1 {
            if let Ok(mut h) = self.tpot.lock() {
                h.observe(c.timings.time_per_output_token.as_secs_f64());
            }
        }
        if let Ok(mut h) = self.e2e.lock() {
            h.observe(e2e.as_secs_f64());
        }
    }

    pub fn count(&self, outcome: Outcome) {
        self.outcomes[outcome as usize].fetch_add(1, Ordering::Relaxed);
    }

    /// The whole exposition: gauges and counters from `stats`, then the histograms.
    pub fn render(&self, stats: &ServiceStats, ready: bool) -> String {
        let e = &stats.engine;
        let mut out = String::with_capacity(8192);
        let mut one = |name: &str, kind: &str, help: &str, value: u64| {
            let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} {kind}\n{name} {value}");
        };
        one(
            "ocrvl_engine_ready",
            "gauge",
            "1 once the engine serves requests.",
            ready as u64,
        );
        one(
            "ocrvl_requests_running",
            "gauge",
            "Requests holding KV blocks (prefilling or decoding).",
            e.num_running as u64,
        );
        one(
            "ocrvl_requests_waiting",
            "gauge",
            "Requests queued for admission.",
            e.num_waiting as u64,
        );
        let used = e.kv_blocks_total.saturating_sub(e.kv_blocks_free);
        one("ocrvl_kv_blocks_used", "gauge", "KV cache blocks in use.", used as u64);
        one(
            "ocrvl_kv_blocks_free",
            "gauge",
            "KV cache blocks free (prefix-cached ones included).",
            e.kv_blocks_free as u64,
        );
        one(
            "ocrvl_kv_blocks_total",
            "gauge",
            "KV cache blocks in all.",
            e.kv_blocks_total as u64,
        );
        one(
            "ocrvl_prefix_cache_queries_total",
            "counter",
            "Prompt tokens looked up in the prefix cache.",
            e.prefix_cache_queried_tokens,
        );
        one(
            "ocrvl_prefix_cache_hits_total",
            "counter",
            "Prompt tokens found in the prefix cache.",
            e.prefix_cache_hit_tokens,
        );
        let c = &stats.image_cache;
        one(
            "ocrvl_mm_cache_bytes",
            "gauge",
            "Bytes held by the preprocessed-image cache (--mm-processor-cache-gb).",
            c.bytes as u64,
        );
        one(
            "ocrvl_mm_cache_entries",
            "gauge",
            "Images held by the preprocessed-image cache.",
            c.entries as u64,
        );
        one(
            "ocrvl_mm_cache_hits_total",
            "counter",
            "Images found in the preprocessed-image cache.",
            c.hits,
        );
        one(
            "ocrvl_mm_cache_misses_total",
            "counter",
            "Images looked up and not found in the preprocessed-image cache.",
            c.misses,
        );
        one(
            "ocrvl_mm_cache_evictions_total",
            "counter",
            "Images evicted from the preprocessed-image cache to make room.",
            c.evictions,
        );
        one(
            "ocrvl_prompt_tokens_total",
            "counter",
            "Prompt tokens admitted (image tokens included).",
            stats.prompt_tokens,
        );
        one(
            "ocrvl_generation_tokens_total",
            "counter",
            "Tokens generated.",
            stats.generation_tokens,
        );
        one(
            "ocrvl_preemptions_total",
            "counter",
            "Requests preempted (recomputed later).",
            e.num_preemptions,
        );
        one(
            "ocrvl_images_encoded_total",
            "counter",
            "Images run through the vision encoder.",
            e.images_encoded,
        );
        let _ = writeln!(
            out,
            "# HELP ocrvl_requests_total Requests finished, by finish reason.\n# TYPE ocrvl_requests_total counter"
        );
        for o in Outcome::ALL {
            let n = self.outcomes[o as usize].load(Ordering::Relaxed);
            let _ = writeln!(out, "ocrvl_requests_total{{finish_reason=\"{}\"}} {n}", o.label());
        }
        let hists = [
            (
                &self.ttft,
                "ocrvl_time_to_first_token_seconds",
                "Queue entry to first token.",
            ),
            (
                &self.tpot,
                "ocrvl_time_per_output_token_seconds",
                "Mean time between tokens after the first, per request.",
            ),
            (
                &self.e2e,
                "ocrvl_e2e_request_latency_seconds",
                "HTTP request in to last token out.",
            ),
        ];
        for (h, name, help) in hists {
            if let Ok(h) = h.lock() {
                h.render(&mut out, name, help);
            }
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::service::Timings;

    fn completion(n: usize, reason: FinishReason) -> Completion {
        Completion {
            text: String::new(),
            token_ids: vec![1; n],
            logprobs: vec![0.0; n],
            top_logprobs: vec![Vec::new(); n],
            finish_reason: reason,
            stop_string: None,
            prompt_tokens: 10,
            timings: Timings {
                time_to_first_token: Duration::from_millis(30),
                total: Duration::from_millis(130),
                time_per_output_token: Duration::from_millis(4),
            },
        }
    }

    #[test]
    fn exposition() {
        let m = Metrics::default();
        m.observe_completion(&completion(26, FinishReason::Stop), Duration::from_millis(150));
        m.observe_completion(&completion(1, FinishReason::Length), Duration::from_secs(1000));
        m.observe_completion(&completion(3, FinishReason::Aborted), Duration::from_millis(5));
        m.count(Outcome::Error);
        let mut stats = ServiceStats::default();
        stats.engine.kv_blocks_total = 100;
        stats.engine.kv_blocks_free = 90;
        stats.prompt_tokens = 123;
        stats.image_cache.bytes = 4096;
        stats.image_cache.hits = 7;
        let text = m.render(&stats, true);
        for line in [
            "ocrvl_mm_cache_bytes 4096",
            "ocrvl_mm_cache_hits_total 7",
            "ocrvl_engine_ready 1",
            "ocrvl_kv_blocks_used 10",
            "ocrvl_kv_blocks_free 90",
            "ocrvl_prompt_tokens_total 123",
            "ocrvl_requests_total{finish_reason=\"stop\"} 1",
            "ocrvl_requests_total{finish_reason=\"length\"} 1",
            "ocrvl_requests_total{finish_reason=\"abort\"} 1",
            "ocrvl_requests_total{finish_reason=\"error\"} 1",
            // Both finished requests had a first token; only the 26-token one a TPOT.
            "ocrvl_time_to_first_token_seconds_bucket{le=\"0.04\"} 2",
            "ocrvl_time_to_first_token_seconds_count 2",
            "ocrvl_time_per_output_token_seconds_bucket{le=\"0.005\"} 1",
            "ocrvl_time_per_output_token_seconds_count 1",
            "ocrvl_e2e_request_latency_seconds_bucket{le=\"0.25\"} 1",
            "ocrvl_e2e_request_latency_seconds_bucket{le=\"600\"} 1",
            "ocrvl_e2e_request_latency_seconds_bucket{le=\"+Inf\"} 2",
        ] {
            assert!(text.lines().any(|l| l == line), "missing `{line}` in\n{text}");
        }
        // Every sample line is `name[{labels}] value`, every family has HELP and TYPE.
        for l in text.lines().filter(|l| !l.starts_with('#')) {
            let (name, value) = l.rsplit_once(' ').unwrap();
            assert!(name.starts_with("ocrvl_"), "{l}");
            assert!(value.parse::<f64>().is_ok(), "{l}");
        }
        assert_eq!(text.matches("# TYPE").count(), text.matches("# HELP").count());
    }
}
