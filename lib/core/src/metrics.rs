//! In-process metrics: counters and millisecond histograms in one global registry, written
//! out two ways.
//!
//! - On Lambda, [`flush_emf`] prints what was recorded since the last flush as CloudWatch
//!   Embedded Metric Format log lines on stdout, once per invocation (the function edges in
//!   `voyage-http` call it). CloudWatch Logs turns them into metrics: no API call, no agent.
//! - Locally, [`prometheus_text`] renders the running totals in the Prometheus text format
//!   (`voyage serve` answers it at `GET /metrics`).
//!
//! Names are `snake_case` and dimensions are few, low-cardinality `(key, value)` pairs (an
//! outcome, an origin, a provider), never ids: each distinct set of values is a CloudWatch
//! metric of its own. EMF gives each dimension one value per log line, so a flush writes one
//! line per distinct set of dimension values (one or two for a typical invocation).
//!
//! The metrics recorded (README, "Metrics"):
//!
//! | name | kind | dimensions |
//! |---|---|---|
//! | `webhook_attempts` | counter | `outcome`: `delivered`, `retrying`, `failed` |
//! | `webhook_attempt_ms` | histogram | `outcome` |
//! | `webhook_deliveries` | counter | `outcome`: `succeeded`, `failed` (a delivery's end) |
//! | `exchange_delta_rounds` | counter | `outcome`: `ok`, `resynced`, `skipped`, `error` |
//! | `google_syncs` | counter | `outcome`: `ok`, `full`, `skipped`, `coalesced`, `error` |
//! | `sessions_changed` | counter | `origin`, `command` |
//! | `notification_to_session_ms` | histogram | `origin` |
//! | `provider_throttles` | counter | `provider`: `graph`, `google`; `status` |

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::sync::{Mutex, MutexGuard, OnceLock};

use chrono::{DateTime, Utc};
use serde_json::{json, Map, Value};

/// The CloudWatch namespace of every metric.
pub const NAMESPACE: &str = "Voyage";

/// Upper bounds (ms) of the Prometheus histogram buckets; `+Inf` is implied.
pub const BUCKETS_MS: [f64; 12] = [
    10.0, 25.0, 50.0, 100.0, 250.0, 500.0, 1_000.0, 2_500.0, 5_000.0, 10_000.0, 60_000.0, 300_000.0,
];

/// EMF takes at most 100 values per metric in one line; later samples before the next flush
/// are dropped from the EMF output (they still count in the local totals).
const MAX_PENDING_VALUES: usize = 100;

type Dimensions = Vec<(String, String)>;

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum Kind {
    Counter,
    Histogram,
}

#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
struct Key {
    name: String,
    dimensions: Dimensions,
}

#[derive(Debug, Default, Clone)]
struct Totals {
    sum: f64,
    count: u64,
    buckets: [u64; BUCKETS_MS.len()],
}

#[derive(Debug, Default)]
struct Registry {
    kinds: BTreeMap<String, Kind>,
    totals: BTreeMap<Key, Totals>,
    /// Since the last EMF flush: a counter's sum, a histogram's samples.
    pending_counts: BTreeMap<Key, f64>,
    pending_samples: BTreeMap<Key, Vec<f64>>,
}

fn registry() -> MutexGuard<'static, Registry> {
    static REGISTRY: OnceLock<Mutex<Registry>> = OnceLock::new();
    REGISTRY
        .get_or_init(|| Mutex::new(Registry::default()))
        .lock()
        // A panic while holding the lock leaves plain numbers behind: still usable.
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

fn key(name: &str, dimensions: &[(&str, &str)]) -> Key {
    let mut dimensions: Dimensions = dimensions
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
    dimensions.sort();
    dimensions.dedup_by(|a, b| a.0 == b.0);
    Key {
        name: name.to_string(),
        dimensions,
    }
}

