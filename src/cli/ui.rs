//! The live page (`--ui` of `run`, `exec` and `tunnel`): a web page served
//! on loopback by the running instance, showing its flows as they happen
//! on a world map (by the jurisdiction layer chosen), by app and by
//! destination, with where each destination is (every
//! jurisdiction layer), blocks and leaks, and totals over the last hour.
//!
//! It runs on a thread and a runtime of its own, fed through a bounded
//! queue: the engine's loop only offers each decision (a full queue drops
//! it for the page, counted), so a slow or absent browser never slows the
//! firewall.
//!
//! **Safe by construction.** It listens on 127.0.0.1 only. Every request
//! must name this server in its `Host` header (a DNS-rebinding page names
//! its own host and is refused), may carry no foreign `Origin` and no
//! cross-site `Sec-Fetch-Site`, and the data (`/api/…`) needs the random
//! token printed at start (in the URL's fragment, which browsers never
//! send to a server or in a `Referer`). No CORS header is ever sent; the
//! page allows scripts and styles from itself only.
//!
//! **Control actions** (answering an `ask` rule's question, reloading the
//! rules) are POSTs of JSON to `/api/answer` and `/api/reload`, with the
//! token in the `X-Geowall-Token` header only (never the query) and
//! `Content-Type: application/json`: neither a form nor a link of another
//! site can send those without the preflight this page never grants.

use std::collections::VecDeque;
use std::convert::Infallible;
use std::net::{Ipv4Addr, SocketAddr};
use std::sync::{Arc, Mutex, PoisonError};

