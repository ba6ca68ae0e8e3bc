//! A fake GoHighLevel API, served on a loopback port, for waghl's tests, benchmarks and
//! examples. It behaves like GHL where waghl depends on it (GHL_API.md): OAuth codes and
//! rotating refresh tokens (a reused refresh token is refused), access tokens that expire,
//! `Authorization` and `Version` enforced, 100 requests per 10 s per location answered with
//! 429 beyond that, GHL's response shapes and error bodies — and it can be told to fail:
//! 5xx, hangs (timeouts), latency, and the 403 lag of status updates.
//!
//! Every call is recorded, so a test asserts on what GHL would have seen.

// Handlers answer early with a ready `Response`; boxing it would only add noise to a test fake.
#![allow(clippy::result_large_err)]

use std::collections::{HashMap, HashSet, VecDeque};
use std::net::SocketAddr;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use axum::Router;
use axum::body::Bytes;
use axum::extract::{Multipart, Path, Query, Request, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post, put};
use serde_json::{Value, json};
use tokio::time::Instant;

mod messages;

/// How the fake is set up. `Default` is GHL's documented behaviour.
#[derive(Clone, Debug)]
pub struct Options {
    pub client_id: String,
    pub client_secret: String,
    /// `expires_in` of issued access tokens.
    pub token_ttl: Duration,
    /// Requests allowed per resource (location or company) in any `rate_window`.
    pub rate_limit: usize,
    pub rate_window: Duration,
}

impl Default for Options {
    fn default() -> Self {
        Self {
            client_id: "6964cf8aaef45e5a53fe77f8-mkb5w2qf".into(),
            client_secret: "fake-client-secret".into(),
            token_ttl: Duration::from_secs(86_399),
            rate_limit: 100,
            rate_window: Duration::from_secs(10),
        }
    }
}

/// One request as GHL received it.
#[derive(Clone, Debug)]
pub struct Call {
    pub method: String,
    pub path: String,
    pub query: String,
    pub version: Option<String>,
    pub authorization: Option<String>,
    pub content_type: Option<String>,
    pub body: Bytes,
    /// The status the fake answered.
    pub status: u16,
    /// When the request arrived.
    pub at: std::time::Instant,
}

impl Call {
    /// The body as JSON (form and multipart bodies are not JSON: `Value::Null`).
    pub fn json(&self) -> Value {
        serde_json::from_slice(&self.body).unwrap_or(Value::Null)
    }
}

/// A message added through `POST /conversations/messages/inbound`.
#[derive(Clone, Debug)]
pub struct AddedMessage {
    pub location_id: String,
    pub message_id: String,
    pub body: Value,
    /// `dateAdded` (unix ms): the request's `date` when it sent one, else when it arrived.
    pub date_added_ms: i64,
}

/// A file received through an upload endpoint.
#[derive(Clone, Debug)]
pub struct Upload {
    pub location_id: String,
    pub file_name: String,
    pub content_type: String,
    pub bytes: Bytes,
    pub url: String,
}

#[derive(Clone, Debug)]
pub struct Contact {
    pub id: String,
    pub location_id: String,
    pub phone: String,
    pub name: Option<String>,
}

#[derive(Clone, Debug, PartialEq, Eq, Hash)]
enum Resource {
    Location(String),
    Company(String),
}

impl Resource {
    fn key(&self) -> &str {
        match self {
            Self::Location(id) | Self::Company(id) => id,
        }
    }
}

struct AccessToken {
    resource: Resource,
    expires_at: Instant,
}

enum Fault {
    Status(u16),
    /// The request is carried out, then answered with this status (the answer is wrong).
    StatusAfterDoing(u16),
    Hang,
}

#[derive(Default)]
struct World {
    calls: Vec<Call>,
    next_id: u64,
    codes: HashMap<String, Resource>,
    access_tokens: HashMap<String, AccessToken>,
    /// Refresh token → (resource, already used).
    refresh_tokens: HashMap<String, (Resource, bool)>,
    refreshes: usize,
    company_locations: HashMap<String, Vec<String>>,
    contacts: Vec<Contact>,
    conversations: HashMap<(String, String), String>,
    messages: Vec<AddedMessage>,
    statuses: HashMap<String, Vec<Value>>,
    status_lag: HashMap<String, usize>,
    status_lag_default: usize,
    uploads: Vec<Upload>,
    pending_uploads: HashMap<String, (String, String, String)>,
    faults: VecDeque<(String, Fault)>,
    latency: Duration,
    /// Applied after the request was handled: GHL did the work, the answer comes late.
    reply_latency: Duration,
    windows: HashMap<Resource, VecDeque<Instant>>,
    rate_limited: usize,
    rate_limit: usize,
}