/// Adds `n` to the counter `name` with these dimensions.
pub fn count(name: &str, dimensions: &[(&str, &str)], n: u64) {
    let key = key(name, dimensions);
    let mut r = registry();
    r.kinds.entry(key.name.clone()).or_insert(Kind::Counter);
    let totals = r.totals.entry(key.clone()).or_default();
    totals.sum += n as f64;
    totals.count += n;
    *r.pending_counts.entry(key).or_default() += n as f64;
}

/// Records one duration in milliseconds in the histogram `name` with these dimensions.
pub fn observe_ms(name: &str, dimensions: &[(&str, &str)], ms: f64) {
    let ms = if ms.is_finite() { ms.max(0.0) } else { 0.0 };
    let key = key(name, dimensions);
    let mut r = registry();
    r.kinds.entry(key.name.clone()).or_insert(Kind::Histogram);
    let totals = r.totals.entry(key.clone()).or_default();
    totals.sum += ms;
    totals.count += 1;
    for (i, bound) in BUCKETS_MS.iter().enumerate() {
        if ms <= *bound {
            totals.buckets[i] += 1;
        }
    }
    let samples = r.pending_samples.entry(key).or_default();
    if samples.len() < MAX_PENDING_VALUES {
        samples.push(ms);
    }
}

/// How often `name` was recorded, over every dimension set: a counter's running total, a
/// histogram's number of samples (for tests and status).
pub fn recorded(name: &str) -> u64 {
    registry()
        .totals
        .iter()
        .filter(|(k, _)| k.name == name)
        .map(|(_, t)| t.count)
        .sum()
}

