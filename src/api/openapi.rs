//! The OpenAPI document as served: paperclip's, amended where paperclip 0.9 cannot say what
//! the service really does. `tests/openapi.rs` checks real responses of every route against
//! the result.
//!
//! What is amended:
//! - a field that may be `null` (an `Option` in Rust, so not `required`) is `nullable`;
//! - image routes answer `image/jpeg`, `image/png`, `image/webp`, `image/avif` or (originals
//!   only) `image/heic`, not multipart;
//! - the upload's `file` field repeats;
//! - an import's CSV body is text, not the JSON schema;
//! - query parameters state their ranges, formats and values;
//! - each route lists the error statuses it can answer, and no others;
//! - each authenticated route names the scope its key needs (`auth::required_scope`);
//! - `/readyz` documents its 200 and 503 bodies;
//! - the event routes answer `text/event-stream` too, and take a header key or a token;
//! - the WebSocket route (outside paperclip) is described with its messages;
//! - an event's `type` lists every event type.

use serde_json::{json, Map, Value};

/// Statuses that only some routes answer, and which routes (method, path) those are.
const ONLY_ON: &[(&str, &[(&str, &str)])] = &[
    (
        "409",
        &[
            ("post", "/v1/photos/{id}/retry"),
            // A photo not completed.
            ("post", "/v1/photos/{id}/reprocess"),
            // An Idempotency-Key first used for the other kind of request.
            ("post", "/v1/photos"),
            ("post", "/v1/imports"),
            ("post", "/v1/webhooks"),
        ],
    ),
    (
        "410",
        &[
            ("get", "/v1/photos/{id}/original"),
            ("post", "/v1/photos/{id}/reprocess"),
        ],
    ),
    ("413", &[("post", "/v1/photos"), ("post", "/v1/imports")]),
    ("415", &[("post", "/v1/photos")]),
    (
        "422",
        &[
            ("post", "/v1/imports"),
            ("post", "/v1/webhooks"),
            ("post", "/v1/keys"),
        ],
    ),
];

/// Routes that answer no 404 (they name nothing that could be missing).
const NEVER_404: &[(&str, &str)] = &[
    ("post", "/v1/photos"),
    ("post", "/v1/imports"),
    ("get", "/v1/events"),
    ("post", "/v1/events/tokens"),
    ("post", "/v1/webhooks"),
    ("get", "/v1/webhooks"),
    ("get", "/v1/limits"),
    ("post", "/v1/keys"),
    ("get", "/v1/keys"),
    ("get", "/v1/me"),
    ("get", "/v1/usage"),
];

/// Routes that follow the event log: SSE or long-poll, by `Accept`.
const EVENT_ROUTES: &[&str] = &["/v1/events", "/v1/batches/{id}/events"];

/// Image routes and the types their bytes come in.
const IMAGE_ROUTES: &[&str] = &[
    "/v1/photos/{id}/variants/{name}",
    "/v1/photos/{id}/original",
];
const IMAGE_TYPES: &[&str] = &[
    "image/jpeg",
    "image/png",
    "image/webp",
    "image/avif",
    "image/heic",
];

/// Amends paperclip's OpenAPI 3 document in place.
pub fn amend(spec: &mut Value) {
    mark_nullable(spec);
    let Some(paths) = spec.get_mut("paths").and_then(Value::as_object_mut) else {
        return;
    };
    for (path, item) in paths.iter_mut() {
        let Some(item) = item.as_object_mut() else {
            continue;
        };
        for (method, op) in item.iter_mut() {
            let Some(responses) = op.get_mut("responses").and_then(Value::as_object_mut) else {
                continue;
            };
            for (status, routes) in ONLY_ON {
                if !routes.contains(&(method.as_str(), path.as_str())) {
                    responses.remove(*status);
                }
            }
            if NEVER_404.contains(&(method.as_str(), path.as_str())) {
                responses.remove("404");
            }
            if IMAGE_ROUTES.contains(&path.as_str()) {
                image_content(responses);
            }
            if EVENT_ROUTES.contains(&path.as_str()) {
                event_stream_content(responses);
            }
            if let Some(params) = op.get_mut("parameters").and_then(Value::as_array_mut) {
                for p in params {
                    describe_parameter(path, p);
                }
            }
            let needs = method
                .to_uppercase()
                .parse::<actix_web::http::Method>()
                .ok()
                .and_then(|m| super::auth::required_scope(&m, path));
            match needs.filter(|_| op.get("security").is_some()) {
                Some(scope) => {
                    let line = format!("Needs a key with the `{}` scope.", scope.as_str());
                    let text = match op.get("description").and_then(Value::as_str) {
                        Some(d) if !d.is_empty() => format!("{d}\n\n{line}"),
                        _ => line,
                    };
                    op["description"] = Value::String(text);
                }
                None => {
                    if let Some(responses) = op.get_mut("responses").and_then(Value::as_object_mut)
                    {
                        responses.remove("403");
                    }
                }
            }
        }
    }
    if let Some(file) = spec.pointer_mut(
        "/paths/~1v1~1photos/post/requestBody/content/multipart~1form-data/schema/properties/file",
    ) {
        let one = file.clone();
        *file = json!({
            "description": one.get("description").cloned().unwrap_or(Value::Null),
            "type": "array",
            "items": {"type": "string", "format": "binary"},
            "minItems": 1,
        });
    }
    if let Some(Value::Object(content)) =
        spec.pointer_mut("/paths/~1v1~1imports/post/requestBody/content")
    {
        content.insert(
            "text/csv".into(),
            json!({"schema": {
                "type": "string",
                "description": "A header row (`external_id`, `name`, and `images` with URLs \
                                separated by spaces, or one `image_N` column per URL), then \
                                one product per row.",
            }}),
        );
    }
    readiness(spec);
    either_security(spec);
    websocket(spec);
    event_types(spec);
}

