//! HTTP adapters of the calendar-provider ports in `voyage-core`.

pub mod google;
pub mod graph;

use std::sync::Arc;

use voyage_core::deps::Deps;

pub use google::{Backoff, GoogleHttp};
pub use graph::{GraphHttp, RetryBudget};

/// Adds the provider clients, configured from `deps.config`, to a function's dependencies.
pub fn attach(deps: Deps) -> Result<Deps, String> {
    let graph = GraphHttp::new(&deps.config)?;
    let google = GoogleHttp::new(&deps.config)?;
    Ok(deps
        .with_graph(Arc::new(graph))
        .with_google(Arc::new(google)))
}
