//! `strait-demo-app`: the sample application of `straitctl demo`. An HTTP service that answers
//! `GET /api` with its service, version and zone and, when it calls another service (through
//! its sidecar's outbound, `--call`), that service's answer nested as `calls`; `GET /` is the
//! same as a small page, and `GET /healthz` answers 200 while it runs. A failed downstream call is part of the answer (`error`, status 502),
//! so the chain shows where a request stopped and why. `PUT /fault/<status>` makes `/api` and
//! `/` answer that status (a failing instance, for `straitctl demo fail`) until `DELETE /fault`.
#![forbid(unsafe_code)]

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU16, Ordering};
use std::sync::Arc;
use std::time::Duration;

use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::{Html, IntoResponse, Json};
use axum::routing::{delete, get, put};
use clap::Parser;
use serde_json::{json, Value};

/// The sample application of `straitctl demo`.
#[derive(Parser, Debug)]
#[command(name = "strait-demo-app", disable_version_flag = true)]
struct Flags {
    /// The service this instance is (`frontend`, `backend`, `store`).
    #[arg(long)]
    service: String,
    /// Its version (`v1`, `v2`).
    #[arg(long, default_value = "v1")]
    version: String,
    /// The zone it runs in.
    #[arg(long)]
    zone: String,
    /// Where it listens.
    #[arg(long)]
    listen: SocketAddr,
    /// The URL of the service it calls on each request, through its sidecar (none: a leaf).
    #[arg(long)]
    call: Option<String>,
}

struct App {
    flags: Flags,
    client: reqwest::Client,
    /// The status every answer has while a fault is set (0: none).
    fault: AtomicU16,
}

/// This instance's answer, with the downstream answer (or error) nested.
async fn answer(app: &App) -> (StatusCode, Value) {
    let mut me = json!({"service": app.flags.service, "version": app.flags.version, "zone": app.flags.zone});
    if let Ok(status) = StatusCode::from_u16(app.fault.load(Ordering::Relaxed)) {
        me["error"] = json!(format!("a fault set by `straitctl demo fail`: every answer is {status}"));
        return (status, me);
    }
    let Some(url) = &app.flags.call else { return (StatusCode::OK, me) };
    let called = app.client.get(format!("{url}/api")).send().await;
    match called {
        Ok(response) => {
            let status = response.status();
            let text = response.text().await.unwrap_or_default();
            match serde_json::from_str::<Value>(&text) {
                Ok(downstream) if status.is_success() => {
                    me["calls"] = downstream;
                    (StatusCode::OK, me)
                }
                Ok(downstream) => {
                    me["calls"] = downstream;
                    me["error"] = json!(format!("{url} answered {status}"));
                    (StatusCode::BAD_GATEWAY, me)
                }
                Err(_) => {
                    me["error"] = json!(format!("{url} answered {status}: {}", text.trim()));
                    (StatusCode::BAD_GATEWAY, me)
                }
            }
        }
        Err(e) => {
            me["error"] = json!(format!("calling {url}: {e}"));
            (StatusCode::BAD_GATEWAY, me)
        }
    }
}

/// `PUT /fault/<status>`: every answer gets `status` (400-599) from now on.
async fn set_fault(State(app): State<Arc<App>>, Path(status): Path<u16>) -> (StatusCode, String) {
    if !(400..=599).contains(&status) {
        return (StatusCode::BAD_REQUEST, format!("a fault status is 400-599, not {status}\n"));
    }
    app.fault.store(status, Ordering::Relaxed);
    (StatusCode::OK, format!("{} {} answers {status} from now on\n", app.flags.service, app.flags.version))
}

/// `DELETE /fault`: answers are normal again.
async fn clear_fault(State(app): State<Arc<App>>) -> String {
    app.fault.store(0, Ordering::Relaxed);
    format!("{} {} answers normally again\n", app.flags.service, app.flags.version)
}

async fn api(State(app): State<Arc<App>>) -> impl IntoResponse {
    let (status, body) = answer(&app).await;
    (status, Json(body))
}

async fn page(State(app): State<Arc<App>>) -> impl IntoResponse {
    let (status, body) = answer(&app).await;
    let mut rows = String::new();
    let mut hop = Some(&body);
    while let Some(h) = hop {
        let field = |k: &str| h.get(k).and_then(Value::as_str).unwrap_or("").to_string();
        rows.push_str(&format!(
            "<tr><td>{}</td><td>{}</td><td>{}</td><td>{}</td></tr>",
            field("service"),
            field("version"),
            field("zone"),
            field("error")
        ));
        hop = h.get("calls");
    }
    let html = format!(
        "<!doctype html><title>Strait demo</title><meta http-equiv=refresh content=1>\
         <h1>Strait demo: {}</h1><table border=1 cellpadding=4><tr><th>service</th><th>version</th><th>zone</th><th>error</th></tr>{rows}</table>\
         <p>This page reloads every second; the JSON is at <a href=/api>/api</a>.</p>",
        if status.is_success() { "every call answered" } else { "a call failed" }
    );
    (status, Html(html))
}

#[tokio::main(flavor = "current_thread")]
async fn main() {
    let flags = Flags::parse();
    let listen = flags.listen;
    let client = match reqwest::Client::builder().timeout(Duration::from_secs(5)).build() {
        Ok(c) => c,
        Err(e) => {
            eprintln!("strait-demo-app: {e}");
            std::process::exit(1);
        }
    };
    let app = Arc::new(App { flags, client, fault: AtomicU16::new(0) });
    let router = axum::Router::new()
        .route("/", get(page))
        .route("/api", get(api))
        .route("/healthz", get(|| async { "ok\n" }))
        .route("/fault/{status}", put(set_fault))
        .route("/fault", delete(clear_fault))
        .with_state(app.clone());
    let listener = match tokio::net::TcpListener::bind(listen).await {
        Ok(l) => l,
        Err(e) => {
            eprintln!("strait-demo-app: binding {listen}: {e}");
            std::process::exit(1);
        }
    };
    eprintln!("strait-demo-app: {} {} in {} listening on {listen}", app.flags.service, app.flags.version, app.flags.zone);
    if let Err(e) = axum::serve(listener, router).await {
        eprintln!("strait-demo-app: {e}");
        std::process::exit(1);
    }
}
