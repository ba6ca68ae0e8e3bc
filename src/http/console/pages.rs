//! The console's pages: sign-in, locations, one location, health. Each page is rendered whole
//! on the server; regions marked `data-live` are refreshed by the script from the same URL.

use std::collections::BTreeMap;

use axum::extract::{RawQuery, State};
use axum::http::StatusCode;
use axum::response::Response;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use super::super::ApiError;
use super::super::admin::{Location, all_locations, location};
use super::super::messages::{Message, message_view};
use super::super::openapi::IdPath;
use super::super::page::escape;
use super::super::pairing::qr_svg;
use super::{Frame, Nav, Notice, PagePath, Visitor, ago, badge, clipped, csrf_field, layout};
use crate::domain::LocationId;
use crate::sessions::SessionState;
use crate::state::AppState;
use crate::store::StateEvent;
use crate::time::rfc3339;

pub fn router() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(locations_page))
        .routes(routes!(location_page))
        .routes(routes!(health_page))
}

/// How often the pages refresh their live regions.
const LIVE_MS: u32 = 2000;

/// The sign-in page, with where to find the admin token.
pub fn sign_in(state: &AppState, visitor: &Visitor, notice: Option<&Notice>) -> Response {
    let hint = match &state.config.admin_token {
        Some(_) => "It is the value of <code>WAGHL_ADMIN_TOKEN</code> in this daemon's environment.".to_owned(),
        None => {
            let file = state.config.data_dir.join("admin.token");
            let shown = std::fs::canonicalize(&file).unwrap_or(file);
            format!(
                "waghl generated it on its first start and saved it in <code>{}</code>: \
                 <code>cat {}</code> on the machine that runs it. Set <code>WAGHL_ADMIN_TOKEN</code> to choose your own.",
                escape(&shown.display().to_string()),
                escape(&shown.display().to_string()),
            )
        }
    };
    let body = format!(
        "<section class=\"card narrow\"><h1>Sign in</h1>\
         <p>Use the admin token, the same one the admin API takes as <code>Authorization: Bearer</code>. {hint}</p>\
         <form method=\"post\" action=\"/login\">{csrf}\
         <label for=\"token\">Admin token</label>\
         <input id=\"token\" name=\"token\" type=\"password\" autocomplete=\"current-password\" required autofocus>\
         <button>Sign in</button></form>\
         <p class=\"muted\">The API is described at <a href=\"/api/v1/openapi.json\">/api/v1/openapi.json</a>.</p></section>",
        csrf = csrf_field(visitor),
    );
    let frame = Frame {
        title: "Sign in",
        nav: Nav::None,
        live: None,
    };
    let mut response = layout(state, visitor, frame, notice, &body);
    if notice.is_none() {
        *response.status_mut() = StatusCode::UNAUTHORIZED;
    }
    response
}

/// Every location with its WhatsApp state and queues; `?state=` filters.
#[utoipa::path(get, operation_id = "console_locations_page", path = "/", tag = "pages", responses(
    (status = 200, description = "The locations page", content_type = "text/html"),
    (status = 401, description = "The sign-in page", content_type = "text/html")))]
async fn locations_page(State(state): State<AppState>, visitor: Visitor, RawQuery(query): RawQuery) -> Response {
    if !visitor.signed_in {
        return sign_in(&state, &visitor, None);
    }
    let wanted = query
        .as_deref()
        .and_then(|q| q.split('&').find_map(|pair| pair.strip_prefix("state=")))
        .filter(|s| !s.is_empty());
    match wanted.map(|s| SessionState::parse(s).ok_or(s)) {
        Some(Err(unknown)) => {
            let notice = Notice::failed(&ApiError::bad_request(
                "invalid_state",
                format!("there is no WhatsApp state {}", crate::domain::clip(unknown)),
            ));
            render_locations(&state, &visitor, None, Some(&notice)).await
        }
        Some(Ok(filter)) => render_locations(&state, &visitor, Some(filter), None).await,
        None => render_locations(&state, &visitor, None, None).await,
    }
}