struct Shared {
    options: Options,
    /// Requests received and not answered yet.
    in_flight: std::sync::atomic::AtomicUsize,
    base_url: String,
    world: Mutex<World>,
}

impl Shared {
    fn world(&self) -> MutexGuard<'_, World> {
        self.world.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// A running fake; it stops when dropped.
pub struct FakeGhl {
    pub base_url: String,
    shared: Arc<Shared>,
    server: tokio::task::JoinHandle<()>,
}

impl Drop for FakeGhl {
    fn drop(&mut self) {
        self.server.abort();
    }
}

impl FakeGhl {
    pub async fn start() -> Self {
        Self::start_with(Options::default()).await
    }

    pub async fn start_with(options: Options) -> Self {
        let listener = tokio::net::TcpListener::bind(SocketAddr::from(([127, 0, 0, 1], 0)))
            .await
            .expect("bind a loopback port");
        let base_url = format!("http://{}", listener.local_addr().unwrap());
        let world = World {
            rate_limit: options.rate_limit,
            ..World::default()
        };
        let shared = Arc::new(Shared {
            in_flight: Default::default(),
            options,
            base_url: base_url.clone(),
            world: Mutex::new(world),
        });
        let app = router(shared.clone());
        let server = tokio::spawn(async move {
            let _ = axum::serve(listener, app).await;
        });
        Self {
            base_url,
            shared,
            server,
        }
    }

    pub fn client_id(&self) -> &str {
        &self.shared.options.client_id
    }

    pub fn client_secret(&self) -> &str {
        &self.shared.options.client_secret
    }

    fn world(&self) -> MutexGuard<'_, World> {
        self.shared.world()
    }

    /// An authorization code, as GHL puts on the redirect after a location installs the app.
    pub fn location_code(&self, location_id: &str) -> String {
        let mut world = self.world();
        let code = format!("code-{}", next_id(&mut world));
        world.codes.insert(code.clone(), Resource::Location(location_id.into()));
        code
    }

    /// An authorization code for an agency install covering `location_ids`.
    pub fn company_code(&self, company_id: &str, location_ids: &[&str]) -> String {
        let mut world = self.world();
        let code = format!("code-{}", next_id(&mut world));
        world.codes.insert(code.clone(), Resource::Company(company_id.into()));
        world
            .company_locations
            .insert(company_id.into(), location_ids.iter().map(|s| s.to_string()).collect());
        code
    }

    /// Adds a location to an agency install (as when the app is installed on one more).
    pub fn add_company_location(&self, company_id: &str, location_id: &str) {
        self.world()
            .company_locations
            .entry(company_id.into())
            .or_default()
            .push(location_id.into());
    }

    /// Makes every access token of this location (or company) expired, as a day passing would.
    pub fn expire_access_tokens(&self, resource_id: &str) {
        let now = Instant::now();
        for token in self.world().access_tokens.values_mut() {
            if token.resource.key() == resource_id {
                token.expires_at = now;
            }
        }
    }

    /// Refuses every refresh token of this resource, as GHL does after an uninstall.
    pub fn revoke_refresh_tokens(&self, resource_id: &str) {
        for (resource, used) in self.world().refresh_tokens.values_mut() {
            if resource.key() == resource_id {
                *used = true;
            }
        }
    }

    /// The next `count` calls whose path starts with `path_prefix` answer `status`.
    pub fn fail_next(&self, path_prefix: &str, status: u16, count: usize) {
        let mut world = self.world();
        for _ in 0..count {
            world.faults.push_back((path_prefix.into(), Fault::Status(status)));
        }
    }

    /// The next `count` calls whose path starts with `path_prefix` never answer.
    /// The next `count` requests whose path starts with `path_prefix` are carried out, then
    /// answered with `status`: GHL did the work, and the caller is told it failed.
    pub fn fail_after_doing_next(&self, path_prefix: &str, status: u16, count: usize) {
        let mut world = self.world();
        for _ in 0..count {
            world
                .faults
                .push_back((path_prefix.into(), Fault::StatusAfterDoing(status)));
        }
    }

