//! `GET /api/dashboard`: the fleet dashboard, one server-rendered HTML page with inline SVG bars,
//! no script and nothing loaded from elsewhere. Its figures come from
//! [`crate::service::dashboard`].
//!
//! The page is opened from a browser with the function key in the `code` query parameter, which
//! the Functions host accepts as it accepts the `x-functions-key` header (MicrosoftDocs/azure-docs
//! articles/azure-functions/function-keys-how-to.md, "Use access keys";
//! Azure/azure-functions-host AuthenticationLevelHandler.GetAuthorizationKeyInfoAsync, where the
//! header wins over the query). Links to a device's record and history carry the same `code`,
//! so they open in the browser too; the key is never logged, and the answer tells the browser
//! not to keep it (`Cache-Control: no-store`) or send it on (`Referrer-Policy: no-referrer`).
//!
//! Everything shown is escaped (maud escapes every interpolated value): customer names, reported
//! statuses and dead letters come from CRMs and devices. A strict Content-Security-Policy allows
//! the one inline stylesheet, by its hash, and nothing else.

use super::error::ApiError;
use super::{query_pairs, respond, with};
use crate::domain::events::Stamp;
use crate::domain::summary::Stage;
use crate::service::dashboard::{
    duration_words, Attention, Dashboard, DEFAULT_DISCONNECTED_MINUTES, LISTED,
    MAX_DISCONNECTED_MINUTES,
};
use crate::service::Service;
use base64::Engine;
use maud::{html, Markup, PreEscaped, DOCTYPE};
use percent_encoding::{utf8_percent_encode, AsciiSet, NON_ALPHANUMERIC};
use sha2::{Digest, Sha256};
use std::fmt;
use std::sync::{Arc, LazyLock};
use warp::filters::BoxedFilter;
use warp::http::{header, HeaderValue};
use warp::reply::Response;
use warp::{Filter, Reply};

/// The page's only stylesheet; the Content-Security-Policy names its hash.
const STYLE: &str = "\
body{font-family:system-ui,sans-serif;margin:0;color:#1b1f24;background:#f4f6f9;line-height:1.4}\
header{background:#14365d;color:#fff;padding:1rem 1.5rem}header h1{margin:0;font-size:1.5rem}\
header p{margin:.3rem 0 0;color:#c9d6e6}main{max-width:76rem;margin:0 auto;padding:1rem 1.5rem}\
section{background:#fff;border:1px solid #d8dee6;border-radius:.5rem;padding:1rem 1.2rem;margin:0 0 1rem}\
h2{font-size:1.15rem;margin:0 0 .6rem}h3{font-size:1rem;margin:1rem 0 .4rem}\
.grid{display:grid;grid-template-columns:repeat(auto-fit,minmax(30rem,1fr));gap:1rem;margin:0 0 1rem}.grid section{margin:0}\
table{border-collapse:collapse;width:100%}td,th{text-align:left;padding:.3rem .5rem;vertical-align:middle}\
th{font-size:.8rem;color:#5a6572;font-weight:600;border-bottom:1px solid #d8dee6}\
tbody tr+tr td{border-top:1px solid #eef1f5}td.n{text-align:right;font-variant-numeric:tabular-nums;font-weight:600;width:4.5rem}\
td.share{text-align:right;color:#5a6572;width:3.5rem}td.bar{width:55%}svg.bar{display:block;width:100%;height:1.1rem}\
.hint{color:#5a6572;font-size:.85rem}.count{display:inline-block;min-width:1.6rem;text-align:center;border-radius:1rem;\
padding:0 .5rem;margin-left:.4rem;background:#e4e8ee;font-size:.85rem}.count.warn{background:#f9d9a8}.count.bad{background:#f5b5b5}\
ul.statuses{list-style:none;display:flex;flex-wrap:wrap;gap:.5rem;padding:0;margin:.8rem 0 0}\
ul.statuses li{background:#eef1f5;border-radius:.3rem;padding:.2rem .6rem}ul.statuses b{margin-left:.3rem}\
.legend{display:flex;gap:1rem;font-size:.85rem;color:#5a6572;margin-top:.4rem}.swatch{display:inline-block;width:.8rem;height:.8rem;\
border-radius:.15rem;margin-right:.3rem;vertical-align:-.1rem}.s-connected{background:#2e8b57}.s-offline{background:#8fa9c9}\
.none{color:#2e7d32}code{font-size:.85rem}a{color:#0b5cad}.customer{color:#5a6572;font-size:.85rem}\
form{display:flex;gap:.5rem;align-items:center;flex-wrap:wrap;margin:.4rem 0 0}input{width:5rem;font:inherit;padding:.2rem}\
button{font:inherit;padding:.25rem .8rem;border:0;border-radius:.3rem;background:#0b5cad;color:#fff}footer{color:#5a6572;font-size:.85rem;padding:0 1.5rem 1.5rem;max-width:76rem;margin:0 auto}";