pub async fn render_locations(
    state: &AppState,
    visitor: &Visitor,
    filter: Option<SessionState>,
    notice: Option<&Notice>,
) -> Response {
    let locations = match all_locations(state).await {
        Ok(locations) => locations,
        Err(e) => return error_page(state, visitor, &e),
    };
    let mut counts: BTreeMap<&str, usize> = BTreeMap::new();
    for location in &locations {
        *counts.entry(location.session.state.as_str()).or_default() += 1;
    }
    let mut chips = format!(
        "<a class=\"chip\" href=\"/\"{}>All <b>{}</b></a>",
        current(filter.is_none()),
        locations.len()
    );
    for s in SessionState::ALL {
        let n = counts.get(s.as_str()).copied().unwrap_or(0);
        chips.push_str(&format!(
            "<a class=\"chip\" href=\"/?state={0}\"{1}>{2} <b>{n}</b></a>",
            s.as_str(),
            current(filter == Some(s)),
            s.as_str().replace('_', " "),
        ));
    }
    let mut rows = String::with_capacity(locations.len() * 600);
    for location in locations.iter().filter(|l| filter.is_none_or(|f| l.session.state == f)) {
        rows.push_str(&location_row(location));
    }
    if rows.is_empty() {
        rows = "<tr><td colspan=\"6\" class=\"muted\">No location here yet. Install the app on a GHL \
                location (<a href=\"/oauth/install\">/oauth/install</a>) and it appears.</td></tr>"
            .into();
    }
    let body = format!(
        "<h1>Locations</h1><nav class=\"chips\" id=\"filters\" data-live aria-label=\"Filter by WhatsApp state\">{chips}</nav>\
         <table class=\"cards\"><thead><tr><th>Location</th><th>GHL</th><th>WhatsApp</th><th>Phone</th>\
         <th>Queues <small>in · out · dead</small></th><th>Last error</th></tr></thead>\
         <tbody id=\"locations\" data-live>{rows}</tbody></table>"
    );
    let url = filter.map_or_else(|| "/".to_owned(), |f| format!("/?state={}", f.as_str()));
    let frame = Frame {
        title: "Locations",
        nav: Nav::Locations,
        live: Some((&url, LIVE_MS)),
    };
    layout(state, visitor, frame, notice, &body)
}

fn current(yes: bool) -> &'static str {
    if yes { " aria-current=\"page\"" } else { "" }
}

fn location_row(l: &Location) -> String {
    let name = l.name.as_deref().unwrap_or(&l.id);
    let reason = l
        .session
        .reason
        .as_deref()
        .map(|r| format!(" <small>{}</small>", escape(r)))
        .unwrap_or_default();
    format!(
        "<tr><td data-label=\"Location\"><a href=\"/locations/{id}\">{name}</a><br><small>{id}</small></td>\
         <td data-label=\"GHL\">{ghl}</td>\
         <td data-label=\"WhatsApp\">{wa}{reason}<br><small>{since}</small></td>\
         <td data-label=\"Phone\">{phone}</td>\
         <td data-label=\"Queues\">{inbound} · {outbound} · {dead}</td>\
         <td data-label=\"Last error\">{error}</td></tr>",
        id = escape(&l.id),
        name = escape(name),
        ghl = badge(l.status.as_str()),
        wa = badge(l.session.state.as_str()),
        since = ago(&l.session.since),
        phone = escape(l.session.phone.as_deref().unwrap_or("—")),
        inbound = l.queues.inbound_pending,
        outbound = l.queues.outbound_pending,
        dead = dead_count(l.queues.dead),
        error = clipped(l.last_error.as_deref(), 80),
    )
}

fn dead_count(dead: i64) -> String {
    if dead > 0 {
        format!("<strong class=\"bad-text\">{dead}</strong>")
    } else {
        "0".into()
    }
}

