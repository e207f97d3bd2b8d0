//! The gateway's operations for the OpenAPI document (`GET /openapi.json`), declared next to
//! [`crate::api::router`] and [`crate::settings`]; tests/tests/openapi.rs checks that the two
//! agree.

use serde_json::Value;
use voyage_http::openapi::schema::*;
use voyage_http::openapi::Operation;

fn key_view(with_secret: bool) -> Value {
    let mut props = vec![
        ("id", string()),
        ("company_id", string()),
        ("internal", boolean()),
        ("description", nullable(string())),
        ("created_at", date_time()),
        ("revoked_at", nullable(date_time())),
    ];
    let mut required = vec![
        "id",
        "company_id",
        "internal",
        "description",
        "created_at",
        "revoked_at",
    ];
    if with_secret {
        props.push(("key", string()));
        required.push("key");
    }
    object(&props, &required)
}

fn provider() -> Value {
    one_of_strings(&["google", "exchange"])
}

fn connection_view() -> Value {
    object(
        &[
            ("id", string()),
            ("provider", provider()),
            ("staff_id", string()),
            ("staff_email", string()),
            ("calendar_id", nullable(string())),
            (
                "status",
                one_of_strings(&["pending", "active", "error", "disabled"]),
            ),
            ("last_sync_at", nullable(date_time())),
            ("last_error", nullable(string())),
            ("channel_id", nullable(string())),
            ("channel_expires_at", nullable(date_time())),
            ("created_at", date_time()),
            ("updated_at", date_time()),
        ],
        &[
            "id",
            "provider",
            "staff_id",
            "staff_email",
            "calendar_id",
            "status",
            "last_sync_at",
            "last_error",
            "channel_id",
            "channel_expires_at",
            "created_at",
            "updated_at",
        ],
    )
}

/// What a credentials route shows: the provider, its non-secret identity fields, the time.
fn credentials_view() -> Value {
    open_object(
        &[("provider", provider()), ("updated_at", date_time())],
        &["provider", "updated_at"],
    )
}

fn session_view() -> Value {
    object(
        &[
            ("id", string()),
            ("staff_id", string()),
            (
                "status",
                one_of_strings(&["confirmed", "pending_cancellation", "cancelled"]),
            ),
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
            ("declined", boolean()),
            ("cancels_at", nullable(date_time())),
            (
                "history",
                array(object(
                    &[
                        ("at", date_time()),
                        ("command", string()),
                        ("origin", string()),
                        ("detail", nullable(string())),
                    ],
                    &["at", "command", "origin"],
                )),
            ),
            ("updated_at", date_time()),
        ],
        &[
            "id",
            "staff_id",
            "status",
            "start",
            "end",
            "time_zone",
            "title",
            "declined",
            "history",
            "updated_at",
        ],
    )
}

fn availability() -> Value {
    let busyness = one_of_strings(&["busy", "free"]);
    object(
        &[("tentative", busyness.clone()), ("out_of_office", busyness)],
        &[],
    )
}

fn availability_view() -> Value {
    let mut v = availability();
    v["required"] = serde_json::json!(["tentative", "out_of_office"]);
    v
}

