//! The portal's routes, one filter per route (doc comment naming it) and one plain function
//! answering it, warp style; one `recover` turns unreadable requests into a page.

use super::{csrf_ok, error_banner, esc, forbidden, html, page, redirect, token_for};
use super::{Form, Job, Portal, FORM_LIMIT};
use std::convert::Infallible;
use std::sync::Arc;
use warp::http::StatusCode;
use warp::reply::Response;
use warp::{Filter, Rejection};

/// The portal's routes.
pub fn routes(portal: Arc<Portal>) -> warp::filters::BoxedFilter<(Response,)> {
    home(&portal)
        .or(provision(&portal))
        .unify()
        .or(progress(&portal))
        .unify()
        .or(change(&portal, "reprovision"))
        .unify()
        .or(change(&portal, "forget"))
        .unify()
        .or(not_found())
        .unify()
        .recover(|_| async { Ok::<_, Infallible>(unreadable()) })
        .unify()
        .boxed()
}

fn with_portal(
    portal: &Arc<Portal>,
) -> impl Filter<Extract = (Arc<Portal>,), Error = Infallible> + Clone {
    let portal = portal.clone();
    warp::any().map(move || portal.clone())
}

fn cookies() -> impl Filter<Extract = (Option<String>,), Error = Rejection> + Clone {
    warp::header::optional::<String>("cookie")
}

/// A form body, at most [`FORM_LIMIT`] bytes.
fn form() -> impl Filter<Extract = (Form,), Error = Rejection> + Clone {
    warp::body::content_length_limit(FORM_LIMIT).and(warp::body::form::<Form>())
}

/// GET /: the setup form, or the device's state.
fn home(portal: &Arc<Portal>) -> impl Filter<Extract = (Response,), Error = Rejection> + Clone {
    warp::path::end()
        .and(warp::get())
        .and(with_portal(portal))
        .and(cookies())
        .map(show_home)
}

fn show_home(portal: Arc<Portal>, cookies: Option<String>) -> Response {
    let (token, set) = token_for(cookies.as_deref());
    match portal.config.state.load() {
        Ok(Some(assignment)) => html(
            StatusCode::OK,
            portal.status_page(&assignment, &token, None),
            set.as_deref(),
        ),
        Ok(None) => html(
            StatusCode::OK,
            portal.setup_form(&token, None, ""),
            set.as_deref(),
        ),
        Err(error) => html(
            StatusCode::INTERNAL_SERVER_ERROR,
            page(
                "Something is wrong",
                &error_banner(&error.to_string(), ""),
                false,
            ),
            set.as_deref(),
        ),
    }
}

/// POST /provision: start provisioning from a code or the fields.
fn provision(
    portal: &Arc<Portal>,
) -> impl Filter<Extract = (Response,), Error = Rejection> + Clone {
    warp::path!("provision")
        .and(warp::post())
        .and(with_portal(portal))
        .and(cookies())
        .and(form())
        .map(start_provisioning)
}

fn start_provisioning(portal: Arc<Portal>, cookies: Option<String>, form: Form) -> Response {
    if !csrf_ok(cookies.as_deref(), &form) {
        return forbidden();
    }
    let (token, _) = token_for(cookies.as_deref());
    if let Ok(Some(assignment)) = portal.config.state.load() {
        // Already provisioned: changing it goes through the password-protected forms.
        let message = concat!(
            "This device is already set up. ",
            "To change it, provision again or forget it below."
        );
        let body = portal.status_page(&assignment, &token, Some(message));
        return html(StatusCode::CONFLICT, body, None);
    }
    let code = form.get("code").map(String::as_str).unwrap_or_default();
    let (status, message) = match portal.credentials(&form) {
        Ok(credentials) => match portal.start(credentials) {
            Ok(job) => return redirect(&format!("/progress/{job}")),
            Err(message) => (StatusCode::CONFLICT, message),
        },
        Err(message) => (StatusCode::UNPROCESSABLE_ENTITY, message),
    };
    html(
        status,
        portal.setup_form(&token, Some(&message), code),
        None,
    )
}

