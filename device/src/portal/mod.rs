//! The setup portal a device serves to its owner: paste the provisioning code (or type the
//! fields by hand), watch the device provision, see where it is, re-provision or forget it.
//!
//! Server-rendered HTML that works without JavaScript and on a phone. Progress is a page that
//! refreshes itself until the background provisioning job ends. Every form carries a CSRF token
//! (double submit: a random cookie and the same value in the form); once the device is
//! provisioned, changing it needs the device's local setup password.

mod routes;

pub use routes::routes;

use crate::assignment::{Assignment, Credentials, StateDir};
use crate::provision::{ProvisionError, Provisioner};
use iot_credentials::secrets_equal;
use iot_credentials::{ProvisioningCode, SharedAccessKey};
use std::collections::{HashMap, VecDeque};
use std::fmt::Write as _;
use std::sync::{Arc, Mutex};
use warp::http::{header, HeaderValue, StatusCode};
use warp::reply::Response;
use warp::Reply;

/// Forms are small.
const FORM_LIMIT: u64 = 8 * 1024;
const CSRF_COOKIE: &str = "portal_csrf";

/// How the portal runs.
#[derive(Clone)]
pub struct PortalConfig {
    /// Where the assignment is stored.
    pub state: StateDir,
    /// How to reach DPS.
    pub provisioner: Provisioner,
    /// The DPS endpoint for hand-typed fields (`global.azure-devices-provisioning.net`).
    pub default_endpoint: String,
    /// The device's local setup password; changes to a provisioned device need it.
    pub setup_password: Option<String>,
}

/// A provisioning run in the background.
#[derive(Clone)]
enum Job {
    Running,
    Done(Box<Result<Assignment, String>>),
}

/// How many provisioning runs the portal remembers, so their progress pages keep working; the
/// oldest finished ones are forgotten first. One run at a time: the device has one identity.
const REMEMBERED_JOBS: usize = 16;

/// The provisioning runs, oldest first: at most one running, at most [`REMEMBERED_JOBS`].
#[derive(Default)]
struct Jobs(VecDeque<(String, Job)>);

impl Jobs {
    fn get(&self, id: &str) -> Option<&Job> {
        self.0.iter().find(|(j, _)| j == id).map(|(_, job)| job)
    }

    fn running(&self) -> Option<&str> {
        self.0
            .iter()
            .find(|(_, job)| matches!(job, Job::Running))
            .map(|(id, _)| id.as_str())
    }

    fn start(&mut self, id: String) {
        if self.0.len() >= REMEMBERED_JOBS {
            if let Some(finished) = self
                .0
                .iter()
                .position(|(_, job)| matches!(job, Job::Done(_)))
            {
                self.0.remove(finished);
            }
        }
        self.0.push_back((id, Job::Running));
    }

    fn finish(&mut self, id: &str, outcome: Result<Assignment, String>) {
        if let Some((_, job)) = self.0.iter_mut().find(|(j, _)| j == id) {
            *job = Job::Done(Box::new(outcome));
        }
    }
}

/// The portal's state.
pub struct Portal {
    config: PortalConfig,
    jobs: Mutex<Jobs>,
}