/// An event's `type` is one of the documented types, each described: in every schema of
/// an event (an object with `id`, `type`, `created_at` and `data`), wherever it is.
fn event_types(value: &mut Value) {
    match value {
        Value::Object(map) => {
            let is_event = map.get("properties").is_some_and(|p| {
                ["id", "type", "created_at", "data"]
                    .iter()
                    .all(|k| p.get(*k).is_some())
            });
            if is_event {
                if let Some(kind) = map.get_mut("properties").and_then(|p| p.get_mut("type")) {
                    let names: Vec<&str> =
                        crate::events::EVENT_TYPES.iter().map(|(t, _)| *t).collect();
                    let described: Vec<String> = crate::events::EVENT_TYPES
                        .iter()
                        .map(|(t, what)| format!("`{t}`: {what}"))
                        .collect();
                    kind["enum"] = json!(names);
                    kind["description"] = json!(described.join("; "));
                }
            }
            map.values_mut().for_each(event_types);
        }
        Value::Array(items) => items.iter_mut().for_each(event_types),
        _ => {}
    }
}

/// The event routes answer an SSE stream beside the long-poll JSON.
fn event_stream_content(responses: &mut Map<String, Value>) {
    let Some(Value::Object(content)) = responses.get_mut("200").and_then(|r| r.get_mut("content"))
    else {
        return;
    };
    content.insert(
        "text/event-stream".into(),
        json!({"schema": {
            "type": "string",
            "description": "Server-Sent Events: `id: <event id>`, `event: <type>`, \
                            `data: <the Event as JSON>` per event; `event: reset` when the \
                            requested position is older than the log; `: keep-alive` \
                            comments while idle.",
        }}),
    );
}

/// The event routes take the key in the header or a stream token in the query; the image
/// routes the key or a signed URL: either.
fn either_security(spec: &mut Value) {
    let Some(paths) = spec.get_mut("paths").and_then(Value::as_object_mut) else {
        return;
    };
    let routes = EVENT_ROUTES
        .iter()
        .map(|r| (r, "StreamCaller"))
        .chain(IMAGE_ROUTES.iter().map(|r| (r, "ImageCaller")));
    for (path, other) in routes {
        if let Some(op) = paths.get_mut(*path).and_then(|p| p.get_mut("get")) {
            op["security"] = json!([{ "Caller": [] }, { other: [] }]);
        }
    }
}

/// `/v1/ws` is a WebSocket upgrade that paperclip does not see.
fn websocket(spec: &mut Value) {
    let Some(paths) = spec.get_mut("paths").and_then(Value::as_object_mut) else {
        return;
    };
    let error = json!({"application/json": {"schema": {"$ref": "#/components/schemas/ErrorBody"}}});
    let either: Vec<Value> = ["Caller", "StreamCaller"]
        .iter()
        .map(|s| json!({ *s: [] }))
        .collect();
    paths.insert(
        "/v1/ws".into(),
        json!({"get": {
            "tags": ["Events"],
            "summary": "Follow events over a WebSocket",
            "description": "Upgrades to a WebSocket (key in the header, or `?token=` from \
                `POST /v1/events/tokens`). Send JSON text messages \
                `{\"type\": \"subscribe\", \"batch\": <id, optional>, \"after\": <event id, optional>}` \
                and `{\"type\": \"unsubscribe\", \"batch\": <id, optional>}`; photoq sends \
                `subscribed`, `event` (`{\"type\": \"event\", \"batch\", \"event\": Event}`), \
                `reset`, `unsubscribed` (`reason`: `requested` or `batch_finished`) and \
                `error` messages, and pings every `events.keepalive_secs`.",
            "security": either,
            "parameters": [{"name": "token", "in": "query", "required": false,
                            "schema": {"type": "string"}}],
            "responses": {
                "101": {"description": "Switching to the WebSocket protocol"},
                "400": {"description": "Not a WebSocket upgrade request", "content": error.clone()},
                "401": {"description": "Missing, unknown or revoked API key or token", "content": error.clone()},
                "429": {"description": "Too many requests for the key", "content": error.clone()},
                "503": {"description": "PostgreSQL unreachable", "content": error},
            },
        }}),
    );
}