pub fn operations() -> Vec<Operation> {
    vec![
        Operation::get("/v1/me", "keys")
            .summary("The calling key's company and scope")
            .answers(
                200,
                "The caller",
                object(
                    &[
                        ("company_id", string()),
                        ("key_id", string()),
                        ("internal", boolean()),
                    ],
                    &["company_id", "key_id", "internal"],
                ),
            ),
        Operation::post("/v1/keys", "keys")
            .summary("A new key for the caller's company, shown once (only an internal key can create an internal key)")
            .body(object(
                &[("description", text(200)), ("internal", boolean())],
                &[],
            ))
            .answers(201, "The key, with its secret `key` (shown only here)", key_view(true))
            .links_to(201, &[("DELETE", "/v1/keys/{id}")], "id", "$response.body#/id"),
        Operation::get("/v1/keys", "keys")
            .summary("The company's keys (never the key itself)")
            .answers(200, "Every key", list(key_view(false))),
        Operation::delete("/v1/keys/{id}", "keys")
            .summary("Revoke a key")
            .empty(204, "Revoked")
            .answers(404, "No such key", error_ref()),
        Operation::post("/v1/connections", "connections")
            .summary("A calendar connection (one per staff member and provider); Exchange subscribes at once")
            .body(object(
                &[
                    ("provider", provider()),
                    ("staff_id", identifier()),
                    ("staff_email", string()),
                    ("calendar_id", text(512)),
                ],
                &["provider", "staff_id", "staff_email"],
            ))
            .answers(201, "The connection (`error` with `last_error` when the subscription failed)", connection_view())
            .links_to(
                201,
                &[("GET", "/v1/connections/{id}"), ("DELETE", "/v1/connections/{id}")],
                "id",
                "$response.body#/id",
            )
            .answers(409, "The staff member has a connection of this provider", error_ref()),
        Operation::get("/v1/connections", "connections")
            .summary("The company's connections, paged")
            .paged()
            .answers(200, "A page", page(connection_view())),
        Operation::get("/v1/connections/{id}", "connections")
            .summary("One connection")
            .answers(200, "The connection", connection_view())
            .answers(404, "No such connection", error_ref()),
        Operation::delete("/v1/connections/{id}", "connections")
            .summary("Delete a connection, its subscription or channel, overrides, mappings and cursor")
            .empty(204, "Deleted")
            .answers(404, "No such connection", error_ref()),
        Operation::put("/v1/credentials/exchange", "credentials")
            .summary("The company's Entra ID app registration (write-only secret)")
            .body(object(
                &[
                    ("tenant_id", identifier()),
                    ("client_id", identifier()),
                    ("client_secret", string()),
                ],
                &["tenant_id", "client_id", "client_secret"],
            ))
            .answers(200, "Stored (the ids, never the secret)", credentials_view()),
        Operation::get("/v1/credentials/exchange", "credentials")
            .summary("The stored Exchange credentials' ids")
            .answers(200, "The ids", credentials_view())
            .answers(404, "None stored", error_ref()),
        Operation::put("/v1/credentials/google", "credentials")
            .summary("The company's Google service-account key file (other fields ignored)")
            .body(open_object(
                &[
                    ("client_email", string()),
                    ("private_key", string()),
                    ("token_uri", string()),
                ],
                &["client_email", "private_key", "token_uri"],
            ))
            .answers(200, "Stored (`client_email`, `token_uri`, never the key)", credentials_view()),
        Operation::get("/v1/credentials/google", "credentials")
            .summary("The stored Google service account")
            .answers(200, "The account", credentials_view())
            .answers(404, "None stored", error_ref()),
        Operation::get("/v1/sessions/{id}", "sessions")
            .summary("The session mirror, with its history")
            .answers(200, "The session", session_view())
            .answers(404, "No such session", error_ref()),
        Operation::get("/v1/staff/{staff_id}/overrides", "availability")
            .summary("Busy time from every connected calendar overlapping [from, to)")
            .required_query("from", "RFC 3339 with an offset", date_time())
            .required_query("to", "RFC 3339 with an offset; at most 366 days after `from`", date_time())
            .answers(
                200,
                "The overrides",
                list(object(
                    &[
                        ("source", string()),
                        ("connection_id", string()),
                        ("external_event_id", string()),
                        ("start", date_time()),
                        ("end", date_time()),
                        ("all_day", boolean()),
                    ],
                    &["source", "connection_id", "external_event_id", "start", "end", "all_day"],
                )),
            ),
        Operation::put("/v1/settings/availability", "availability")
            .summary("What the company counts as busy (a field left out takes its default, `busy`)")
            .body(availability())
            .answers(200, "The settings", availability_view()),
        Operation::get("/v1/settings/availability", "availability")
            .summary("The company's availability settings (defaults when never set)")
            .answers(200, "The settings", availability_view()),
    ]
}