/// One location: its WhatsApp session and what can be done with it, its queues, messages and
/// state history.
#[utoipa::path(get, operation_id = "console_location_page", path = "/locations/{id}", tag = "pages", params(IdPath), responses(
    (status = 200, description = "The location's page", content_type = "text/html"),
    (status = 401, description = "The sign-in page", content_type = "text/html"),
    (status = 404, description = "No such location", content_type = "text/html")))]
async fn location_page(State(state): State<AppState>, visitor: Visitor, PagePath(id): PagePath<String>) -> Response {
    if !visitor.signed_in {
        return sign_in(&state, &visitor, None);
    }
    match LocationId::parse(&id) {
        Ok(id) => render_location(&state, &visitor, &id, None, "").await,
        Err(e) => error_page(
            &state,
            &visitor,
            &ApiError::bad_request("invalid_location_id", e.to_string()),
        ),
    }
}

/// The location page, with the outcome of an action and anything it produced (`extra`, HTML).
pub async fn render_location(
    state: &AppState,
    visitor: &Visitor,
    id: &LocationId,
    notice: Option<&Notice>,
    extra: &str,
) -> Response {
    let loaded = async {
        let location = location(state, id.as_str()).await?;
        let recent = state.store.list_messages(id.as_str(), None, i64::MAX, 50).await?;
        let dead = state
            .store
            .list_messages(id.as_str(), Some("dead"), i64::MAX, 100)
            .await?;
        let history = state.store.state_history(id.as_str(), 30).await?;
        Ok::<_, ApiError>((location, recent, dead, history))
    };
    let (location, recent, dead, history) = match loaded.await {
        Ok(loaded) => loaded,
        Err(e) => return error_page(state, visitor, &e),
    };
    let csrf = csrf_field(visitor);
    let base = format!("/locations/{}", escape(id.as_str()));
    let name = escape(location.name.as_deref().unwrap_or(id.as_str()));
    let dead_rows: Vec<Message> = dead.iter().map(message_view).collect();
    let recent_rows: Vec<Message> = recent.iter().map(message_view).collect();
    let body = format!(
        "<p class=\"crumbs\"><a href=\"/\">Locations</a> /</p><h1>{name}</h1>\
         <p class=\"muted\">{id} · GHL {ghl}{reinstall} · installed {installed}{error}</p>\
         {extra}\
         <div class=\"grid\">\
         <section class=\"card\"><h2>WhatsApp</h2><div id=\"session\" data-live>{session}</div>\
           <div class=\"actions\">\
             <form method=\"post\" action=\"{base}/pair\">{csrf}<button>Start pairing (QR code)</button></form>\
             <form method=\"post\" action=\"{base}/pair\" class=\"inline\">{csrf}\
               <label for=\"phone\">or by code for</label>\
               <input id=\"phone\" name=\"phone\" type=\"tel\" placeholder=\"+15551234567\" required>\
               <button>Get a pairing code</button></form>\
             <form method=\"post\" action=\"{base}/logout\" data-confirm=\"Log this WhatsApp out and wipe its keys?\">{csrf}\
               <button class=\"danger\">Log out</button></form>\
           </div></section>\
         <section class=\"card\"><h2>Pairing link</h2><p>A signed link to hand to whoever holds the phone; \
           it shows the QR code and nothing else.</p>\
           <form method=\"post\" action=\"{base}/link\" class=\"inline\">{csrf}\
             <label for=\"days\">Valid for</label>\
             <input id=\"days\" name=\"days\" type=\"number\" min=\"1\" max=\"90\" value=\"7\" required> days \
             <button>Create link</button></form>\
           <h2>GHL connection</h2>\
           <form method=\"post\" action=\"{base}/test\">{csrf}<button>Test the GHL connection</button></form></section>\
         </div>\
         <section class=\"card\"><h2>Queues</h2><div id=\"queues\" data-live>{queues}</div>\
           <form method=\"post\" action=\"{base}/retry-dead\">{csrf}<button>Retry all dead messages</button></form>\
           <h3>Dead messages</h3><div id=\"dead\" data-live>{dead}</div></section>\
         <section class=\"card\"><h2>Recent messages</h2><div id=\"recent\" data-live>{recent}</div></section>\
         <section class=\"card\"><h2>State history</h2><div id=\"history\" data-live>{history}</div></section>",
        id = escape(id.as_str()),
        ghl = badge(location.status.as_str()),
        reinstall = if location.needs_reinstall {
            " — <strong>install the app again</strong>"
        } else {
            ""
        },
        installed = ago(&location.installed_at),
        error = location
            .last_error
            .as_deref()
            .map(|e| format!("<br>Last error: {}", escape(e)))
            .unwrap_or_default(),
        session = session_block(&location),
        queues = queues_block(&location),
        dead = messages_table(&dead_rows, Some((&base, &csrf))),
        recent = messages_table(&recent_rows, None),
        history = history_table(&history),
    );
    let frame = Frame {
        title: location.name.as_deref().unwrap_or(id.as_str()),
        nav: Nav::None,
        live: Some((&base, LIVE_MS)),
    };
    layout(state, visitor, frame, notice, &body)
}

