//! The OpenAPI document: it validates as OpenAPI 3.1, it lists exactly the router's routes,
//! and real responses match their schemas ([`Contract`] checks every admin call the test
//! suite makes through `TestApp::admin_*`).

use std::collections::HashMap;
use std::process::Command;
use std::sync::{Arc, Mutex};

use serde_json::{Value, json};

use crate::helpers::{ADMIN_TOKEN, spawn_app};
use crate::sessions::sim_bench;

/// The OpenAPI document of one running application, and what it says about responses.
pub struct Contract {
    document: Value,
    validators: Mutex<HashMap<String, Arc<jsonschema::Validator>>>,
}

impl Contract {
    pub fn of(state: &waghl::state::AppState) -> Self {
        let document = serde_json::to_value(waghl::http::routes(state).into_openapi()).expect("the document is JSON");
        Self {
            document,
            validators: Mutex::default(),
        }
    }

    /// The document's template for a concrete path (`/api/v1/locations/loc1` →
    /// `/api/v1/locations/{id}`), if it has one.
    fn template(&self, path: &str) -> Option<String> {
        let segments: Vec<&str> = path.split('/').collect();
        self.document["paths"]
            .as_object()?
            .keys()
            .find(|template| {
                let parts: Vec<&str> = template.split('/').collect();
                parts.len() == segments.len()
                    && parts
                        .iter()
                        .zip(&segments)
                        .all(|(t, s)| (t.starts_with('{') && !s.is_empty()) || t == s)
            })
            .cloned()
    }

    /// Panics unless `body` is what the document promises for this call and status.
    pub fn check(&self, method: &str, path: &str, status: u16, content_type: Option<&str>, body: &[u8]) {
        let template = self
            .template(path)
            .unwrap_or_else(|| panic!("{method} {path} is not in the OpenAPI document"));
        let operation = &self.document["paths"][&template][method.to_ascii_lowercase()];
        assert!(
            operation.is_object(),
            "{method} {template} is not in the OpenAPI document"
        );
        let responses = &operation["responses"];
        let (key, response) = match &responses[status.to_string()] {
            Value::Null => ("default".to_owned(), &responses["default"]),
            found => (status.to_string(), found),
        };
        assert!(
            response.is_object(),
            "{method} {template} answered {status}, which the document does not describe"
        );
        let Some(schema) = response["content"]["application/json"]["schema"].as_object() else {
            return;
        };
        assert!(
            content_type.is_some_and(|t| t.starts_with("application/json")),
            "{method} {template} {status}: the document says JSON, the response is {content_type:?}"
        );
        let validator = self.validator(&format!("{method} {template} {key}"), schema);
        let instance: Value = serde_json::from_slice(body)
            .unwrap_or_else(|e| panic!("{method} {path} {status}: the body is not JSON: {e}"));
        if let Err(error) = validator.validate(&instance) {
            panic!("{method} {path} {status} does not match its schema: {error}\n{instance}");
        }
    }

    fn validator(&self, key: &str, schema: &serde_json::Map<String, Value>) -> Arc<jsonschema::Validator> {
        let mut validators = self.validators.lock().unwrap();
        validators
            .entry(key.to_owned())
            .or_insert_with(|| {
                // The operation's schema, with the document's components beside it so that
                // its `#/components/schemas/…` references resolve.
                let mut root = schema.clone();
                root.insert("components".into(), self.document["components"].clone());
                Arc::new(jsonschema::draft202012::new(&Value::Object(root)).expect("a valid JSON schema"))
            })
            .clone()
    }

    fn operations(&self) -> Vec<(String, String)> {
        let mut operations = Vec::new();
        for (path, item) in self.document["paths"].as_object().unwrap() {
            for method in item.as_object().unwrap().keys() {
                operations.push((method.to_ascii_uppercase(), path.clone()));
            }
        }
        operations.sort();
        operations
    }
}

fn in_ci() -> bool {
    std::env::var("CI").is_ok_and(|v| v == "true")
}