use anyhow::Context;
use axum::extract::{Request, State};
use axum::http::{HeaderMap, HeaderValue, Method, StatusCode, header};
use axum::middleware::Next;
use axum::response::sse::{Event as SseEvent, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use geowall::engine::dataplane::Event;
use geowall::intel::Intel;
use geowall::intel::jurisdiction::WorldHandle;
use geowall::policy::PolicyHandle;
use serde_json::{Value, json};
use tokio::sync::{broadcast, mpsc};

/// Decisions waiting for the page's thread; more are dropped (counted).
const QUEUE: usize = 4_096;
/// The latest decisions a page gets when it opens.
const BACKLOG: usize = 2_000;
/// Decisions a slow page may fall behind before it skips ahead.
const LAG: usize = 1_024;

/// What the page's thread is given.
pub(crate) enum Item {
    /// A flow or DNS decision.
    Event(Box<Event>),
    /// A subscription round (`update`, `update-failed`).
    Update(Value),
}

/// The engine's side: offers decisions to the page without waiting.
#[derive(Clone)]
pub(crate) struct Feed {
    tx: mpsc::Sender<Item>,
    dropped: Arc<std::sync::atomic::AtomicU64>,
}

impl Feed {
    /// Offers `item`; a full queue drops it for the page (counted).
    pub(crate) fn offer(&self, item: Item) {
        if self.tx.try_send(item).is_err() {
            self.dropped
                .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        }
    }
}

/// Who may ask.
struct Guard {
    /// The `Host` values that name this server.
    hosts: [String; 3],
    /// The origins a request may come from.
    origins: [String; 2],
    token: String,
}

/// What the page may act on.
pub(crate) struct Control {
    /// Answers `ask` rules' questions.
    pub(crate) asker: geowall::driver::ask::Asker,
    /// Reads the rules again.
    pub(crate) reload: super::subscribe::Reload,
}

/// The server's state.
struct Page {
    guard: Guard,
    control: Control,
    /// The latest decisions, for a page that opens now: described when
    /// a page reads them (nothing is described while no page is open).
    backlog: Mutex<VecDeque<Line>>,
    /// What describes them.
    describer: Describer,
    live: broadcast::Sender<Arc<str>>,
}

/// A decision kept for the pages.
#[derive(Clone)]
enum Line {
    /// Not described yet, with when it came (ms since the epoch).
    Raw(Arc<Item>, u64),
    /// Described, as JSON.
    Done(Arc<str>),
}

/// Describes decisions with the running rules' catalogs and world.
struct Describer {
    policy: Arc<PolicyHandle>,
    world: Arc<WorldHandle>,
}

impl Describer {
    /// `item` as a JSON line, with its time, where its server is and, when
    /// given, how many decisions the page has missed so far.
    fn line(&self, item: &Item, time_ms: u64, dropped: Option<u64>) -> Arc<str> {
        let mut v = match item {
            Item::Event(e) => described(e, &self.policy, &self.world),
            Item::Update(u) => u.clone(),
        };
        if let Some(o) = v.as_object_mut() {
            o.insert("time_ms".into(), json!(time_ms));
            if let Some(d) = dropped {
                o.insert("page_dropped".into(), json!(d));
            }
        }
        Arc::from(v.to_string())
    }

    fn done(&self, l: &Line) -> Arc<str> {
        match l {
            Line::Raw(item, t) => self.line(item, *t, None),
            Line::Done(s) => Arc::clone(s),
        }
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

/// A random token: 32 bytes from the OS, in hex.
fn token() -> anyhow::Result<String> {
    use ring::rand::SecureRandom;
    let mut b = [0u8; 32];
    ring::rand::SystemRandom::new()
        .fill(&mut b)
        .map_err(|_| anyhow::anyhow!("no random bytes from the OS for the page's token"))?;
    Ok(b.iter().map(|x| format!("{x:02x}")).collect())
}

/// Whether `a` and `b` are equal, in time that does not depend on where
/// they differ.
fn same(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |d, (x, y)| d | (x ^ y)) == 0
}

/// Starts the page on `127.0.0.1:port` (0: any free port), fed with what
/// the engine offers and described with the running rules' catalogs and
/// world; the feed and the URL to open (with its token).
pub(crate) fn start(
    port: u16,
    policy: Arc<PolicyHandle>,
    world: Arc<WorldHandle>,
    control: Control,
) -> anyhow::Result<(Feed, String)> {
    let listener = std::net::TcpListener::bind((Ipv4Addr::LOCALHOST, port))
        .with_context(|| format!("--ui: cannot listen on 127.0.0.1:{port}"))?;
    listener.set_nonblocking(true)?;
    let port = listener.local_addr()?.port();
    let token = token()?;
    let url = format!("http://127.0.0.1:{port}/#{token}");
    let (tx, rx) = mpsc::channel(QUEUE);
    let feed = Feed {
        tx,
        dropped: Arc::default(),
    };
    let page = Arc::new(Page {
        guard: Guard {
            hosts: [
                format!("127.0.0.1:{port}"),
                format!("localhost:{port}"),
                format!("[::1]:{port}"),
            ],
            origins: [
                format!("http://127.0.0.1:{port}"),
                format!("http://localhost:{port}"),
            ],
            token,
        },
        control,
        backlog: Mutex::new(VecDeque::with_capacity(BACKLOG)),
        describer: Describer { policy, world },
        live: broadcast::channel(LAG).0,
    });
    let dropped = Arc::clone(&feed.dropped);
    std::thread::Builder::new()
        .name("geowall-ui".into())
        .spawn(move || {
            let rt = match tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
            {
                Ok(rt) => rt,
                Err(e) => {
                    eprintln!("geowall: WARNING: --ui: cannot start its runtime: {e}");
                    return;
                }
            };
            rt.block_on(async move {
                let listener = match tokio::net::TcpListener::from_std(listener) {
                    Ok(l) => l,
                    Err(e) => {
                        eprintln!("geowall: WARNING: --ui: {e}");
                        return;
                    }
                };
                tokio::spawn(describe(rx, Arc::clone(&page), dropped));
                if let Err(e) = axum::serve(listener, router(page)).await {
                    eprintln!("geowall: WARNING: --ui: the page's server stopped: {e}");
                }
            });
        })
        .context("--ui: cannot start its thread")?;
    Ok((feed, url))
}

/// The routes, behind the checks.
fn router(page: Arc<Page>) -> axum::Router {
    axum::Router::new()
        .route("/", get(|| async { asset("text/html", INDEX) }))
        .route(
            "/app.js",
            get(|| async { asset("text/javascript", APP_JS) }),
        )
        .route("/app.css", get(|| async { asset("text/css", APP_CSS) }))
        .route(
            "/world.svg",
            get(|| async { asset("image/svg+xml", super::report::WORLD_SVG) }),
        )
        .route("/api/events", get(events))
        .route("/api/info", get(info))
        .route("/api/answer", post(answer))
        .route("/api/reload", post(reload))
        .layer(axum::middleware::from_fn_with_state(
            Arc::clone(&page),
            guard,
        ))
        .with_state(page)
}

const INDEX: &str = include_str!("ui/index.html");
const APP_JS: &str = include_str!("ui/app.js");
const APP_CSS: &str = include_str!("ui/app.css");

fn asset(kind: &'static str, body: &'static str) -> Response {
    ([(header::CONTENT_TYPE, kind)], body).into_response()
}

/// Why a request is refused, if it is.
fn refusal(
    page: &Guard,
    method: &Method,
    headers: &HeaderMap,
    path: &str,
    query: Option<&str>,
) -> Option<&'static str> {
    let host = headers.get(header::HOST).and_then(|h| h.to_str().ok());
    if !host.is_some_and(|h| page.hosts.iter().any(|x| x == h)) {
        return Some("this page answers to its own address only (Host)");
    }
    if let Some(o) = headers.get(header::ORIGIN)
        && !o
            .to_str()
            .is_ok_and(|o| page.origins.iter().any(|x| x == o))
    {
        return Some("requests from other origins are refused");
    }
    if headers
        .get("sec-fetch-site")
        .is_some_and(|s| s.as_bytes() == b"cross-site")
    {
        return Some("requests from other sites are refused");
    }
    let header_token = headers.get("x-geowall-token").and_then(|t| t.to_str().ok());
    if *method == Method::POST {
        // An action: the token in its header, JSON in the body.
        if !header_token.is_some_and(|t| same(t.as_bytes(), page.token.as_bytes())) {
            return Some("an action needs the token printed at start in X-Geowall-Token");
        }
        let json = headers
            .get(header::CONTENT_TYPE)
            .and_then(|c| c.to_str().ok())
            .is_some_and(|c| c.split(';').next() == Some("application/json"));
        if !json {
            return Some("an action's body is JSON (Content-Type: application/json)");
        }
        return None;
    }
    if path.starts_with("/api/") {
        let given =
            header_token.or_else(|| query?.split('&').find_map(|kv| kv.strip_prefix("token=")));
        if !given.is_some_and(|t| same(t.as_bytes(), page.token.as_bytes())) {
            return Some("the token printed at start is needed");
        }
    }
    None
}

/// Refuses what [`refusal`] refuses; marks every answer as not to be
/// framed, cached or sent on as a referrer, with scripts and styles from
/// this page only.
async fn guard(State(page): State<Arc<Page>>, req: Request, next: Next) -> Response {
    let mut r = match refusal(
        &page.guard,
        req.method(),
        req.headers(),
        req.uri().path(),
        req.uri().query(),
    ) {
        Some(why) => (StatusCode::FORBIDDEN, format!("geowall: {why}\n")).into_response(),
        None => next.run(req).await,
    };
    let h = r.headers_mut();
    for (k, v) in [
        (
            header::CONTENT_SECURITY_POLICY,
            "default-src 'none'; script-src 'self'; style-src 'self'; connect-src 'self'; img-src 'self' data:; frame-ancestors 'none'; base-uri 'none'; form-action 'none'",
        ),
        (header::X_FRAME_OPTIONS, "DENY"),
        (header::REFERRER_POLICY, "no-referrer"),
        (header::CACHE_CONTROL, "no-store"),
        (header::X_CONTENT_TYPE_OPTIONS, "nosniff"),
    ] {
        h.insert(k, HeaderValue::from_static(v));
    }
    r
}

/// A JSON answer with `status`.
fn reply(status: StatusCode, v: &Value) -> Response {
    (
        status,
        [(header::CONTENT_TYPE, "application/json")],
        v.to_string(),
    )
        .into_response()
}

/// `POST /api/answer` `{"prompt": N, "allow": bool, "scope": "once"|"app"|"always"}`:
/// answers an `ask` rule's question.
async fn answer(State(page): State<Arc<Page>>, body: axum::body::Bytes) -> Response {
    use geowall::driver::ask::AskError;
    let req: Value = match serde_json::from_slice(&body) {
        Ok(v) => v,
        Err(e) => {
            return reply(
                StatusCode::BAD_REQUEST,
                &json!({"error": format!("not JSON: {e}")}),
            );
        }
    };
    let (prompt, a) = match super::control::read_answer(&req) {
        Ok(x) => x,
        Err(e) => return reply(StatusCode::BAD_REQUEST, &json!({ "error": e })),
    };
    match page.control.asker.answer(prompt, a).await {
        Ok(()) => reply(StatusCode::OK, &json!({ "answered": prompt })),
        Err(e) => {
            let status = match e {
                AskError::NoPrompt(_) => StatusCode::NOT_FOUND,
                AskError::NoFile => StatusCode::CONFLICT,
                AskError::Stopped | AskError::NotTaken => StatusCode::SERVICE_UNAVAILABLE,
                AskError::Keep(_) => StatusCode::INTERNAL_SERVER_ERROR,
            };
            reply(status, &json!({"error": e.to_string()}))
        }
    }
}

/// `GET /api/info`: the running policy's name, and where answers
/// "always" are kept (`null`: nowhere, so the page does not offer them).
async fn info(State(page): State<Arc<Page>>) -> Response {
    reply(
        StatusCode::OK,
        &json!({
            "policy": page.describer.policy.current().name,
            "answers_file": page.control.asker.answers_file(),
        }),
    )
}

/// `POST /api/reload`: reads the rules again (as `geowall reload`).
async fn reload(State(page): State<Arc<Page>>) -> Response {
    let p = Arc::clone(&page);
    let done = tokio::task::spawn_blocking(move || {
        super::control::reload_rules(&p.control.reload, &p.describer.policy)
    })
    .await;
    match done {
        Ok(Ok(name)) => reply(StatusCode::OK, &json!({ "reloaded": name })),
        Ok(Err(e)) => reply(StatusCode::UNPROCESSABLE_ENTITY, &json!({ "error": e })),
        Err(e) => reply(
            StatusCode::INTERNAL_SERVER_ERROR,
            &json!({"error": format!("the reload failed: {e}")}),
        ),
    }
}

/// The decisions as server-sent events: the latest ones first, then each
/// as it happens.
async fn events(State(page): State<Arc<Page>>) -> impl IntoResponse {
    use tokio_stream::StreamExt;
    // Subscribe before reading the backlog: nothing falls between.
    let live = page.live.subscribe();
    let backlog: Vec<Line> = lock(&page.backlog).iter().cloned().collect();
    let backlog: Vec<Arc<str>> = backlog.iter().map(|l| page.describer.done(l)).collect();
    let first = tokio_stream::iter(backlog);
    let next = tokio_stream::wrappers::BroadcastStream::new(live).filter_map(|r| match r {
        Ok(line) => Some(line),
        // Fell behind: say so, and go on from now.
        Err(tokio_stream::wrappers::errors::BroadcastStreamRecvError::Lagged(n)) => Some(
            Arc::from(json!({"kind": "skipped", "count": n}).to_string()),
        ),
    });
    let stream = first
        .chain(next)
        .map(|line| Ok::<_, Infallible>(SseEvent::default().data(&*line)));
    Sse::new(stream).keep_alive(KeepAlive::default())
}

/// Keeps each decision for the pages and hands it to those open,
/// described (where its destination is, by every layer); with no page
/// open, it is only kept.
async fn describe(
    mut rx: mpsc::Receiver<Item>,
    page: Arc<Page>,
    dropped: Arc<std::sync::atomic::AtomicU64>,
) {
    let mut told = 0;
    while let Some(item) = rx.recv().await {
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap_or_default();
        let time_ms = u64::try_from(now.as_millis()).unwrap_or(u64::MAX);
        let d = dropped.load(std::sync::atomic::Ordering::Relaxed);
        let item = Arc::new(item);
        let line = if page.live.receiver_count() > 0 || d != told {
            // Said once per change: decisions the page never got.
            let dropped = (d != told).then_some(d);
            told = d;
            Line::Done(page.describer.line(&item, time_ms, dropped))
        } else {
            Line::Raw(item, time_ms)
        };
        if let Line::Done(l) = &line {
            // A page that went away meanwhile: nobody to tell.
            let _ = page.live.send(Arc::clone(l));
        }
        let mut b = lock(&page.backlog);
        if b.len() == BACKLOG {
            b.pop_front();
        }
        b.push_back(line);
    }
}

/// `e` as JSON with `where`: its server's jurisdiction, every layer.
fn described(e: &Event, policy: &PolicyHandle, world: &WorldHandle) -> Value {
    let mut v = serde_json::to_value(e).unwrap_or(Value::Null);
    let ip = e
        .server
        .parse::<SocketAddr>()
        .map(|a| a.ip())
        .ok()
        .or_else(|| e.server.parse().ok());
    if ip.is_some() {
        let p = policy.current();
        let intel = Intel::new(world.current());
        let mut names: Vec<&str> = e.names.iter().map(String::as_str).collect();
        if let Some(n) = &e.server_name {
            names.insert(0, n);
        }
        let j = intel.jurisdiction(p.catalog(), ip, &names, Some(e.protocol.name()));
        if let Some(o) = v.as_object_mut() {
            o.insert("where".into(), j.to_json());
            o.insert("destination".into(), json!(e.destination()));
        }
    }
    v
}

#[cfg(test)]
mod tests {
    use super::*;

    fn page() -> Guard {
        Guard {
            hosts: [
                "127.0.0.1:4000".into(),
                "localhost:4000".into(),
                "[::1]:4000".into(),
            ],
            origins: [
                "http://127.0.0.1:4000".into(),
                "http://localhost:4000".into(),
            ],
            token: "t0ken".into(),
        }
    }

    fn headers(pairs: &[(&'static str, &'static str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            h.insert(*k, HeaderValue::from_static(v));
        }
        h
    }

    #[test]
    fn requests_are_refused_unless_they_name_this_page_and_carry_its_token() {
        let p = page();
        let get = Method::GET;
        let post = Method::POST;
        let ok = headers(&[("host", "127.0.0.1:4000")]);
        assert_eq!(refusal(&p, &get, &ok, "/", None), None);
        assert_eq!(
            refusal(&p, &get, &ok, "/api/events", Some("token=t0ken")),
            None
        );
        let with_header = headers(&[("host", "localhost:4000"), ("x-geowall-token", "t0ken")]);
        assert_eq!(refusal(&p, &get, &with_header, "/api/events", None), None);
        // Actions: the token in its header and a JSON body, nothing less.
        let action = headers(&[
            ("host", "127.0.0.1:4000"),
            ("x-geowall-token", "t0ken"),
            ("content-type", "application/json"),
        ]);
        assert_eq!(refusal(&p, &post, &action, "/api/answer", None), None);
        for (h, q, why) in [
            (ok.clone(), Some("token=t0ken"), "X-Geowall-Token"),
            (with_header.clone(), None, "JSON"),
            (
                headers(&[
                    ("host", "127.0.0.1:4000"),
                    ("x-geowall-token", "t0ken"),
                    ("content-type", "application/x-www-form-urlencoded"),
                ]),
                None,
                "JSON",
            ),
            (
                headers(&[
                    ("host", "127.0.0.1:4000"),
                    ("x-geowall-token", "t0kem"),
                    ("content-type", "application/json"),
                ]),
                None,
                "X-Geowall-Token",
            ),
        ] {
            let r =
                refusal(&p, &post, &h, "/api/answer", q).unwrap_or_else(|| panic!("{h:?} {q:?}"));
            assert!(r.contains(why), "{r}");
        }
        for (h, path, q, why) in [
            (headers(&[]), "/", None, "Host"),
            (headers(&[("host", "evil.example:4000")]), "/", None, "Host"),
            (headers(&[("host", "127.0.0.1:4001")]), "/", None, "Host"),
            (ok.clone(), "/api/events", None, "token"),
            (ok.clone(), "/api/events", Some("token=t0ke"), "token"),
            (ok.clone(), "/api/events", Some("token=t0kenX"), "token"),
            (
                headers(&[
                    ("host", "127.0.0.1:4000"),
                    ("origin", "http://evil.example"),
                ]),
                "/api/events",
                Some("token=t0ken"),
                "origins",
            ),
            (
                headers(&[("host", "127.0.0.1:4000"), ("sec-fetch-site", "cross-site")]),
                "/",
                None,
                "sites",
            ),
        ] {
            let r = refusal(&p, &get, &h, path, q).unwrap_or_else(|| panic!("{h:?} {path} {q:?}"));
            assert!(r.contains(why), "{r}");
        }
        assert!(same(b"abc", b"abc") && !same(b"abc", b"abd") && !same(b"abc", b"ab"));
    }
}
