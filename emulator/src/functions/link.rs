//! The one way requests reach the custom handler, so that a handler dying never loses or
//! misreports a request.
//!
//! Two things go wrong when a handler process dies under a pooled HTTP client: a pooled
//! connection to the dead process is picked for the next request (the write succeeds, the read
//! fails), and a request already on its way gets no answer. Both look like the handler failing
//! the request, although it never handled it. So:
//!
//! - connections belong to one start of the handler: the pool is replaced whenever a new start
//!   listens, and no connection of an earlier process is ever used again;
//! - a request that got no answer is sent again once a later start listens, if the start it was
//!   sent to is gone; if that start is still running, the handler did fail it.
//!
//! Resending means a handler killed mid-request may see it twice; the real host redelivers
//! event batches the same way after a worker restart (the checkpoint was not written), so every
//! function must be idempotent anyway.

use super::supervisor::HandlerSupervisor;
use bytes::Bytes;
use http::{HeaderMap, Method, StatusCode};
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// How long a request may wait for a (re)starting handler.
pub const READY_WAIT: Duration = Duration::from_secs(30);
/// After a request got no answer: how long the supervisor may take to notice that the process
/// died. A dead process is reaped within milliseconds; the bound only matters for a handler that
/// is alive and drops connections, whose request then fails after this wait.
const DEATH_VERDICT_WAIT: Duration = Duration::from_secs(10);
/// Resends of one request to successive starts, so a request that kills the handler every time
/// cannot loop forever inside one exchange (event delivery has its own retry policy above this).
const MAX_RESENDS: u32 = 3;

/// How the request body is framed on the wire.
#[derive(Debug, Clone)]
pub enum Framing {
    /// No body at all.
    Empty,
    /// `Content-Length`.
    Sized(Bytes),
    /// `Transfer-Encoding: chunked`, no `Content-Length`, as .NET's HttpClient sends content
    /// whose length it does not compute.
    Chunked(Bytes),
}

/// A request to the handler.
#[derive(Debug, Clone)]
pub struct Outgoing {
    /// Method.
    pub method: Method,
    /// Path and query, starting with `/`.
    pub path_and_query: String,
    /// Headers (without framing headers: the body decides those).
    pub headers: HeaderMap,
    /// Body and framing.
    pub body: Framing,
}

/// The handler's whole answer.
#[derive(Debug)]
pub struct Answer {
    /// Status.
    pub status: StatusCode,
    /// Headers.
    pub headers: HeaderMap,
    /// Body, read to the end.
    pub body: Bytes,
}

/// Why no answer came back.
#[derive(Debug, Clone, thiserror::Error)]
pub enum LinkError {
    /// No handler listened within [`READY_WAIT`].
    #[error("the handler is not running")]
    NotRunning,
    /// The running handler did not answer (timeout, or it closed the connection).
    #[error("the handler did not answer: {0}")]
    NoAnswer(String),
}

/// Requests to the supervised handler.
#[derive(Clone)]
pub struct HandlerLink {
    handler: Arc<HandlerSupervisor>,
    base: String,
    timeout: Duration,
    /// The client of the newest start seen, with that start's number.
    client: Arc<Mutex<(u64, reqwest::Client)>>,
}

impl HandlerLink {
    /// A link to `handler`; each exchange may take up to `timeout`.
    pub fn new(handler: Arc<HandlerSupervisor>, timeout: Duration) -> Self {
        let base = format!("http://127.0.0.1:{}", handler.port());
        Self {
            handler,
            base,
            timeout,
            client: Arc::new(Mutex::new((0, client(timeout)))),
        }
    }

    /// The client whose connections all go to start `generation`.
    fn client_for(&self, generation: u64) -> reqwest::Client {
        let mut current = self.client.lock().unwrap_or_else(|p| p.into_inner());
        if current.0 < generation {
            // A new start: the old pool (connections to a dead process) goes with the old client.
            *current = (generation, client(self.timeout));
        } else if current.0 > generation {
            // The caller looked before a restart; its start is gone, so give it no pool at all.
            return client(self.timeout);
        }
        current.1.clone()
    }

    /// Sends `request` and reads the whole answer; sends it again to a restarted handler if the
    /// start it went to died before answering.
    pub async fn exchange(&self, request: &Outgoing) -> Result<Answer, LinkError> {
        let mut resends = 0;
        loop {
            if !self.handler.wait_ready_for(READY_WAIT).await {
                return Err(LinkError::NotRunning);
            }
            let generation = self.handler.generation();
            if generation == 0 {
                continue;
            }
            let client = self.client_for(generation);
            let error = match send(&client, &self.base, request).await {
                Ok(answer) => return Ok(answer),
                Err(error) => error,
            };
            if error.is_timeout() {
                return Err(LinkError::NoAnswer("timed out".into()));
            }
            let reason = error.without_url().to_string();
            let died = self
                .handler
                .wait_ended(generation, DEATH_VERDICT_WAIT)
                .await;
            if !died || resends >= MAX_RESENDS {
                return Err(LinkError::NoAnswer(reason));
            }
            resends += 1;
            tracing::info!(
                start = generation,
                resends,
                "the handler died before answering; sending the request again once it is back"
            );
        }
    }
}

fn client(timeout: Duration) -> reqwest::Client {
    reqwest::Client::builder()
        .timeout(timeout)
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .unwrap_or_default()
}

async fn send(
    client: &reqwest::Client,
    base: &str,
    request: &Outgoing,
) -> Result<Answer, reqwest::Error> {
    let mut builder = client
        .request(
            request.method.clone(),
            format!("{base}{}", request.path_and_query),
        )
        .headers(request.headers.clone());
    builder = match &request.body {
        Framing::Empty => builder,
        Framing::Sized(bytes) => builder.body(bytes.clone()),
        Framing::Chunked(bytes) => {
            let chunk: Result<Bytes, std::io::Error> = Ok(bytes.clone());
            builder.body(reqwest::Body::wrap_stream(futures_util::stream::iter([
                chunk,
            ])))
        }
    };
    let response = builder.send().await?;
    let status = response.status();
    let headers = response.headers().clone();
    // The answer counts only once it is read whole: a connection that breaks mid-body is no
    // answer either.
    let body = response.bytes().await?;
    Ok(Answer {
        status,
        headers,
        body,
    })
}