    pub fn hang_next(&self, path_prefix: &str, count: usize) {
        let mut world = self.world();
        for _ in 0..count {
            world.faults.push_back((path_prefix.into(), Fault::Hang));
        }
    }

    /// Forgets the failures queued by `fail_next` and `hang_next` that have not happened yet.
    pub fn clear_faults(&self) {
        self.world().faults.clear();
    }

    /// Deletes a contact and its conversation, as an agent deleting it in GHL would.
    pub fn delete_contact(&self, contact_id: &str) {
        let mut world = self.world();
        world.contacts.retain(|c| c.id != contact_id);
        world.conversations.retain(|(_, contact), _| contact != contact_id);
    }

    /// Requests received and not answered yet (they are dropped, unrecorded, when the
    /// caller disconnects first).
    pub fn in_flight(&self) -> usize {
        self.shared.in_flight.load(std::sync::atomic::Ordering::SeqCst)
    }

    /// Every answer is delayed by this much.
    pub fn set_latency(&self, latency: Duration) {
        self.world().latency = latency;
    }

    /// Every answer is delayed by this much *after* the request was carried out, so a caller
    /// that gives up (or dies) meanwhile never learns that GHL did the work.
    pub fn set_reply_latency(&self, latency: Duration) {
        self.world().reply_latency = latency;
    }

    /// Changes the per-resource request limit (e.g. raised for benchmarks).
    pub fn set_rate_limit(&self, limit: usize) {
        self.world().rate_limit = limit;
    }

    /// The first `count` status updates of every message answer 403, like GHL before it has
    /// "downstreamed" a message it just sent to the provider.
    pub fn set_status_lag(&self, count: usize) {
        self.world().status_lag_default = count;
    }

    pub fn calls(&self) -> Vec<Call> {
        self.world().calls.clone()
    }

    /// Calls whose path starts with `path_prefix`.
    pub fn calls_to(&self, path_prefix: &str) -> Vec<Call> {
        self.world()
            .calls
            .iter()
            .filter(|c| c.path.starts_with(path_prefix))
            .cloned()
            .collect()
    }

    /// Successful refresh-token grants.
    pub fn refresh_count(&self) -> usize {
        self.world().refreshes
    }

    /// 429s served so far.
    pub fn rate_limited_count(&self) -> usize {
        self.world().rate_limited
    }

    pub fn messages(&self) -> Vec<AddedMessage> {
        self.world().messages.clone()
    }

    pub fn contacts(&self) -> Vec<Contact> {
        self.world().contacts.clone()
    }

    /// Renames a contact, as an agent editing it in GHL would.
    pub fn rename_contact(&self, contact_id: &str, name: &str) {
        for contact in &mut self.world().contacts {
            if contact.id == contact_id {
                contact.name = Some(name.into());
            }
        }
    }

    pub fn uploads(&self) -> Vec<Upload> {
        self.world().uploads.clone()
    }

    /// Status bodies accepted for a GHL message, oldest first.
    pub fn statuses(&self, message_id: &str) -> Vec<Value> {
        self.world().statuses.get(message_id).cloned().unwrap_or_default()
    }

    /// Hosts a file at a URL of the fake (as GHL hosts attachments) and returns the URL.
    pub fn host_file(&self, file_name: &str, content_type: &str, bytes: impl Into<Bytes>) -> String {
        let mut world = self.world();
        let url = format!("{}/files/{}/{file_name}", self.base_url, next_id(&mut world));
        world.uploads.push(Upload {
            location_id: String::new(),
            file_name: file_name.into(),
            content_type: content_type.into(),
            bytes: bytes.into(),
            url: url.clone(),
        });
        url
    }
}

fn next_id(world: &mut World) -> u64 {
    world.next_id += 1;
    world.next_id
}

fn ghl_id(world: &mut World, prefix: &str) -> String {
    format!("{prefix}{:016}", next_id(world))
}

fn router(shared: Arc<Shared>) -> Router {
    Router::new()
        .route("/oauth/token", post(token))
        .route("/oauth/locationToken", post(location_token))
        .route("/oauth/installedLocations", get(installed_locations))
        .route("/contacts/upsert", post(upsert_contact))
        .route("/contacts/search/duplicate", get(search_duplicate))
        .route("/conversations/search", get(search_conversations))
        .route("/conversations/", post(create_conversation))
        .route("/conversations/messages/inbound", post(add_inbound))
        .route("/conversations/{id}/messages", get(messages::list))
        .route("/conversations/messages/{id}/status", put(update_status))
        .route("/conversations/messages/upload", post(upload))
        .route("/conversations/messages/upload/initiate", post(upload_initiate))
        .route("/conversations/messages/upload/complete", post(upload_complete))
        .route("/upload-target/{id}", put(upload_target))
        .route("/files/{id}/{name}", get(hosted_file))
        .layer(middleware::from_fn_with_state(shared.clone(), record_and_inject))
        .layer(axum::extract::DefaultBodyLimit::max(256 << 20))
        .with_state(shared)
}