/// Bar colours by stage, lightest first.
const STAGE_COLOURS: [&str; 4] = ["#8fa9c9", "#4a7ab8", "#2e8b57", "#1e6b3a"];

/// What percent-encoding leaves as it is in a path segment or query value.
const UNRESERVED: &AsciiSet = &NON_ALPHANUMERIC
    .remove(b'-')
    .remove(b'_')
    .remove(b'.')
    .remove(b'~');

/// The Content-Security-Policy: the inline stylesheet by its hash; no script, no image, no frame,
/// no fetch; forms only back to this page.
static POLICY: LazyLock<String> = LazyLock::new(|| {
    let digest = base64::engine::general_purpose::STANDARD.encode(Sha256::digest(STYLE));
    format!(
        "default-src 'none'; style-src 'sha256-{digest}'; base-uri 'none'; form-action 'self'; frame-ancestors 'none'"
    )
});

/// The function key the page was opened with (`code`), for its links. Never printed.
struct FunctionKey(String);

impl fmt::Debug for FunctionKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("FunctionKey(<redacted>)")
    }
}

/// The page's query.
#[derive(Debug)]
struct DashboardQuery {
    /// Minutes after which a disconnected device needs attention.
    disconnected_minutes: u32,
    /// The key to carry in links, when the page was opened with one in the query.
    key: Option<FunctionKey>,
}

impl DashboardQuery {
    /// Parses `disconnectedFor` and `code`; anything else is refused, as on every route.
    fn parse(pairs: Vec<(String, String)>) -> Result<Self, ApiError> {
        let mut query = DashboardQuery {
            disconnected_minutes: DEFAULT_DISCONNECTED_MINUTES,
            key: None,
        };
        for (name, value) in pairs {
            match name.as_str() {
                "disconnectedFor" => {
                    query.disconnected_minutes = value
                        .trim()
                        .parse()
                        .ok()
                        .filter(|m| (1..=MAX_DISCONNECTED_MINUTES).contains(m))
                        .ok_or_else(|| {
                            ApiError::invalid(format!(
                                "disconnectedFor must be a number of minutes from 1 to {MAX_DISCONNECTED_MINUTES}"
                            ))
                        })?
                }
                // The host checked it; it only goes into the page's links.
                "code" => query.key = Some(FunctionKey(value)).filter(|k| !k.0.is_empty()),
                other => {
                    return Err(ApiError::invalid(format!(
                        "unknown query parameter {other:?}; use disconnectedFor"
                    )))
                }
            }
        }
        Ok(query)
    }
}

/// `GET /api/dashboard`
pub fn route(service: Arc<Service>) -> BoxedFilter<(Response,)> {
    warp::path!("api" / "dashboard")
        .and(warp::get())
        .and(with(service))
        .and(query_pairs())
        .then(
            |service: Arc<Service>, pairs: Vec<(String, String)>| async move {
                respond(
                    async {
                        let query = DashboardQuery::parse(pairs)?;
                        let dashboard = service.dashboard(query.disconnected_minutes).await?;
                        Ok(html_reply(page(&dashboard, query.key.as_ref())))
                    }
                    .await,
                )
            },
        )
        .boxed()
}

