//! The benchmark harness's library: what the binaries of `forklift-bench` build on.
//!
//! - `forklift-bench` (src/main.rs) runs forklift, its peers and the ceiling side by side in
//!   interleaved rounds: [`run`] starts each server and its load generator, [`parse`] reads
//!   wrk's and oha's reports, [`stats`] and [`report`] summarise the rounds as markdown and
//!   JSON, [`chart`] draws the SVG. The static workloads serve the files of [`docroot`]; the
//!   idle workload's client is the harness itself ([`idle`]).
//! - `forklift-chaos` (src/chaos/, one file per fault scenario) drives forklift through
//!   forklift-testkit's server guard, client and /proc readers, the ones the CLI's integration
//!   tests use.
//! - `forklift-ceiling` (src/ceiling.rs) stands alone: the reference that does no HTTP work.
//!
//! Both reports describe the machine ([`machine`]) and date themselves ([`clock`]). Child
//! processes run in process groups of their own ([`procs`]) that a Ctrl-C ends.

pub mod chart;
pub mod clock;
pub mod docroot;
pub mod idle;
pub mod machine;
pub mod parse;
pub mod procs;
pub mod report;
pub mod run;
pub mod stats;
pub mod tls;