/// Records the call, applies latency and injected faults.
async fn record_and_inject(State(shared): State<Arc<Shared>>, req: Request, next: Next) -> Response {
    let _in_flight = InFlight::enter(&shared);
    let (parts, body) = req.into_parts();
    let body = axum::body::to_bytes(body, 256 << 20).await.unwrap_or_default();
    let header = |name: header::HeaderName| parts.headers.get(name).and_then(|v| v.to_str().ok()).map(str::to_owned);
    let mut call = Call {
        method: parts.method.to_string(),
        path: parts.uri.path().to_owned(),
        query: parts.uri.query().unwrap_or_default().to_owned(),
        version: parts
            .headers
            .get("version")
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned),
        authorization: header(header::AUTHORIZATION),
        content_type: header(header::CONTENT_TYPE),
        body: body.clone(),
        status: 0,
        at: std::time::Instant::now(),
    };
    let (latency, reply_latency, fault) = {
        let mut world = shared.world();
        let position = world
            .faults
            .iter()
            .position(|(prefix, _)| call.path.starts_with(prefix.as_str()));
        (
            world.latency,
            world.reply_latency,
            position.and_then(|i| world.faults.remove(i)).map(|(_, f)| f),
        )
    };
    if !latency.is_zero() {
        tokio::time::sleep(latency).await;
    }
    let response = match fault {
        Some(Fault::Hang) => {
            call.status = 0;
            shared.world().calls.push(call);
            std::future::pending::<()>().await;
            unreachable!()
        }
        Some(Fault::Status(status)) => error(status, "Injected failure"),
        Some(Fault::StatusAfterDoing(status)) => {
            let _done = next.run(Request::from_parts(parts, axum::body::Body::from(body))).await;
            error(status, "Injected failure after the request was carried out")
        }
        None => next.run(Request::from_parts(parts, axum::body::Body::from(body))).await,
    };
    call.status = response.status().as_u16();
    shared.world().calls.push(call);
    if !reply_latency.is_zero() {
        tokio::time::sleep(reply_latency).await;
    }
    response
}

/// Counts a request as in flight until it is answered or dropped.
struct InFlight<'a>(&'a Shared);

impl<'a> InFlight<'a> {
    fn enter(shared: &'a Shared) -> Self {
        shared.in_flight.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        Self(shared)
    }
}

impl Drop for InFlight<'_> {
    fn drop(&mut self) {
        self.0.in_flight.fetch_sub(1, std::sync::atomic::Ordering::SeqCst);
    }
}