/// The EMF lines for what was recorded since the last call, which it forgets: one JSON object
/// per distinct set of dimension values, each naming its metrics in `_aws.CloudWatchMetrics`
/// and carrying each metric's value (a sum, or an array of samples) and each dimension as a
/// top-level key, plus `properties` (for example the function name) as extra keys.
pub fn take_emf(now: DateTime<Utc>, properties: &[(&str, &str)]) -> Vec<Value> {
    let (counts, samples) = {
        let mut r = registry();
        (
            std::mem::take(&mut r.pending_counts),
            std::mem::take(&mut r.pending_samples),
        )
    };
    // Group by dimension set: (metric name, unit, value) per set.
    let mut groups: BTreeMap<Dimensions, Vec<(String, &'static str, Value)>> = BTreeMap::new();
    for (key, sum) in counts {
        groups
            .entry(key.dimensions)
            .or_default()
            .push((key.name, "Count", json!(sum)));
    }
    for (key, values) in samples {
        let value = match values.as_slice() {
            [one] => json!(one),
            _ => json!(values),
        };
        groups
            .entry(key.dimensions)
            .or_default()
            .push((key.name, "Milliseconds", value));
    }
    groups
        .into_iter()
        .map(|(dimensions, metrics)| {
            let mut line = Map::new();
            for (k, v) in properties {
                line.insert(k.to_string(), json!(v));
            }
            for (k, v) in &dimensions {
                line.insert(k.clone(), json!(v));
            }
            let definitions: Vec<Value> = metrics
                .iter()
                .map(|(name, unit, _)| json!({"Name": name, "Unit": unit}))
                .collect();
            for (name, _, value) in metrics {
                line.insert(name, value);
            }
            let keys: Vec<&str> = dimensions.iter().map(|(k, _)| k.as_str()).collect();
            line.insert(
                "_aws".into(),
                json!({
                    "Timestamp": now.timestamp_millis(),
                    "CloudWatchMetrics": [{
                        "Namespace": NAMESPACE,
                        "Dimensions": [keys],
                        "Metrics": definitions,
                    }],
                }),
            );
            Value::Object(line)
        })
        .collect()
}

/// Prints [`take_emf`]'s lines on stdout (Lambda sends stdout to CloudWatch Logs, which
/// extracts the metrics), with the function's name (`AWS_LAMBDA_FUNCTION_NAME`) as a property.
/// Nothing is printed when nothing was recorded.
pub fn flush_emf() {
    let function = std::env::var("AWS_LAMBDA_FUNCTION_NAME").unwrap_or_default();
    let lines = take_emf(Utc::now(), &[("function", function.as_str())]);
    if lines.is_empty() {
        return;
    }
    use std::io::Write as _;
    let stdout = std::io::stdout();
    let mut out = stdout.lock();
    for line in lines {
        // A closed stdout loses metrics, never the invocation.
        let _ = writeln!(out, "{line}");
    }
    let _ = out.flush();
}

fn sanitize(name: &str) -> String {
    name.chars()
        .map(|c| if c.is_ascii_alphanumeric() { c } else { '_' })
        .collect()
}

fn prometheus_name(name: &str) -> String {
    format!("voyage_{}", sanitize(name))
}

fn escape_label(value: &str) -> String {
    value
        .replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

fn labels(dimensions: &Dimensions, extra: Option<(&str, String)>) -> String {
    let mut parts: Vec<String> = dimensions
        .iter()
        .map(|(k, v)| format!("{}=\"{}\"", sanitize(k), escape_label(v)))
        .collect();
    if let Some((k, v)) = extra {
        parts.push(format!("{k}=\"{v}\""));
    }
    if parts.is_empty() {
        String::new()
    } else {
        format!("{{{}}}", parts.join(","))
    }
}

/// The running totals in the Prometheus text exposition format (version 0.0.4): counters as
/// `voyage_<name>_total`, histograms as `voyage_<name>_bucket{le=...}`, `_sum` and `_count`.
pub fn prometheus_text() -> String {
    let (kinds, totals) = {
        let r = registry();
        (r.kinds.clone(), r.totals.clone())
    };
    let mut out = String::new();
    for (name, kind) in kinds {
        let base = prometheus_name(&name);
        let series = totals.iter().filter(|(k, _)| k.name == name);
        match kind {
            Kind::Counter => {
                let _ = writeln!(out, "# TYPE {base}_total counter");
                for (k, t) in series {
                    let _ = writeln!(
                        out,
                        "{base}_total{} {}",
                        labels(&k.dimensions, None),
                        t.count
                    );
                }
            }
            Kind::Histogram => {
                let _ = writeln!(out, "# TYPE {base} histogram");
                for (k, t) in series {
                    for (i, bound) in BUCKETS_MS.iter().enumerate() {
                        let le = Some(("le", bound.to_string()));
                        let _ = writeln!(
                            out,
                            "{base}_bucket{} {}",
                            labels(&k.dimensions, le),
                            t.buckets[i]
                        );
                    }
                    let inf = Some(("le", "+Inf".to_string()));
                    let _ = writeln!(
                        out,
                        "{base}_bucket{} {}",
                        labels(&k.dimensions, inf),
                        t.count
                    );
                    let _ = writeln!(out, "{base}_sum{} {}", labels(&k.dimensions, None), t.sum);
                    let _ = writeln!(
                        out,
                        "{base}_count{} {}",
                        labels(&k.dimensions, None),
                        t.count
                    );
                }
            }
        }
    }
    out
}

tokio::task_local! {
    /// When the notification that started the current work arrived (set by the Exchange
    /// inbound worker around a delta round), so a booking command can record the
    /// notification-to-session latency.
    static NOTIFIED_AT: DateTime<Utc>;
}

/// Runs `work` with `received_at` as the arrival time of the notification it handles.
pub async fn with_notification_time<F: std::future::Future>(
    received_at: DateTime<Utc>,
    work: F,
) -> F::Output {
    NOTIFIED_AT.scope(received_at, work).await
}

/// The arrival time of the notification the current work handles, if any.
pub fn notification_time() -> Option<DateTime<Utc>> {
    NOTIFIED_AT.try_with(|t| *t).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    // The registry is global and tests run in parallel: each test uses metric names of its own.

    #[test]
    fn an_emf_line_names_every_metric_and_dimension_it_carries() {
        count("test_emf_attempts", &[("outcome", "delivered")], 2);
        count("test_emf_attempts", &[("outcome", "delivered")], 1);
        count("test_emf_attempts", &[("outcome", "failed")], 1);
        observe_ms("test_emf_latency_ms", &[("outcome", "delivered")], 12.5);
        observe_ms("test_emf_latency_ms", &[("outcome", "delivered")], 40.0);
        let now = Utc::now();
        let lines: Vec<Value> = take_emf(now, &[("function", "webhooks-worker")])
            .into_iter()
            .filter(|l| l.get("test_emf_attempts").is_some())
            .collect();
        assert_eq!(lines.len(), 2, "one line per outcome: {lines:?}");
        for line in &lines {
            // Valid EMF: every metric named in a directive is a top-level number or array of
            // numbers, every dimension named is a top-level string.
            let aws = &line["_aws"];
            assert_eq!(aws["Timestamp"], json!(now.timestamp_millis()));
            let directives = aws["CloudWatchMetrics"].as_array().unwrap();
            assert_eq!(directives.len(), 1);
            let d = &directives[0];
            assert_eq!(d["Namespace"], "Voyage");
            for set in d["Dimensions"].as_array().unwrap() {
                for dim in set.as_array().unwrap() {
                    assert!(line[dim.as_str().unwrap()].is_string(), "{dim} in {line}");
                }
            }
            assert!(!d["Metrics"].as_array().unwrap().is_empty());
            for m in d["Metrics"].as_array().unwrap() {
                let name = m["Name"].as_str().unwrap();
                let value = &line[name];
                assert!(
                    value.is_number()
                        || value
                            .as_array()
                            .is_some_and(|a| a.iter().all(|v| v.is_number())),
                    "{name} in {line}"
                );
                assert!(["Count", "Milliseconds"].contains(&m["Unit"].as_str().unwrap()));
            }
            assert_eq!(line["function"], "webhooks-worker");
        }
        let delivered = lines.iter().find(|l| l["outcome"] == "delivered").unwrap();
        assert_eq!(delivered["test_emf_attempts"], json!(3.0));
        assert_eq!(delivered["test_emf_latency_ms"], json!([12.5, 40.0]));
        assert_eq!(
            delivered["_aws"]["CloudWatchMetrics"][0]["Dimensions"],
            json!([["outcome"]])
        );
        // Flushed: the next line starts from nothing, while the local totals keep counting.
        assert!(take_emf(now, &[])
            .iter()
            .all(|l| l.get("test_emf_attempts").is_none()));
        assert_eq!(recorded("test_emf_attempts"), 4);
    }

    #[test]
    fn prometheus_text_shows_counters_and_histograms() {
        count("test_prom_rounds", &[("outcome", "ok")], 3);
        observe_ms("test_prom_wait_ms", &[], 30.0);
        let text = prometheus_text();
        assert!(
            text.contains("# TYPE voyage_test_prom_rounds_total counter"),
            "{text}"
        );
        assert!(
            text.contains("voyage_test_prom_rounds_total{outcome=\"ok\"} 3"),
            "{text}"
        );
        assert!(
            text.contains("voyage_test_prom_wait_ms_bucket{le=\"25\"} 0"),
            "{text}"
        );
        assert!(
            text.contains("voyage_test_prom_wait_ms_bucket{le=\"50\"} 1"),
            "{text}"
        );
        assert!(
            text.contains("voyage_test_prom_wait_ms_bucket{le=\"+Inf\"} 1"),
            "{text}"
        );
        assert!(text.contains("voyage_test_prom_wait_ms_count 1"), "{text}");
    }

    #[tokio::test]
    async fn the_notification_time_is_known_only_inside_its_scope() {
        assert_eq!(notification_time(), None);
        let at = Utc::now();
        let seen = with_notification_time(at, async { notification_time() }).await;
        assert_eq!(seen, Some(at));
    }
}
