#!/usr/bin/env bash
# Builds fastdl and runs it on the defaults: the server in the background
# (serving ./resources on port 1337, writing ./text.txt, logging to
# ./server.log) and the client in the foreground (watching ./input.txt,
# saving into ./data). Ctrl-C stops both.
set -euo pipefail
cd "$(dirname "$0")"
cargo build --release --bins
./target/release/fastdl-server --quiet &
server=$!
trap 'kill -INT "$server" 2>/dev/null; wait "$server" 2>/dev/null || true' EXIT
# Give the server a moment to publish its list before the client asks for it
# (the client retries on its own too).
for _ in $(seq 50); do [ -s text.txt ] && break; sleep 0.1; done
echo "fastdl is running: append names to input.txt (for example: echo hello.txt >> input.txt)"
./target/release/fastdl-client "$@" || true
