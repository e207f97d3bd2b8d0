//! The webhooks function's operations for the OpenAPI document (`GET /openapi.json`),
//! declared next to [`crate::api::router`]; tests/tests/openapi.rs checks that the two agree.

use serde_json::{json, Value};
use voyage_http::openapi::schema::*;
use voyage_http::openapi::Operation;

fn headers() -> Value {
    json!({"type": "object", "additionalProperties": {"type": "string"},
           "description": "Static headers sent with every delivery (never the signature, id or timestamp headers)"})
}

fn rate_limit() -> Value {
    json!({"type": "integer", "minimum": 1, "maximum": 1000,
           "description": "Deliveries per second to this endpoint at most; excess waits"})
}

fn endpoint_view(with_secret: bool) -> Value {
    let mut props = vec![
        ("id", string()),
        ("url", string()),
        ("events", array(string())),
        ("description", nullable(string())),
        ("status", one_of_strings(&["active", "disabled"])),
        ("disabled_reason", nullable(string())),
        ("retry_schedule", nullable(string())),
        ("headers", headers()),
        ("rate_limit", nullable(rate_limit())),
        ("created_at", date_time()),
        ("updated_at", date_time()),
    ];
    let mut required = vec!["id", "url", "events", "status", "created_at", "updated_at"];
    if with_secret {
        props.push(("secret", string()));
        required.push("secret");
    }
    object(&props, &required)
}

fn delivery_status() -> Value {
    one_of_strings(&["pending", "succeeded", "failed"])
}

fn delivery_view(detail: bool) -> Value {
    let mut props = vec![
        ("id", string()),
        ("endpoint_id", string()),
        ("event_id", string()),
        ("event_type", string()),
        ("status", delivery_status()),
        ("attempt_count", integer_min(0)),
        ("last_status_code", nullable(integer())),
        ("last_error_class", nullable(string())),
        ("next_attempt_at", nullable(date_time())),
        ("redelivery_of", nullable(string())),
        ("created_at", date_time()),
    ];
    if detail {
        props.push(("payload", any_object()));
        props.push((
            "attempts",
            array(object(
                &[
                    ("delivery_id", string()),
                    ("number", integer_min(1)),
                    ("at", date_time()),
                    ("status_code", nullable(integer())),
                    ("duration_ms", integer_min(0)),
                    ("error_class", nullable(string())),
                    ("response_body", nullable(string())),
                    ("next_retry_at", nullable(date_time())),
                ],
                &["delivery_id", "number", "at", "duration_ms"],
            )),
        ));
    }
    object(
        &props,
        &[
            "id",
            "endpoint_id",
            "event_id",
            "event_type",
            "status",
            "attempt_count",
            "created_at",
        ],
    )
}

fn dispatched() -> Value {
    object(
        &[
            ("event_id", string()),
            (
                "deliveries",
                array(object(
                    &[("id", string()), ("endpoint_id", string())],
                    &["id", "endpoint_id"],
                )),
            ),
        ],
        &["event_id", "deliveries"],
    )
}

