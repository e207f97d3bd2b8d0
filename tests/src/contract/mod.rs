//! The contract suites: each function states one behaviour every adapter of a port must
//! show, and `tests/tests/*_contract.rs` runs it against each adapter.

pub mod bus;
pub mod queue;
pub mod store;
pub mod table;

/// Declares one `#[tokio::test]` per contract case for an adapter:
/// `contract_tests!(module, fixture_expr, path::to::suite, [case, ...]);`
#[macro_export]
macro_rules! contract_tests {
    ($adapter:ident, $fixture:expr, $suite:path, [$($case:ident),* $(,)?]) => {
        mod $adapter {
            #[allow(unused_imports)]
            use super::*;
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $case() {
                    use $suite as suite;
                    let fixture = $fixture;
                    suite::$case(&fixture).await;
                }
            )*
        }
    };
}
