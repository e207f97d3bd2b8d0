//! The exchange-outbound function's operations for the OpenAPI document
//! (`GET /openapi.json`), declared next to [`crate::router`]; tests/tests/openapi.rs checks
//! that the two agree.

use serde_json::json;
use voyage_http::openapi::schema::*;
use voyage_http::openapi::Operation;

pub fn operations() -> Vec<Operation> {
    let session = object(
        &[
            ("id", identifier()),
            ("company_id", identifier()),
            ("staff_id", identifier()),
            ("start", date_time()),
            ("end", date_time()),
            ("time_zone", string()),
            ("title", string()),
            ("location", nullable(string())),
            (
                "client",
                nullable(object(
                    &[("name", string()), ("email", nullable(string()))],
                    &["name"],
                )),
            ),
            (
                "version",
                json!({"type": ["integer", "null"], "minimum": 1,
                       "description": "Increases with each platform change of the session"}),
            ),
        ],
        &[
            "id",
            "company_id",
            "staff_id",
            "start",
            "end",
            "time_zone",
            "title",
        ],
    );
    let change = object(
        &[
            (
                "action",
                one_of_strings(&["created", "updated", "cancelled"]),
            ),
            ("session", session.clone()),
        ],
        &["action", "session"],
    );
    let outcomes = [
        "created",
        "updated",
        "deleted",
        "skipped",
        "no_event",
        "stale",
        "superseded",
        "failed",
    ];
    let changes = Operation::post("/v1/sessions/changes", "calendars")
        .internal()
        .summary("A platform change of a session, written to every calendar of its staff member")
        .body(change)
        .answers(
            200,
            "One outcome per calendar connection of the staff member",
            object(
                &[
                    ("session_id", string()),
                    (
                        "session_status",
                        one_of_strings(&["confirmed", "pending_cancellation", "cancelled"]),
                    ),
                    (
                        "calendars",
                        json!({"type": "array", "items": object(
                            &[
                                ("connection_id", string()),
                                ("provider", one_of_strings(&["exchange", "google"])),
                                ("outcome", one_of_strings(&outcomes)),
                                ("event_id", string()),
                                ("reason", string()),
                            ],
                            &["connection_id", "provider", "outcome"],
                        )}),
                    ),
                ],
                &["session_id", "session_status", "calendars"],
            ),
        );
    vec![
        changes,
        Operation::post("/v1/exchange/outbound", "exchange")
            .internal()
            .summary(
                "A platform change of a session, written to the staff member's Exchange calendar",
            )
            .body(object(
                &[
                    (
                        "action",
                        one_of_strings(&["created", "updated", "cancelled"]),
                    ),
                    ("session", session),
                ],
                &["action", "session"],
            ))
            .answers(
                200,
                "What was done",
                object(
                    &[
                        ("session_id", string()),
                        (
                            "action",
                            one_of_strings(&["created", "updated", "cancelled"]),
                        ),
                        (
                            "outcome",
                            one_of_strings(&[
                                "created",
                                "updated",
                                "deleted",
                                "skipped",
                                "no_event",
                                "stale",
                                "superseded",
                            ]),
                        ),
                        (
                            "session_status",
                            one_of_strings(&["confirmed", "pending_cancellation", "cancelled"]),
                        ),
                        ("connection_id", string()),
                        ("event_id", string()),
                        ("reason", string()),
                    ],
                    &["session_id", "action", "outcome", "session_status"],
                ),
            )
            .answers(
                404,
                "The staff member has no Exchange connection",
                error_ref(),
            )
            .answers(
                409,
                "The company has stored no Exchange credentials",
                error_ref(),
            )
            .answers(
                502,
                "Microsoft refused the credentials or the request",
                error_ref(),
            ),
    ]
}