#[tokio::test]
async fn the_served_document_is_valid_openapi_3_1() {
    let app = spawn_app().await;
    let response = app.get("/api/v1/openapi.json").await;
    assert_eq!(response.status(), 200);
    let text = response.text().await.unwrap();
    let document: Value = serde_json::from_str(&text).unwrap();
    assert_eq!(document["openapi"], "3.1.0");
    assert!(document["components"]["securitySchemes"]["admin"].is_object());

    let available = Command::new("python3")
        .args(["-c", "import openapi_spec_validator"])
        .status()
        .is_ok_and(|s| s.success());
    if !available {
        assert!(
            !in_ci(),
            "CI=true but openapi-spec-validator is missing (pip install openapi-spec-validator)"
        );
        eprintln!("skipped: openapi-spec-validator is not installed");
        return;
    }
    let file = tempfile::Builder::new().suffix(".json").tempfile().unwrap();
    std::fs::write(file.path(), &text).unwrap();
    let output = Command::new("python3")
        .args(["-m", "openapi_spec_validator"])
        .arg(file.path())
        .output()
        .unwrap();
    assert!(
        output.status.success(),
        "openapi-spec-validator refused the document:\n{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
}

/// Every operation of the document is routed: a request for it never reaches the router's
/// fallback (404 `no route for`) or its 405.
#[tokio::test]
async fn every_documented_operation_is_routed_with_and_without_the_simulator() {
    let b = sim_bench(&[]).await;
    b.app.install(&b.fake, "locRoutes").await;
    let contract = Contract::of(&b.app.state);
    let operations = contract.operations();
    assert!(operations.len() > 40, "{operations:?}");
    for (method, template) in &operations {
        let path = template.replace("{id}", "locRoutes").replace("{message}", "in_1");
        let response = b
            .app
            .client
            .request(method.parse().unwrap(), b.app.url(&path))
            .bearer_auth(ADMIN_TOKEN)
            .send()
            .await
            .unwrap();
        let status = response.status().as_u16();
        let body = response.text().await.unwrap();
        assert_ne!(status, 405, "{method} {template} is documented but not routed");
        assert!(
            !(status == 404 && body.contains("no route for")),
            "{method} {template} is documented but not routed"
        );
    }

    // Without the simulator its routes are neither served nor documented.
    let app = spawn_app_without_sim().await;
    let document = Contract::of(&app.state);
    assert!(document.operations().iter().all(|(_, path)| !path.starts_with("/sim/")));
    let response = app
        .client
        .post(app.url("/sim/locRoutes/scan"))
        .bearer_auth(ADMIN_TOKEN)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 404);
}

async fn spawn_app_without_sim() -> crate::helpers::TestApp {
    crate::helpers::spawn_app_with(crate::helpers::Backend::Sqlite, &[("WAGHL_WA_BACKEND", "whatsapp")])
        .await
        .unwrap()
}

/// The only way to add a route is `utoipa_axum::routes!`, which documents it: nothing in the
/// source registers one behind the document's back.
#[test]
fn no_route_is_registered_outside_the_document() {
    let mut offenders = Vec::new();
    let mut stack = vec![std::path::PathBuf::from(concat!(env!("CARGO_MANIFEST_DIR"), "/src"))];
    while let Some(dir) = stack.pop() {
        for entry in std::fs::read_dir(&dir).unwrap() {
            let path = entry.unwrap().path();
            if path.is_dir() {
                stack.push(path);
            } else if path.extension().is_some_and(|e| e == "rs") {
                let text = std::fs::read_to_string(&path).unwrap();
                for needle in [".route(", ".route_service(", ".nest(", ".nest_service("] {
                    if text.contains(needle) {
                        offenders.push(format!("{} uses {needle}", path.display()));
                    }
                }
            }
        }
    }
    assert!(
        offenders.is_empty(),
        "register routes with utoipa_axum::routes! so they are documented: {offenders:?}"
    );
}

#[tokio::test]
async fn errors_and_answers_match_the_document() {
    let b = sim_bench(&[]).await;
    b.paired("locShapes", "+15551700001").await;
    let contract = Contract::of(&b.app.state);
    let calls: [(&str, &str, Option<Value>); 9] = [
        ("GET", "/api/v1/locations", None),
        ("GET", "/api/v1/locations/locShapes", None),
        ("GET", "/api/v1/locations/nope", None),
        ("GET", "/api/v1/sessions", None),
        ("GET", "/api/v1/locations/locShapes/messages?limit=0", None),
        (
            "POST",
            "/api/v1/locations/locShapes/pairing-link",
            Some(json!({ "ttl_seconds": 3600 })),
        ),
        ("POST", "/api/v1/locations/locShapes/retry-dead", None),
        ("POST", "/api/v1/messages/in_999/retry", None),
        ("GET", "/readyz", None),
    ];
    for (method, path, body) in calls {
        let mut request = b
            .app
            .client
            .request(method.parse().unwrap(), b.app.url(path))
            .bearer_auth(ADMIN_TOKEN);
        if let Some(body) = body {
            request = request.json(&body);
        }
        let response = request.send().await.unwrap();
        let status = response.status().as_u16();
        let content_type = response
            .headers()
            .get("content-type")
            .map(|v| v.to_str().unwrap().to_owned());
        let bytes = response.bytes().await.unwrap();
        let bare = path.split('?').next().unwrap();
        contract.check(method, bare, status, content_type.as_deref(), &bytes);
    }
    // The check has teeth: a mistyped or missing field is caught.
    for wrong in [r#"{"locations":[{"id":1}]}"#, r#"{"sessions":[]}"#] {
        let caught = std::panic::catch_unwind(|| {
            contract.check(
                "GET",
                "/api/v1/locations",
                200,
                Some("application/json"),
                wrong.as_bytes(),
            )
        });
        assert!(caught.is_err(), "{wrong} passed the schema");
    }
}