/// The page as an answer, with the headers that keep it and its key to this tab.
fn html_reply(markup: Markup) -> Response {
    let mut response = warp::reply::html(markup.into_string()).into_response();
    let headers = response.headers_mut();
    if let Ok(policy) = HeaderValue::from_str(&POLICY) {
        headers.insert(header::CONTENT_SECURITY_POLICY, policy);
    }
    headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    headers.insert(
        header::REFERRER_POLICY,
        HeaderValue::from_static("no-referrer"),
    );
    headers.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    headers.insert(header::X_FRAME_OPTIONS, HeaderValue::from_static("DENY"));
    response
}

/// Links into the API's JSON routes, with the page's key when it had one.
struct Links<'a>(Option<&'a FunctionKey>);

impl Links<'_> {
    fn with_key(&self, path: String) -> String {
        match self.0 {
            Some(key) => format!("{path}?code={}", utf8_percent_encode(&key.0, UNRESERVED)),
            None => path,
        }
    }

    fn record(&self, device_id: &str) -> String {
        self.with_key(format!(
            "/api/devices/{}",
            utf8_percent_encode(device_id, UNRESERVED)
        ))
    }

    fn history(&self, device_id: &str) -> String {
        self.with_key(format!(
            "/api/devices/{}/history",
            utf8_percent_encode(device_id, UNRESERVED)
        ))
    }
}

/// A time as a person reads it: `2026-12-02 05:08:17 UTC`.
fn readable(stamp: &Stamp) -> String {
    time::OffsetDateTime::from_unix_timestamp_nanos(stamp.nanos())
        .ok()
        .and_then(|t| {
            t.format(time::macros::format_description!(
                "[year]-[month]-[day] [hour]:[minute]:[second] UTC"
            ))
            .ok()
        })
        .unwrap_or_else(|| stamp.to_string())
}

/// How long ago `then` was, in words.
fn ago(now: &Stamp, then: &Stamp) -> String {
    let minutes = (now.nanos() - then.nanos()) / 60_000_000_000;
    if minutes < 1 {
        "just now".to_owned()
    } else {
        format!("{} ago", duration_words(minutes))
    }
}

/// A horizontal bar: `parts` of (value, colour) stacked from the left, out of `total`.
fn bar(label: &str, parts: &[(usize, &str)], total: usize) -> Markup {
    let scale = if total == 0 {
        0.0
    } else {
        100.0 / total as f64
    };
    let mut x = 0.0;
    let rects: Vec<(f64, f64, &str)> = parts
        .iter()
        .map(|(value, colour)| {
            let width = *value as f64 * scale;
            x += width;
            (x - width, width, *colour)
        })
        .collect();
    html! {
        svg.bar viewBox="0 0 100 10" preserveAspectRatio="none" role="img" aria-label=(label) {
            rect x="0" y="0" width="100" height="10" rx="1" fill="#eef1f5" {}
            @for (x, width, colour) in rects {
                rect x=(format!("{x:.3}")) y="0" width=(format!("{width:.3}")) height="10" fill=(colour) {}
            }
        }
    }
}

fn share(part: usize, whole: usize) -> String {
    if whole == 0 {
        "–".to_owned()
    } else {
        format!("{:.0}%", 100.0 * part as f64 / whole as f64)
    }
}

fn stage_words(stage: Stage) -> (&'static str, &'static str) {
    match stage {
        Stage::Enrolled => ("Enrolled", "every device the registry holds"),
        Stage::Registered => ("Registered", "assigned to a hub by DPS, enrollment enabled"),
        Stage::Connected => ("Connected", "registered and connected to its hub now"),
        Stage::Reporting => (
            "Reporting",
            "connected and reporting its provisioning status",
        ),
    }
}

