//! Pieces every simulator shares: fault injection, request counting, absolute links.

use std::time::Duration;

use axum::http::{HeaderMap, Method, StatusCode};
use base64::Engine;
use rand::RngCore;
use serde::{Deserialize, Serialize};

/// One injected fault: the next `count` requests whose method and path match answer
/// `status` (with `Retry-After` when given), or are answered after `latency_ms`. With
/// `lose_answer`, the request is served first (a write takes effect) and its answer is then
/// replaced by `status` (503 when not given): an answer lost after the write happened, as a
/// timeout or a dropped connection shows it to the caller.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Fault {
    #[serde(default)]
    pub method: Option<String>,
    #[serde(default)]
    pub path_contains: Option<String>,
    #[serde(default)]
    pub status: Option<u16>,
    #[serde(default)]
    pub retry_after: Option<u64>,
    #[serde(default)]
    pub latency_ms: Option<u64>,
    #[serde(default = "one")]
    pub count: u32,
    /// Matching requests to let through before the fault applies (a fault on the second
    /// page of a round: `after: 1`).
    #[serde(default)]
    pub after: u32,
    #[serde(default)]
    pub lose_answer: bool,
}

fn one() -> u32 {
    1
}

/// What an injected fault does to a request.
pub enum FaultAction {
    Fail {
        status: StatusCode,
        retry_after: Option<u64>,
    },
    Delay(Duration),
    /// Serve the request, then answer `status` instead.
    LoseAnswer {
        status: StatusCode,
    },
}

/// Takes the first matching fault (spending one of its uses).
pub fn take_fault(faults: &mut Vec<Fault>, method: &Method, path: &str) -> Option<FaultAction> {
    let idx = faults.iter().position(|f| {
        f.count > 0
            && f.method
                .as_deref()
                .is_none_or(|m| m.eq_ignore_ascii_case(method.as_str()))
            && f.path_contains.as_deref().is_none_or(|p| path.contains(p))
    })?;
    let fault = &mut faults[idx];
    if fault.after > 0 {
        fault.after -= 1;
        return None;
    }
    fault.count -= 1;
    let status = fault.status.and_then(|s| StatusCode::from_u16(s).ok());
    let action = match status {
        _ if fault.lose_answer => FaultAction::LoseAnswer {
            status: status.unwrap_or(StatusCode::SERVICE_UNAVAILABLE),
        },
        Some(status) => FaultAction::Fail {
            status,
            retry_after: fault.retry_after,
        },
        None => FaultAction::Delay(Duration::from_millis(fault.latency_ms.unwrap_or(0))),
    };
    if fault.count == 0 {
        faults.remove(idx);
    }
    Some(action)
}

/// A request the simulator served, for tests and benchmarks that count provider calls.
#[derive(Debug, Clone, Serialize)]
pub struct Served {
    pub method: String,
    pub path: String,
    pub status: u16,
}

/// A random URL-safe token of `bytes` random bytes.
pub fn random_token(bytes: usize) -> String {
    let mut buf = vec![0u8; bytes];
    rand::thread_rng().fill_bytes(&mut buf);
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(buf)
}

/// The absolute URL of the simulator's root as the caller reached it, so that links work
/// whether the simulator is served alone or nested under `/sim/graph`.
pub fn external_root(headers: &HeaderMap, original_path: &str, inner_path: &str) -> String {
    let host = headers
        .get("host")
        .and_then(|h| h.to_str().ok())
        .unwrap_or("localhost");
    let prefix = original_path
        .strip_suffix(inner_path)
        .unwrap_or("")
        .trim_end_matches('/');
    format!("http://{host}{prefix}")
}

/// Where a simulator keeps what outlives a restart of `voyage serve` (a JSON file in its data
/// directory), once [`Persistence::set`]; nothing until then (tests keep state in memory).
#[derive(Debug, Default)]
pub(crate) struct Persistence {
    path: std::sync::Mutex<Option<std::path::PathBuf>>,
}

impl Persistence {
    pub(crate) fn set(&self, path: std::path::PathBuf) {
        if let Ok(mut p) = self.path.lock() {
            *p = Some(path);
        }
    }

    /// Writes the bytes `snapshot` makes (under the simulator's state lock) through a
    /// temporary file and a rename, so a crash leaves the previous state or this one whole.
    /// Saves are taken one at a time (the path's lock), so an older snapshot never lands
    /// after a newer one. A failure is logged; the simulator keeps serving from memory.
    pub(crate) fn save(&self, snapshot: impl FnOnce() -> serde_json::Result<Vec<u8>>) {
        let Ok(guard) = self.path.lock() else {
            return;
        };
        let Some(path) = guard.as_ref() else {
            return;
        };
        let written = snapshot().map_err(std::io::Error::other).and_then(|bytes| {
            let tmp = path.with_extension("json.tmp");
            std::fs::write(&tmp, bytes)?;
            std::fs::rename(&tmp, path)
        });
        if let Err(e) = written {
            tracing::warn!(path = %path.display(), error = %e, "simulator state not saved");
        }
    }

    /// What an earlier run saved at `path`, if anything.
    pub(crate) fn load<T: serde::de::DeserializeOwned>(
        path: &std::path::Path,
    ) -> Result<Option<T>, String> {
        match std::fs::read(path) {
            Ok(bytes) => serde_json::from_slice(&bytes)
                .map(Some)
                .map_err(|e| {
                    format!(
                        "{}: not a simulator state this version reads ({e}); delete the file to start the simulators empty",
                        path.display()
                    )
                }),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(format!("cannot read {}: {e}", path.display())),
        }
    }
}

/// Whether a request to a simulator may change its state (anything but a read).
fn may_write(method: &Method) -> bool {
    !matches!(*method, Method::GET | Method::HEAD | Method::OPTIONS)
}

/// A simulator that keeps its state in a file ([`Persistence`]).
pub(crate) trait Saves: Clone + Send + Sync + 'static {
    /// Saves the kept state (nothing without a file).
    fn save(&self);
}

/// The middleware of both simulators: saves the state after a request that may have
/// changed it.
pub(crate) async fn persisting<S: Saves>(
    axum::extract::State(sim): axum::extract::State<S>,
    req: axum::extract::Request,
    next: axum::middleware::Next,
) -> axum::response::Response {
    let writes = may_write(req.method());
    let response = next.run(req).await;
    if writes {
        sim.save();
    }
    response
}
