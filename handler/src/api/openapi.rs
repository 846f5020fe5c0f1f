//! `GET /api/openapi.json`: the OpenAPI 3 description of the API. The document lives in
//! docs/openapi.json (readable without running anything) and is compiled in; tests keep it,
//! [`super::ROUTES`], the filters and functions/*/function.json in agreement.

use warp::filters::BoxedFilter;
use warp::http::{header, HeaderValue};
use warp::reply::Response;
use warp::{Filter, Reply};

/// The document.
pub const DOCUMENT: &str = include_str!("../../../docs/openapi.json");

/// `GET /api/openapi.json`
pub fn route() -> BoxedFilter<(Response,)> {
    warp::path!("api" / "openapi.json")
        .and(warp::get())
        .map(|| {
            let mut response = DOCUMENT.into_response();
            response.headers_mut().insert(
                header::CONTENT_TYPE,
                HeaderValue::from_static("application/json"),
            );
            response
        })
        .boxed()
}
