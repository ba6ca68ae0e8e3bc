//! The console's one stylesheet and one script, served as files so that the pages' CSP can
//! forbid inline code. The script only improves pages that work without it: live regions,
//! copy buttons, confirmations.

use axum::http::header::{CACHE_CONTROL, CONTENT_TYPE, X_CONTENT_TYPE_OPTIONS};
use axum::response::IntoResponse;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use crate::state::AppState;

pub fn router() -> OpenApiRouter<AppState> {
    OpenApiRouter::new().routes(routes!(stylesheet)).routes(routes!(script))
}

fn asset(content_type: &'static str, body: &'static str) -> impl IntoResponse {
    (
        [
            (CONTENT_TYPE, content_type),
            // Revalidated each time: an upgrade's pages never run the previous script.
            (CACHE_CONTROL, "no-cache"),
            (X_CONTENT_TYPE_OPTIONS, "nosniff"),
        ],
        body,
    )
}

/// The console's stylesheet.
#[utoipa::path(get, operation_id = "console_stylesheet", path = "/assets/console.css", tag = "pages",
    responses((status = 200, description = "CSS", content_type = "text/css")))]
async fn stylesheet() -> impl IntoResponse {
    asset("text/css; charset=utf-8", STYLE)
}

/// The console's script.
#[utoipa::path(get, operation_id = "console_script", path = "/assets/console.js", tag = "pages",
    responses((status = 200, description = "JavaScript", content_type = "text/javascript")))]
async fn script() -> impl IntoResponse {
    asset("text/javascript; charset=utf-8", SCRIPT)
}