/// Properties of object schemas that are not required are nullable: photoq writes an absent
/// value as `null`.
fn mark_nullable(value: &mut Value) {
    match value {
        Value::Object(map) => {
            if let Some(Value::Object(props)) = map.get("properties") {
                let required: Vec<String> = map
                    .get("required")
                    .and_then(Value::as_array)
                    .map(|r| {
                        r.iter()
                            .filter_map(Value::as_str)
                            .map(str::to_owned)
                            .collect()
                    })
                    .unwrap_or_default();
                let optional: Vec<String> = props
                    .keys()
                    .filter(|k| !required.contains(k))
                    .cloned()
                    .collect();
                if let Some(Value::Object(props)) = map.get_mut("properties") {
                    for name in optional {
                        if let Some(Value::Object(prop)) = props.get_mut(&name) {
                            nullable(prop);
                        }
                    }
                }
            }
            for v in map.values_mut() {
                mark_nullable(v);
            }
        }
        Value::Array(items) => items.iter_mut().for_each(mark_nullable),
        _ => {}
    }
}

/// Makes one schema nullable (a `$ref` cannot carry siblings in OpenAPI 3.0: it is wrapped).
fn nullable(prop: &mut Map<String, Value>) {
    if let Some(reference) = prop.remove("$ref") {
        prop.insert("allOf".into(), json!([{ "$ref": reference }]));
    }
    prop.insert("nullable".into(), Value::Bool(true));
}

fn image_content(responses: &mut Map<String, Value>) {
    let Some(ok) = responses.get_mut("200").and_then(Value::as_object_mut) else {
        return;
    };
    let binary = json!({"schema": {"type": "string", "format": "binary"}});
    let content: Map<String, Value> = IMAGE_TYPES
        .iter()
        .map(|t| ((*t).to_owned(), binary.clone()))
        .collect();
    ok.insert("content".into(), Value::Object(content));
}

fn describe_parameter(path: &str, param: &mut Value) {
    let name = param
        .get("name")
        .and_then(Value::as_str)
        .unwrap_or_default();
    let extra = match name {
        "limit" => json!({"minimum": 1, "maximum": 200, "default": 50}),
        "cursor" | "import" => json!({"format": "uuid"}),
        "state" if path == "/v1/products" => {
            json!({"enum": ["processing", "processed", "process_error"]})
        }
        "state" => {
            json!({"enum": ["queued", "processing", "completed", "failed", "dead", "cancelled"]})
        }
        "after" => json!({"minimum": 0}),
        "wait" => json!({"minimum": 0, "default": 30}),
        _ => return,
    };
    if let (Some(Value::Object(schema)), Value::Object(extra)) = (param.get_mut("schema"), extra) {
        schema.extend(extra);
    }
}

/// `/readyz` answers a body in both states; paperclip cannot see it.
fn readiness(spec: &mut Value) {
    let body = json!({
        "type": "object",
        "required": ["status", "database", "redis"],
        "properties": {
            "status": {"type": "string", "enum": ["ready", "unavailable"]},
            "database": {"type": "string", "enum": ["up", "down"]},
            "redis": {"type": "string", "enum": ["up", "down"]},
        },
    });
    let answer = |description: &str| {
        json!({
            "description": description,
            "content": {"application/json": {"schema": body.clone()}},
        })
    };
    if let Some(Value::Object(responses)) = spec.pointer_mut("/paths/~1readyz/get/responses") {
        responses.insert("200".into(), answer("PostgreSQL and Redis both answer"));
        responses.insert("503".into(), answer("PostgreSQL or Redis does not answer"));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn optional_fields_become_nullable_and_required_ones_do_not() {
        let mut spec = json!({"components": {"schemas": {"A": {
            "type": "object",
            "required": ["id"],
            "properties": {
                "id": {"type": "string"},
                "next": {"type": "string"},
                "inner": {"$ref": "#/components/schemas/B"},
            }
        }}}});
        amend(&mut spec);
        let a = &spec["components"]["schemas"]["A"]["properties"];
        assert_eq!(a["id"].get("nullable"), None);
        assert_eq!(a["next"]["nullable"], true);
        assert_eq!(a["inner"]["nullable"], true);
        assert_eq!(a["inner"]["allOf"][0]["$ref"], "#/components/schemas/B");
    }
}
