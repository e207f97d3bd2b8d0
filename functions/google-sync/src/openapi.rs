//! The google-sync function's operations for the OpenAPI document (`GET /openapi.json`),
//! declared next to [`crate::router`]; tests/tests/openapi.rs checks that the two agree.

use voyage_http::openapi::schema::*;
use voyage_http::openapi::Operation;

pub fn operations() -> Vec<Operation> {
    vec![
        Operation::post("/v1/google-sync/notifications", "google")
            .public()
            .summary("Google's push (`X-Goog-Channel-Id`, `X-Goog-Channel-Token`, `X-Goog-Resource-State`, `X-Goog-Message-Number`); the body is ignored")
            .answers(
                200,
                "What the push did",
                object(
                    &[(
                        "outcome",
                        one_of_strings(&["acknowledged", "queued", "coalesced", "duplicate"]),
                    )],
                    &["outcome"],
                ),
            )
            .answers(401, "Wrong channel token", error_ref())
            .answers(404, "Unknown channel", error_ref()),
        Operation::post("/v1/google-sync", "google")
            .internal()
            .summary("Sync one Google connection now (`company_id` and `connection_id`), or queue a sync of every one (`{}`)")
            .body(object(
                &[("company_id", identifier()), ("connection_id", identifier())],
                &[],
            ))
            .answers(
                200,
                "One connection synced: its status and the sync report",
                open_object(
                    &[
                        ("report", any_object()),
                        ("connection_id", string()),
                        ("status", string()),
                        ("last_error", nullable(string())),
                    ],
                    &["report", "connection_id", "status"],
                ),
            )
            .answers(
                202,
                "Every connection's sync queued",
                object(
                    &[("queued", integer_min(0)), ("failed", integer_min(0))],
                    &["queued", "failed"],
                ),
            )
            .answers(404, "No such connection", error_ref()),
    ]
}