fn queues_block(location: &Location) -> String {
    format!(
        "<p>Inbound waiting: <b>{}</b> · Outbound waiting: <b>{}</b> · Dead: <b>{}</b></p>",
        location.queues.inbound_pending,
        location.queues.outbound_pending,
        dead_count(location.queues.dead)
    )
}

fn session_block(location: &Location) -> String {
    let s = &location.session;
    let mut html = format!(
        "<p>{state}{reason} <small>since {since}</small></p><p>Phone: <b>{phone}</b></p>",
        state = badge(s.state.as_str()),
        reason = s
            .reason
            .as_deref()
            .map(|r| format!(" <code>{}</code>", escape(r)))
            .unwrap_or_default(),
        since = ago(&s.since),
        phone = escape(s.phone.as_deref().unwrap_or("—")),
    );
    if let Some(qr) = &s.qr {
        html.push_str(&format!(
            "<div class=\"qr\" aria-label=\"QR code to scan with WhatsApp\">{}</div>\
             <p class=\"muted\">WhatsApp → Settings → Linked devices → Link a device.</p>",
            qr_svg(qr)
        ));
    }
    if let Some(code) = &s.pairing_code {
        html.push_str(&format!(
            "<p>Pairing code: <b class=\"code\">{}</b> (WhatsApp → Linked devices → Link with phone number)</p>",
            escape(code)
        ));
    }
    html
}

/// Messages, newest first; with `retry` (the location's base path and the CSRF field) each
/// row gets a Retry button.
fn messages_table(messages: &[Message], retry: Option<(&str, &str)>) -> String {
    if messages.is_empty() {
        return "<p class=\"muted\">None.</p>".into();
    }
    let mut rows = String::new();
    for m in messages {
        let action = retry
            .map(|(base, csrf)| {
                format!(
                    "<td><form method=\"post\" action=\"{base}/messages/{id}/retry\">{csrf}<button>Retry</button></form></td>",
                    id = escape(&m.id)
                )
            })
            .unwrap_or_default();
        rows.push_str(&format!(
            "<tr><td data-label=\"Id\"><code>{id}</code></td><td data-label=\"Direction\">{direction}</td>\
             <td data-label=\"State\">{state}</td><td data-label=\"Kind\">{kind}</td>\
             <td data-label=\"Attempts\">{attempts}</td><td data-label=\"Received\">{received}</td>\
             <td data-label=\"Error\">{error}</td>{action}</tr>",
            id = escape(&m.id),
            direction = if m.direction == "inbound" {
                "→ GHL"
            } else {
                "→ WhatsApp"
            },
            state = badge(&m.state),
            kind = escape(m.kind.as_deref().unwrap_or("")),
            attempts = m.attempts,
            received = ago(&m.received_at),
            error = clipped(m.last_error.as_deref(), 80),
        ));
    }
    let action_head = if retry.is_some() { "<th></th>" } else { "" };
    format!(
        "<table class=\"cards\"><thead><tr><th>Id</th><th>Direction</th><th>State</th><th>Kind</th>\
         <th>Attempts</th><th>Received</th><th>Error</th>{action_head}</tr></thead><tbody>{rows}</tbody></table>"
    )
}