fn error(status: u16, message: &str) -> Response {
    let status = StatusCode::from_u16(status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    let body = json!({
        "statusCode": status.as_u16(),
        "message": message,
        "error": status.canonical_reason().unwrap_or("Error"),
    });
    (status, axum::Json(body)).into_response()
}

/// GHL's checks before any resource call: the `Version` header, a live bearer token, and the
/// per-resource rate limit. Returns the resource the token belongs to.
fn admit(shared: &Shared, headers: &HeaderMap) -> Result<Resource, Response> {
    let mut world = shared.world();
    if headers.get("version").is_none() {
        return Err(error(400, "Version header is required"));
    }
    let token = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .ok_or_else(|| error(401, "Unauthorized"))?;
    let resource = match world.access_tokens.get(token) {
        Some(t) if t.expires_at > Instant::now() => t.resource.clone(),
        Some(_) => return Err(error(401, "Invalid JWT")),
        None => return Err(error(401, "Invalid token: access token is invalid")),
    };
    let (limit, window) = (world.rate_limit, shared.options.rate_window);
    let now = Instant::now();
    let sent = world.windows.entry(resource.clone()).or_default();
    while sent.front().is_some_and(|t| now.duration_since(*t) >= window) {
        sent.pop_front();
    }
    if sent.len() >= limit {
        let remaining_ms = sent
            .front()
            .map_or(0, |t| (window - now.duration_since(*t)).as_millis());
        world.rate_limited += 1;
        let mut response = error(429, "Too Many Requests");
        let headers = response.headers_mut();
        headers.insert("x-ratelimit-max", limit.into());
        headers.insert("x-ratelimit-remaining", 0.into());
        headers.insert("x-ratelimit-interval-milliseconds", (window.as_millis() as u64).into());
        headers.insert("retry-after", (remaining_ms.div_ceil(1000) as u64).into());
        return Err(response);
    }
    sent.push_back(now);
    Ok(resource)
}

fn admit_location(shared: &Shared, headers: &HeaderMap, location_id: &str) -> Result<(), Response> {
    match admit(shared, headers)? {
        Resource::Location(id) if id == location_id => Ok(()),
        Resource::Location(_) => Err(error(403, "The token does not have access to this location")),
        Resource::Company(_) => Err(error(401, "This route is not yet supported by the IAM Service")),
    }
}

fn issue_tokens(shared: &Shared, world: &mut World, resource: &Resource, with_refresh: bool) -> Value {
    let access = format!("at-{}", next_id(world));
    world.access_tokens.insert(
        access.clone(),
        AccessToken {
            resource: resource.clone(),
            expires_at: Instant::now() + shared.options.token_ttl,
        },
    );
    let mut body = json!({
        "access_token": access,
        "token_type": "Bearer",
        "expires_in": shared.options.token_ttl.as_secs(),
        "scope": "conversations/message.write conversations.readonly conversations.write contacts.readonly contacts.write",
        "userId": "user-1",
    });
    if with_refresh {
        let refresh = format!("rt-{}", next_id(world));
        world.refresh_tokens.insert(refresh.clone(), (resource.clone(), false));
        body["refresh_token"] = json!(refresh);
    }
    match resource {
        Resource::Location(id) => {
            body["userType"] = json!("Location");
            body["locationId"] = json!(id);
            body["companyId"] = json!("company-of-".to_owned() + id);
        }
        Resource::Company(id) => {
            body["userType"] = json!("Company");
            body["companyId"] = json!(id);
            body["isBulkInstallation"] = json!(true);
        }
    }
    body
}

async fn token(State(shared): State<Arc<Shared>>, headers: HeaderMap, body: Bytes) -> Response {
    if headers.get("version").is_some() || headers.get(header::AUTHORIZATION).is_some() {
        return error(400, "The token endpoint takes neither Version nor Authorization");
    }
    let form: HashMap<String, String> = match parse_form(&body) {
        Some(form) => form,
        None => return error(422, "Expected application/x-www-form-urlencoded"),
    };
    let field = |name: &str| form.get(name).map(String::as_str).unwrap_or_default();
    if field("client_id") != shared.options.client_id || field("client_secret") != shared.options.client_secret {
        return error(401, "Invalid client credentials");
    }
    let mut world = shared.world();
    match field("grant_type") {
        "authorization_code" => match world.codes.remove(field("code")) {
            Some(resource) => axum::Json(issue_tokens(&shared, &mut world, &resource, true)).into_response(),
            None => error(400, "Invalid authorization code"),
        },
        "refresh_token" => {
            let resource = match world.refresh_tokens.get_mut(field("refresh_token")) {
                Some((resource, used)) if !*used => {
                    *used = true;
                    resource.clone()
                }
                Some(_) => return error(400, "Refresh token was already used (invalid_grant)"),
                None => return error(400, "Invalid refresh token (invalid_grant)"),
            };
            world.refreshes += 1;
            axum::Json(issue_tokens(&shared, &mut world, &resource, true)).into_response()
        }
        other => error(422, &format!("Unsupported grant_type {other:?}")),
    }
}

fn parse_form(body: &[u8]) -> Option<HashMap<String, String>> {
    let text = std::str::from_utf8(body).ok()?;
    axum::extract::Query::<HashMap<String, String>>::try_from_uri(&format!("/?{text}").parse().ok()?)
        .ok()
        .map(|q| q.0)
}

async fn location_token(State(shared): State<Arc<Shared>>, headers: HeaderMap, body: Bytes) -> Response {
    let company = match admit(&shared, &headers) {
        Ok(Resource::Company(id)) => id,
        Ok(Resource::Location(_)) => return error(401, "Agency access only"),
        Err(response) => return response,
    };
    let Some(form) = parse_form(&body) else {
        return error(422, "Expected a form body");
    };
    let location = form.get("locationId").cloned().unwrap_or_default();
    if form.get("companyId") != Some(&company) {
        return error(400, "companyId does not match the token");
    }
    let mut world = shared.world();
    let installed = world
        .company_locations
        .get(&company)
        .is_some_and(|l| l.contains(&location));
    if !installed {
        return error(400, "The app is not installed on this location");
    }
    // GHL's spec lists no refresh token for minted location tokens.
    axum::Json(issue_tokens(&shared, &mut world, &Resource::Location(location), false)).into_response()
}

async fn installed_locations(
    State(shared): State<Arc<Shared>>,
    headers: HeaderMap,
    Query(query): Query<HashMap<String, String>>,
) -> Response {
    let company = match admit(&shared, &headers) {
        Ok(Resource::Company(id)) => id,
        Ok(_) => return error(401, "Agency access only"),
        Err(response) => return response,
    };
    if query.get("companyId") != Some(&company) || !query.contains_key("appId") {
        return error(422, "companyId and appId are required");
    }
    let world = shared.world();
    let locations: Vec<Value> = world
        .company_locations
        .get(&company)
        .into_iter()
        .flatten()
        .map(|id| json!({ "_id": id, "name": format!("Location {id}"), "isInstalled": true }))
        .collect();
    axum::Json(json!({ "locations": locations, "count": locations.len() })).into_response()
}

async fn upsert_contact(State(shared): State<Arc<Shared>>, headers: HeaderMap, body: Bytes) -> Response {
    let body: Value = serde_json::from_slice(&body).unwrap_or(Value::Null);
    let location = body["locationId"].as_str().unwrap_or_default().to_owned();
    if let Err(response) = admit_location(&shared, &headers, &location) {
        return response;
    }
    let Some(phone) = body["phone"].as_str().map(str::to_owned) else {
        return error(422, "phone must be a string");
    };
    if !phone.starts_with('+') || phone.len() < 8 || !phone[1..].bytes().all(|b| b.is_ascii_digit()) {
        return error(400, "Invalid phone number");
    }
    let mut world = shared.world();
    let existing = world
        .contacts
        .iter_mut()
        .find(|c| c.location_id == location && c.phone == phone);
    let (contact, new) = match existing {
        Some(contact) => {
            if let Some(name) = body["name"].as_str() {
                contact.name = Some(name.into());
            }
            (contact.clone(), false)
        }
        None => {
            let contact = Contact {
                id: ghl_id(&mut world, "ct"),
                location_id: location.clone(),
                phone,
                name: body["name"].as_str().map(str::to_owned),
            };
            world.contacts.push(contact.clone());
            (contact, true)
        }
    };
    axum::Json(json!({ "new": new, "contact": contact_json(&contact), "traceId": "trace" })).into_response()
}

fn contact_json(contact: &Contact) -> Value {
    json!({
        "id": contact.id, "locationId": contact.location_id, "phone": contact.phone,
        "name": contact.name, "tags": [], "dnd": false,
    })
}

async fn search_duplicate(
    State(shared): State<Arc<Shared>>,
    headers: HeaderMap,
    Query(query): Query<HashMap<String, String>>,
) -> Response {
    let location = query.get("locationId").cloned().unwrap_or_default();
    if let Err(response) = admit_location(&shared, &headers, &location) {
        return response;
    }
    let number = query.get("number").cloned().unwrap_or_default();
    let world = shared.world();
    let contact = world
        .contacts
        .iter()
        .find(|c| c.location_id == location && c.phone == number)
        .map(contact_json);
    axum::Json(json!({ "contact": contact })).into_response()
}

async fn search_conversations(
    State(shared): State<Arc<Shared>>,
    headers: HeaderMap,
    Query(query): Query<HashMap<String, String>>,
) -> Response {
    let location = query.get("locationId").cloned().unwrap_or_default();
    if let Err(response) = admit_location(&shared, &headers, &location) {
        return response;
    }
    let world = shared.world();
    let conversations: Vec<Value> = world
        .conversations
        .iter()
        .filter(|((loc, contact), _)| *loc == location && query.get("contactId").is_none_or(|c| c == contact))
        .map(|((_, contact), id)| json!({ "id": id, "contactId": contact, "locationId": location }))
        .collect();
    let total = conversations.len();
    axum::Json(json!({ "conversations": conversations, "total": total })).into_response()
}

async fn create_conversation(State(shared): State<Arc<Shared>>, headers: HeaderMap, body: Bytes) -> Response {
    let body: Value = serde_json::from_slice(&body).unwrap_or(Value::Null);
    let location = body["locationId"].as_str().unwrap_or_default().to_owned();
    if let Err(response) = admit_location(&shared, &headers, &location) {
        return response;
    }
    let contact = body["contactId"].as_str().unwrap_or_default().to_owned();
    let mut world = shared.world();
    if !world
        .contacts
        .iter()
        .any(|c| c.id == contact && c.location_id == location)
    {
        return error(400, "Contact not found");
    }
    if world.conversations.contains_key(&(location.clone(), contact.clone())) {
        return error(400, "Conversation already exists");
    }
    let id = ghl_id(&mut world, "cv");
    world
        .conversations
        .insert((location.clone(), contact.clone()), id.clone());
    (
        StatusCode::CREATED,
        axum::Json(
            json!({ "success": true, "conversation": { "id": id, "contactId": contact, "locationId": location } }),
        ),
    )
        .into_response()
}

async fn add_inbound(State(shared): State<Arc<Shared>>, headers: HeaderMap, body: Bytes) -> Response {
    let body: Value = serde_json::from_slice(&body).unwrap_or(Value::Null);
    let location = match admit(&shared, &headers) {
        Ok(Resource::Location(id)) => id,
        Ok(_) => return error(401, "Location token required"),
        Err(response) => return response,
    };
    let mut world = shared.world();
    let conversation = body["conversationId"].as_str().unwrap_or_default();
    let owner = world
        .conversations
        .iter()
        .find(|((loc, _), id)| *loc == location && id.as_str() == conversation)
        .map(|((_, contact), _)| contact.clone());
    let Some(contact) = owner else {
        return error(400, "Conversation not found");
    };
    if body["conversationProviderId"].as_str().is_none_or(str::is_empty) {
        // GHL's documented quirk: a custom provider message without the provider id is
        // silently dropped with an empty 201 (GHL_API.md §5.1).
        return StatusCode::CREATED.into_response();
    }
    if body["type"].as_str().is_none() {
        return error(422, "type must be a valid enum value");
    }
    let id = ghl_id(&mut world, "ms");
    let date_added_ms = match body["date"].as_str() {
        Some(date) => match messages::parse_date(date) {
            Some(ms) => ms,
            None => return error(422, "date must be a valid ISO 8601 date string"),
        },
        None => messages::now_ms(),
    };
    world.messages.push(AddedMessage {
        location_id: location,
        message_id: id.clone(),
        body: body.clone(),
        date_added_ms,
    });
    axum::Json(json!({
        "success": true, "conversationId": conversation, "messageId": id,
        "message": "Message added", "contactId": contact,
    }))
    .into_response()
}

async fn update_status(
    State(shared): State<Arc<Shared>>,
    headers: HeaderMap,
    Path(message_id): Path<String>,
    body: Bytes,
) -> Response {
    if let Err(response) = admit(&shared, &headers) {
        return response;
    }
    let body: Value = serde_json::from_slice(&body).unwrap_or(Value::Null);
    let mut world = shared.world();
    let lag_default = world.status_lag_default;
    let lag = world.status_lag.entry(message_id.clone()).or_insert(lag_default);
    if *lag > 0 {
        *lag -= 1;
        return error(403, "No conversation provider found for this message");
    }
    let allowed: HashSet<&str> = ["delivered", "failed", "pending", "read", "sent"].into();
    if !body["status"].as_str().is_some_and(|s| allowed.contains(s)) {
        return error(422, "status must be one of delivered, failed, pending, read");
    }
    world.statuses.entry(message_id.clone()).or_default().push(body);
    axum::Json(json!({ "success": true, "messageId": message_id })).into_response()
}

async fn upload(State(shared): State<Arc<Shared>>, headers: HeaderMap, mut form: Multipart) -> Response {
    let location = match admit(&shared, &headers) {
        Ok(Resource::Location(id)) => id,
        Ok(_) => return error(401, "Location token required"),
        Err(response) => return response,
    };
    let mut files = Vec::new();
    let mut fields = HashMap::new();
    while let Ok(Some(field)) = form.next_field().await {
        let name = field.name().unwrap_or_default().to_owned();
        let file_name = field.file_name().map(str::to_owned);
        let content_type = field.content_type().unwrap_or("application/octet-stream").to_owned();
        let Ok(bytes) = field.bytes().await else {
            return error(400, "Unreadable multipart body");
        };
        match file_name {
            Some(file_name) if name == "fileAttachment" => files.push((file_name, content_type, bytes)),
            _ => {
                fields.insert(name, String::from_utf8_lossy(&bytes).into_owned());
            }
        }
    }
    if files.is_empty() {
        return (
            StatusCode::BAD_REQUEST,
            axum::Json(json!({ "status": 400, "message": "No fileAttachment" })),
        )
            .into_response();
    }
    if fields.get("conversationId").is_none_or(String::is_empty) {
        return error(422, "conversationId is required");
    }
    let mut world = shared.world();
    let mut uploaded = serde_json::Map::new();
    for (file_name, content_type, bytes) in files {
        let url = format!("{}/files/{}/{file_name}", shared.base_url, next_id(&mut world));
        uploaded.insert(file_name.clone(), json!(url));
        world.uploads.push(Upload {
            location_id: location.clone(),
            file_name,
            content_type,
            bytes,
            url,
        });
    }
    axum::Json(json!({ "uploadedFiles": uploaded, "traceId": "trace" })).into_response()
}

async fn upload_initiate(State(shared): State<Arc<Shared>>, headers: HeaderMap, body: Bytes) -> Response {
    let body: Value = serde_json::from_slice(&body).unwrap_or(Value::Null);
    let location = body["locationId"].as_str().unwrap_or_default().to_owned();
    if let Err(response) = admit_location(&shared, &headers, &location) {
        return response;
    }
    let (Some(file_name), Some(content_type)) = (body["filename"].as_str(), body["contentType"].as_str()) else {
        return error(422, "filename and contentType are required");
    };
    let max: u64 = if body["channel"] == "WHATSAPP" {
        100 << 20
    } else {
        5 << 20
    };
    if body["fileSize"].as_u64().is_some_and(|size| size > max) {
        return error(413, "File too large for this channel");
    }
    let mut world = shared.world();
    let upload_id = ghl_id(&mut world, "up");
    world
        .pending_uploads
        .insert(upload_id.clone(), (location, file_name.into(), content_type.into()));
    axum::Json(json!({
        "uploadUrl": format!("{}/upload-target/{upload_id}", shared.base_url),
        "uploadId": upload_id, "filePath": format!("uploads/{upload_id}"), "maxFileSize": max,
    }))
    .into_response()
}

async fn upload_target(State(shared): State<Arc<Shared>>, Path(upload_id): Path<String>, body: Bytes) -> Response {
    let mut world = shared.world();
    let Some((location, file_name, content_type)) = world.pending_uploads.get(&upload_id).cloned() else {
        return StatusCode::NOT_FOUND.into_response();
    };
    let url = format!("{}/files/{upload_id}/{file_name}", shared.base_url);
    world.uploads.push(Upload {
        location_id: location,
        file_name,
        content_type,
        bytes: body,
        url,
    });
    StatusCode::OK.into_response()
}

async fn upload_complete(State(shared): State<Arc<Shared>>, headers: HeaderMap, body: Bytes) -> Response {
    let body: Value = serde_json::from_slice(&body).unwrap_or(Value::Null);
    let location = body["locationId"].as_str().unwrap_or_default().to_owned();
    if let Err(response) = admit_location(&shared, &headers, &location) {
        return response;
    }
    let upload_id = body["uploadId"].as_str().unwrap_or_default();
    let world = shared.world();
    let Some((_, file_name, content_type)) = world.pending_uploads.get(upload_id) else {
        return error(404, "Upload not found");
    };
    let Some(upload) = world
        .uploads
        .iter()
        .find(|u| u.url.contains(&format!("/files/{upload_id}/")))
    else {
        return error(400, "Nothing was uploaded");
    };
    axum::Json(json!({
        "uploadedFiles": { file_name.clone(): upload.url },
        "metadata": { "size": upload.bytes.len(), "contentType": content_type },
    }))
    .into_response()
}

async fn hosted_file(State(shared): State<Arc<Shared>>, Path((id, _name)): Path<(String, String)>) -> Response {
    let world = shared.world();
    let wanted = format!("/files/{id}/");
    match world.uploads.iter().find(|u| u.url.contains(&wanted)) {
        Some(upload) => (
            [(header::CONTENT_TYPE, upload.content_type.clone())],
            upload.bytes.clone(),
        )
            .into_response(),
        _ => StatusCode::NOT_FOUND.into_response(),
    }
}
