//! Process-wide counters, rendered as Prometheus text on `/metrics`.
//! Plain atomics: the receive path bumps them without locks.

use std::fmt::Write;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};

#[derive(Debug, Default)]
pub struct Metrics {
    pub associations_total: AtomicU64,
    pub associations_active: AtomicU64,
    pub associations_rejected: AtomicU64,
    pub associations_aborted: AtomicU64,
    pub echoes_total: AtomicU64,
    pub instances_stored: AtomicU64,
    pub instances_duplicate: AtomicU64,
    pub instances_new_version: AtomicU64,
    pub bytes_received: AtomicU64,
    pub store_failures_resources: AtomicU64,
    pub store_failures_invalid: AtomicU64,
    pub store_failures_refused: AtomicU64,
    pub store_failures_internal: AtomicU64,
    pub studies_completed: AtomicU64,
    pub previews_rendered: AtomicU64,
    pub previews_failed: AtomicU64,
    /// C-STORE handling latency (last data PDV in, response out), histogram buckets.
    pub store_latency: Histogram,
}

/// Fixed-bucket histogram in milliseconds; enough for a latency distribution.
#[derive(Debug)]
pub struct Histogram {
    buckets: [AtomicU64; BUCKETS_MS.len()],
    count: AtomicU64,
    sum_us: AtomicU64,
}

const BUCKETS_MS: [f64; 12] = [
    0.5, 1.0, 2.0, 5.0, 10.0, 20.0, 50.0, 100.0, 250.0, 500.0, 1000.0, 5000.0,
];

impl Default for Histogram {
    fn default() -> Self {
        Histogram {
            buckets: Default::default(),
            count: AtomicU64::new(0),
            sum_us: AtomicU64::new(0),
        }
    }
}

impl Histogram {
    pub fn observe(&self, d: std::time::Duration) {
        let ms = d.as_secs_f64() * 1000.0;
        for (i, b) in BUCKETS_MS.iter().enumerate() {
            if ms <= *b {
                self.buckets[i].fetch_add(1, Relaxed);
            }
        }
        self.count.fetch_add(1, Relaxed);
        self.sum_us.fetch_add(d.as_micros() as u64, Relaxed);
    }
}

impl Metrics {
    /// Prometheus text exposition. `gauges` are values computed at scrape
    /// time (queue depths read from the index).
    pub fn render(&self, gauges: &[(&str, &str, i64)]) -> String {
        let mut out = String::with_capacity(4096);
        let counters: [(&str, &str, &AtomicU64); 15] = [
            (
                "medrelay_previews_rendered_total",
                "Instances whose previews were rendered",
                &self.previews_rendered,
            ),
            (
                "medrelay_previews_failed_total",
                "Instances that got no preview (reason in the API)",
                &self.previews_failed,
            ),
            (
                "medrelay_dicom_associations_total",
                "Associations accepted",
                &self.associations_total,
            ),
            (
                "medrelay_dicom_associations_rejected_total",
                "Associations rejected",
                &self.associations_rejected,
            ),
            (
                "medrelay_dicom_associations_aborted_total",
                "Associations aborted",
                &self.associations_aborted,
            ),
            (
                "medrelay_dicom_echo_total",
                "C-ECHO requests answered",
                &self.echoes_total,
            ),
            (
                "medrelay_dicom_instances_stored_total",
                "New instances stored",
                &self.instances_stored,
            ),
            (
                "medrelay_dicom_instances_duplicate_total",
                "Identical resends",
                &self.instances_duplicate,
            ),
            (
                "medrelay_dicom_instances_new_version_total",
                "Same UID, new content",
                &self.instances_new_version,
            ),
            (
                "medrelay_dicom_received_bytes_total",
                "Dataset bytes received",
                &self.bytes_received,
            ),
            (
                "medrelay_studies_completed_total",
                "Studies that became complete",
                &self.studies_completed,
            ),
            (
                "medrelay_dicom_store_failures_resources_total",
                "C-STORE failed: out of resources",
                &self.store_failures_resources,
            ),
            (
                "medrelay_dicom_store_failures_invalid_total",
                "C-STORE failed: invalid dataset",
                &self.store_failures_invalid,
            ),
            (
                "medrelay_dicom_store_failures_refused_total",
                "C-STORE refused: SOP class/context",
                &self.store_failures_refused,
            ),
            (
                "medrelay_dicom_store_failures_internal_total",
                "C-STORE failed: internal error",
                &self.store_failures_internal,
            ),
        ];
        for (name, help, v) in counters {
            let _ = writeln!(
                out,
                "# HELP {name} {help}\n# TYPE {name} counter\n{name} {}",
                v.load(Relaxed)
            );
        }
        let name = "medrelay_dicom_associations_active";
        let _ = writeln!(
            out,
            "# HELP {name} Associations open now\n# TYPE {name} gauge\n{name} {}",
            self.associations_active.load(Relaxed)
        );
        for (name, help, v) in gauges {
            let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} gauge\n{name} {v}");
        }
        let h = &self.store_latency;
        let name = "medrelay_dicom_store_latency_seconds";
        let _ = writeln!(
            out,
            "# HELP {name} Time from last dataset byte to C-STORE-RSP\n# TYPE {name} histogram"
        );
        for (i, b) in BUCKETS_MS.iter().enumerate() {
            let _ = writeln!(
                out,
                "{name}_bucket{{le=\"{}\"}} {}",
                b / 1000.0,
                h.buckets[i].load(Relaxed)
            );
        }
        let count = h.count.load(Relaxed);
        let _ = writeln!(out, "{name}_bucket{{le=\"+Inf\"}} {count}");
        let _ = writeln!(out, "{name}_sum {}", h.sum_us.load(Relaxed) as f64 / 1e6);
        let _ = writeln!(out, "{name}_count {count}");
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_counters_gauges_and_cumulative_buckets() {
        let m = Metrics::default();
        m.instances_stored.fetch_add(3, Relaxed);
        m.store_latency.observe(std::time::Duration::from_micros(1500));
        let text = m.render(&[("medrelay_worklist_depth", "Studies waiting", 2)]);
        assert!(text.contains("medrelay_dicom_instances_stored_total 3\n"));
        assert!(text.contains("medrelay_worklist_depth 2\n"));
        assert!(text.contains("medrelay_dicom_store_latency_seconds_bucket{le=\"0.001\"} 0\n"));
        assert!(text.contains("medrelay_dicom_store_latency_seconds_bucket{le=\"0.002\"} 1\n"));
        assert!(text.contains("medrelay_dicom_store_latency_seconds_count 1\n"));
    }
}