fn history_table(events: &[StateEvent]) -> String {
    if events.is_empty() {
        return "<p class=\"muted\">No transition yet.</p>".into();
    }
    let mut rows = String::new();
    for e in events {
        rows.push_str(&format!(
            "<tr><td data-label=\"When\">{at}</td><td data-label=\"From\">{from}</td><td data-label=\"To\">{to}</td>\
             <td data-label=\"Reason\">{reason}</td></tr>",
            at = ago(&rfc3339(e.at)),
            from = e.from_state.as_deref().map(badge).unwrap_or_default(),
            to = badge(&e.to_state),
            reason = escape(e.reason.as_deref().unwrap_or("")),
        ));
    }
    format!(
        "<table class=\"cards\"><thead><tr><th>When</th><th>From</th><th>To</th><th>Reason</th></tr></thead>\
         <tbody>{rows}</tbody></table>"
    )
}

/// The instance, its database, counts and the metrics that matter at a glance.
#[utoipa::path(get, operation_id = "console_health_page", path = "/health", tag = "pages", responses(
    (status = 200, description = "The health page", content_type = "text/html"),
    (status = 401, description = "The sign-in page", content_type = "text/html")))]
async fn health_page(State(state): State<AppState>, visitor: Visitor) -> Response {
    if !visitor.signed_in {
        return sign_in(&state, &visitor, None);
    }
    let locations = match all_locations(&state).await {
        Ok(locations) => locations,
        Err(e) => return error_page(&state, &visitor, &e),
    };
    let ready = state.store.is_ready().await;
    let config = &state.config;
    let mut by_status: BTreeMap<&str, usize> = BTreeMap::new();
    let mut by_state: BTreeMap<&str, usize> = BTreeMap::new();
    let (mut inbound, mut outbound, mut dead) = (0, 0, 0);
    for l in &locations {
        *by_status.entry(l.status.as_str()).or_default() += 1;
        *by_state.entry(l.session.state.as_str()).or_default() += 1;
        inbound += l.queues.inbound_pending;
        outbound += l.queues.outbound_pending;
        dead += l.queues.dead;
    }
    let list = |counts: &BTreeMap<&str, usize>| {
        counts
            .iter()
            .map(|(k, n)| format!("{} <b>{n}</b>", badge(k)))
            .collect::<Vec<_>>()
            .join(" ")
    };
    let missing = config.ghl.missing();
    let metrics = metric_totals(&state.metrics.render());
    let metric_rows: String = GLANCE
        .iter()
        .map(|(name, label)| {
            let value = metrics.get(*name).copied().unwrap_or(0.0);
            format!("<tr><td>{label}</td><td><b>{value}</b></td></tr>")
        })
        .collect();
    let body = format!(
        "<h1>Health</h1><div class=\"grid\">\
         <section class=\"card\"><h2>This instance</h2><table class=\"plain\">\
         <tr><td>Instance</td><td><code>{instance}</code></td></tr>\
         <tr><td>Version</td><td>{version}</td></tr>\
         <tr><td>Database</td><td>{dialect} {db}</td></tr>\
         <tr><td>Started</td><td>{started}</td></tr>\
         <tr><td>WhatsApp</td><td>{backend}</td></tr>\
         <tr><td>GHL app</td><td>{ghl}</td></tr>\
         <tr><td>GHL Custom Page</td><td>{page}</td></tr>\
         <tr><td>Public URL</td><td><code>{public}</code></td></tr></table></section>\
         <section class=\"card\" id=\"counts\" data-live><h2>Counts</h2>\
         <p>Locations: <b>{total}</b> {by_status}</p><p>WhatsApp: {by_state}</p>\
         <p>Inbound waiting <b>{inbound}</b> · Outbound waiting <b>{outbound}</b> · Dead {dead}</p></section>\
         <section class=\"card\" id=\"metrics\" data-live><h2>Since start</h2><table class=\"plain\">{metric_rows}</table>\
         <p class=\"muted\">Everything else: <code>/metrics</code> (Prometheus, admin token).</p></section></div>",
        instance = escape(&config.instance_id),
        version = env!("CARGO_PKG_VERSION"),
        dialect = state.store.dialect(),
        db = if ready { badge("ok") } else { badge("failed") },
        started = if state.is_started() {
            badge("ok")
        } else {
            badge("pending")
        },
        backend = if state.sim.is_some() {
            "simulated (WAGHL_WA_BACKEND=sim)"
        } else {
            "whatsapp"
        },
        ghl = if missing.is_empty() {
            badge("ok")
        } else {
            format!("not configured: {}", escape(&missing.join(", ")))
        },
        page = if config.ghl.app_shared_secret.is_some() {
            badge("ok")
        } else {
            "off (set GHL_APP_SHARED_SECRET)".into()
        },
        public = escape(&config.public_url),
        total = locations.len(),
        by_status = list(&by_status),
        by_state = list(&by_state),
        dead = dead_count(dead),
    );
    let frame = Frame {
        title: "Health",
        nav: Nav::Health,
        live: Some(("/health", LIVE_MS * 2)),
    };
    layout(&state, &visitor, frame, None, &body)
}

