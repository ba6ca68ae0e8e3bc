use crate::helpers::{ADMIN_TOKEN, Backend, error_code, spawn_app, spawn_app_with};

#[tokio::test]
async fn healthz_and_readyz_answer_200_on_sqlite() {
    let app = spawn_app().await;
    assert_eq!(app.get("/healthz").await.status(), 200);
    let ready = app.get("/readyz").await;
    assert_eq!(ready.status(), 200);
    let body: serde_json::Value = ready.json().await.unwrap();
    assert_eq!(body["database"], "sqlite");
    assert!(app.db.sqlite_file().unwrap().exists());
    app.stop().await;
}

#[tokio::test]
async fn readyz_answers_200_on_postgres() {
    let Some(app) = spawn_app_with(Backend::Postgres, &[]).await else {
        return;
    };
    let body: serde_json::Value = app.get("/readyz").await.json().await.unwrap();
    assert_eq!(body["status"], "ready");
    assert_eq!(body["database"], "postgres");
    app.stop().await;
}

#[tokio::test]
async fn readyz_answers_503_when_the_database_is_gone() {
    let app = spawn_app().await;
    assert_eq!(app.get("/readyz").await.status(), 200);
    app.state.store.close().await;
    let response = app.get("/readyz").await;
    assert_eq!(response.status(), 503);
    assert_eq!(error_code(response).await, "database_unavailable");
}

#[tokio::test]
async fn unknown_routes_and_wrong_methods_answer_json_errors() {
    let app = spawn_app().await;
    let response = app.get("/no/such/route").await;
    assert_eq!(response.status(), 404);
    assert_eq!(error_code(response).await, "not_found");
    let response = app.client.delete(app.url("/healthz")).send().await.unwrap();
    assert_eq!(response.status(), 405);
    assert_eq!(error_code(response).await, "method_not_allowed");
}

#[tokio::test]
async fn metrics_need_the_admin_token_and_count_requests_by_route() {
    let app = spawn_app().await;
    let response = app.get("/metrics").await;
    assert_eq!(response.status(), 401);
    assert_eq!(error_code(response).await, "unauthorized");
    let wrong = app
        .client
        .get(app.url("/metrics"))
        .bearer_auth("x".repeat(ADMIN_TOKEN.len()))
        .send()
        .await
        .unwrap();
    assert_eq!(wrong.status(), 401);

    app.get("/healthz").await;
    app.get("/locations/abc123/anything").await;
    let text = app.admin_get("/metrics").await.text().await.unwrap();
    assert!(
        text.contains(r#"waghl_http_requests_total{method="GET",route="/healthz",status="200"} 1"#),
        "{text}"
    );
    // Unmatched paths are counted under one label, so ids never become label values.
    assert!(text.contains(r#"route="unmatched",status="404""#), "{text}");
    assert!(!text.contains("abc123"));
    assert!(text.contains("waghl_http_request_duration_seconds_bucket"));
}