/// The whole page.
fn page(d: &Dashboard, key: Option<&FunctionKey>) -> Markup {
    let links = Links(key);
    let enrolled = d.count(Stage::Enrolled);
    let widest_hub = d.hubs.iter().map(|h| h.devices).max().unwrap_or(0);
    html! {
        (DOCTYPE)
        html lang="en" {
            head {
                meta charset="utf-8";
                meta name="viewport" content="width=device-width, initial-scale=1";
                meta name="referrer" content="no-referrer";
                title { "Fleet dashboard" }
                style { (PreEscaped(STYLE)) }
            }
            body {
                header {
                    h1 { "Fleet dashboard" }
                    p { (enrolled) " devices enrolled · as of " time datetime=(d.at.as_str()) { (readable(&d.at)) } }
                }
                main {
                    section #stages {
                        h2 { "Along the way" }
                        table {
                            thead { tr { th { "Stage" } th { "" } th.n { "Devices" } th { "" } } }
                            tbody {
                                @for (i, stage) in Stage::ALL.iter().enumerate() {
                                    @let (name, words) = stage_words(*stage);
                                    @let count = d.count(*stage);
                                    tr data-stage=(stage.as_str()) {
                                        td { b { (name) } br; span.hint { (words) } }
                                        td.bar { (bar(&format!("{name}: {count} of {enrolled}"), &[(count, STAGE_COLOURS[i])], enrolled)) }
                                        td.n id=(format!("stage-{}", stage.as_str())) { (count) }
                                        td.share { (share(count, enrolled)) }
                                    }
                                }
                            }
                        }
                        ul.statuses aria-label="Devices by registry status" {
                            @for (status, count) in &d.statuses {
                                li { (status.as_str()) b id=(format!("status-{}", status.as_str())) { (count) } }
                            }
                        }
                    }
                    section #hubs {
                        h2 { "Devices per hub" }
                        @if d.hubs.is_empty() {
                            p.hint { "No hub is linked and no device is registered yet." }
                        } @else {
                            table {
                                thead { tr { th { "Hub" } th { "" } th.n { "Devices" } th.n { "Connected" } } }
                                tbody {
                                    @for hub in &d.hubs {
                                        tr data-hub=(hub.hub) {
                                            td { code { (hub.hub) } }
                                            td.bar { (bar(&format!("{}: {} devices, {} connected", hub.hub, hub.devices, hub.connected),
                                                          &[(hub.connected, "#2e8b57"), (hub.devices - hub.connected, "#8fa9c9")], widest_hub)) }
                                            td.n.devices { (hub.devices) }
                                            td.n.connected { (hub.connected) }
                                        }
                                    }
                                }
                            }
                            p.legend { span { span.swatch.s-connected {} "connected" } span { span.swatch.s-offline {} "registered, not connected" } }
                        }
                    }
                    h2 { "Needs attention" }
                    div.grid {
                        (attention("never-connected", "Registered, never connected", "DPS assigned them a hub; they have not connected to it.", &d.never_connected, d, &links))
                        (attention("disconnected", &format!("Disconnected for {} or more", duration_words(i128::from(d.disconnected_minutes))),
                                   "Registered devices whose last connection event says disconnected.", &d.disconnected, d, &links))
                        (attention("provisioning-failed", "Provisioning failed", "DPS refused the registration, or the device reports a failure.", &d.provisioning_failed, d, &links))
                        (dead_letters(d, &links))
                    }
                    section #threshold {
                        form method="get" action="/api/dashboard" {
                            label for="disconnectedFor" { "Disconnected for at least" }
                            input #disconnectedFor type="number" name="disconnectedFor" min="1" max=(MAX_DISCONNECTED_MINUTES) value=(d.disconnected_minutes);
                            span { "minutes" }
                            @if let Some(key) = key {
                                input type="hidden" name="code" value=(key.0);
                            }
                            button type="submit" { "Show" }
                        }
                    }
                }
                footer {
                    "Counted from every record's summary when the page was asked for; device links open the API's JSON (record and history)."
                }
            }
        }
    }
}

