//! `--plan`: the client side of the server's N-stream plan (seed 000).
//!
//! The client asks `PLAN <name>`, logs the `ACCEPTED N M PORT... TOKEN`
//! line, connects one stream to each port with `JOIN <token>`, and lands
//! every framed chunk like any other piece: hashed as it arrives, checked
//! against its per-piece digest, written at its offset. A stream that dies
//! only loses its remaining chunks; the download then fetches whatever is
//! missing with ranged reads instead of restarting the file.

use std::io::{BufReader, Read, Write};
use std::net::{IpAddr, SocketAddr};

use fastdl_protocol::digest::piece_range;
use fastdl_protocol::line::expect_line;
use fastdl_protocol::plan::{chunk_count, chunks_of_stream, FrameHeader};
use fastdl_protocol::{ProtocolError, Reply, Request, MAX_REPLY_LINE};
use fastdl_support::shutdown::Shutdown;
use log::{info, warn};

use crate::connection::RequestError;
use crate::fetcher::{land_piece, FileTask};
use crate::pace::Paced;
use crate::piece_writer::PieceBuf;
use crate::pool::Pool;
use crate::transport::{self, Connected, Endpoint};

/// Runs a plan for `task`'s file. Returns once every stream ended; pieces
/// that did not land stay in the queue for ranged reads.
pub fn receive(pool: &Pool, task: &FileTask<'_>, shutdown: &Shutdown) -> Result<(), RequestError> {
    let name = &task.entry.name;
    let mut conn = pool.get()?;
    let accepted = {
        let _registered = shutdown.register(conn.stream());
        conn.send(&Request::Plan { name: name.clone() })?;
        conn.reply()?
    };
    pool.put(conn);
    let Reply::Accepted {
        chunks,
        ports,
        token,
    } = accepted
    else {
        return Err(RequestError::Connection(ProtocolError::Unexpected(
            accepted.to_string(),
        )));
    };
    info!(
        "{name}: {}",
        Reply::Accepted {
            chunks,
            ports: ports.clone(),
            token: token.clone()
        }
    );
    if chunks != chunk_count(task.entry.size) {
        return Err(RequestError::Connection(ProtocolError::Unexpected(
            format!(
                "plan of {chunks} chunks for a file of {} bytes",
                task.entry.size
            ),
        )));
    }
    let ip = pool.addr().ip();
    let streams = ports.len() as u64;
    std::thread::scope(|scope| {
        for (index, &port) in ports.iter().enumerate() {
            let token = &token;
            scope.spawn(move || {
                let stream = Stream {
                    ip,
                    port,
                    index: index as u64,
                    streams,
                    chunks,
                    token,
                };
                if let Err(e) = stream.run(task, shutdown, pool.endpoint()) {
                    if !shutdown.is_requested() {
                        warn!(
                            "{name}: plan stream {index} (port {port}) ended early: {e}; \
                             its missing chunks will be fetched with ranged reads"
                        );
                    }
                }
            });
        }
    });
    Ok(())
}

struct Stream<'a> {
    ip: IpAddr,
    port: u16,
    index: u64,
    streams: u64,
    chunks: u64,
    token: &'a str,
}

impl Stream<'_> {
    fn run(
        &self,
        task: &FileTask<'_>,
        shutdown: &Shutdown,
        endpoint: &Endpoint,
    ) -> Result<(), RequestError> {
        let addr = SocketAddr::new(self.ip, self.port);
        // The same identity check as the control connection's.
        let Connected {
            mut stream, socket, ..
        } = transport::connect_to(addr, endpoint)?;
        let _registered = shutdown.register(&socket);
        stream.write_all(
            format!(
                "{}\n",
                Request::Join {
                    token: self.token.to_owned()
                }
            )
            .as_bytes(),
        )?;
        stream.flush()?;
        let mut reader = BufReader::with_capacity(64 * 1024, Paced::new(stream, endpoint.floor));
        let line = expect_line(&mut reader, MAX_REPLY_LINE)?;
        let expected = chunks_of_stream(self.chunks, self.streams as u32, self.index as u32);
        match Reply::parse(&line)? {
            Reply::Stream { index, chunks } if index as u64 == self.index && chunks == expected => {
            }
            Reply::WrongInput { reason } => return Err(RequestError::WrongInput(reason)),
            Reply::Error { code, message } => return Err(RequestError::Server { code, message }),
            other => {
                return Err(RequestError::Connection(ProtocolError::Unexpected(
                    other.to_string(),
                )))
            }
        }
        let mut buf = PieceBuf::reuse();
        for _ in 0..expected {
            let mut header = [0u8; FrameHeader::LEN];
            reader.read_exact(&mut header)?;
            let frame = FrameHeader::decode(&header);
            let length = if frame.chunk < self.chunks {
                piece_range(task.entry.size, frame.chunk).1
            } else {
                0
            };
            if frame.chunk >= self.chunks
                || frame.chunk % self.streams != self.index
                || frame.length as u64 != length
            {
                return Err(RequestError::Connection(ProtocolError::Unexpected(
                    format!(
                        "frame for chunk {} of {} bytes on stream {}",
                        frame.chunk, frame.length, self.index
                    ),
                )));
            }
            land_piece(&mut reader, task, (frame.chunk, None), &mut buf, &addr)?;
            if task.queue.stopped().is_some() {
                break;
            }
        }
        Ok(())
    }
}
