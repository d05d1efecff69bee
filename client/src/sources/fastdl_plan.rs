//! `--plan`: the client side of a fastdl server's N-stream plan.
//!
//! The client asks `PLAN <name>`, logs the `ACCEPTED N M PORT... TOKEN`
//! line, connects one stream to each port (TLS, with the same identity
//! check as the control connection) with `JOIN <token>`, and hands every
//! framed chunk to the engine to land like any other piece: hashed as it
//! arrives, checked against its per-piece digest, written at its offset. A
//! stream that dies only loses its remaining chunks; the engine then
//! fetches whatever is missing with ranged reads instead of restarting.

use std::io::{BufReader, Read, Write};
use std::net::{IpAddr, SocketAddr};

use fastdl_protocol::digest::piece_range;
use fastdl_protocol::line::write_line;
use fastdl_protocol::plan::{chunk_count, chunks_of_stream, FrameHeader};
use fastdl_protocol::{ProtocolError, Reply, Request};
use log::{info, warn};

use crate::net::connection::{read_reply, Connection, RequestError};
use crate::net::pace::Paced;
use crate::net::transport::{self, Connected, Endpoint};

/// Lands one chunk: reads exactly its bytes; whether it landed.
pub type Land<'a> = &'a (dyn Fn(&mut dyn Read, u64) -> std::io::Result<bool> + Sync);

/// Runs a plan for file `name` of `size` bytes over a new control
/// connection to `endpoint`. Returns once every stream ended; chunks that
/// did not land are left to ranged reads.
pub fn receive(
    endpoint: &Endpoint,
    name: &str,
    size: u64,
    land: Land<'_>,
) -> Result<(), RequestError> {
    let mut conn = Connection::open(endpoint)?;
    conn.send(&Request::Plan {
        name: name.to_owned(),
    })?;
    let accepted = conn.reply()?;
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
    if chunks != chunk_count(size) {
        return Err(RequestError::Connection(ProtocolError::Unexpected(
            format!("plan of {chunks} chunks for a file of {size} bytes"),
        )));
    }
    let ip = endpoint.addr.ip();
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
                    size,
                };
                if let Err(e) = stream.run(land, endpoint) {
                    if !endpoint.shutdown.is_requested() {
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

/// One stream of a plan.
struct Stream<'a> {
    ip: IpAddr,
    port: u16,
    index: u64,
    streams: u64,
    chunks: u64,
    token: &'a str,
    size: u64,
}

impl Stream<'_> {
    fn run(&self, land: Land<'_>, endpoint: &Endpoint) -> Result<(), RequestError> {
        let addr = SocketAddr::new(self.ip, self.port);
        // The same identity check as the control connection's.
        let Connected {
            mut stream,
            registered: _registered,
            ..
        } = transport::connect_to(addr, endpoint)?;
        let join = Request::Join {
            token: self.token.to_owned(),
        };
        write_line(&mut stream, &join.to_string())?;
        stream.flush()?;
        let mut reader = BufReader::with_capacity(64 * 1024, Paced::new(stream, endpoint.floor));
        let expected = chunks_of_stream(self.chunks, self.streams as u32, self.index as u32);
        match read_reply(&mut reader)? {
            Reply::Stream { index, chunks } if index as u64 == self.index && chunks == expected => {
            }
            other => {
                return Err(RequestError::Connection(ProtocolError::Unexpected(
                    other.to_string(),
                )))
            }
        }
        for _ in 0..expected {
            let mut header = [0u8; FrameHeader::LEN];
            reader.read_exact(&mut header)?;
            let frame = FrameHeader::decode(&header);
            let length = if frame.chunk < self.chunks {
                piece_range(self.size, frame.chunk).1
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
            land(&mut reader, frame.chunk)?;
            if endpoint.shutdown.is_requested() {
                break;
            }
        }
        Ok(())
    }
}
