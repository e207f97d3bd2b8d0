//! The exchange-inbound function's operations for the OpenAPI document (`GET /openapi.json`),
//! declared next to [`crate::router`]; tests/tests/openapi.rs checks that the two agree.

use serde_json::json;
use voyage_http::openapi::schema::*;
use voyage_http::openapi::Operation;

fn callback(path: &'static str, summary: &'static str) -> Operation {
    Operation::post(path, "exchange")
        .public()
        .summary(summary)
        .query(
            "validationToken",
            "Graph's validation handshake: answered with the decoded token as text/plain",
            string(),
        )
        .answers_as(200, "The handshake's token", "text/plain", string())
        .answers(
            202,
            "Genuine notifications queued (one message per subscription), the rest dropped",
            object(
                &[("queued", integer_min(0)), ("dropped", integer_min(0))],
                &["queued", "dropped"],
            ),
        )
        .answers(
            400,
            "Not a Graph notification collection",
            json!({"$ref": "#/components/schemas/Error"}),
        )
}

pub fn operations() -> Vec<Operation> {
    vec![
        callback(
            "/v1/exchange/notifications",
            "Microsoft Graph change notifications (`clientState` checked in constant time)",
        ),
        callback(
            "/v1/exchange/lifecycle",
            "Microsoft Graph lifecycle notifications (reauthorization, removal, missed)",
        ),
    ]
}
