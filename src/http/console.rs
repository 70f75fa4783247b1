//! `GET /admin`: the auditor's and admin's console, a single page served by commguard itself.
//! Its assets are embedded in the binary (`assets/console/`); the page holds no data and no
//! secret: it signs in with a token kept in the tab's sessionStorage and calls the admin API
//! (`/admin/api/*`) like any client, so nothing here can bypass the API's authorization. The page
//! gets the CSP docs/http.md#headers-and-cors sets for an admin HTML page (`headers::layer`); no inline script
//! or style, no third-party origin.

use axum::http::header::CONTENT_TYPE;
use axum::response::IntoResponse;
use axum::routing::get;
use axum::Router;

use crate::state::AppState;

/// The page's path; `headers::layer` gives its HTML the console CSP.
pub const PAGE: &str = "/admin";

/// docs/http.md#headers-and-cors, for the `/admin` HTML page.
pub const PAGE_CSP: &str = "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; \
                            connect-src 'self'; frame-ancestors 'none'";

const INDEX: &str = include_str!("../../assets/console/index.html");
const SCRIPT: &str = include_str!("../../assets/console/console.js");
const JCS: &str = include_str!("../../assets/console/jcs.js");
const STYLE: &str = include_str!("../../assets/console/console.css");
const ICON: &str = include_str!("../../assets/console/icon.svg");

pub fn routes() -> Router<AppState> {
    let asset = |kind: &'static str, body: &'static str| {
        get(move || async move { ([(CONTENT_TYPE, kind)], body).into_response() })
    };
    Router::new()
        .route(PAGE, asset("text/html; charset=utf-8", INDEX))
        .route("/admin/console.js", asset("text/javascript; charset=utf-8", SCRIPT))
        .route("/admin/jcs.js", asset("text/javascript; charset=utf-8", JCS))
        .route("/admin/console.css", asset("text/css; charset=utf-8", STYLE))
        .route("/admin/icon.svg", asset("image/svg+xml", ICON))
}