const STYLE: &str = r#"
:root { --ink:#1d2733; --muted:#5d6b7a; --line:#e3e8ee; --bg:#f4f6f8; --card:#fff; --accent:#0b6bcb;
  --good:#127a3e; --good-bg:#e3f5ea; --wait:#8a5a00; --wait-bg:#fff3d6; --bad:#b42318; --bad-bg:#fde8e6; }
* { box-sizing: border-box; }
body { margin:0; font:15px/1.45 system-ui,-apple-system,"Segoe UI",Roboto,sans-serif; color:var(--ink); background:var(--bg); }
header { display:flex; align-items:center; gap:1rem; flex-wrap:wrap; padding:.6rem 1rem; background:#14202e; color:#fff; }
header a { color:#fff; text-decoration:none; }
header .brand { font-weight:700; letter-spacing:.02em; margin-right:auto; }
header nav { display:flex; gap:1rem; align-items:center; }
header nav a[aria-current] { border-bottom:2px solid #fff; }
header form { margin:0; }
button.link { background:none; border:0; color:#fff; padding:0; font:inherit; cursor:pointer; text-decoration:underline; }
main { max-width:76rem; margin:0 auto; padding:1rem; }
h1 { font-size:1.5rem; margin:.5rem 0 1rem; }
h2 { font-size:1.1rem; margin:0 0 .6rem; }
h3 { font-size:1rem; margin:1rem 0 .4rem; }
a { color:var(--accent); }
code { background:#eef1f4; padding:.05rem .3rem; border-radius:4px; font-size:.9em; overflow-wrap:anywhere; }
small, .muted { color:var(--muted); }
.card { background:var(--card); border-radius:10px; padding:1rem 1.2rem; margin-bottom:1rem; box-shadow:0 1px 3px rgba(0,0,0,.08); }
.card.narrow { max-width:30rem; margin:2rem auto; }
.grid { display:grid; grid-template-columns:repeat(auto-fit,minmax(20rem,1fr)); gap:1rem; }
.grid .card { margin-bottom:0; }
.grid + .card, .grid + section { margin-top:1rem; }
.notice { padding:.7rem 1rem; border-radius:8px; margin-bottom:1rem; font-weight:500; }
.notice.ok { background:var(--good-bg); color:var(--good); }
.notice.error { background:var(--bad-bg); color:var(--bad); }
.badge { display:inline-block; padding:.05rem .5rem; border-radius:999px; font-size:.85em; font-weight:600; background:#eef1f4; color:var(--muted); white-space:nowrap; }
.badge.good { background:var(--good-bg); color:var(--good); }
.badge.wait { background:var(--wait-bg); color:var(--wait); }
.badge.bad { background:var(--bad-bg); color:var(--bad); }
.bad-text { color:var(--bad); }
.chips { display:flex; flex-wrap:wrap; gap:.4rem; margin-bottom:1rem; }
.chip { padding:.25rem .7rem; border-radius:999px; background:var(--card); border:1px solid var(--line); text-decoration:none; color:var(--ink); text-transform:capitalize; }
.chip[aria-current] { background:var(--ink); color:#fff; border-color:var(--ink); }
table { width:100%; border-collapse:collapse; background:var(--card); }
th, td { text-align:left; padding:.5rem .6rem; border-bottom:1px solid var(--line); vertical-align:top; }
th { font-size:.85rem; color:var(--muted); font-weight:600; }
table.plain td { border:0; padding:.25rem .5rem .25rem 0; }
form { margin:0 0 .6rem; }
form.inline { display:flex; flex-wrap:wrap; gap:.4rem; align-items:center; }
label { font-weight:500; }
.card.narrow label { display:block; margin:.6rem 0 .3rem; }
input { font:inherit; padding:.45rem .6rem; border:1px solid #c5ced8; border-radius:6px; }
input[type=number] { width:5rem; }
.card.narrow input { width:100%; margin-bottom:.8rem; }
button { font:inherit; padding:.45rem .9rem; border-radius:6px; border:1px solid var(--accent); background:var(--accent); color:#fff; cursor:pointer; }
button.danger { background:#fff; color:var(--bad); border-color:var(--bad); }
td button { padding:.2rem .6rem; }
td code { white-space:nowrap; word-break:normal; }
.actions { display:flex; flex-direction:column; gap:.2rem; margin-top:.6rem; }
.qr svg { width:min(300px,100%); height:auto; display:block; }
.code { font-size:1.6rem; letter-spacing:.15em; }
.copy { display:flex; gap:.4rem; }
.copy input { flex:1; min-width:0; }
.crumbs { margin:0; }
@media (max-width: 700px) {
  main { padding:.6rem; }
  table.cards thead { display:none; }
  table.cards, table.cards tbody, table.cards tr, table.cards td { display:block; width:100%; }
  table.cards tr { border-bottom:2px solid var(--line); padding:.4rem 0; }
  table.cards td { border:0; padding:.2rem .6rem; }
  table.cards td[data-label]::before { content:attr(data-label); display:block; font-size:.75rem; color:var(--muted); }
}
"#;

const SCRIPT: &str = r#"
"use strict";
// Live regions: fetch this page again and swap every [data-live] element that changed.
// The page names its own URL: after a form, the address bar shows the action's.
const every = Number(document.body.dataset.refreshMs || 0);
const url = document.body.dataset.liveUrl;
async function refresh() {
  try {
    const response = await fetch(url, { cache: "no-store", credentials: "same-origin" });
    if (response.status === 401) { window.location.href = "/"; return; }
    if (!response.ok) return;
    const fresh = new DOMParser().parseFromString(await response.text(), "text/html");
    for (const region of document.querySelectorAll("[data-live]")) {
      const next = fresh.getElementById(region.id);
      if (next && next.innerHTML !== region.innerHTML) region.innerHTML = next.innerHTML;
    }
  } catch (e) { /* offline for a moment: the next tick tries again */ }
}
if (every > 0 && url && document.querySelector("[data-live]")) setInterval(refresh, every);
document.addEventListener("click", (event) => {
  const button = event.target.closest("[data-copy]");
  if (!button) return;
  const input = document.getElementById(button.dataset.copy);
  input.select();
  const copied = () => { button.textContent = "Copied"; };
  if (navigator.clipboard) navigator.clipboard.writeText(input.value).then(copied, () => document.execCommand("copy") && copied());
  else if (document.execCommand("copy")) copied();
});
document.addEventListener("submit", (event) => {
  const question = event.target.dataset.confirm;
  if (question && !window.confirm(question)) event.preventDefault();
});
"#;
