//! What forklift's integration tests (`cli/tests/`) and its fault harness (`forklift-chaos`
//! in `bench/`) share to drive a real `forklift` from the outside, in one copy:
//!
//! - [`server`]: the guard of a server under test. It starts the server as the leader of its
//!   own process group with its output captured line by line, and kills the whole group when
//!   it is dropped, pass or fail.
//! - [`hooks`]: the lifecycle lines the `forklift` command prints on stdout (`spawned`,
//!   `ready pids=...`, `listening on ...`).
//! - [`http`]: a blocking HTTP/1.1 client: one `GET` read until the server closes, responses
//!   read one at a time off a kept-alive connection, and raw bytes.
//! - [`process`]: what /proc says about a process (state, parent, group, CPU time, memory,
//!   children), and signals.
//! - [`groups`]: the process groups started and not yet ended, so that a Ctrl-C handler can
//!   end them all.
//! - [`time`]: polling with a deadline.
//!
//! Nothing here sleeps for a fixed time to synchronise: every wait is a poll against a
//! deadline.

pub mod groups;
pub mod hooks;
pub mod http;
pub mod process;
pub mod server;
pub mod time;

pub use hooks::{parse_hook, parse_pid_list, Hook, Listen};
pub use http::Response;
pub use server::{Launch, Server, Stream};