fn random_token() -> String {
    let mut bytes = [0u8; 16];
    // A failing OS generator leaves zeros: tokens then still differ from what an attacker
    // guesses only by luck, so refuse to serve forms rather than pretend.
    if getrandom::fill(&mut bytes).is_err() {
        return String::new();
    }
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// Escapes text for HTML.
fn esc(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
    out
}

/// A page's error message: `#error`, announced to screen readers, the message escaped and
/// followed by `link` (fixed markup, such as a way back to the start).
fn error_banner(message: &str, link: &'static str) -> String {
    format!(
        r#"<p class="error" role="alert" id="error">{}{link}</p>"#,
        esc(message)
    )
}

/// A page in the portal's frame.
fn page(title: &str, body: &str, refresh: bool) -> String {
    let refresh = if refresh {
        r#"<meta http-equiv="refresh" content="1">"#
    } else {
        ""
    };
    format!(
        r#"<!doctype html>
<html lang="en"><head><meta charset="utf-8"><meta name="viewport" content="width=device-width, initial-scale=1">{refresh}
<title>{title} · Device setup</title>
<style>
body{{font-family:system-ui,sans-serif;margin:0 auto;max-width:34rem;padding:1rem;line-height:1.45;color:#1b1b1b}}
h1{{font-size:1.4rem}} label{{display:block;margin:.8rem 0 .2rem;font-weight:600}}
input[type=text],input[type=password],textarea{{width:100%;box-sizing:border-box;font:inherit;padding:.5rem;border:1px solid #888;border-radius:.3rem}}
textarea{{min-height:6rem;font-family:ui-monospace,monospace}}
button{{font:inherit;padding:.6rem 1.2rem;margin-top:1rem;border-radius:.3rem;border:0;background:#0b5cad;color:#fff}}
button.danger{{background:#a01818}} .error{{background:#fde8e8;border-left:4px solid #a01818;padding:.6rem}}
.ok{{background:#e6f4ea;border-left:4px solid #1e7b34;padding:.6rem}} dt{{font-weight:600}} dd{{margin:0 0 .5rem}}
details{{margin-top:1rem}} .hint{{color:#555;font-size:.9rem}}
</style></head>
<body><h1>{title}</h1>
{body}
</body></html>"#,
        title = esc(title)
    )
}

/// A form's fields, parsed from `application/x-www-form-urlencoded`.
type Form = HashMap<String, String>;

impl Portal {
    /// A portal over `config`.
    pub fn new(config: PortalConfig) -> Arc<Self> {
        Arc::new(Self {
            config,
            jobs: Mutex::new(Jobs::default()),
        })
    }

    fn jobs(&self) -> std::sync::MutexGuard<'_, Jobs> {
        self.jobs.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn setup_form(&self, csrf: &str, error: Option<&str>, code: &str) -> String {
        let mut body = String::new();
        if let Some(error) = error {
            body.push_str(&error_banner(error, ""));
        }
        let _ = write!(
            body,
            r#"<p>This device is not connected to the cloud yet. Paste the provisioning code you received.</p>
<form method="post" action="/provision">
<input type="hidden" name="csrf" value="{csrf}">
<label for="code">Provisioning code</label>
<textarea id="code" name="code" autocomplete="off" spellcheck="false" placeholder="DP1~…">{code}</textarea>
<details><summary>No code? Enter the values by hand</summary>
<label for="idScope">ID scope</label><input type="text" id="idScope" name="idScope" autocomplete="off">
<label for="registrationId">Registration ID</label><input type="text" id="registrationId" name="registrationId" autocomplete="off">
<label for="deviceKey">Device key</label><input type="password" id="deviceKey" name="deviceKey" autocomplete="off">
<p class="hint">The provisioning service is {endpoint}.</p>
</details>
<button type="submit" id="submit">Connect this device</button>
</form>"#,
            csrf = esc(csrf),
            code = esc(code),
            endpoint = esc(&self.config.default_endpoint)
        );
        page("Set up this device", &body, false)
    }

    fn status_page(&self, assignment: &Assignment, csrf: &str, error: Option<&str>) -> String {
        let mut body = String::new();
        if let Some(error) = error {
            body.push_str(&error_banner(error, ""));
        }
        let password_field = if self.config.setup_password.is_some() {
            r#"<label>Setup password<input type="password" name="password" autocomplete="off"></label>"#
        } else {
            r#"<p class="hint">No setup password is configured on this device, so it cannot be changed here.</p>"#
        };
        let _ = write!(
            body,
            r#"<p class="ok" id="status">This device is connected to the cloud.</p>
<dl><dt>IoT hub</dt><dd id="hub">{hub}</dd><dt>Device ID</dt><dd id="deviceId">{device}</dd>
<dt>Registration ID</dt><dd>{registration}</dd><dt>Provisioned</dt><dd>{at}{substatus}</dd></dl>
<form method="post" action="/reprovision"><input type="hidden" name="csrf" value="{csrf}">
<h2>Provision again</h2><p class="hint">Asks the provisioning service again, with the same credentials. The device moves if its hub changed.</p>
{password_field}<label><input type="checkbox" name="confirm" value="yes"> Yes, provision again</label>
<button type="submit">Provision again</button></form>
<form method="post" action="/forget"><input type="hidden" name="csrf" value="{csrf}">
<h2>Forget this device</h2><p class="hint">Removes the stored credentials. The device stops sending until it is set up again.</p>
{password_field}<label><input type="checkbox" name="confirm" value="yes"> Yes, forget the credentials</label>
<button type="submit" class="danger">Forget this device</button></form>"#,
            hub = esc(&assignment.hub),
            device = esc(&assignment.device_id),
            registration = esc(&assignment.credentials.registration_id),
            at = esc(&assignment.assigned_at),
            substatus = assignment
                .substatus
                .as_deref()
                .map(|s| format!(" ({})", esc(s)))
                .unwrap_or_default(),
            csrf = esc(csrf)
        );
        page("This device", &body, false)
    }

    /// Credentials from the form: the code, or the hand-typed fields. Errors say what to fix.
    fn credentials(&self, form: &Form) -> Result<Credentials, String> {
        let field = |name: &str| form.get(name).map(|v| v.trim()).filter(|v| !v.is_empty());
        if let Some(code) = field("code") {
            let code: String = code.chars().filter(|c| !c.is_whitespace()).collect();
            return ProvisioningCode::parse(&code)
                .map(Credentials::from)
                .map_err(|e| e.to_string());
        }
        let (Some(scope), Some(registration), Some(key)) = (
            field("idScope"),
            field("registrationId"),
            field("deviceKey"),
        ) else {
            return Err(
                "Paste the provisioning code, or fill in all three fields: ID scope, \
                registration ID and device key."
                    .into(),
            );
        };
        if !(scope.len() == 11
            && scope.starts_with("0ne")
            && scope.bytes().all(|b| b.is_ascii_alphanumeric()))
        {
            return Err(
                "The ID scope looks like 0ne followed by 8 letters and digits (for example \
                0ne00012345)."
                    .into(),
            );
        }
        let registration_ok = iot_credentials::ids::is_registration_id(registration);
        if !registration_ok {
            return Err(
                "The registration ID may hold letters, digits and - . _ : only, and starts \
                and ends with a letter or digit."
                    .into(),
            );
        }
        let key = SharedAccessKey::from_base64(key).map_err(|_| {
            "The device key is not valid: \
            copy it again, exactly (it ends with = in most cases)."
                .to_owned()
        })?;
        Ok(Credentials {
            id_scope: scope.to_owned(),
            registration_id: registration.to_owned(),
            key,
            endpoint: self.config.default_endpoint.clone(),
        })
    }

    /// Starts provisioning in the background and answers the run's id, unless a run is already
    /// under way (then `Err` with a message for the person at the form).
    fn start(self: &Arc<Self>, credentials: Credentials) -> Result<String, String> {
        let id = random_token();
        {
            let mut jobs = self.jobs();
            if jobs.running().is_some() {
                return Err(
                    "The device is already registering with the provisioning service; wait \
                    for that to finish, then try again if it fails."
                        .into(),
                );
            }
            jobs.start(id.clone());
        }
        let portal = self.clone();
        let job = id.clone();
        tokio::spawn(async move {
            let outcome = match portal.config.provisioner.provision(&credentials).await {
                Ok(assignment) => portal
                    .config
                    .state
                    .save(&assignment)
                    .map(|()| assignment)
                    .map_err(|e| e.to_string()),
                Err(error) => Err(advice(&error)),
            };
            if let Err(message) = &outcome {
                tracing::warn!(%message, "provisioning from the portal failed");
            }
            portal.jobs().finish(&job, outcome);
        });
        Ok(id)
    }

    fn password_ok(&self, form: &Form) -> Result<(), String> {
        match &self.config.setup_password {
            None => Err(
                "This device has no setup password configured, so it cannot be changed \
                from the portal."
                    .into(),
            ),
            Some(expected)
                if form
                    .get("password")
                    .is_some_and(|p| secrets_equal(p, expected)) =>
            {
                Ok(())
            }
            Some(_) => Err(
                "The setup password is not right. It is printed on the device's \
                label."
                    .into(),
            ),
        }
    }
}

/// What to tell a person after a failure.
fn advice(error: &ProvisionError) -> String {
    error.to_string()
}

fn html(status: StatusCode, body: String, csrf_cookie: Option<&str>) -> Response {
    let mut response = warp::reply::with_status(warp::reply::html(body), status).into_response();
    let headers = response.headers_mut();
    headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    headers.insert("x-frame-options", HeaderValue::from_static("DENY"));
    headers.insert(
        "x-content-type-options",
        HeaderValue::from_static("nosniff"),
    );
    headers.insert("referrer-policy", HeaderValue::from_static("no-referrer"));
    headers.insert(
        "content-security-policy",
        HeaderValue::from_static(
            "default-src 'none'; style-src 'unsafe-inline'; form-action \
            'self'; frame-ancestors 'none'",
        ),
    );
    if let Some(token) = csrf_cookie {
        if let Ok(value) = HeaderValue::from_str(&format!(
            "{CSRF_COOKIE}={token}; Path=/; HttpOnly; SameSite=Strict"
        )) {
            headers.insert(header::SET_COOKIE, value);
        }
    }
    response
}

fn redirect(to: &str) -> Response {
    let mut response = StatusCode::SEE_OTHER.into_response();
    if let Ok(location) = HeaderValue::from_str(to) {
        response.headers_mut().insert(header::LOCATION, location);
    }
    response
}

fn cookie_token(cookies: Option<&str>) -> Option<String> {
    cookies?
        .split(';')
        .filter_map(|c| c.trim().split_once('='))
        .find(|(name, _)| *name == CSRF_COOKIE)
        .map(|(_, value)| value.to_owned())
        .filter(|v| v.len() == 32)
}

/// The current token, or a new one to set as the cookie.
fn token_for(cookies: Option<&str>) -> (String, Option<String>) {
    match cookie_token(cookies) {
        Some(token) => (token, None),
        None => {
            let token = random_token();
            (token.clone(), Some(token))
        }
    }
}

/// Whether the form's token matches the cookie's.
fn csrf_ok(cookies: Option<&str>, form: &Form) -> bool {
    match (cookie_token(cookies), form.get("csrf")) {
        (Some(cookie), Some(field)) => secrets_equal(&cookie, field),
        _ => false,
    }
}

fn forbidden() -> Response {
    html(
        StatusCode::FORBIDDEN,
        page(
            "Please try again",
            &error_banner(
                "This form has expired or did not come from this page. ",
                r#"<a href="/">Start again</a>."#,
            ),
            false,
        ),
        None,
    )
}

/// Serves the portal on `listener` until `shutdown`.
pub async fn serve(
    listener: tokio::net::TcpListener,
    portal: Arc<Portal>,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) {
    warp::serve(routes(portal))
        .incoming(listener)
        .graceful(shutdown)
        .run()
        .await;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_job_list_forgets_the_oldest_finished_runs_first() {
        let mut jobs = Jobs::default();
        jobs.start("running".into());
        for n in 0..3 * REMEMBERED_JOBS {
            let id = format!("done-{n}");
            jobs.start(id.clone());
            jobs.finish(&id, Err("failed".into()));
        }
        assert!(jobs.0.len() <= REMEMBERED_JOBS + 1, "{}", jobs.0.len());
        assert_eq!(
            jobs.running(),
            Some("running"),
            "a running job is never forgotten"
        );
        let newest = format!("done-{}", 3 * REMEMBERED_JOBS - 1);
        assert!(jobs.get(&newest).is_some());
        assert!(jobs.get("done-0").is_none());
    }
}