pub fn operations() -> Vec<Operation> {
    let events = json!({"type": "array", "minItems": 1, "maxItems": 100, "items": {"type": "string"},
                        "description": "Event types, `prefix.*` or `*`"});
    vec![
        Operation::post("/v1/webhooks", "webhooks")
            .summary("Register an endpoint; the secret is shown only here and on rotation")
            .body(object(
                &[
                    ("url", string()),
                    ("events", events.clone()),
                    // An optional field given `null` is left out (its default).
                    ("description", nullable(text(500))),
                    ("secret", nullable(string())),
                    ("retry_schedule", nullable(string())),
                    ("headers", nullable(headers())),
                    ("rate_limit", nullable(rate_limit())),
                ],
                &["url", "events"],
            ))
            .answers(201, "The endpoint, with its `secret`", endpoint_view(true))
            .links_to(
                201,
                &[
                    ("GET", "/v1/webhooks/{id}"),
                    ("PATCH", "/v1/webhooks/{id}"),
                    ("DELETE", "/v1/webhooks/{id}"),
                    ("POST", "/v1/webhooks/{id}/rotate-secret"),
                    ("POST", "/v1/webhooks/{id}/test"),
                    ("GET", "/v1/webhooks/{id}/deliveries"),
                    ("POST", "/v1/webhooks/{id}/recover"),
                ],
                "id",
                "$response.body#/id",
            ),
        Operation::get("/v1/webhooks", "webhooks")
            .summary("The company's endpoints, paged")
            .paged()
            .answers(200, "A page", page(endpoint_view(false))),
        Operation::get("/v1/webhooks/event-types", "webhooks")
            .summary("Every event type with a description and the JSON Schema of its payload")
            .answers(
                200,
                "The catalogue",
                list(object(
                    &[
                        ("type", string()),
                        ("description", string()),
                        ("schema", any_object()),
                    ],
                    &["type", "description", "schema"],
                )),
            ),
        Operation::get("/v1/webhooks/{id}", "webhooks")
            .summary("One endpoint")
            .answers(200, "The endpoint", endpoint_view(false))
            .answers(404, "No such endpoint", error_ref()),
        Operation::patch("/v1/webhooks/{id}", "webhooks")
            .summary("Change an endpoint (`status` `active` re-enables it)")
            .body(object(
                &[
                    ("url", string()),
                    ("events", events),
                    ("description", nullable(text(500))),
                    ("status", one_of_strings(&["active", "disabled"])),
                    ("retry_schedule", nullable(string())),
                    ("headers", headers()),
                    ("rate_limit", nullable(rate_limit())),
                ],
                &[],
            ))
            .answers(200, "The endpoint", endpoint_view(false))
            .answers(404, "No such endpoint", error_ref()),
        Operation::delete("/v1/webhooks/{id}", "webhooks")
            .summary("Delete an endpoint")
            .empty(204, "Deleted")
            .answers(404, "No such endpoint", error_ref()),
        Operation::post("/v1/webhooks/{id}/rotate-secret", "webhooks")
            .summary("A new secret; the old one keeps signing for 24 h")
            .answers(200, "The endpoint, with its new `secret`", endpoint_view(true))
            .answers(404, "No such endpoint", error_ref()),
        Operation::post("/v1/webhooks/{id}/test", "webhooks")
            .summary("Deliver a `webhook.test` event to this endpoint")
            .answers(202, "Dispatched", dispatched())
            .links_to(
                202,
                &[
                    ("GET", "/v1/webhooks/deliveries/{delivery_id}"),
                    ("POST", "/v1/webhooks/deliveries/{delivery_id}/redeliver"),
                ],
                "delivery_id",
                "$response.body#/deliveries/0/id",
            )
            .answers(404, "No such endpoint", error_ref()),
        Operation::get("/v1/webhooks/{id}/deliveries", "webhooks")
            .summary("The endpoint's deliveries, newest first")
            .query(
                "status",
                "Only deliveries in this status",
                one_of_strings(&["pending", "succeeded", "failed"]),
            )
            .paged()
            .answers(200, "A page", page(delivery_view(false)))
            .answers(404, "No such endpoint", error_ref()),
        Operation::post("/v1/webhooks/{id}/recover", "webhooks")
            .summary("Re-send every delivery of the endpoint that failed in [since, until) as new deliveries")
            .body(object(
                &[("since", date_time()), ("until", date_time())],
                &["since"],
            ))
            .answers(
                202,
                "How many were re-sent",
                object(
                    &[
                        ("count", integer_min(0)),
                        ("since", date_time()),
                        ("until", date_time()),
                        ("truncated", boolean()),
                        ("next_until", date_time()),
                    ],
                    &["count"],
                ),
            )
            .answers(404, "No such endpoint", error_ref()),
        Operation::get("/v1/webhooks/deliveries/{delivery_id}", "webhooks")
            .summary("One delivery with every attempt and its payload")
            .answers(200, "The delivery", delivery_view(true))
            .answers(404, "No such delivery", error_ref()),
        Operation::post("/v1/webhooks/deliveries/{delivery_id}/redeliver", "webhooks")
            .summary("Send the event again as a new delivery")
            .answers(202, "The new delivery", delivery_view(false))
            .answers(404, "No such delivery", error_ref()),
        Operation::post("/v1/webhooks/dispatch", "webhooks")
            .internal()
            .summary("The platform dispatches an event to the company's subscribed endpoints (`session.*` payloads name `session_id` and get a `sequence`)")
            .body(object(
                &[
                    ("company_id", identifier()),
                    ("event", string()),
                    ("payload", any_object()),
                    ("idempotency_key", json!({"type": "string", "minLength": 1, "maxLength": 255})),
                ],
                &["company_id", "event", "payload"],
            ))
            .answers(202, "Dispatched: one delivery per matching active endpoint", dispatched())
            .answers(409, "The same idempotency key is still being dispatched", error_ref()),
    ]
}
