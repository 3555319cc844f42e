//! The scrape endpoint: HTTP/1.1, `GET /metrics` and nothing else.

use std::{convert::Infallible, io, net::SocketAddr, sync::Arc, time::Duration};

use http_body_util::Full;
use hyper::{
    Method, Request, Response, StatusCode,
    body::{Bytes, Incoming},
    header::{ALLOW, CONTENT_TYPE},
    server::conn::http1,
    service::service_fn,
};
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::{net::TcpListener, task::JoinHandle};
use tokio_util::sync::CancellationToken;

use super::Metrics;

const OPENMETRICS: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

/// A client that has not sent its request headers by then is dropped, so that idle connections
/// cannot pile up.
const HEADER_TIMEOUT: Duration = Duration::from_secs(10);

/// A pause after a failed accept (such as too many open files), so the loop does not spin.
const ACCEPT_BACKOFF: Duration = Duration::from_millis(100);

#[derive(Debug, thiserror::Error)]
pub enum MetricsError {
    #[error("binding the metrics endpoint to {address}")]
    Bind {
        address: SocketAddr,
        #[source]
        source: io::Error,
    },
    #[error("reading the metrics endpoint's bound address")]
    LocalAddress(#[source] io::Error),
}

/// A running endpoint.
#[derive(Debug)]
pub struct MetricsServer {
    /// The address bound (the port the kernel chose when `listen` asked for port 0).
    pub local_addr: SocketAddr,
    /// Ends once cancelled and every open connection has finished its request.
    pub task: JoinHandle<()>,
}

/// Binds `listen` and serves `metrics` until `cancel`. Binding happens before this returns, so
/// that a taken port fails startup instead of a background task.
///
/// # Errors
/// When `listen` cannot be bound.
pub async fn serve(
    listen: SocketAddr,
    metrics: Arc<Metrics>,
    cancel: CancellationToken,
) -> Result<MetricsServer, MetricsError> {
    let listener = TcpListener::bind(listen)
        .await
        .map_err(|source| MetricsError::Bind {
            address: listen,
            source,
        })?;
    let local_addr = listener.local_addr().map_err(MetricsError::LocalAddress)?;
    let task = tokio::spawn(accept_loop(listener, metrics, cancel));
    Ok(MetricsServer { local_addr, task })
}

async fn accept_loop(listener: TcpListener, metrics: Arc<Metrics>, cancel: CancellationToken) {
    let mut connections = tokio::task::JoinSet::new();
    loop {
        let accepted = tokio::select! {
            () = cancel.cancelled() => break,
            accepted = listener.accept() => accepted,
            // Reaps finished connections so the set does not grow with every scrape.
            Some(_) = connections.join_next(), if !connections.is_empty() => continue,
        };
        let stream = match accepted {
            Ok((stream, _)) => stream,
            Err(error) => {
                tracing::warn!(%error, "metrics endpoint: accepting a connection failed");
                tokio::time::sleep(ACCEPT_BACKOFF).await;
                continue;
            }
        };
        let metrics = Arc::clone(&metrics);
        let cancel = cancel.clone();
        connections.spawn(async move {
            let service = service_fn(move |request| {
                let metrics = Arc::clone(&metrics);
                async move { Ok::<_, Infallible>(respond(&request, &metrics)) }
            });
            let connection = http1::Builder::new()
                .timer(TokioTimer::new())
                .header_read_timeout(HEADER_TIMEOUT)
                .serve_connection(TokioIo::new(stream), service);
            tokio::pin!(connection);
            let result = tokio::select! {
                result = connection.as_mut() => result,
                () = cancel.cancelled() => {
                    connection.as_mut().graceful_shutdown();
                    connection.await
                }
            };
            if let Err(error) = result {
                tracing::debug!(%error, "metrics endpoint: connection ended with an error");
            }
        });
    }
    while connections.join_next().await.is_some() {}
}

fn respond(request: &Request<Incoming>, metrics: &Metrics) -> Response<Full<Bytes>> {
    if request.uri().path() != "/metrics" {
        return plain(
            StatusCode::NOT_FOUND,
            "not found; metrics are at /metrics\n",
        );
    }
    if request.method() != Method::GET {
        let mut response = plain(StatusCode::METHOD_NOT_ALLOWED, "only GET\n");
        response
            .headers_mut()
            .insert(ALLOW, hyper::header::HeaderValue::from_static("GET"));
        return response;
    }
    match metrics.render() {
        Ok(text) => with_type(StatusCode::OK, OPENMETRICS, text),
        Err(error) => {
            tracing::warn!(%error, "metrics endpoint: rendering the metrics failed");
            plain(StatusCode::INTERNAL_SERVER_ERROR, "rendering failed\n")
        }
    }
}

fn plain(status: StatusCode, text: &'static str) -> Response<Full<Bytes>> {
    with_type(status, "text/plain; charset=utf-8", text.to_owned())
}

fn with_type(
    status: StatusCode,
    content_type: &'static str,
    body: String,
) -> Response<Full<Bytes>> {
    let mut response = Response::new(Full::new(Bytes::from(body)));
    *response.status_mut() = status;
    response.headers_mut().insert(
        CONTENT_TYPE,
        hyper::header::HeaderValue::from_static(content_type),
    );
    response
}
