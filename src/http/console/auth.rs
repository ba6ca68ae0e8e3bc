//! Who is at the console: signing in with the admin token, the session cookie, and the CSRF
//! token of every form.
//!
//! Two cookies, both HttpOnly, SameSite=Strict, `Secure` when `WAGHL_PUBLIC_URL` is https:
//! - `waghl_browser`: a random id of this browser, drawn on its first visit (and again at each
//!   sign-in, so an id planted before cannot be ridden);
//! - `waghl_console`: `expiry.signature`, the signature (a key derived from the secret key)
//!   binding the expiry to the browser id.
//!
//! Every form carries `csrf` = a signature of the browser id: a page of another site can
//! neither read it nor make one. Sessions are stateless: signing out removes the cookie; a
//! copied cookie stays valid until it expires (12 hours), and changing the secret key ends
//! every session.

use axum::extract::FromRequestParts;
use axum::http::HeaderValue;
use axum::http::header::{COOKIE, SET_COOKIE};
use axum::http::request::Parts;
use axum::response::Response;
use subtle::ConstantTimeEq;

use crate::crypto::random_hex;
use crate::state::AppState;
use crate::time::now_ms;

const BROWSER: &str = "waghl_browser";
const SESSION: &str = "waghl_console";
const SESSION_SECONDS: i64 = 12 * 3600;

/// The browser making a console request, and whether it is signed in.
pub struct Visitor {
    browser: String,
    /// The browser id was drawn by this request: the response must set it.
    new_browser: bool,
    pub signed_in: bool,
    secure: bool,
    csrf: String,
}

impl FromRequestParts<AppState> for Visitor {
    type Rejection = std::convert::Infallible;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, Self::Rejection> {
        let browser = cookie(parts, BROWSER).filter(|id| id.len() == 32 && id.bytes().all(|b| b.is_ascii_hexdigit()));
        let signed_in = match (&browser, cookie(parts, SESSION)) {
            (Some(browser), Some(session)) => session_is_valid(state, browser, &session),
            _ => false,
        };
        let new_browser = browser.is_none();
        Ok(Self::new(
            state,
            browser.unwrap_or_else(|| random_hex(16)),
            new_browser,
            signed_in,
        ))
    }
}

impl Visitor {
    fn new(state: &AppState, browser: String, new_browser: bool, signed_in: bool) -> Self {
        let csrf = state.store.key().sign_session(&format!("csrf:{browser}"));
        Self {
            browser,
            new_browser,
            signed_in,
            secure: state.config.public_url.starts_with("https://"),
            csrf,
        }
    }

    /// The token every form of this browser carries.
    pub fn csrf(&self) -> &str {
        &self.csrf
    }

    /// Whether a submitted form came from one of our pages in this browser.
    pub fn csrf_matches(&self, submitted: &str) -> bool {
        bool::from(submitted.as_bytes().ct_eq(self.csrf.as_bytes()))
    }

    /// Signs this browser in: a fresh browser id and a session bound to it.
    pub fn sign_in(state: &AppState) -> Self {
        Self::new(state, random_hex(16), true, true)
    }

    /// The cookies this response must set: the browser id when it is new, and the session
    /// (set after signing in, cleared after signing out).
    pub fn set_cookies(&self, state: &AppState, response: &mut Response) {
        let secure = if self.secure { "; Secure" } else { "" };
        let attributes = format!("; Path=/; HttpOnly; SameSite=Strict{secure}");
        let mut cookies = Vec::new();
        if self.new_browser {
            cookies.push(format!("{BROWSER}={}{attributes}", self.browser));
            if self.signed_in {
                let expires = now_ms() / 1000 + SESSION_SECONDS;
                let signature = state.store.key().sign_session(&session_message(&self.browser, expires));
                cookies.push(format!(
                    "{SESSION}={expires}.{signature}{attributes}; Max-Age={SESSION_SECONDS}"
                ));
            }
        }
        if !self.signed_in {
            cookies.push(format!("{SESSION}={attributes}; Max-Age=0"));
        }
        for cookie in cookies {
            if let Ok(value) = HeaderValue::from_str(&cookie) {
                response.headers_mut().append(SET_COOKIE, value);
            }
        }
    }

    /// Signs out: the response clears the session cookie.
    pub fn sign_out(&mut self) {
        self.signed_in = false;
    }
}

/// Compares a presented admin token with the configured one in constant time.
pub fn is_admin_token(state: &AppState, presented: &str) -> bool {
    bool::from(presented.trim().as_bytes().ct_eq(state.admin_token.expose().as_bytes()))
}

fn session_message(browser: &str, expires: i64) -> String {
    format!("console:{browser}:{expires}")
}

fn session_is_valid(state: &AppState, browser: &str, session: &str) -> bool {
    let Some((expires, signature)) = session.split_once('.') else {
        return false;
    };
    let Ok(expires) = expires.parse::<i64>() else {
        return false;
    };
    expires > now_ms() / 1000
        && state
            .store
            .key()
            .verify_session(&session_message(browser, expires), signature)
}

/// The value of cookie `name`, if the request sent it.
fn cookie(parts: &Parts, name: &str) -> Option<String> {
    parts
        .headers
        .get_all(COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|header| header.split(';'))
        .filter_map(|pair| pair.trim().split_once('='))
        .find(|(key, _)| *key == name)
        .map(|(_, value)| value.to_owned())
}
