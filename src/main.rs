//! The `safepoint-gateway` binary: parses the command line and runs it (see
//! [`safepoint_gateway::cli`]).

use clap::Parser;
use std::process::ExitCode;

/// jemalloc instead of the system allocator: the store writer and the request tasks
/// allocate on one thread and free on another, which glibc's malloc serves slowly.
#[global_allocator]
static ALLOCATOR: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

fn main() -> ExitCode {
    safepoint_gateway::cli::run_cli(safepoint_gateway::cli::Cli::parse())
}