/// One kind of attention: its count and its longest-standing devices.
fn attention(
    id: &str,
    title: &str,
    words: &str,
    attention: &Attention,
    d: &Dashboard,
    links: &Links,
) -> Markup {
    html! {
        section.attention id=(id) {
            h3 { (title) span.count.warn[attention.total > 0] id=(format!("{id}-count")) { (attention.total) } }
            p.hint { (words) }
            @if attention.items.is_empty() {
                p.none { "None." }
            } @else {
                table {
                    thead { tr { th { "Device" } th { "Hub" } th { "Since" } } }
                    tbody {
                        @for flagged in &attention.items {
                            @let device = flagged.summary.device_id.as_str();
                            tr data-device=(device) {
                                td {
                                    a.record href=(links.record(device)) { (device) }
                                    " · "
                                    a.history href=(links.history(device)) { "history" }
                                    br;
                                    span.customer {
                                        (flagged.summary.customer.id.as_str())
                                        @if let Some(name) = &flagged.summary.customer.name { " · " (name) }
                                    }
                                }
                                td { @if let Some(hub) = &flagged.summary.hub { code { (hub) } } @else { "–" } }
                                td {
                                    @if let Some(since) = &flagged.since {
                                        time datetime=(since.as_str()) title=(readable(since)) { (ago(&d.at, since)) }
                                    } @else { "–" }
                                    br;
                                    span.hint.reason { (flagged.reason) }
                                }
                            }
                        }
                    }
                }
                @if attention.total > attention.items.len() {
                    p.hint { "The " (LISTED) " longest-standing of " (attention.total) " are shown." }
                }
            }
        }
    }
}

/// The newest events set aside, with their devices where they name one.
fn dead_letters(d: &Dashboard, links: &Links) -> Markup {
    html! {
        section.attention #dead-letters {
            h3 {
                "Events set aside"
                span.count.bad[!d.dead_letters.is_empty()] #dead-letters-count {
                    (d.dead_letters.len()) @if d.more_dead_letters { "+" }
                }
            }
            p.hint { "Events that can never be applied, kept in the dead-letter table with the reason." }
            @if d.dead_letters.is_empty() {
                p.none { "None." }
            } @else {
                table {
                    thead { tr { th { "Device and reason" } th { "When" } } }
                    tbody {
                        @for letter in &d.dead_letters {
                            tr {
                                td {
                                    @if let Some(device) = &letter.device_id {
                                        a.record href=(links.record(device)) { (device) }
                                        " · "
                                        a.history href=(links.history(device)) { "history" }
                                    } @else { "no device named" }
                                    br;
                                    span.hint.reason { (letter.reason) }
                                    br;
                                    code.hint { (letter.key) }
                                }
                                td { time datetime=(letter.at.as_str()) title=(readable(&letter.at)) { (ago(&d.at, &letter.at)) } }
                            }
                        }
                    }
                }
                @if d.more_dead_letters {
                    p.hint { "The newest " (d.dead_letters.len()) " are shown; there are more." }
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_query_takes_a_threshold_and_the_key_and_refuses_anything_else() {
        let query = |pairs: &[(&str, &str)]| {
            DashboardQuery::parse(
                pairs
                    .iter()
                    .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
                    .collect(),
            )
        };
        let parsed = query(&[("disconnectedFor", "15"), ("code", "k+y/=")]).unwrap();
        assert_eq!(parsed.disconnected_minutes, 15);
        assert!(
            !format!("{parsed:?}").contains("k+y"),
            "the key never prints"
        );
        assert_eq!(
            query(&[]).unwrap().disconnected_minutes,
            DEFAULT_DISCONNECTED_MINUTES
        );
        for bad in ["0", "-5", "soon", "43201"] {
            assert!(query(&[("disconnectedFor", bad)]).is_err(), "{bad}");
        }
        assert!(query(&[("disconectedFor", "5")]).is_err());
    }

    #[test]
    fn links_carry_the_key_encoded_and_the_device_id_as_one_segment() {
        let key = FunctionKey("a+b/c==".into());
        let links = Links(Some(&key));
        assert_eq!(
            links.record("dev/1 x"),
            "/api/devices/dev%2F1%20x?code=a%2Bb%2Fc%3D%3D"
        );
        assert_eq!(
            Links(None).history("d'1"),
            "/api/devices/d%271/history",
            "a quote cannot end the attribute"
        );
    }

    #[test]
    fn the_policy_allows_exactly_the_pages_stylesheet() {
        let digest = base64::engine::general_purpose::STANDARD.encode(Sha256::digest(STYLE));
        assert!(POLICY.contains(&format!("style-src 'sha256-{digest}'")));
        assert!(POLICY.starts_with("default-src 'none'"));
        assert!(!POLICY.contains("unsafe"));
    }
}