/// The counters shown on the health page, by Prometheus name.
const GLANCE: [(&str, &str); 7] = [
    ("waghl_pairings_total", "Phones linked"),
    ("waghl_session_restarts_total", "Session restarts"),
    ("waghl_session_health_check_failures_total", "Health check failures"),
    ("waghl_messages_total", "Messages relayed (both ways, any outcome)"),
    ("waghl_webhook_rejections_total", "Webhooks refused"),
    ("waghl_ghl_token_refreshes_total", "GHL token refreshes"),
    ("waghl_task_panics_total", "Task panics"),
];

/// Sums every sample of each metric over its labels, from the Prometheus text.
fn metric_totals(text: &str) -> BTreeMap<String, f64> {
    let mut totals = BTreeMap::new();
    for line in text.lines().filter(|l| !l.starts_with('#')) {
        let Some((series, value)) = line.rsplit_once(' ') else {
            continue;
        };
        let name = series.split('{').next().unwrap_or(series);
        if let Ok(value) = value.parse::<f64>() {
            *totals.entry(name.to_owned()).or_default() += value;
        }
    }
    totals
}

/// A page that says what went wrong, with the API's status.
pub fn error_page(state: &AppState, visitor: &Visitor, e: &ApiError) -> Response {
    let notice = Notice::failed(e);
    let body = "<p><a href=\"/\">Back to the locations</a></p>";
    let frame = Frame {
        title: "Error",
        nav: Nav::None,
        live: None,
    };
    layout(state, visitor, frame, Some(&notice), body)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn metric_totals_add_up_every_label_set() {
        let text = "# HELP waghl_messages_total x\nwaghl_messages_total{direction=\"in\"} 2\n\
                    waghl_messages_total{direction=\"out\"} 3\nwaghl_pairings_total 1\n";
        let totals = metric_totals(text);
        assert_eq!(totals["waghl_messages_total"], 5.0);
        assert_eq!(totals["waghl_pairings_total"], 1.0);
    }
}
