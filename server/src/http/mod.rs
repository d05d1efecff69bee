//! The HTTP face (`--http-port`): the published files over HTTP/1.1 for
//! curl, browsers, aria2 and fastdl-client's URL lines.
//!
//! `GET` and `HEAD` of `/NAME` (a listed name, percent-encoded), with
//! single ranges (206, 416), a strong ETag that is the file's BLAKE3
//! digest, Last-Modified, `Repr-Digest: blake3=:...:` (RFC 9530: a client
//! can verify the file, and fastdl-client does), keep-alive; `/` is an
//! index page, `/index.json` the listing as JSON. The same rules as the
//! fastdl protocol hold: only listed regular files are served, opened the
//! one safe way (`catalog::open`); the connection table admits and evicts
//! connections; requests and sends meet the same deadlines; TLS with the
//! server identity unless `--plaintext` (then bodies go out with
//! `sendfile`); with `--token-file`, every request needs
//! `Authorization: Bearer TOKEN`. Request heads are parsed by `httparse`
//! and typed headers read with the `headers` crate.
//!
//! Submodules: `request` (the head and the target), `respond` (answers,
//! index), `session` (one connection's requests).

pub mod request;
pub mod respond;
pub mod session;

use std::sync::Arc;

use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

use crate::net::listener::accept_each;
use crate::net::transport::Transport;
use crate::net::Ctx;

/// Accepts on the HTTP port (stats slot `index`) until shutdown; each
/// connection is admitted to the same connection table as fastdl's.
pub async fn run(
    ctx: Arc<Ctx>,
    listener: TcpListener,
    index: usize,
    transport: Transport,
    shutdown: CancellationToken,
) {
    accept_each(
        &ctx,
        &listener,
        &shutdown,
        |stream, peer, ticket| {
            let (ctx, transport) = (Arc::clone(&ctx), transport.clone());
            tokio::spawn(session::serve(ctx, transport, stream, peer, ticket, index));
        },
        |stream, refusal| {
            // Past the budget of closing sockets: closed at once.
            if let Some(slot) = ctx.closing.enter() {
                let (ctx, transport) = (Arc::clone(&ctx), transport.clone());
                tokio::spawn(session::refuse(ctx, transport, stream, refusal, slot));
            }
        },
    )
    .await;
}