/// GET /progress/{job}: refreshes itself until the job ends.
fn progress(portal: &Arc<Portal>) -> impl Filter<Extract = (Response,), Error = Rejection> + Clone {
    warp::path!("progress" / String)
        .and(warp::get())
        .and(with_portal(portal))
        .map(show_progress)
}

fn show_progress(job: String, portal: Arc<Portal>) -> Response {
    let state = portal.jobs().get(&job).cloned();
    let page = match state {
        None => {
            let body = error_banner(
                "There is no such setup in progress. ",
                r#"<a href="/">Back</a>"#,
            );
            return html(StatusCode::NOT_FOUND, page("Not found", &body, false), None);
        }
        Some(Job::Running) => {
            let body = concat!(
                r#"<p id="progress">The device is registering with the provisioning service. "#,
                "This page updates by itself.</p>"
            );
            page("Connecting…", body, true)
        }
        Some(Job::Done(done)) => match *done {
            Ok(assignment) => {
                let body = format!(
                    concat!(
                        r#"<p class="ok" id="result">Done: this device is provisioned to "#,
                        r#"IoT hub <strong id="hub">{}</strong> as device "#,
                        r#"<strong id="deviceId">{}</strong>.</p>"#,
                        r#"<p><a href="/">See the device</a></p>"#
                    ),
                    esc(&assignment.hub),
                    esc(&assignment.device_id)
                );
                page("Connected", &body, false)
            }
            Err(message) => {
                let body = error_banner(&message, "") + r#"<p><a href="/">Try again</a></p>"#;
                page("Not connected", &body, false)
            }
        },
    };
    html(StatusCode::OK, page, None)
}

/// POST /reprovision and POST /forget: confirmed, with the setup password.
fn change(
    portal: &Arc<Portal>,
    path: &'static str,
) -> impl Filter<Extract = (Response,), Error = Rejection> + Clone {
    warp::path(path)
        .and(warp::path::end())
        .and(warp::post())
        .and(with_portal(portal))
        .and(cookies())
        .and(form())
        .map(move |portal, cookies, form| confirm_change(path, portal, cookies, form))
}

fn confirm_change(
    path: &str,
    portal: Arc<Portal>,
    cookies: Option<String>,
    form: Form,
) -> Response {
    if !csrf_ok(cookies.as_deref(), &form) {
        return forbidden();
    }
    let (token, _) = token_for(cookies.as_deref());
    let Ok(Some(assignment)) = portal.config.state.load() else {
        return redirect("/");
    };
    let refusal = portal.password_ok(&form).and_then(|()| {
        if form.get("confirm").map(String::as_str) == Some("yes") {
            Ok(())
        } else {
            Err("Tick the box to confirm.".to_owned())
        }
    });
    if let Err(message) = refusal {
        let body = portal.status_page(&assignment, &token, Some(&message));
        return html(StatusCode::FORBIDDEN, body, None);
    }
    if path == "forget" {
        return match portal.config.state.forget() {
            Ok(()) => redirect("/"),
            Err(error) => {
                let body = portal.status_page(&assignment, &token, Some(&error.to_string()));
                html(StatusCode::INTERNAL_SERVER_ERROR, body, None)
            }
        };
    }
    match portal.start(assignment.credentials.clone()) {
        Ok(job) => redirect(&format!("/progress/{job}")),
        Err(message) => {
            let body = portal.status_page(&assignment, &token, Some(&message));
            html(StatusCode::CONFLICT, body, None)
        }
    }
}

/// Any other GET: a page that leads back.
fn not_found() -> impl Filter<Extract = (Response,), Error = Rejection> + Clone {
    warp::get().map(|| {
        let body = r#"<p><a href="/">Back to the device</a></p>"#;
        html(StatusCode::NOT_FOUND, page("Not found", body, false), None)
    })
}

/// What a request the routes could not read gets.
fn unreadable() -> Response {
    let body = error_banner(
        "The request could not be read. ",
        r#"<a href="/">Start again</a>."#,
    );
    html(
        StatusCode::BAD_REQUEST,
        page("That did not work", &body, false),
        None,
    )
}
